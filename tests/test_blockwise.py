"""Blocks without seams: the sliding-window grid and the regions it gives, cells stitched across tiles."""

import math

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer

from scripts.blockwise import (
    Block,
    CellIds,
    block_cells,
    checked_context,
    context_sections,
    plan_blocks,
    prediction_region,
    seam_merges,
    stitch_cells,
    window_count,
    window_starts,
)
from scripts.cells import CellLabeller, label_cell_stack
from scripts.errors import InputError


def monai_window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Where MONAI's SlidingWindowInferer puts its windows along the columns of a (roi, size) image: each pixel holds
    its column, and a stand-in network records the first column of each window it is given."""
    starts = []

    def record(windows: torch.Tensor) -> torch.Tensor:
        starts.extend(int(value) for value in windows[:, 0, 0, 0])
        return torch.zeros_like(windows)

    columns = torch.arange(size, dtype=torch.float32).expand(1, 1, roi, size)
    SlidingWindowInferer((roi, roi), sw_batch_size=1, overlap=overlap)(columns, record)
    return starts


@pytest.mark.parametrize("size", [40, 64, 65, 100, 160, 200, 1000])
def test_window_starts_are_monais(size):
    roi, overlap = 64, 0.25
    if size < roi:
        assert window_starts(size, roi, overlap).tolist() == [0]
        return
    assert window_starts(size, roi, overlap).tolist() == monai_window_starts(size, roi, overlap)


def test_blocks_cover_the_volume_once():
    blocks = plan_blocks((2, 300, 250), 128)
    coverage = np.zeros((2, 300, 250), dtype=int)
    for block in blocks:
        coverage[block.z, block.y0 : block.y1, block.x0 : block.x1] += 1
        assert block.y1 - block.y0 <= 128 and block.x1 - block.x0 <= 128
    assert (coverage == 1).all() and len(blocks) == 2 * 3 * 2
    assert plan_blocks((3, 300, 250), None) == [Block(z, 0, 300, 0, 250) for z in range(3)]


def membrane_walls(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A membrane probability of irregular closed cells (wavy 3-pixel walls) and one long cell across all tiles."""
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 2)
    probability = np.full((height, width), 0.05, dtype=np.float32)
    columns, rows = np.arange(width), np.arange(height)
    for y in range(17, height, 29):
        for thickness in (-1, 0, 1):
            wave = np.round(3 * np.sin(columns / 9 + phase[0] + y)).astype(int)
            probability[np.clip(y + wave + thickness, 0, height - 1), columns] = 0.95
    for x in range(23, width, 31):
        for thickness in (-1, 0, 1):
            wave = np.round(3 * np.sin(rows / 7 + phase[1] + x)).astype(int)
            probability[rows, np.clip(x + wave + thickness, 0, width - 1)] = 0.95
    probability[61:67, :] = 0.05  # a corridor joining a whole row of cells: one cell across every seam
    probability[60, :] = probability[67, :] = 0.95
    return probability


def tiled_cells(probability_stack, block_size, halo, cells):
    """The stitched, volume-wide cells of a stack labelled tile by tile, as VolumeInference labels them."""
    blocks = plan_blocks(probability_stack.shape, block_size)
    labels, seams, counts = [], [], []
    for block in blocks:
        shape = probability_stack.shape[1:]
        y0, x0 = max(block.y0 - halo, 0), max(block.x0 - halo, 0)
        region = probability_stack[block.z, y0 : min(block.y1 + halo, shape[0]), x0 : min(block.x1 + halo, shape[1])]
        crop, block_seams, _ = block_cells(region, block, (y0, x0), shape, cells, band=4)
        labels.append(crop)
        seams.append(block_seams)
        counts.append(int(crop.max(initial=0)))
    ids = stitch_cells(blocks, counts, seams)
    result = np.zeros(probability_stack.shape, dtype=np.uint32)
    for i, (block, crop) in enumerate(zip(blocks, labels, strict=True)):
        result[block.z, block.y0 : block.y1, block.x0 : block.x1] = ids.block_lookup(i)[crop]
    return result


def same_cells(first: np.ndarray, second: np.ndarray) -> bool:
    """One-to-one cells (where both have one), and the 1-pixel lines between them moved on under 0.5 % of pixels:
    a watershed breaks ties on a flat membrane by the order it visits pixels, which a tile's origin changes."""
    both = (first > 0) & (second > 0)
    pairs = np.unique(np.stack([first[both], second[both]]), axis=1)
    one_to_one = pairs.shape[1] == len(np.unique(first[first > 0])) == len(np.unique(second[second > 0]))
    return one_to_one and ((first > 0) != (second > 0)).mean() < 0.005


@pytest.mark.parametrize("method", ["components", "watershed"])
def test_cells_cut_by_seams_come_back_whole(method):
    probability = np.stack([membrane_walls(150, 170, seed) for seed in (0, 1)])
    cells = CellLabeller(method, membrane_threshold=0.5)
    whole = label_cell_stack(probability, **cells.options)
    tiled = tiled_cells(probability, block_size=50, halo=24, cells=cells)
    assert same_cells(tiled, whole)
    corridor = np.unique(tiled[0, 63, :])
    assert len(corridor) == 1 and corridor[0] > 0  # the long cell crosses 3 tiles and keeps one id
    first, second = set(np.unique(tiled[0])) - {0}, set(np.unique(tiled[1])) - {0}
    assert not first & second and max(first) < min(second)  # unique across sections, section by section


def test_seam_merges_need_a_mutual_majority():
    same = np.array([[1] * 4 + [2] * 4] * 4)
    assert seam_merges(same, same + 10) == [(1, 11), (2, 12)]
    shifted = np.array([[1] * 3 + [2] * 5] * 4)  # the neighbour's line moved by a pixel: still the same two cells
    assert seam_merges(same, shifted + 10) == [(1, 11), (2, 12)]
    sliver = np.array([[5] * 7 + [6]] * 4)  # 6 overlaps a quarter of 2: 2 and 6 stay apart
    assert (2, 6) not in seam_merges(same, sliver)
    assert seam_merges(np.zeros((2, 2), int), same[:2, :2]) == []


def test_cell_ids_offsets_and_merged_groups():
    ids = CellIds([2, 3, 1], merges=[((0, 2), (1, 1)), ((1, 1), (2, 1)), ((1, 3), (2, 1))])
    assert ids.block_lookup(0).tolist() == [0, 1, 2]
    assert ids.block_lookup(1).tolist() == [0, 2, 4, 2]
    assert ids.block_lookup(2).tolist() == [0, 2]
    assert ids.count == 3
    with pytest.raises(ValueError, match="do not fit uint32"):
        CellIds([2**31, 2**31])


def test_window_count_is_the_windows_monai_places():
    """Counted against MONAI's own placement along each axis of each region (whole sections, a small section padded
    to one window, and tiles widened by their halo)."""
    roi, overlap = (64, 64), 0.25

    def monai_count(height: int, width: int) -> int:
        return math.prod(len(monai_window_starts(size, 64, overlap)) if size > 64 else 1 for size in (height, width))

    assert window_count(plan_blocks((3, 160, 100), None), (160, 100), roi, overlap) == 3 * monai_count(160, 100)
    assert window_count(plan_blocks((2, 40, 50), None), (40, 50), roi, overlap) == 2
    tiles = plan_blocks((2, 300, 300), 128)
    regions = [prediction_region(block, (300, 300), roi, overlap, 16) for block in tiles]
    expected = sum(monai_count(rows.stop - rows.start, columns.stop - columns.start) for rows, columns in regions)
    assert window_count(tiles, (300, 300), roi, overlap, 16) == expected > len(tiles)


@pytest.mark.parametrize(
    ("z", "context", "depth", "expected"),
    [
        (5, 2, 30, [3, 4, 5, 6, 7]),  # inside the stack: the neighbours themselves
        (0, 2, 30, [2, 1, 0, 1, 2]),  # first section: mirrored, the end not repeated
        (29, 2, 30, [27, 28, 29, 28, 27]),  # last section
        (1, 2, 30, [1, 0, 1, 2, 3]),
        (0, 1, 2, [1, 0, 1]),
        (1, 3, 3, [2, 1, 0, 1, 2, 1, 0]),  # context deeper than the stack: mirrored again
        (0, 2, 1, [0, 0, 0, 0, 0]),  # one section mirrors onto itself
        (4, 0, 9, [4]),
    ],
)
def test_context_sections_mirror_at_the_stack_ends_as_numpy_reflect(z, context, depth, expected):
    assert context_sections(z, context, depth) == expected
    if depth > 1:
        padded = np.pad(np.arange(depth), context, mode="reflect")
        assert expected == padded[z : z + 2 * context + 1].tolist()


@pytest.mark.parametrize("context", [-1, 1.5, True, "1"])
def test_a_section_context_that_is_not_a_whole_number_of_sections_is_refused(context):
    with pytest.raises(InputError, match=r"--section_context .*: must be a whole number of sections >= 0"):
        checked_context(context)
    with pytest.raises(ValueError, match="section 3 is outside a stack of 3 sections"):
        context_sections(3, 1, 3)
