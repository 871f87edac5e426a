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

from scripts.stack_io import StackError
from scripts.transforms import (
    BorderWeight,
    BorderWeightd,
    LoadSlice,
    LoadSliced,
    ScaleSectionIntensityd,
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
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
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
