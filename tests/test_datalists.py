"""Datalist items from stacks and the contiguous fold split into training, validation and test sections."""

import numpy as np
import pytest
import tifffile

from scripts.datalists import (
    heldout_block,
    load_labelled_stack,
    split_sections,
    validation_block,
)
from scripts.errors import InputError
from scripts.stack_io import StackError


def test_labelled_stack_gives_one_item_per_slice_with_membrane_targets(tiny_stack_dir):
    items = load_labelled_stack(tiny_stack_dir / "train-volume.tif", tiny_stack_dir / "train-labels.tif")
    assert [item["slice"] for item in items] == list(range(10))
    assert items[0]["image"].shape == items[0]["label"].shape == (96, 96)
    raw = tifffile.imread(tiny_stack_dir / "train-labels.tif")[0]
    np.testing.assert_array_equal(items[0]["label"], (raw == 0).astype(np.uint8))


def _numbered_sections(count: int) -> list[dict]:
    """Items whose (2, 2) images are filled with their slice number."""
    return [{"image": np.full((2, 2), z), "label": np.zeros((2, 2), np.uint8), "slice": z} for z in range(count)]


def test_with_section_context_each_part_reads_only_its_own_sections():
    """Fold 4 of 10 sections (train 0-5, validation 6-7, test 8-9), k = 2: neighbours mirrored at each part's ends."""
    parts = split_sections(_numbered_sections(10), 4, 5, section_context=2)
    contexts = {name: [item["image"][:, 0, 0].tolist() for item in items] for name, items in parts.items()}
    assert contexts["train"][0] == [2, 1, 0, 1, 2] and contexts["train"][3] == [1, 2, 3, 4, 5]
    assert contexts["train"][5] == [3, 4, 5, 4, 3]  # not 6 and 7, which validate
    assert contexts["validation"] == [[6, 7, 6, 7, 6], [7, 6, 7, 6, 7]]
    assert contexts["test"] == [[8, 9, 8, 9, 8], [9, 8, 9, 8, 9]]
    for items in parts.values():
        assert all(item["label"].shape == (2, 2) for item in items)  # labels stay the section's own


def test_training_sections_on_both_sides_of_the_heldout_blocks_are_two_runs():
    """Fold 2 of 10 (test 4-5, validation 2-3): training is 0-1 and 6-9, and 1 and 6 are no neighbours."""
    train = split_sections(_numbered_sections(10), 2, 5, section_context=1)["train"]
    assert [item["image"][:, 0, 0].tolist() for item in train] == [
        [1, 0, 1],
        [0, 1, 0],
        [7, 6, 7],
        [6, 7, 8],
        [7, 8, 9],
        [8, 9, 8],
    ]
    assert split_sections(_numbered_sections(10), 2, 5)["train"][0]["image"].shape == (2, 2)  # k = 0: untouched


def test_image_and_label_stacks_must_match(tmp_path):
    tifffile.imwrite(tmp_path / "images.tif", np.zeros((3, 8, 8), np.uint8))
    labels = np.full((2, 8, 8), 255, np.uint8)
    labels[:, :, 4] = 0  # a membrane between two cells
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    with pytest.raises(StackError, match=r"labels.tif.*\(2, 8, 8\).*images.tif.*\(3, 8, 8\)"):
        load_labelled_stack(tmp_path / "images.tif", tmp_path / "labels.tif")


def test_folds_are_contiguous_blocks_covering_every_slice_once():
    assert heldout_block(30, 4, 5) == range(24, 30)
    blocks = [heldout_block(30, fold, 5) for fold in range(5)]
    assert sorted(z for block in blocks for z in block) == list(range(30))
    assert all(len(block) == 6 for block in blocks)


def test_each_fold_validates_on_the_block_before_its_test_block():
    assert validation_block(30, 4, 5) == range(18, 24)
    assert validation_block(30, 0, 5) == range(24, 30)


def test_a_named_validation_block_gives_the_inner_folds_of_nested_cross_validation():
    items = [{"slice": z} for z in range(30)]
    parts = {name: [i["slice"] for i in part] for name, part in split_sections(items, 4, 5, validation_fold=0).items()}
    assert parts == {"train": list(range(6, 24)), "validation": list(range(6)), "test": list(range(24, 30))}


@pytest.mark.parametrize("validation_fold", [4, 5, -1])
def test_the_validation_block_must_be_another_block_than_the_test_block(validation_fold):
    with pytest.raises(InputError, match=f"--validation_fold {validation_fold}: .*another block"):
        validation_block(30, 4, 5, validation_fold)


def test_split_separates_training_validation_and_test_sections():
    items = [{"slice": z} for z in range(30)]
    parts = {name: [i["slice"] for i in part] for name, part in split_sections(items, fold=4, num_folds=5).items()}
    assert parts == {"train": list(range(18)), "validation": list(range(18, 24)), "test": list(range(24, 30))}
    parts = {name: [i["slice"] for i in part] for name, part in split_sections(items[:10], 1, 5).items()}
    assert parts == {"train": [4, 5, 6, 7, 8, 9], "validation": [0, 1], "test": [2, 3]}


@pytest.mark.parametrize(("fold", "num_folds"), [(5, 5), (-1, 5), (0, 1)])
def test_invalid_folds_are_rejected(fold, num_folds):
    with pytest.raises(InputError, match="--fold"):
        heldout_block(30, fold, num_folds)


def test_a_fold_needs_three_blocks():
    with pytest.raises(InputError, match="num_folds must be >= 3"):
        split_sections([{"slice": z} for z in range(10)], fold=0, num_folds=2)
