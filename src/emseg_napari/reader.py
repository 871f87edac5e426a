"""Opening what the bundle reads and writes as napari layers, through the bundle's own readers
(:func:`scripts.volume_io.open_volume`, lazily, so a volume larger than memory opens as a dask array).

* a TIFF stack, a folder of PNG/TIF slices, a Zarr array: an Image layer; ``<name>_cells.tif``, a Labels layer;
* an OME-Zarr image: an Image layer, and its ``labels/cells`` (``run inferring``'s cells) as a Labels layer;
* ``<name>_cells.csv``: the cells it describes (``<name>_cells.tif`` or ``<name>.ome.zarr`` beside it).

A cells layer gets the table ``<name>_cells.csv`` beside it as its ``features`` (napari's ``index`` column is the
cell id). Layers are scaled by the recorded pixel size in nm; sections are shown as thick as a pixel is wide, since
no input records their thickness.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bundle import scripts_module

__all__ = [
    "get_reader", "read_stack", "read_cell_table", "cell_features", "layer_scale", "PIXEL_SIZE_KEY", "SOURCE_KEY",
]  # fmt: skip

#: the layer metadata key of the (y, x) pixel size in nm, read by the segment widget
PIXEL_SIZE_KEY = "emseg_pixel_size_nm"
#: the layer metadata key of the file the layer was read from
SOURCE_KEY = "emseg_source"
CELLS_SUFFIX = "_cells"


def layer_scale(pixel_size) -> dict:
    """napari's ``scale`` (and ``units``) of a (Z, H, W) layer with this (y, x) pixel size in nm, or None."""
    if pixel_size is None:
        return {}
    return {"scale": (float(pixel_size[0]), *(float(size) for size in pixel_size)), "units": ("nm", "nm", "nm")}


def cell_features(table_path: Path):
    """``<name>_cells.csv`` as a layer's features: the table with napari's ``index`` column (the cell id) first."""
    import pandas as pd

    try:
        table = pd.read_csv(table_path)
    except Exception as error:  # pandas raises many types for a file that is not a table
        raise ValueError(f"{table_path}: cannot be read as a cell table ({type(error).__name__}: {error})") from error
    if "id" not in table.columns:
        raise ValueError(f"{table_path}: has no 'id' column; not a cell table of emseg")
    table.insert(0, "index", table["id"])
    return table


def _layer(volume, name: str, kind: str, features_path: Path | None = None) -> tuple:
    attributes = {
        "name": name,
        **layer_scale(volume.pixel_size),
        "metadata": {PIXEL_SIZE_KEY: volume.pixel_size, SOURCE_KEY: str(volume.path)},
    }
    if kind == "labels" and features_path is not None and features_path.is_file():
        attributes["features"] = cell_features(features_path)
    return volume.array, attributes, kind


def read_stack(path: str | Path) -> list[tuple]:
    """The layers of a stack or volume (see the module docstring)."""
    volume_io = scripts_module("volume_io")
    path = Path(path)
    volume = volume_io.open_volume(path)
    name = volume_io.volume_name(path)
    if name.endswith(CELLS_SUFFIX) and np.issubdtype(volume.array.dtype, np.integer):
        return [_layer(volume, name, "labels", path.with_name(f"{name}.csv"))]
    layers = [_layer(volume, name, "image")]
    cells_path = path / "labels" / "cells" / "0"  # level 0 of the label image run inferring writes
    if volume.kind == "ome-zarr" and volume_io.is_zarr(cells_path):
        cells = volume_io.open_volume(cells_path)
        cells.pixel_size = volume.pixel_size
        layers.append(_layer(cells, f"{name}{CELLS_SUFFIX}", "labels", path.with_name(f"{name}{CELLS_SUFFIX}.csv")))
    return layers


def read_cell_table(path: str | Path) -> list[tuple]:
    """The cells a ``<name>_cells.csv`` describes, with it as their features."""
    path = Path(path)
    name = path.name[: -len(".csv")]
    base = name[: -len(CELLS_SUFFIX)]
    for cells in (path.with_name(f"{name}.tif"), path.with_name(f"{base}.ome.zarr")):
        if cells.exists():
            return [layer for layer in read_stack(cells) if layer[2] == "labels"]
    raise FileNotFoundError(f"{path}: no {name}.tif or {base}.ome.zarr beside it holds the cells it describes")


def _is_stack_folder(path: Path) -> bool:
    """A folder of slices or a Zarr array or OME-Zarr image the bundle opens (not any Zarr group)."""
    try:
        scripts_module("volume_io").open_volume(path)
        return True
    except Exception:
        return False


def get_reader(path):
    """napari's reader hook: a reading function for the paths of the module docstring, else None (never an error:
    napari then asks its other readers)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    try:
        scripts_module("volume_io")
    except FileNotFoundError:  # no bundle: nothing this plugin can read
        return None
    if path.name.endswith(f"{CELLS_SUFFIX}.csv"):
        return read_cell_table
    if path.suffix.lower() in (".tif", ".tiff") or (path.is_dir() and _is_stack_folder(path)):
        return read_stack
    return None
