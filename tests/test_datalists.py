"""Datalist items from stacks and the contiguous fold split into training, validation and test sections."""

import numpy as np
import pytest
import tifffile
from conftest import touching_blobs
from skimage.measure import label as connected_components

from scripts.datalists import (
    heldout_block,
    load_labelled_stack,
    membrane_from_instances,
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


def test_touching_objects_are_kept_apart_by_the_pixels_where_they_meet():
    ids = np.array(
        [
            [0, 0, 0, 0, 0],
            [0, 1, 1, 2, 2],
            [0, 1, 1, 2, 2],
            [0, 0, 3, 3, 0],
        ]
    )
    np.testing.assert_array_equal(
        membrane_from_instances(ids),
        [
            [1, 1, 1, 1, 1],
            [1, 0, 1, 1, 0],
            [1, 0, 1, 1, 0],  # 1 and 2 meet along a column, 3 touches both from below
            [1, 1, 1, 1, 1],
        ],
    )


def test_isbi_labels_turned_into_instances_give_their_membrane_back(tiny_stack_dir, tmp_path):
    membrane = tifffile.imread(tiny_stack_dir / "train-labels.tif") == 0
    ids = np.stack([connected_components(~section, connectivity=1) for section in membrane]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "instances.tif", ids)
    as_instances = load_labelled_stack(
        tiny_stack_dir / "train-volume.tif", tmp_path / "instances.tif", None, "instances"
    )
    as_membrane = load_labelled_stack(tiny_stack_dir / "train-volume.tif", tiny_stack_dir / "train-labels.tif")
    for instance_item, membrane_item in zip(as_instances, as_membrane, strict=True):
        np.testing.assert_array_equal(instance_item["label"], membrane_item["label"])


def test_objects_on_a_background_become_cells_separated_by_background_and_contact_lines(tmp_path):
    images, ids = touching_blobs()
    tifffile.imwrite(tmp_path / "images.tif", images)
    tifffile.imwrite(tmp_path / "ids.tif", ids)
    items = load_labelled_stack(tmp_path / "images.tif", tmp_path / "ids.tif", label_format="instances")
    for item, section in zip(items, ids, strict=True):
        cells = connected_components(item["label"] == 0, connectivity=1)
        assert cells.max() >= len(np.unique(section)) - 2  # all objects but at most one keep an interior
        for cell in range(1, cells.max() + 1):
            assert len(np.unique(section[cells == cell])) == 1  # no cell spans two objects or the background
        assert (item["label"][section == 0] == 1).all()
        np.testing.assert_array_equal(item["instances"], section)  # kept for the foreground and the object scores


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [({"label_format": "masks"}, "--label_format masks: must be one of membrane, instances"),
     ({"label_format": "instances", "membrane_label": 1}, "--membrane_label 1: applies to --label_format membrane")],
)  # fmt: skip
def test_label_format_options_are_checked(tiny_stack_dir, arguments, problem):
    with pytest.raises(InputError, match=problem):
        load_labelled_stack(tiny_stack_dir / "train-volume.tif", tiny_stack_dir / "train-labels.tif", **arguments)


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
