"""The bundle's transforms: reading datalist items given as file paths, and border weight maps on hand-made
membranes (values worked out by hand)."""

import math

import numpy as np
import pytest
import tifffile
import torch
from conftest import two_cells
from monai.transforms import ScaleIntensity
from PIL import Image

from scripts.errors import InputError
from scripts.stack_io import StackError
from scripts.transforms import (
    AffinityTargetsd,
    BorderWeight,
    BorderWeightd,
    ForegroundTargetd,
    InstanceLabelsd,
    LoadSlice,
    LoadSliced,
    MembraneFromAffinitiesd,
    ScaleSectionIntensityd,
    SectionContextd,
    SplitForegroundd,
    border_weight_map,
)


def test_one_pixel_membrane_between_two_cells():
    # every membrane pixel is 1 px from each cell: d1 + d2 = 2, weight 1 + 10 exp(-4 / 50)
    membrane = two_cells()
    weights = border_weight_map(membrane, border_weight=10.0, sigma=5.0)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights[membrane == 1], 1 + 10 * math.exp(-4 / 50), rtol=1e-6)
    np.testing.assert_array_equal(weights[membrane == 0], 1.0)


def test_wider_membrane_gets_less_extra_weight():
    # 3-px membrane: the middle column is 2 px from each cell, the outer ones 1 and 3: d1 + d2 = 4 everywhere
    membrane = np.zeros((4, 11), dtype=np.uint8)
    membrane[:, 4:7] = 1
    weights = border_weight_map(membrane, border_weight=10.0, sigma=5.0)
    np.testing.assert_allclose(weights[:, 4:7], 1 + 10 * math.exp(-16 / 50), rtol=1e-6)
    assert weights[0, 5] < border_weight_map(two_cells(), border_weight=10.0, sigma=5.0)[0, 4]


def test_membrane_next_to_a_single_cell_or_no_cell_is_not_weighted():
    one_cell = np.zeros((5, 5), dtype=np.uint8)
    one_cell[:, 0] = 1  # no second cell: d2 is infinite
    np.testing.assert_array_equal(border_weight_map(one_cell), 1.0)
    np.testing.assert_array_equal(border_weight_map(np.ones((4, 4), dtype=np.uint8)), 1.0)


def test_cells_farther_apart_than_the_reach_do_not_interact():
    membrane = np.zeros((3, 60), dtype=np.uint8)
    membrane[:, 5:55] = 1  # 50-px gap: no membrane pixel is within 4 sigma = 20 px of both cells
    np.testing.assert_array_equal(border_weight_map(membrane, sigma=5.0), 1.0)
    np.testing.assert_array_less(1.0, border_weight_map(membrane, sigma=15.0)[:, 5:55])


def test_border_weight_map_rejects_stacks():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        border_weight_map(np.zeros((2, 4, 4)))


def test_border_weightd_appends_the_weights_as_a_second_label_channel():
    mask = torch.as_tensor(two_cells(), dtype=torch.float32)[None]
    out = BorderWeightd(keys="label")({"label": mask, "image": torch.zeros(1, 4, 9)})
    assert out["label"].shape == (2, 4, 9)
    torch.testing.assert_close(out["label"][0], mask[0])
    torch.testing.assert_close(out["label"][1], torch.as_tensor(border_weight_map(two_cells())))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        BorderWeightd(keys="label")({"label": mask[0]})
    torch.testing.assert_close(BorderWeight()(mask), out["label"])  # the array transform gives the same


def _slice_files(folder, image, membrane):
    Image.fromarray(image).save(folder / "image.png")
    Image.fromarray(membrane).save(folder / "label.png")
    return {"image": str(folder / "image.png"), "label": folder / "label.png"}


def test_load_sliced_reads_slice_files_in_monai_axis_order_with_index_labels(tmp_path):
    image = np.arange(6 * 4, dtype=np.uint8).reshape(6, 4)
    membrane = (image % 3 == 0).astype(np.uint8)  # class indices: 1 = membrane
    item = LoadSliced(["image", "label"])(_slice_files(tmp_path, image, membrane))
    np.testing.assert_array_equal(item["image"], image.T)  # (W, H), as MONAI's LoadImage returns 2D images
    np.testing.assert_array_equal(item["label"], membrane.T)
    assert item["label"].dtype == np.uint8 and item["image"].flags.writeable
    numpy_order = LoadSliced(["image", "label"], reverse_indexing=False)(_slice_files(tmp_path, image, membrane))
    np.testing.assert_array_equal(numpy_order["image"], image)


def test_load_slice_reads_a_path_and_passes_an_array_through(tmp_path):
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(image).save(tmp_path / "section.png")
    np.testing.assert_array_equal(LoadSlice(reverse_indexing=False)(tmp_path / "section.png"), image)
    assert LoadSlice()(image) is image


def test_load_sliced_passes_in_memory_slices_through_untouched():
    item = {"image": np.zeros((5, 3), np.uint8), "label": np.ones((5, 3), np.uint8), "slice": 2}
    loaded = LoadSliced(["image", "label"])(item)
    assert all(loaded[key] is item[key] for key in item)


def test_load_sliced_rejects_isbi_style_label_files_with_the_file_named(tmp_path):
    files = _slice_files(tmp_path, np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8))
    with pytest.raises(StackError, match=r"label.png: label values must be class indices .* found 255"):
        LoadSliced(["image", "label"])(files)


def test_load_sliced_rejects_labels_of_another_size_and_multi_slice_files(tmp_path):
    files = _slice_files(tmp_path, np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(StackError, match=r"label.png: label is \(5, 4\) but its image .*image.png is \(4, 4\)"):
        LoadSliced(["image", "label"])(files)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(StackError, match="stack.tif: holds 2 slices"):
        LoadSliced("image")({"image": tmp_path / "stack.tif"})


def test_scale_section_intensity_is_monais_min_max_on_a_whole_section_and_the_section_range_on_a_tile():
    section = np.random.default_rng(0).integers(10, 200, (1, 40, 50)).astype(np.uint8)
    scale = ScaleSectionIntensityd("image")
    whole = scale({"image": section})["image"]
    assert whole.dtype == torch.float32
    np.testing.assert_allclose(whole, ScaleIntensity(minv=0.0, maxv=1.0)(section.astype(np.float32)), atol=1e-7)
    tile = scale({"image": section[:, :10, :10], "intensity_range": (section.min(), section.max())})["image"]
    np.testing.assert_array_equal(tile, whole[:, :10, :10])
    assert not scale({"image": np.full((1, 5, 5), 7, np.uint8)})["image"].any()  # constant: 0, not a division by 0


def test_percentile_scaling_ignores_hot_pixels_and_scales_a_tile_as_its_section():
    rng = np.random.default_rng(0)
    section = rng.integers(1000, 3000, (1, 60, 70)).astype(np.uint16)
    section[0, 5, 5], section[0, 0, :30] = 65535, 0  # a hot pixel and a strip of padding (0.7 %)
    scale = ScaleSectionIntensityd("image", percentiles=[1, 99.8])
    low, high = scale.section_range(section[0])
    expected_low, expected_high = np.percentile(section, [1, 99.8])
    assert abs(low - expected_low) <= 65535 / 65536 and abs(high - expected_high) <= 65535 / 65536
    whole = scale({"image": section})["image"]
    assert whole.min() == 0 and whole.max() == 1 and 0.4 < whole.mean() < 0.6  # min-max would give ~0.03
    tile = scale({"image": section[:, 20:30, 20:40], "intensity_range": (low, high)})["image"]
    np.testing.assert_array_equal(tile, whole[:, 20:30, 20:40])
    assert ScaleSectionIntensityd("image").section_range(section[0]) == (0.0, 65535.0)
    for bad in ([99, 1], [0, 101], [5], "1,99"):
        with pytest.raises(InputError, match="--intensity_percentiles .*0 <= lower < upper <= 100"):
            ScaleSectionIntensityd("image", percentiles=bad)


def test_scale_section_intensity_scales_each_context_section_with_its_own_range():
    sections = np.stack([np.full((6, 6), 10), np.arange(36).reshape(6, 6), np.arange(36).reshape(6, 6) * 3])
    scale = ScaleSectionIntensityd("image")
    whole = scale({"image": sections})["image"]
    expected = ScaleIntensity(minv=0.0, maxv=1.0, channel_wise=True)(torch.as_tensor(sections, dtype=torch.float32))
    np.testing.assert_allclose(whole, expected, atol=1e-7)
    ranges = [(s.min(), s.max()) for s in sections]
    tile = scale({"image": sections[:, 1:4, 2:5], "intensity_range": ranges})["image"]
    np.testing.assert_array_equal(tile, whole[:, 1:4, 2:5])
    with pytest.raises(ValueError, match=r"expects a \(C, H, W\) image, got shape \(6, 6\)"):
        scale({"image": sections[0]})


def test_section_context_gives_the_sections_as_channels_and_repeats_a_lone_section():
    lone = np.arange(12).reshape(3, 4)
    assert SectionContextd("image")({"image": lone})["image"].shape == (1, 3, 4)
    repeated = SectionContextd("image", context=2)({"image": lone})["image"]
    assert repeated.shape == (5, 3, 4) and all((channel == lone).all() for channel in repeated)
    stack = np.arange(36).reshape(3, 3, 4)
    assert SectionContextd("image", context=1)({"image": stack})["image"] is stack
    with pytest.raises(StackError, match=r"image of shape \(3, 3, 4\) is neither one \(H, W\) section nor the 5 "):
        SectionContextd("image", context=2)({"image": stack})


def test_load_sliced_matches_a_label_with_its_section_among_context_sections():
    item = {"image": np.zeros((3, 4, 5), np.uint8), "label": np.zeros((4, 5), np.uint8)}
    assert LoadSliced(["image", "label"])(item)["image"].shape == (3, 4, 5)
    with pytest.raises(StackError, match=r"label is \(4, 6\) but its image \(in-memory section\) is \(3, 4, 5\)"):
        LoadSliced(["image", "label"])({**item, "label": np.zeros((4, 6), np.uint8)})


def _two_cells_and_a_membrane() -> torch.Tensor:
    """A (1, 5, 7) membrane mask: a vertical membrane at column 3 between a left and a right cell, and one membrane
    pixel inside the right cell at (2, 5)."""
    membrane = np.zeros((5, 7), np.float32)
    membrane[:, 3] = 1
    membrane[2, 5] = 1
    return torch.as_tensor(membrane)[None]


def test_instance_labels_number_the_cells_from_2_and_mark_the_membrane_1():
    label = InstanceLabelsd("label")({"label": _two_cells_and_a_membrane()})["label"]
    assert label.shape == (2, 5, 7) and label.dtype == torch.float32
    ids = label[1].numpy()
    assert (ids[:, 3] == 1).all() and ids[2, 5] == 1
    assert len(np.unique(ids[:, :3])) == 1 and len(np.unique(ids[:, 4:][ids[:, 4:] != 1])) == 1
    assert ids[0, 0] != ids[0, 6] and ids.min() == 1 and set(np.unique(ids)) == {1, 2, 3}


def test_affinity_targets_on_a_hand_made_instance_map():
    """Offsets up, left and two to the left: 1 within a cell, 0 across or onto membrane, masked off the patch and
    where a pixel lies outside the section (id 0)."""
    label = InstanceLabelsd("label")({"label": _two_cells_and_a_membrane()})["label"]
    label[1, 4, 0] = 0  # a pixel from outside the section
    offsets = [[-1, 0], [0, -1], [0, -2]]
    targets = AffinityTargetsd("label", offsets)({"label": label})["label"]
    assert targets.shape == (7, 5, 7)
    np.testing.assert_array_equal(targets[0], label[0])  # the membrane mask stays first
    up, left, left2 = targets[1:4].numpy()
    up_mask, left_mask, left2_mask = targets[4:].numpy()
    assert (up_mask[0] == 0).all() and (up_mask[1:, 1:] == 1).all()  # the first row has no pixel above
    assert up_mask[4, 0] == 0 and left_mask[4, 1] == 0  # pairs touching the outside pixel are ignored
    assert (left2_mask[:, :2] == 0).all()
    assert up[1, 1] == 1 and left[1, 2] == 1 and left2[1, 2] == 1  # inside the left cell
    assert left[1, 4] == 0 and left[1, 3] == 0 and left2[1, 4] == 0  # across and onto the membrane
    assert up[1, 3] == 0  # membrane to membrane: each membrane pixel is its own
    assert up[2, 5] == 0 and up[3, 5] == 0 and up[1, 5] == 1  # the lone membrane pixel inside the right cell
    assert left2[2, 6] == 1  # over the lone membrane pixel, both ends in the right cell


def test_the_membrane_from_true_affinities_is_the_membrane_mask():
    label = InstanceLabelsd("label")({"label": _two_cells_and_a_membrane()})["label"]
    offsets = [[-3, 0], [0, -1], [-1, 0]]  # any order
    targets = AffinityTargetsd("label", offsets)({"label": label})["label"]
    membrane = MembraneFromAffinitiesd("pred", offsets)({"pred": targets[1:4]})["pred"]
    np.testing.assert_array_equal(membrane, label[:1])
    with pytest.raises(InputError, match=r"the membrane needs the nearest ones, \[-1, 0\] and \[0, -1\]"):
        MembraneFromAffinitiesd("pred", [[-3, 0], [0, -3]])
    with pytest.raises(InputError, match=r"must be a list of nonzero \[dy, dx\] pixel offsets"):
        AffinityTargetsd("label", [[0, 0]])


def test_the_foreground_of_objects_becomes_the_label_channel_before_the_border_weights():
    ids = np.zeros((6, 9), np.int64)
    ids[1:5, 1:4], ids[1:5, 4:8] = 3, 7  # two touching objects on a background
    membrane = torch.as_tensor((ids == 0) | (ids != np.roll(ids, 1, axis=1)) & (ids > 0), dtype=torch.float32)
    item = ForegroundTargetd("label")({"label": membrane[None], "instances": ids, "slice": 4})
    np.testing.assert_array_equal(item["label"][1].numpy(), ids > 0)
    weighted = BorderWeightd("label")(item)["label"]
    assert weighted.shape == (3, 6, 9)
    np.testing.assert_array_equal(weighted[2].numpy(), border_weight_map(membrane.numpy()))
    with pytest.raises(InputError, match="section 4 has no object ids: .*--label_format instances"):
        ForegroundTargetd("label")({"label": membrane[None], "slice": 4})
    with pytest.raises(InputError, match=r"object ids of shape \(6, 8\) do not match its label of shape \(6, 9\)"):
        ForegroundTargetd("label")({"label": membrane[None], "instances": ids[:, :8], "slice": 4})


def test_split_foreground_keeps_the_membrane_as_the_prediction():
    probabilities = torch.rand(2, 5, 5)
    item = SplitForegroundd("pred")({"pred": probabilities})
    torch.testing.assert_close(item["pred"], probabilities[:1])
    torch.testing.assert_close(item["foreground"], probabilities[1:])
    with pytest.raises(InputError, match="2 output channels .* it gives 1"):
        SplitForegroundd("pred")({"pred": probabilities[:1]})
