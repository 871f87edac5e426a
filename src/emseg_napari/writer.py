"""Writing corrected cells: the label stack and its table, both complete or neither."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .bundle import scripts_module

__all__ = ["write_cells"]


def write_cells(folder: str | Path, name: str, cells: np.ndarray, table, pixel_size=None) -> list[Path]:
    """``<folder>/<name>_cells.tif`` (uint32, the pixel size as resolution tags) and ``<name>_cells.csv``, as
    ``run inferring`` writes them. Both are written under hidden temporary names and renamed once both are
    complete, so a failure (a full disk) leaves the earlier files as they were and no partial file.

    Args:
        cells: (Z, H, W) cell ids.
        table: pandas DataFrame, one row per cell (napari's ``index`` column is dropped).
        pixel_size: (y, x) in nm, or None.

    Raises:
        OSError: naming the file that could not be written.
    """
    outputs, writers = scripts_module("outputs"), scripts_module("writers")
    folder = Path(folder)
    cells = np.asarray(cells)
    cells = cells[None] if cells.ndim == 2 else cells
    targets = [folder / f"{name}_cells.tif", folder / f"{name}_cells.csv"]
    temporary = [path.with_name(f".{path.name}.partial") for path in targets]
    columns = {column: table[column].to_numpy() for column in table.columns if column != "index"}
    writing = targets[0]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        outputs.write_pages(
            temporary[0], cells.shape, np.uint32, (page.astype(np.uint32) for page in cells), pixel_size
        )
        writing = targets[1]
        temporary[1].write_bytes(writers.csv_bytes(columns))
        for source, target in zip(temporary, targets, strict=True):
            writing = target
            os.replace(source, target)
    except BaseException as error:
        for path in temporary:
            path.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OSError(f"{writing}: cannot write ({error.strerror or error})") from error
        raise
    return targets
