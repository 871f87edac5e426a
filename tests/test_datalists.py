"""Datalist items from stacks and the contiguous fold split."""

import numpy as np
import pytest
import tifffile

from scripts.datalists import heldout_block, load_labelled_stack, load_unlabelled_stack, split_slices
from scripts.errors import InputError
from scripts.stack_io import StackError


def test_labelled_stack_gives_one_item_per_slice_with_membrane_targets(tiny_stack_dir):
    items = load_labelled_stack(tiny_stack_dir / "train-volume.tif", tiny_stack_dir / "train-labels.tif")
    assert [item["slice"] for item in items] == list(range(10))
    assert items[0]["image"].shape == items[0]["label"].shape == (96, 96)
    raw = tifffile.imread(tiny_stack_dir / "train-labels.tif")[0]
    np.testing.assert_array_equal(items[0]["label"], (raw == 0).astype(np.uint8))
    assert [item["slice"] for item in load_unlabelled_stack(tiny_stack_dir / "test-volume.tif")] == [0, 1, 2]


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
    with pytest.raises(InputError, match="--fold"):
        heldout_block(30, fold, num_folds)
