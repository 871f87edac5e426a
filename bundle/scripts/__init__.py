"""Custom pieces of the emseg bundle, referenced from the configs as ``scripts.<module>.<name>``.

Modules by kind: ``stack_io`` (reading stacks), ``volume_io`` (volumes of any size, OME-Zarr), ``datalists``
(items and folds), ``transforms``, ``losses``, ``metrics``, ``networks``, ``inferers``, ``backends`` (how the
network runs), ``cells`` (instances), ``edge_costs`` (learned edge costs of the cells' graphs), ``cell_table``
(their properties), ``averaging`` (weight average), ``checkpoints`` (resume and model files), ``transfer``
(pretrained weights), ``writers``, ``blockwise`` (blocks without seams), ``pipeline`` (the per-block work
inference.json declares), ``work`` (a run's resumable work folder), ``outputs`` (TIFF and OME-Zarr writers),
``volumes`` (blockwise inference), ``dask_runner`` (the blocks on Dask), ``bioimageio`` (the bioimage.io package),
``progress``, ``report`` (evaluation), ``distributed`` (torchrun), ``flags`` and ``errors``.

Each module is imported on first use (``scripts.flags.flag`` in a config expression, a ``_target_``, an
import): inference loads none of training's modules, training none of Dask, Zarr or bioimageio.core (which
MONAI Label's environment does not have). Importing the package makes an uncaught
:class:`scripts.errors.InputError` the last line printed.
"""

import importlib

from . import errors

MODULES = (
    "averaging", "backends", "bioimageio", "blockwise", "cell_table", "cells", "checkpoints", "dask_runner",
    "datalists", "distributed", "edge_costs", "errors", "flags", "inferers", "losses", "metrics", "networks",
    "outputs", "pipeline", "progress", "report", "stack_io", "transfer", "transforms", "volume_io", "volumes", "work",
    "writers",
)  # fmt: skip


def __getattr__(name: str):
    if name in MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


errors.install_last_line_hook()
