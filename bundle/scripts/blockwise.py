"""Blockwise inference without seams: block plans, aligned prediction regions, and cells stitched across tiles.

A volume is cut into blocks: whole sections, or the 2D tiles of sections larger than ``block_size``
(:func:`plan_blocks`). A block's membrane probability equals the one of the whole section, not merely
approximates it:

* MONAI's sliding window places its windows on a grid over the whole section and blends them with a
  Gaussian weight. :func:`prediction_region` widens a tile to exactly the windows of that grid that overlap it
  (plus ``cell_halo``), so a ``SlidingWindowInferer`` run on the region places the same windows at the same
  places, and every pixel of the tile gets the same windows, weights and sum as in the whole section;
* intensities are scaled with the *section's* minimum and maximum, given to the tile
  (:class:`scripts.transforms.ScaleSectionIntensityd` in the configs' preprocessing).

Cells are labelled per block on the tile and a ``cell_halo`` around it (context), then cropped to the tile with
block-local ids 1..k (:func:`block_cells`). A cell cut by a seam between two tiles gets an id in each. Both
tiles also keep their labels in a band of ``2 * band`` pixels across each seam they share: both labelled that
band with context on both sides, so the same cell overlaps itself there, and :func:`seam_merges` joins two
ids whose pixels in the band are mostly each other's (mutual majority). :class:`CellIds` turns block-local ids
into ids unique across the volume: block offsets in block order (section z's ids follow those of sections
0..z-1, as :func:`scripts.cells.label_cell_stack`), and each merged group takes its smallest id.

A network with section context takes a block's region in the ``2k + 1`` sections around it as channels: the
z-halo of :func:`context_sections`, mirrored at the stack's ends, so every section sees neighbours on both sides
as in training (:func:`scripts.datalists.load_labelled_stack`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from monai.inferers import SlidingWindowInferer

from .cells import CellLabeller
from .errors import InputError

__all__ = [
    "Block",
    "tile_size",
    "plan_blocks",
    "checked_context",
    "context_sections",
    "window_starts",
    "prediction_region",
    "window_count",
    "sliding_window_of",
    "block_cells",
    "seam_merges",
    "CellIds",
    "stitch_cells",
    "shift_table",
]


@dataclass(frozen=True)
class Block:
    """One block: section ``z``, rows ``y0:y1`` and columns ``x0:x1``, and its tile position ``(row, column)``."""

    z: int
    y0: int
    y1: int
    x0: int
    x1: int
    row: int = 0
    column: int = 0

    @property
    def region(self) -> tuple[slice, slice]:
        """Its rows and columns of the section."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def name(self) -> str:
        return f"z{self.z}_y{self.y0}_x{self.x0}"

    def __str__(self) -> str:
        return f"block (section {self.z}, rows {self.y0}:{self.y1}, columns {self.x0}:{self.x1})"


def tile_size(size: int, block_size: int | None) -> int:
    """The tile length along an axis of ``size`` pixels: near ``size / n`` for the fewest tiles ``n`` of at most
    ``block_size`` (the last tile may be shorter), so every tile is whole chunks of that length."""
    if not block_size or block_size >= size:
        return size
    return -(-size // -(-size // block_size))


def plan_blocks(shape: Sequence[int], block_size: int | None) -> list[Block]:
    """The blocks of a (Z, H, W) volume, in order: whole sections, or tiles of at most ``block_size`` x
    ``block_size`` pixels on a regular grid of :func:`tile_size` (``None``: whole sections)."""
    depth, height, width = (int(size) for size in shape)
    rows = list(range(0, height, tile_size(height, block_size))) + [height]
    columns = list(range(0, width, tile_size(width, block_size))) + [width]
    return [
        Block(z, rows[r], rows[r + 1], columns[c], columns[c + 1], r, c)
        for z in range(depth)
        for r in range(len(rows) - 1)
        for c in range(len(columns) - 1)
    ]


def checked_context(context) -> int:
    """``--section_context``, the sections on each side of a section that the network takes, checked: an int >= 0."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise InputError(f"--section_context {context!r}: must be a whole number of sections >= 0")
    return context


def context_sections(z: int, context: int, depth: int) -> list[int]:
    """The ``2 * context + 1`` sections centred on section ``z`` of a ``depth``-section stack, mirrored at its ends
    without repeating the end section (numpy's ``"reflect"``: ``2, 1 | 0, 1, 2, ...``); a one-section stack
    mirrors onto itself.

    >>> context_sections(0, 2, 30), context_sections(29, 1, 30), context_sections(0, 1, 1)
    ([2, 1, 0, 1, 2], [28, 29, 28], [0, 0, 0])
    """
    if not 0 <= z < depth:
        raise ValueError(f"section {z} is outside a stack of {depth} sections")
    context = checked_context(context)
    period = 2 * (depth - 1)
    if period == 0:
        return [0] * (2 * context + 1)
    mirrored = [abs(s) % period for s in range(z - context, z + context + 1)]
    return [s if s < depth else period - s for s in mirrored]


def window_starts(size: int, roi: int, overlap: float) -> np.ndarray:
    """Where MONAI's sliding window starts its windows along an axis of ``size`` pixels (the last one is moved
    back to end at the border; an axis no longer than the window is one window at 0, fitted to it by
    :class:`scripts.inferers.FittedWindowInferer`)."""
    if size <= roi:
        return np.zeros(1, dtype=int)
    interval = max(int(roi * (1 - overlap)), 1)  # MONAI's scan interval for an axis longer than the window
    starts = np.arange(0, size, interval)
    starts = np.minimum(starts[: int(np.argmax(starts + roi >= size)) + 1], size - roi)
    return starts


def prediction_region(
    block: Block, section_shape: Sequence[int], roi: Sequence[int], overlap: float, cell_halo: int = 0
) -> tuple[slice, slice]:
    """The rows and columns of the section to run the sliding window on for ``block``: the union of the
    section-wide windows that overlap the block widened by ``cell_halo`` (which is clipped to the section)."""
    bounds = []
    for start, stop, size, window in zip((block.y0, block.x0), (block.y1, block.x1), section_shape, roi, strict=True):
        start, stop = max(start - cell_halo, 0), min(stop + cell_halo, size)
        if size <= window:
            bounds.append(slice(0, size))
            continue
        starts = window_starts(size, window, overlap)
        used = starts[(starts < stop) & (starts + window > start)]
        bounds.append(slice(int(used.min()), int(used.max()) + window))
    return bounds[0], bounds[1]


def window_count(
    blocks: Sequence[Block], section_shape: Sequence[int], roi: Sequence[int], overlap: float, cell_halo: int = 0
) -> int:
    """How many windows the sliding window computes over ``blocks``, each on its :func:`prediction_region`."""
    per_tile = {}  # every section has the same tiles
    for block in blocks:
        tile = (block.y0, block.y1, block.x0, block.x1)
        if tile not in per_tile:
            regions = prediction_region(block, section_shape, roi, overlap, cell_halo)
            per_tile[tile] = math.prod(
                len(window_starts(region.stop - region.start, window, overlap))
                for region, window in zip(regions, roi, strict=True)
            )
    return sum(per_tile[(block.y0, block.y1, block.x0, block.x1)] for block in blocks)


def sliding_window_of(inferer) -> SlidingWindowInferer:
    """The ``SlidingWindowInferer`` inside ``inferer`` (itself, or the one a test-time-augmentation wrapper holds),
    checked: a window of positive size and one overlap for both axes, as :func:`prediction_region` assumes."""
    while not isinstance(inferer, SlidingWindowInferer):
        if not hasattr(inferer, "inferer"):
            raise TypeError(f"blockwise inference needs a SlidingWindowInferer, got {type(inferer).__name__}")
        inferer = inferer.inferer
    roi = inferer.roi_size if isinstance(inferer.roi_size, Sequence) else [inferer.roi_size] * 2
    if not isinstance(inferer.overlap, float | int) or len(roi) != 2 or min(roi) < 1:
        raise InputError(
            f"--inference_roi {list(roi)} / overlap {inferer.overlap}: blockwise inference needs a 2D window of "
            "positive size and one overlap for both axes"
        )
    return inferer


def _local_ids(labels: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """A lookup from ``labels``' ids to 1..k for the ids present in ``kept``, 0 for all others."""
    present = np.zeros(int(labels.max()) + 1, dtype=bool)
    present[np.unique(kept)] = True
    present[0] = False
    lookup = np.zeros(present.size, dtype=np.uint32)
    lookup[present] = np.arange(1, int(present.sum()) + 1, dtype=np.uint32)
    return lookup


def block_cells(
    probability: np.ndarray, block: Block, origin: tuple[int, int], section_shape: Sequence[int],
    cells: CellLabeller, band: int = 8,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:  # fmt: skip
    """Cells of one block, from the probability of a region around it.

    Args:
        probability: (h, w) membrane probability of the region that starts at section pixel ``origin`` and holds
            the block with ``band`` pixels or more around it wherever the section goes on.
        block: the block.
        section_shape: (H, W) of the section.
        cells: the cell method.
        band: half-width of the seam bands.

    Returns:
        ``(labels, seams, touching)``: the block's (y1 - y0, x1 - x0) uint32 ids 1..k; for each seam to a
        neighbouring tile (``"above"``, ``"below"``, ``"left"``, ``"right"``) the labels of the band ``2 * band``
        pixels wide centred on it, over the block's extent (ids of cells outside the block are 0); and the ids in
        any band (cells a seam may cut: measured once they are whole, not here).
    """
    labels = cells(probability)
    top, left = block.y0 - origin[0], block.x0 - origin[1]
    crop = labels[top : top + block.y1 - block.y0, left : left + block.x1 - block.x0]
    lookup = _local_ids(labels, crop)
    seams = {}
    if block.y1 < section_shape[0]:
        seams["below"] = lookup[
            labels[top + crop.shape[0] - band : top + crop.shape[0] + band, left : left + crop.shape[1]]
        ]
    if block.x1 < section_shape[1]:
        seams["right"] = lookup[
            labels[top : top + crop.shape[0], left + crop.shape[1] - band : left + crop.shape[1] + band]
        ]
    if block.y0 > 0:
        seams["above"] = lookup[labels[top - band : top + band, left : left + crop.shape[1]]]
    if block.x0 > 0:
        seams["left"] = lookup[labels[top : top + crop.shape[0], left - band : left + band]]
    crop = lookup[crop]
    # every cell a seam merge may join: those in a band (a cell that touches an inner edge is in its band)
    touching = np.unique(np.concatenate([band.ravel() for band in seams.values()] or [np.zeros(0, np.uint32)]))
    return crop, seams, touching[touching > 0]


def seam_merges(first: np.ndarray, second: np.ndarray) -> list[tuple[int, int]]:
    """Pairs ``(a, b)`` of ids that are one cell: in the same seam band labelled by two tiles (``first`` by
    one, ``second`` by its neighbour), more than half of a's pixels are b's and more than half of b's are a's."""
    both = (first > 0) & (second > 0)
    if not both.any():
        return []
    pairs, counts = np.unique(np.stack([first[both], second[both]]), axis=1, return_counts=True)
    size_first = np.bincount(first.ravel())
    size_second = np.bincount(second.ravel())
    mutual = (2 * counts > size_first[pairs[0]]) & (2 * counts > size_second[pairs[1]])
    return [(int(a), int(b)) for a, b in pairs[:, mutual].T]


class CellIds:
    """Block-local cell ids -> ids unique across the volume.

    Args:
        counts: the number of cells of each block, in block order.
        merges: pairs ``((block_index, local_id), (block_index, local_id))`` that are one cell.
        first_id: the ids before the first block's (e.g. those of earlier sections).
    """

    def __init__(
        self,
        counts: Sequence[int],
        merges: Sequence[tuple[tuple[int, int], tuple[int, int]]] = (),
        first_id: int = 0,
    ) -> None:
        self.offsets = int(first_id) + np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))])
        if self.offsets[-1] >= np.iinfo(np.uint32).max:
            raise ValueError(f"{self.offsets[-1]} cells do not fit uint32 ids")
        parent: dict[int, int] = {}

        def root(node: int) -> int:
            while parent.get(node, node) != node:
                parent[node] = parent.get(parent[node], parent[node])
                node = parent[node]
            return node

        for (block_a, id_a), (block_b, id_b) in merges:
            a, b = root(self.global_id(block_a, id_a)), root(self.global_id(block_b, id_b))
            if a != b:
                parent[max(a, b)] = min(a, b)
        renamed = sorted((node, root(node)) for node in parent if root(node) != node)
        #: merged global ids, ascending, and the id of the group each became
        self.merged = np.array([node for node, _ in renamed], dtype=np.int64)
        self.kept = np.array([kept for _, kept in renamed], dtype=np.int64)

    @property
    def count(self) -> int:
        """The number of cells after the merges."""
        return int(self.offsets[-1] - self.offsets[0]) - len(self.merged)

    def global_id(self, block_index: int, local_id: int) -> int:
        return int(self.offsets[block_index] + local_id)

    def block_lookup(self, block_index: int) -> np.ndarray:
        """(k + 1,) uint32 lookup from block ``block_index``'s local ids to global ids (0 stays 0)."""
        start, stop = int(self.offsets[block_index]), int(self.offsets[block_index + 1])
        lookup = np.arange(start, stop + 1, dtype=np.uint32)
        lookup[0] = 0
        first, last = np.searchsorted(self.merged, [start + 1, stop + 1])
        lookup[self.merged[first:last] - start] = self.kept[first:last]
        return lookup


def stitch_cells(
    blocks: Sequence[Block], counts: Sequence[int], seams: Sequence[dict[str, np.ndarray]], first_id: int = 0
) -> CellIds:
    """Volume-wide ids of blockwise cells: block offsets, and the merges of each seam between neighbouring tiles.

    Args:
        blocks: the blocks (all, or those of some sections), in :func:`plan_blocks` order.
        counts: each block's number of cells.
        seams: each block's seam bands, as :func:`block_cells` returns them.
        first_id: the ids before the first block's.
    """
    index = {(block.z, block.row, block.column): i for i, block in enumerate(blocks)}
    merges = []
    for i, block in enumerate(blocks):
        for side, opposite, (row, column) in (("below", "above", (1, 0)), ("right", "left", (0, 1))):
            j = index.get((block.z, block.row + row, block.column + column))
            if j is not None and side in seams[i]:
                merges += [((i, a), (j, b)) for a, b in seam_merges(seams[i][side], seams[j][opposite])]
    return CellIds(counts, merges, first_id)


def shift_table(
    table: dict[str, np.ndarray], z: int, origin: tuple[int, int], pixel_size: Sequence[float] | None
) -> dict[str, np.ndarray]:
    """A :func:`scripts.cell_table.section_table` of a crop, moved to section ``z`` and the crop's ``origin``."""
    shifted = dict(table)
    shifted["section"] = np.full(len(table["id"]), z, dtype=np.int64)
    for axis, offset in zip("yx", origin, strict=True):
        for column in (f"centroid_{axis}_px", f"bbox_min_{axis}_px", f"bbox_max_{axis}_px"):
            shifted[column] = table[column] + offset
        if pixel_size is not None:
            shifted[f"centroid_{axis}_nm"] = table[f"centroid_{axis}_nm"] + offset * pixel_size["yx".index(axis)]
    return shifted
