"""Correcting cells: merge, split, and the table rows they change, as plain functions on (Z, H, W) label arrays.

Cells are per section, as the bundle makes them (``run inferring``): a cell id lives in one section. The rows are
measured by the bundle's own :class:`scripts.cell_table.CellTable`, on a crop around the changed cells moved back to
the section's coordinates (:func:`scripts.blockwise.shift_table`), as inference measures the cells cut by tile seams.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.segmentation import watershed

from .bundle import scripts_module

__all__ = ["ProofreadingError", "cell_section", "merge_cells", "split_cell", "measure_cells", "updated_table"]


class ProofreadingError(ValueError):
    """A correction that cannot be made (cells of different sections, seeds outside the cell); one line."""


def cell_section(cells: np.ndarray, cell_id: int) -> int:
    """The section of ``cell_id``; raises :class:`ProofreadingError` when no pixel has it."""
    sections = np.flatnonzero([np.any(cells[z] == cell_id) for z in range(cells.shape[0])])
    if not len(sections):
        raise ProofreadingError(f"cell {cell_id}: no pixel has this id")
    return int(sections[0])


def merge_cells(cells: np.ndarray, ids: Sequence[int]) -> tuple[int, int]:
    """Merges the cells ``ids`` (at least two, of one section) into the smallest of them, in place.

    Args:
        cells: (Z, H, W) integer cell ids, 0 = no cell.
        ids: the cells to merge.

    Returns:
        (the id kept, its section).
    """
    ids = sorted({int(cell) for cell in ids})
    if len(ids) < 2:
        raise ProofreadingError(f"merge: select at least two cells, got {ids or 'none'}")
    sections = {cell: cell_section(cells, cell) for cell in ids}
    if len(set(sections.values())) > 1:
        where = ", ".join(f"{cell} in section {z}" for cell, z in sections.items())
        raise ProofreadingError(f"merge: cells are per section and these lie in different sections ({where})")
    z = sections[ids[0]]
    section = cells[z]
    section[np.isin(section, ids[1:])] = ids[0]
    return ids[0], z


def split_cell(
    cells: np.ndarray, cell_id: int, seeds: np.ndarray, relief: np.ndarray, z: int | None = None
) -> list[int]:
    """Splits ``cell_id`` in place into one cell per seed: a watershed of ``relief`` (high on membranes, e.g. the
    membrane probability) inside the cell, flooded from the seeds.

    Args:
        cells: (Z, H, W) integer cell ids.
        cell_id: the cell to split.
        seeds: (N, 3) (z, y, x) pixel positions, N >= 2, inside the cell; the first seed's part keeps ``cell_id``.
        relief: (H, W) of the cell's section, or (Z, H, W).
        z: the cell's section when known (its table row), else found by searching the sections.

    Returns:
        the ids of the parts, ``cell_id`` first; the others are new (above every id of ``cells``).
    """
    z = cell_section(cells, cell_id) if z is None else z
    seeds = np.round(np.asarray(seeds, dtype=float)).astype(int).reshape(-1, 3)
    inside = [
        (y, x) for sz, y, x in seeds
        if sz == z and 0 <= y < cells.shape[1] and 0 <= x < cells.shape[2] and cells[z, y, x] == cell_id
    ]  # fmt: skip
    if len(set(inside)) < 2:
        raise ProofreadingError(
            f"split: cell {cell_id} (section {z}) needs at least two seed points inside it, got {len(set(inside))}"
        )
    mask = cells[z] == cell_id
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    markers = np.zeros(mask[box].shape, dtype=np.int32)
    for index, (y, x) in enumerate(dict.fromkeys(inside), start=1):
        markers[y - box[0].start, x - box[1].start] = index
    section_relief = np.asarray(relief if np.ndim(relief) == 2 else relief[z], dtype=np.float64)
    parts = watershed(section_relief[box], markers, mask=mask[box])
    first_new = int(cells.max()) + 1
    ids = [cell_id, *range(first_new, first_new + int(markers.max()) - 1)]
    lookup = np.array([cell_id, *ids], dtype=cells.dtype)  # a part of the cell no seed reaches keeps its id
    crop = cells[z][box]
    crop[mask[box]] = lookup[parts[mask[box]]]
    return ids


def measure_cells(
    cells: np.ndarray, image: np.ndarray, ids: Sequence[int], z: int, pixel_size: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """The table rows of the cells ``ids`` of section ``z``, in the columns and units of ``run inferring``'s
    ``<name>_cells.csv``.

    Args:
        cells: (Z, H, W) cell ids.
        image: (Z, H, W) raw intensities (the ``intensity_*`` columns).
        ids: cells of section ``z`` (ids without a pixel give no row).
        pixel_size: (y, x) in nm, or None (no ``_nm`` columns).
    """
    table, blockwise = scripts_module("cell_table"), scripts_module("blockwise")
    section = np.asarray(cells[z])
    present = np.isin(section, list(ids))
    measurer = table.CellTable(pixel_size)
    if not present.any():
        return {column: np.zeros(0) for column in measurer.columns}
    rows, columns = ndimage.find_objects(present.astype(np.uint8))[0]
    crop = np.where(present[rows, columns], section[rows, columns], 0)
    measured = measurer(crop, np.asarray(image[z])[rows, columns])
    shifted = blockwise.shift_table(measured, z, (rows.start, columns.start), measurer.pixel_size)
    return {column: shifted[column] for column in measurer.columns}


def updated_table(table: pd.DataFrame, rows: dict[str, np.ndarray], removed: Sequence[int] = ()) -> pd.DataFrame:
    """``table`` (one row per cell, an ``id`` column) with the rows of ``removed`` and of ``rows``' ids replaced
    by ``rows``, ordered by section and id as ``run inferring`` writes it."""
    new = pd.DataFrame(rows)
    drop = table["id"].isin([*removed, *new["id"].tolist()])
    kept = table.loc[~drop]
    new = new.reindex(columns=kept.columns if len(kept.columns) else new.columns)
    if "index" in new.columns:  # napari's label column
        new["index"] = new["id"]
    combined = pd.concat([kept, new], ignore_index=True) if len(kept) else new.reset_index(drop=True)
    return combined.sort_values(["section", "id"], kind="stable").reset_index(drop=True)
