"""The cell table: one row per cell of a label map, with its size, position, shape and intensities.

Every column is scikit-image's ``regionprops`` definition (the tests compare them), measured for all cells of a
section at once: sums over pixels grouped by id (``numpy.bincount``), bounding boxes and intensity extremes from
``scipy.ndimage``, the axes, eccentricity and orientation from the second central moments, and the perimeter
from the same border-pixel pattern weights as ``skimage.measure.perimeter``. That costs a few milliseconds per
512 x 512 section, against about 140 ms for ``regionprops_table`` with the same columns. Only ``solidity`` needs
each cell's convex hull; it is measured with ``regionprops_table`` when asked for (:class:`CellTable`).

Columns (:data:`CELL_COLUMNS`): ``id``, ``section``, ``area_px``, ``perimeter_px``, ``centroid_{y,x}_px``,
``bbox_{min,max}_{y,x}_px`` (max exclusive), ``equivalent_diameter_px``, ``{major,minor}_axis_px``,
``eccentricity``, ``solidity``, ``orientation_rad``, ``intensity_{mean,min,max,std}`` (of the raw image), and
with a (y, x) pixel size in nm ``area_nm2``, ``centroid_{y,x}_nm``, ``equivalent_diameter_nm``,
``{major,minor}_axis_nm`` and ``perimeter_nm`` (NaN unless the pixels are square).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.measure import regionprops_table

from .flags import flag, pixel_size_flag

__all__ = ["CELL_COLUMNS", "CellTable", "cell_table", "section_table"]

#: the table's columns, in order; ``solidity`` only when asked for, the ``_nm`` ones only with a pixel size
CELL_COLUMNS = (
    "id", "section", "area_px", "perimeter_px", "centroid_y_px", "centroid_x_px", "bbox_min_y_px", "bbox_min_x_px",
    "bbox_max_y_px", "bbox_max_x_px", "equivalent_diameter_px", "major_axis_px", "minor_axis_px", "eccentricity",
    "solidity", "orientation_rad", "intensity_mean", "intensity_min", "intensity_max", "intensity_std", "area_nm2",
    "centroid_y_nm", "centroid_x_nm", "equivalent_diameter_nm", "major_axis_nm", "minor_axis_nm", "perimeter_nm",
)  # fmt: skip

# skimage.measure.perimeter: each border pixel's 3 x 3 pattern of border pixels, coded by these weights, is worth
# 1, sqrt(2) or (1 + sqrt(2)) / 2 of length
_PATTERN_CODES = np.array([[10, 2, 10], [2, 1, 2], [10, 2, 10]])
_PATTERN_LENGTHS = np.zeros(50)
_PATTERN_LENGTHS[[5, 7, 15, 17, 25, 27]] = 1.0
_PATTERN_LENGTHS[[21, 33]] = np.sqrt(2)
_PATTERN_LENGTHS[[13, 23]] = (1 + np.sqrt(2)) / 2


def _perimeters(labels: np.ndarray, size: int) -> np.ndarray:
    """Each id's ``skimage.measure.perimeter`` (4-neighbourhood) of its own mask, for ids 0..size-1, in pixels.

    Visits only the border pixels (of a cell, with a 4-neighbour that is not of it), through flat offsets into
    the label map padded by one pixel of 0."""
    padded = np.pad(labels, 1)
    width = padded.shape[1]
    flat = padded.ravel()
    cell = np.flatnonzero(flat)
    own = flat[cell]
    inner = np.ones(cell.size, dtype=bool)
    for step in (-width, width, -1, 1):
        inner &= flat[cell + step] == own
    border = cell[~inner]
    is_border = np.zeros(flat.size, dtype=bool)
    is_border[border] = True
    owner = flat[border]
    codes = np.zeros(border.size, dtype=np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            neighbour = border + dy * width + dx
            codes += _PATTERN_CODES[dy + 1, dx + 1] * (is_border[neighbour] & (flat[neighbour] == owner))
    return np.bincount(owner, weights=_PATTERN_LENGTHS[codes], minlength=size)


def _axes(moments: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Major and minor axis lengths, eccentricity and orientation from the normalised central moments
    (mu_yy, mu_xx, mu_yx), as regionprops reads them off its inertia tensor [[mu_xx, -mu_yx], [-mu_yx, mu_yy]]."""
    mu_yy, mu_xx, mu_yx = moments
    a, b, c = mu_xx, -mu_yx, mu_yy
    spread = np.sqrt(((a - c) / 2) ** 2 + b**2)
    large = np.maximum((a + c) / 2 + spread, 0)
    small = np.maximum((a + c) / 2 - spread, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        eccentricity = np.where(large > 0, np.sqrt(1 - small / np.where(large > 0, large, 1)), 0.0)
    orientation = np.where(a - c == 0, np.where(b < 0, np.pi / 4, -np.pi / 4), 0.5 * np.arctan2(-2 * b, c - a))
    return 4 * np.sqrt(large), 4 * np.sqrt(small), eccentricity, orientation


def section_table(
    labels: np.ndarray, image: np.ndarray, pixel_size: Sequence[float] | None = None, solidity: bool = False
) -> dict[str, np.ndarray]:
    """The rows of one section's cells, ordered by id (``section`` column not included).

    Args:
        labels: (H, W) integer cell ids, 0 = no cell.
        image: (H, W) raw intensities for the ``intensity_*`` columns.
        pixel_size: (y, x) pixel size in nm, or None for pixel units only.
        solidity: also measure ``solidity`` (each cell's convex hull, through ``regionprops_table``).

    Returns:
        columns of :data:`CELL_COLUMNS` (but ``section``) as equal-length 1D arrays.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape != np.shape(image):
        raise ValueError(f"labels {labels.shape} and image {np.shape(image)} must be the same (H, W) shape")
    labels = labels.astype(np.intp, copy=False)
    size = int(labels.max(initial=0)) + 1
    area = np.bincount(labels.ravel(), minlength=size).astype(np.float64)
    ids = np.flatnonzero(area[1:]) + 1
    count = area[ids]
    rows, columns = np.indices(labels.shape, dtype=np.float64)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(labels.ravel(), weights=values.ravel(), minlength=size)[ids] / count

    def per_pixel(values: np.ndarray) -> np.ndarray:
        full = np.zeros(size)
        full[ids] = values
        return full[labels]

    centroid_y, centroid_x = mean(rows), mean(columns)
    offsets_y, offsets_x = rows - per_pixel(centroid_y), columns - per_pixel(centroid_x)
    moments = (mean(offsets_y**2), mean(offsets_x**2), mean(offsets_y * offsets_x))
    every_box = ndimage.find_objects(labels)
    boxes = [every_box[i - 1] for i in ids]
    intensity = np.asarray(image, dtype=np.float64)
    intensity_mean = mean(intensity)
    deviation = intensity - per_pixel(intensity_mean)
    major, minor, eccentricity, orientation = _axes(moments)
    table = {
        "id": ids.astype(np.int64),
        "area_px": count,
        "perimeter_px": _perimeters(labels, size)[ids],
        "centroid_y_px": centroid_y,
        "centroid_x_px": centroid_x,
        "bbox_min_y_px": np.array([box[0].start for box in boxes], dtype=np.int64),
        "bbox_min_x_px": np.array([box[1].start for box in boxes], dtype=np.int64),
        "bbox_max_y_px": np.array([box[0].stop for box in boxes], dtype=np.int64),
        "bbox_max_x_px": np.array([box[1].stop for box in boxes], dtype=np.int64),
        "equivalent_diameter_px": np.sqrt(4 * count / np.pi),
        "major_axis_px": major,
        "minor_axis_px": minor,
        "eccentricity": eccentricity,
        "orientation_rad": orientation,
        "intensity_mean": intensity_mean,
        "intensity_min": np.array([intensity[box][labels[box] == i].min() for i, box in zip(ids, boxes, strict=True)]),
        "intensity_max": np.array([intensity[box][labels[box] == i].max() for i, box in zip(ids, boxes, strict=True)]),
        "intensity_std": np.sqrt(np.maximum(mean(deviation**2), 0)),
    }
    if solidity:
        measured = regionprops_table(labels, properties=("label", "solidity"))
        table["solidity"] = np.asarray(measured["solidity"], dtype=np.float64)
    if pixel_size is not None:
        y_nm, x_nm = (float(value) for value in pixel_size)
        table["area_nm2"] = count * y_nm * x_nm
        table["centroid_y_nm"], table["centroid_x_nm"] = centroid_y * y_nm, centroid_x * x_nm
        table["equivalent_diameter_nm"] = np.sqrt(4 * table["area_nm2"] / np.pi)
        scaled = (moments[0] * y_nm**2, moments[1] * x_nm**2, moments[2] * y_nm * x_nm)
        table["major_axis_nm"], table["minor_axis_nm"], _, _ = _axes(scaled)
        # a perimeter in nm needs square pixels (regionprops measures no other)
        table["perimeter_nm"] = table["perimeter_px"] * (y_nm if y_nm == x_nm else np.nan)
    return {column: table[column] for column in CELL_COLUMNS if column in table}


def cell_table(
    cells: np.ndarray, image: np.ndarray, pixel_size: Sequence[float] | None = None, solidity: bool = False
) -> dict[str, np.ndarray]:
    """One row per cell of a (Z, H, W) label stack (arguments: see :func:`section_table`).

    Returns:
        columns (see :data:`CELL_COLUMNS`) as equal-length 1D arrays, rows ordered by section then id.
    """
    if np.shape(cells) != np.shape(image) or np.ndim(cells) != 3:
        raise ValueError(f"cells {np.shape(cells)} and image {np.shape(image)} must be the same (Z, H, W) shape")
    sections = []
    for z in range(np.shape(cells)[0]):
        rows = section_table(cells[z], image[z], pixel_size, solidity)
        sections.append({"section": np.full(len(rows["id"]), z, dtype=np.int64), **rows})
    columns = [column for column in CELL_COLUMNS if column in sections[0]] if sections else ["id", "section"]
    return {column: np.concatenate([rows[column] for rows in sections]) for column in columns}


class CellTable:
    """The table's options, as one component of the configs: ``table(labels, image)`` measures one section.

    Args:
        pixel_size: (y, x) pixel size in nm, or None.
        solidity: also measure ``solidity`` (a flag; it costs about the network's time per section).
    """

    def __init__(self, pixel_size: Sequence[float] | None = None, solidity: bool | str = False) -> None:
        self.pixel_size = pixel_size_flag(pixel_size)
        self.solidity = flag(solidity, "cell_table#solidity")

    @property
    def columns(self) -> list[str]:
        """The columns of this table's rows, in order."""
        return [
            column for column in CELL_COLUMNS
            if (self.solidity or column != "solidity") and (self.pixel_size is not None or "_nm" not in column)
        ]  # fmt: skip

    def __call__(self, labels: np.ndarray, image: np.ndarray) -> dict[str, np.ndarray]:
        return section_table(labels, image, self.pixel_size, self.solidity)

    def __repr__(self) -> str:
        return f"CellTable(pixel_size={self.pixel_size}, solidity={self.solidity})"
