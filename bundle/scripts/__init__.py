"""Custom pieces of the emseg bundle, referenced from the configs as ``scripts.<module>.<name>``.

Modules by kind: ``stack_io`` (reading stacks), ``volume_io`` (volumes of any size, OME-Zarr), ``datalists``
(items and folds), ``transforms``, ``losses``, ``metrics``, ``networks``, ``inferers``, ``cells`` (instances and
their table), ``averaging`` (weight average), ``checkpoints`` (resume and model files), ``writers``,
``blockwise`` (blocks without seams), ``volumes`` (blockwise inference on Dask), ``progress``, ``report``
(evaluation), ``distributed`` (torchrun), ``flags`` and ``errors``. Importing the package makes an uncaught
:class:`scripts.errors.InputError` the last line printed.
"""

from . import (  # noqa: F401  (configs reach them as attributes of ``scripts``)
    averaging,
    blockwise,
    cells,
    checkpoints,
    datalists,
    distributed,
    errors,
    flags,
    inferers,
    losses,
    metrics,
    networks,
    progress,
    report,
    stack_io,
    transforms,
    volume_io,
    volumes,
    writers,
)

errors.install_last_line_hook()
