"""The per-block work: the declared pipeline as one function, tiles predicted exactly as their section, and one
block's cells and table rows."""

import numpy as np
import pytest
import torch
from conftest import DATA, bundle_config, shipped_predictor, with_inferer
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet
from monai.transforms import Activationsd, Compose, ScaleIntensity

from scripts.blockwise import Block, context_sections, plan_blocks, prediction_region
from scripts.cell_table import CellTable, section_table
from scripts.cells import CellLabeller
from scripts.errors import InputError
from scripts.inferers import DihedralAverageInferer, FittedWindowInferer
from scripts.pipeline import SectionPredictor, label_block, predict_block, process_block
from scripts.stack_io import read_stack
from scripts.transforms import MembraneFromAffinitiesd, ScaleSectionIntensityd, SectionContextd


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    network = UNet(2, 1, 1, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="instance")
    preprocessing = Compose([SectionContextd("image"), ScaleSectionIntensityd("image")])
    window = SlidingWindowInferer(roi_size=(64, 64), overlap=0.25, mode="gaussian")
    return SectionPredictor(network, window, preprocessing, Activationsd("pred", sigmoid=True))


def test_the_predictor_is_the_declared_pieces_in_order(predictor):
    """Min-max scaling, the sliding window over the network, and the sigmoid, as MONAI's own pieces compute them."""
    section = np.random.default_rng(0).integers(20, 230, (100, 90)).astype(np.uint8)
    with torch.no_grad():
        scaled = ScaleIntensity(minv=0.0, maxv=1.0)(torch.as_tensor(section[None].astype(np.float32)))
        expected = torch.sigmoid(predictor.inferer(torch.as_tensor(scaled)[None], predictor.network))[0, 0].numpy()
    probability = predictor(section)
    assert probability.dtype == np.float32 and probability.shape == section.shape
    np.testing.assert_allclose(probability, expected, atol=1e-6)


def test_tiles_are_predicted_as_their_whole_section(predictor):
    """The seam test: every tile, run on its aligned region with its section's range, gives the whole section's
    probability."""
    section = np.random.default_rng(1).integers(20, 230, (230, 250)).astype(np.uint8)
    whole = predictor(section)
    tiled = np.full(section.shape, np.nan, dtype=np.float32)
    section_range = (float(section.min()), float(section.max()))
    for block in plan_blocks((1, *section.shape), 90):
        rows, columns = prediction_region(block, section.shape, (64, 64), 0.25, cell_halo=0)
        assert (rows.stop - rows.start, columns.stop - columns.start) < section.shape  # a real tile, not the section
        probability = predictor(section[rows, columns], section_range)
        tiled[block.region] = probability[
            block.y0 - rows.start : block.y1 - rows.start, block.x0 - columns.start : block.x1 - columns.start
        ]
    assert np.abs(tiled - whole).max() <= 1e-4


class ContextChannel(torch.nn.Module):
    """A "network" whose logit is one channel of its input: which section a block was predicted from."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image[:, self.channel : self.channel + 1].clone()  # the inferer weighs its output in place


@pytest.mark.parametrize("channel", [0, 2])
@pytest.mark.parametrize("tiled", [False, True])
def test_a_block_is_predicted_from_its_region_in_its_mirrored_context_sections(channel, tiled):
    """The z-halo: with context 1 a block's region is read in the sections around it (mirrored at the stack's first
    and last sections), each scaled with its own section's range; the block's raw pixels are its own section's."""
    rng = np.random.default_rng(2)
    stack = np.stack([rng.integers(10 * z, 100 + 40 * z, (300, 280)) for z in range(4)]).astype(np.uint16)
    window = SlidingWindowInferer(roi_size=(64, 64), overlap=0.25, mode="gaussian")
    preprocessing = Compose([SectionContextd("image", context=1), ScaleSectionIntensityd("image")])
    predictor = SectionPredictor(ContextChannel(channel), window, preprocessing, lambda item: item, section_context=1)
    ranges = {z: (float(section.min()), float(section.max())) for z, section in enumerate(stack)} if tiled else None
    for z in range(4):
        block = Block(z, 0, 100, 150, 280) if tiled else Block(z, 0, 300, 0, 280)
        raw, probability, (y, x) = predict_block(
            block, lambda s, rows, columns: stack[s][rows, columns], predictor, stack.shape, ranges, cell_halo=16
        )
        region = (slice(y, y + raw.shape[0]), slice(x, x + raw.shape[1]))
        neighbour = stack[context_sections(z, 1, 4)[channel]].astype(np.float64)
        expected = (neighbour[region] - neighbour.min()) / (neighbour.max() - neighbour.min())
        np.testing.assert_array_equal(raw, stack[z][region])
        np.testing.assert_allclose(probability, expected, atol=1e-5)
        assert (raw.size < stack[z].size) == tiled


def test_a_whole_section_block_is_the_section_its_cells_and_their_table(predictor):
    section = read_stack(DATA / "test-volume.tif")[0][:200, :180]
    cells, table = CellLabeller(membrane_threshold=0.5, min_size=16), CellTable(pixel_size=(4, 4))

    def read(z, rows, columns):
        assert z == 0
        return section[rows, columns]

    block = Block(0, 0, 200, 0, 180)
    result = process_block(block, read, predictor, cells, table, (1, *section.shape))
    probability = predictor(section)
    np.testing.assert_array_equal(result.probability, probability)
    np.testing.assert_array_equal(result.cells, cells(probability))
    assert result.seams == {} and len(result.touching) == 0 and result.count == result.cells.max() > 3
    expected = section_table(result.cells, section, (4, 4))
    assert set(result.table) == {*expected, "section"} and (result.table["section"] == 0).all()
    for column, values in expected.items():
        np.testing.assert_array_equal(result.table[column], values)


def test_a_tile_leaves_the_cells_a_seam_may_cut_out_of_its_rows(predictor):
    section = read_stack(DATA / "test-volume.tif")[0][:200, :200]
    cells, table = CellLabeller(membrane_threshold=0.5), CellTable()
    block = Block(0, 0, 100, 0, 100)  # the top-left tile of four
    raw, probability, origin = predict_block(
        block, lambda z, rows, columns: section[rows, columns], predictor, (1, *section.shape), {0: (0, 255)}, 32
    )
    assert origin == (0, 0) and probability.shape == raw.shape and raw.shape > (100, 100)
    result = label_block(block, raw, probability, origin, section.shape, cells, table, band=4)
    assert set(result.seams) == {"below", "right"} and len(result.touching)
    cut = set(result.touching[:, 0].tolist())
    assert cut and not cut & set(result.table["id"].tolist())  # measured once stitched, not here
    assert set(result.table["id"].tolist()) | cut == set(np.unique(result.cells[result.cells > 0]).tolist())


def test_nan_probabilities_stop_the_block(predictor):
    broken = SectionPredictor(
        predictor.network, predictor.inferer, predictor.preprocessing, lambda item: {"pred": item["pred"] * np.nan}
    )
    with pytest.raises(InputError, match=r"block \(section 0, rows 0:64, columns 0:64\): the network gave NaN"):
        predict_block(Block(0, 0, 64, 0, 64), lambda z, r, c: np.ones((64, 64)), broken, (1, 64, 64), None, 0)


def test_test_time_augmentation_of_an_affinity_network_is_refused(predictor):
    affinities = Compose([Activationsd("pred", sigmoid=True), MembraneFromAffinitiesd("pred", [[-1, 0], [0, -1]])])
    network, window, preprocessing = predictor.network, predictor.inferer, predictor.preprocessing
    with pytest.raises(InputError, match="--test_time_augmentation true: the flipped and turned views of an affinity"):
        SectionPredictor(network, DihedralAverageInferer(window), preprocessing, affinities)
    SectionPredictor(network, window, preprocessing, affinities)  # without test-time augmentation: fine


def test_the_inference_config_builds_its_predictor_from_its_declared_pieces():
    config = bundle_config(["configs/inference.json"], {"device": "cpu"})
    predictor = config.get_parsed_content("predictor")
    assert predictor.preprocessing is config.get_parsed_content("preprocessing")
    assert predictor.inferer is config.get_parsed_content("inferer")
    assert predictor.postprocessing is config.get_parsed_content("postprocessing")
    assert predictor.network is config.get_parsed_content("network") and not predictor.amp


#: sides of crops cut from the centre of an ISBI section (512 x 512)
SMALL_SECTIONS = [(64, 64), (100, 100), (256, 256), (384, 384), (511, 511), (200, 512)]
MARGIN = 32  # a crop's pixels this close to its border lack the context they have inside the section


@pytest.fixture(scope="module")
def shipped():
    """inference.json's predictor with the shipped weights (eager fp32), validation section 20, its probability, and
    how far that moves when the section moves by one pixel: the mean absolute difference on the pixels both share
    (a 512 window, nothing padded; stride-2 convolutions are not shift-equivariant)."""
    predictor = shipped_predictor()
    section = read_stack(DATA / "train-volume.tif")[20]
    whole = predictor(section)
    moved = predictor(np.pad(section, ((0, 1), (0, 1)), mode="reflect")[1:, 1:])[:-1, :-1]
    return predictor, section, whole, float(np.abs(moved - whole[1:, 1:]).mean())


@pytest.mark.parametrize("size", SMALL_SECTIONS, ids=lambda size: f"{size[0]}x{size[1]}")
def test_a_small_section_is_predicted_as_inside_the_whole_section(shipped, size):
    """A crop's membrane probability against the same pixels' in the whole section: the mean absolute difference,
    at least ``MARGIN`` pixels from the crop's border where the crop has such pixels.

    The tolerance is how much the network's answer moves anyway, with nothing padded: twice what the window's size
    alone changes (the whole section predicted with the crop's window against the 512 window, on the crop's pixels:
    the context a window sees and the statistics instance norm takes over it), plus what a one-pixel move of the
    section changes. bench/small_sections.py measures the crops against the first on sections 18-23 (0.7-2.0
    times it; on this section at most 1.7 times). MONAI's zero padding falls outside the tolerance from 100 pixels
    up; at 64 pixels a window sees so little that its size alone can change the answer as much on some sections."""
    predictor, section, whole, moved = shipped
    starts = [(n - s) // 2 for n, s in zip(section.shape, size, strict=True)]
    region = tuple(slice(start, start + s) for start, s in zip(starts, size, strict=True))
    inner = tuple(slice(MARGIN, -MARGIN) if s > 2 * MARGIN + 16 else slice(None) for s in size)

    def difference(probability: np.ndarray) -> float:
        return float(np.abs(probability[inner] - whole[region][inner]).mean())

    window = FittedWindowInferer(
        predictor.inferer.window(size), predictor.inferer.size_multiple, overlap=0.25, mode="gaussian"
    )
    tolerance = 2 * difference(with_inferer(predictor, window)(section)[region]) + moved
    assert difference(predictor(section[region])) <= tolerance
    if 100 <= min(size) < 511:
        zeros = SlidingWindowInferer(predictor.roi, overlap=0.25, mode="gaussian")
        assert difference(with_inferer(predictor, zeros)(section[region])) > tolerance  # the fault this guards


def test_a_section_one_pixel_longer_than_the_window_is_windowed_without_padding(shipped):
    """513 pixels: two 512 windows per axis, one pixel apart, all image; its first 512 rows and columns differ from
    the section's by less than the one-pixel move does."""
    predictor, section, whole, moved = shipped
    grown = np.pad(section, ((0, 1), (0, 1)), mode="reflect")
    assert predictor.inferer.window(grown.shape) == predictor.roi
    assert float(np.abs(predictor(grown)[:512, :512] - whole).mean()) <= moved
