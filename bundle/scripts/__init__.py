"""Custom pieces of the emseg bundle, referenced from the configs as ``scripts.<module>.<name>``.

Modules by kind: ``stack_io`` (reading stacks), ``volume_io`` (volumes of any size, OME-Zarr), ``datalists``
(items and folds), ``transforms``, ``losses``, ``metrics``, ``networks``, ``inferers``, ``cells`` (instances and
their table), ``averaging`` (weight average), ``checkpoints`` (resume and model files), ``writers``,
``blockwise`` (blocks without seams), ``volumes`` (blockwise inference on Dask), ``bioimageio`` (the bioimage.io
package), ``progress``, ``report`` (evaluation), ``distributed`` (torchrun), ``flags`` and ``errors``. Importing
the package makes an uncaught :class:`scripts.errors.InputError` the last line printed.
"""

import importlib

from . import (  # noqa: F401  (configs reach them as attributes of ``scripts``)
    averaging,
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
    writers,
)

#: imported on first use (``scripts.volumes``, ``$scripts.volume_io...`` in a config): they bring in Dask and Zarr
#: (and bioimageio.core), which training does not need and MONAI Label's environment does not have
_LAZY_MODULES = ("volume_io", "blockwise", "volumes", "bioimageio")


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


errors.install_last_line_hook()
