"""Cells: instance label maps from the membrane probability, and a table of their properties.

A cell is a region of cell interior (membrane probability ``p < membrane_threshold``) enclosed by membrane,
4-connected as in the ISBI 2012 metric. Each section is segmented in 2D:

* ``"components"``: the connected components of the thresholded map, grown over the membrane by a watershed
  of the binary map until they meet on 1-pixel lines (the "border thinning" the ISBI scorer applies, so the
  cell map is the partition the challenge scores at that threshold, but for the pixels where lines cross).
  Cells are measured up to the middle of the membrane.
* ``"watershed"``: a watershed of the membrane probability seeded with the maxima of the interior's distance
  transform (elf's distance-transform watershed), which can split cells joined through a gap in the membrane.

Either way, seeds smaller than ``min_size`` pixels are dropped first, so the neighbouring cells flood their
area: small fragments merge into their neighbours instead of becoming cells.

Label maps are (Z, H, W) uint32, 0 = membrane line / background, ids 1..N unique across the stack. The table
(:func:`cell_table`) is measured with scikit-image's ``regionprops_table``, in pixels and, given the pixel
size, in nanometres.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt
from skimage.feature import peak_local_max
from skimage.measure import label as connected_components
from skimage.measure import regionprops_table
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

from .metrics import thinned_segmentation

__all__ = ["CELL_METHODS", "label_cells", "label_cell_stack", "CELL_COLUMNS", "cell_table"]

CELL_METHODS = ("components", "watershed")


def _seeds(interior: np.ndarray, method: str, min_size: int, min_distance: int) -> np.ndarray:
    if method == "components":
        seeds = connected_components(interior, connectivity=1)
    else:
        distance = distance_transform_edt(interior)
        regions = connected_components(interior, connectivity=1)
        peaks = peak_local_max(distance, min_distance=min_distance, labels=regions)
        markers = np.zeros(interior.shape, dtype=np.int32)
        markers[tuple(peaks.T)] = 1
        seeds = watershed(-distance, connected_components(markers, connectivity=2), mask=interior)
    if min_size > 1:
        seeds = remove_small_objects(seeds, max_size=min_size - 1)
    return seeds


def label_cells(
    membrane_probability: np.ndarray,
    membrane_threshold: float = 0.5,
    method: str = "components",
    min_size: int = 0,
    min_distance: int = 5,
) -> np.ndarray:
    """The cells of one section.

    Args:
        membrane_probability: (H, W) float membrane probability in [0, 1].
        membrane_threshold: cell interior where the probability is below this.
        method: one of :data:`CELL_METHODS`.
        min_size: seeds of fewer pixels are dropped and their area goes to the neighbouring cells.
        min_distance: ``"watershed"`` only: the smallest distance in pixels between two seeds of one region.

    Returns:
        (H, W) int32 cell ids 1..K, 0 on the 1-pixel lines between cells; all 0 when there is no interior.
    """
    probability = np.asarray(membrane_probability, dtype=np.float32)
    if probability.ndim != 2:
        raise ValueError(f"membrane probability must be (H, W), got shape {probability.shape}")
    if not np.isfinite(probability).all():
        raise ValueError("membrane probability contains NaN or infinite values")
    if method not in CELL_METHODS:
        raise ValueError(f"cell method must be one of {CELL_METHODS}, got {method!r}")
    interior = probability < membrane_threshold
    seeds = _seeds(interior, method, min_size, min_distance)
    if seeds.max() == 0:
        return np.zeros(probability.shape, dtype=np.int32)
    if method == "components":  # the ISBI scorer's thinning, from the kept seeds
        cells = thinned_segmentation(interior, seeds)
    else:
        cells = watershed(probability, markers=seeds, connectivity=1, watershed_line=True)
    return _relabel(_largest_pieces(cells))


def _largest_pieces(cells: np.ndarray) -> np.ndarray:
    """Each cell reduced to its largest 4-connected piece; the rest becomes line (0).

    A watershed with lines hands the pixel where two lines cross to a diagonal neighbour, which leaves it
    detached from its cell.
    """
    pieces = connected_components(cells, connectivity=1, background=0)
    if pieces.max() == int((np.bincount(cells.ravel())[1:] > 0).sum()):
        return cells  # nothing detached: one piece per cell
    owner = np.zeros(pieces.max() + 1, dtype=cells.dtype)
    owner[pieces.ravel()] = cells.ravel()
    sizes = np.bincount(pieces.ravel())
    largest = np.zeros(cells.max() + 1, dtype=np.int64)  # the biggest piece of each cell
    order = np.lexsort((sizes[1:], owner[1:])) + 1  # by cell, then size: the last piece of each cell wins
    largest[owner[order]] = order
    keep = np.zeros(pieces.max() + 1, dtype=bool)
    keep[largest[largest > 0]] = True
    keep[0] = False
    return np.where(keep[pieces], cells, 0)


def _relabel(cells: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..K (0 stays 0), so dropped seeds and pieces leave no gaps."""
    present = np.bincount(cells.ravel()) > 0
    present[0] = False
    lookup = np.zeros(present.size, dtype=np.int32)
    lookup[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    return lookup[cells]


def label_cell_stack(membrane_probability: np.ndarray, **options) -> np.ndarray:
    """:func:`label_cells` of every section of a (Z, H, W) stack, with ids unique across the stack.

    Returns:
        (Z, H, W) uint32; section z holds ids following those of sections 0..z-1.
    """
    if np.ndim(membrane_probability) != 3:
        raise ValueError(f"membrane probability stack must be (Z, H, W), got shape {np.shape(membrane_probability)}")
    cells = np.zeros(np.shape(membrane_probability), dtype=np.uint32)
    next_id = 0
    for z, section in enumerate(membrane_probability):
        labels = label_cells(section, **options).astype(np.uint32)
        cells[z] = np.where(labels > 0, labels + next_id, 0)
        next_id += int(labels.max())
    return cells


_PIXEL_PROPERTIES = {  # regionprops_table name -> column
    "label": "id",
    "area": "area_px",
    "perimeter": "perimeter_px",
    "centroid-0": "centroid_y_px",
    "centroid-1": "centroid_x_px",
    "bbox-0": "bbox_min_y_px",
    "bbox-1": "bbox_min_x_px",
    "bbox-2": "bbox_max_y_px",
    "bbox-3": "bbox_max_x_px",
    "equivalent_diameter_area": "equivalent_diameter_px",
    "axis_major_length": "major_axis_px",
    "axis_minor_length": "minor_axis_px",
    "eccentricity": "eccentricity",
    "solidity": "solidity",
    "orientation": "orientation_rad",
    "intensity_mean": "intensity_mean",
    "intensity_min": "intensity_min",
    "intensity_max": "intensity_max",
    "intensity_std": "intensity_std",
}
_PHYSICAL_PROPERTIES = {  # measured again with the pixel size as regionprops' spacing
    "area": "area_nm2",
    "centroid-0": "centroid_y_nm",
    "centroid-1": "centroid_x_nm",
    "equivalent_diameter_area": "equivalent_diameter_nm",
    "axis_major_length": "major_axis_nm",
    "axis_minor_length": "minor_axis_nm",
}
#: the table's columns, in order; the ``_nm`` ones only when a pixel size is known
CELL_COLUMNS = ("id", "section", *list(_PIXEL_PROPERTIES.values())[1:], *_PHYSICAL_PROPERTIES.values(), "perimeter_nm")


def _property_names(table: dict[str, str]) -> list[str]:
    return list(dict.fromkeys(name.split("-")[0] for name in table))


def cell_table(
    cells: np.ndarray, image: np.ndarray, pixel_size: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """One row per cell of a (Z, H, W) label stack, measured per section with ``regionprops_table``.

    Args:
        cells: (Z, H, W) integer cell ids, 0 = no cell (e.g. from :func:`label_cell_stack`).
        image: (Z, H, W) raw intensities the ``intensity_*`` columns are measured on.
        pixel_size: (y, x) pixel size in nm, or None for pixel units only. ``perimeter_nm`` needs square pixels
            (NaN otherwise).

    Returns:
        columns (see :data:`CELL_COLUMNS`) as equal-length 1D arrays, rows ordered by section then id.
    """
    if np.shape(cells) != np.shape(image) or np.ndim(cells) != 3:
        raise ValueError(f"cells {np.shape(cells)} and image {np.shape(image)} must be the same (Z, H, W) shape")
    rows: dict[str, list[np.ndarray]] = {}
    for z in range(cells.shape[0]):
        section = {
            _PIXEL_PROPERTIES[key]: value
            for key, value in regionprops_table(
                cells[z], intensity_image=image[z], properties=_property_names(_PIXEL_PROPERTIES)
            ).items()
        }
        if pixel_size is not None:
            measured = regionprops_table(cells[z], properties=_property_names(_PHYSICAL_PROPERTIES), spacing=pixel_size)
            section.update({_PHYSICAL_PROPERTIES[key]: value for key, value in measured.items()})
            # regionprops measures perimeters with square pixels only; NaN where pixels are not square
            isotropic = pixel_size[0] == pixel_size[1]
            section["perimeter_nm"] = section["perimeter_px"] * (pixel_size[0] if isotropic else np.nan)
        section["section"] = np.full(len(section["id"]), z, dtype=np.int64)
        for column, value in section.items():
            rows.setdefault(column, []).append(np.asarray(value))
    columns = [column for column in CELL_COLUMNS if column in rows]
    return {column: np.concatenate(rows[column]) for column in columns}
