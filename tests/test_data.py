"""Reading stacks and folders, the errors bad inputs give, and the contiguous fold split."""

import numpy as np
import pytest
import tifffile
from conftest import DATA
from PIL import Image

from scripts.data import (
    LoadSliced,
    StackError,
    heldout_block,
    load_labelled_stack,
    load_unlabelled_stack,
    read_membrane_labels,
    read_stack,
    split_slices,
)


def test_reads_the_shipped_stacks():
    images = read_stack(DATA / "train-volume.tif")
    assert images.shape == (30, 512, 512) and images.dtype == np.uint8
    membrane = read_membrane_labels(DATA / "train-labels.tif")
    assert set(np.unique(membrane)) == {0, 1}
    assert 0.15 < membrane.mean() < 0.3  # ~22 % of the pixels are membrane


def test_folder_of_png_slices_is_read_in_natural_order(tmp_path):
    for index in (1, 2, 10):
        Image.fromarray(np.full((8, 6), index, dtype=np.uint8)).save(tmp_path / f"slice_{index}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    stack = read_stack(tmp_path)
    assert stack.shape == (3, 8, 6)
    assert stack[:, 0, 0].tolist() == [1, 2, 10]


def test_single_slice_image_becomes_a_one_slice_stack(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((5, 7), dtype=np.uint16))
    assert read_stack(tmp_path / "one.tif").shape == (1, 5, 7)


def test_labelled_stack_gives_one_item_per_slice_with_membrane_targets(tiny_stack_dir):
    items = load_labelled_stack(tiny_stack_dir / "train-volume.tif", tiny_stack_dir / "train-labels.tif")
    assert [item["slice"] for item in items] == list(range(10))
    assert items[0]["image"].shape == items[0]["label"].shape == (96, 96)
    raw = tifffile.imread(tiny_stack_dir / "train-labels.tif")[0]
    np.testing.assert_array_equal(items[0]["label"], (raw == 0).astype(np.uint8))
    assert [item["slice"] for item in load_unlabelled_stack(tiny_stack_dir / "test-volume.tif")] == [0, 1, 2]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.mkdir(), p)[1], "holds no"),
        (lambda p: (p.write_bytes(b"II*\x00 not really a tiff"), p)[1], "cannot be read"),
        (lambda p: (tifffile.imwrite(p, np.zeros((16, 16, 3), np.uint8), photometric="rgb"), p)[1], "colour"),
        (lambda p: (tifffile.imwrite(p, np.full((2, 4, 4), np.nan, np.float32)), p)[1], "NaN"),
        (lambda p: (_truncated_stack(p), p)[1], "cannot be read|corrupt or truncated"),
        (lambda p: (tifffile.imwrite(p, np.zeros((16, 16), np.uint8), colormap=_GREY_MAP), p)[1], "palette"),
        (lambda p: (Image.new("P", (8, 8)).save(p.with_suffix(".png")), p.with_suffix(".png"))[1], "P-mode"),
    ],
    ids=["missing", "empty-folder", "corrupt", "rgb", "nan", "truncated", "palette-tiff", "palette-png"],
)
def test_bad_images_fail_with_the_file_named(tmp_path, make, message):
    path = make(tmp_path / "input.tif")
    with pytest.raises(StackError, match=message) as error:
        read_stack(path)
    assert str(path) in str(error.value)


def _truncated_stack(path):
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (5, 64, 64), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


_GREY_MAP = np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))


def test_a_three_slice_stack_is_not_mistaken_for_colour(tmp_path):
    tifffile.imwrite(tmp_path / "three.tif", np.zeros((3, 32, 32), np.uint8))  # tifffile tags this planar RGB
    assert read_stack(tmp_path / "three.tif").shape == (3, 32, 32)


def test_folder_slices_of_different_sizes_are_rejected(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a1.png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "a2.png")
    with pytest.raises(StackError, match="a2.png.*must match"):
        read_stack(tmp_path)


def test_non_binary_labels_are_rejected(tmp_path):
    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, np.arange(16, dtype=np.uint8).reshape(1, 4, 4))
    with pytest.raises(StackError, match="labels must be binary"):
        read_membrane_labels(path)


def test_image_and_label_stacks_must_match(tmp_path):
    tifffile.imwrite(tmp_path / "images.tif", np.zeros((3, 8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "labels.tif", np.full((2, 8, 8), 255, np.uint8))
    with pytest.raises(StackError, match=r"labels.tif.*\(2, 8, 8\).*images.tif.*\(3, 8, 8\)"):
        load_labelled_stack(tmp_path / "images.tif", tmp_path / "labels.tif")


def test_folds_are_contiguous_blocks_covering_every_slice_once():
    assert heldout_block(30, 4, 5) == range(24, 30)
    blocks = [heldout_block(30, fold, 5) for fold in range(5)]
    assert sorted(z for block in blocks for z in block) == list(range(30))
    assert all(len(block) == 6 for block in blocks)


def test_split_separates_training_and_heldout_slices():
    items = [{"slice": z} for z in range(10)]
    heldout = split_slices(items, fold=1, num_folds=5, heldout=True)
    training = split_slices(items, fold=1, num_folds=5, heldout=False)
    assert [i["slice"] for i in heldout] == [2, 3]
    assert [i["slice"] for i in training] == [0, 1, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize(("fold", "num_folds"), [(5, 5), (-1, 5), (0, 1)])
def test_invalid_folds_are_rejected(fold, num_folds):
    with pytest.raises(ValueError, match="fold"):
        heldout_block(30, fold, num_folds)


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
