"""Datalists of EM sections and their cross-validation splits.

A stack becomes one datalist item per section, ``{"image": (H, W) array, "label": (H, W) membrane mask,
"slice": z}``, so MONAI datasets and transforms treat the shipped stacks and MONAI Label's per-section files
alike.

Splits are contiguous blocks of sections, written out by :func:`heldout_block`: neighbouring sections are strongly
correlated, so a section never validates a model trained on its neighbours.

Each fold has three parts (:func:`split_sections`): the *test* block, which no choice sees; the *validation*
block, the fold before it (cyclically) unless another block is named, on which the checkpoint, the membrane
threshold and the cell parameters are chosen; and the *training* sections, all the others. With 30 sections and
the default fold 4: train on 0-17, validate on 18-23, test on 24-29. Naming the validation block gives the
inner folds of nested cross-validation: with fold 4, validation block 0 trains on 6-23 and validates on 0-5,
so every block of 0-23 gets a map from a model that did not train on it, and 24-29 stays unseen.

With section context ``k`` (:func:`with_section_context`) each part's images become (2k + 1, H, W) stacks of the
section and its neighbours *within that part*, mirrored at the ends of each contiguous run of its sections
(:func:`scripts.blockwise.context_sections`): no part reads another's sections, not even as context, so the
test block stays unseen by every choice. Labels stay each section's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .blockwise import checked_context, context_sections
from .errors import InputError
from .stack_io import StackError, read_instance_labels, read_membrane_labels, read_stack

__all__ = [
    "LABEL_FORMATS",
    "membrane_from_instances",
    "load_labelled_stack",
    "load_unlabelled_stack",
    "heldout_block",
    "validation_block",
    "split_sections",
    "with_section_context",
]


#: how a label stack marks the cells: a binary membrane mask (ISBI 2012), or one id per object
LABEL_FORMATS = ("membrane", "instances")


def membrane_from_instances(ids: np.ndarray) -> np.ndarray:
    """The membrane mask that training learns from an (H, W) section of object ids (0 = background): background,
    and the pixels of an object that touch another object (4-neighbourhood; both sides, so touching objects are
    kept apart by two pixels).

    Objects separated by background already, as the cells of ISBI's membrane labels are, give their background
    back unchanged; objects on a background give the background plus the lines where they touch.

    Returns:
        (H, W) uint8 mask, 1 = membrane.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"instance ids must be one (H, W) section, got shape {ids.shape}")
    membrane = ids == 0
    for first, second in (
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
    ):
        touching = (ids[first] != ids[second]) & (ids[first] != 0) & (ids[second] != 0)
        membrane[first] |= touching
        membrane[second] |= touching
    return membrane.astype(np.uint8)


def load_labelled_stack(
    image_path: str | Path,
    label_path: str | Path,
    membrane_label: int | None = None,
    label_format: str = "membrane",
) -> list[dict]:
    """Read an image stack and its label stack, check they match, and return one item per section.

    Args:
        image_path, label_path: the stacks (:func:`scripts.stack_io.read_stack`).
        membrane_label: the label value that marks membrane, or None for ISBI's 0, checked for plausibility
            (:func:`scripts.stack_io.read_membrane_labels`); membrane labels only.
        label_format: ``"membrane"``, a binary membrane mask, or ``"instances"``, one id per object and 0 for
            background (:func:`scripts.stack_io.read_instance_labels`), whose membrane mask is
            :func:`membrane_from_instances` of each section.

    Returns:
        list of ``{"image": (H, W) array, "label": (H, W) uint8 membrane mask, "slice": z}``; with instance labels,
        each item also keeps its ``"instances"``, the (H, W) object ids (for the foreground target of
        ``configs/objects.json`` and the object-level scores).
    """
    if label_format not in LABEL_FORMATS:
        raise InputError(f"--label_format {label_format}: must be one of {', '.join(LABEL_FORMATS)}")
    if label_format == "instances" and membrane_label is not None:
        raise InputError(f"--membrane_label {membrane_label}: applies to --label_format membrane only")
    images = read_stack(image_path)
    instances = read_instance_labels(label_path) if label_format == "instances" else None
    if instances is not None:
        membranes = np.stack([membrane_from_instances(ids) for ids in instances])
    else:
        membranes = read_membrane_labels(label_path, membrane_label)
    if images.shape != membranes.shape:
        raise StackError(
            f"{label_path}: label stack has shape {membranes.shape} but image stack {image_path} has "
            f"{images.shape}; they must match section for section"
        )
    items = [{"image": images[z], "label": membranes[z], "slice": z} for z in range(images.shape[0])]
    if instances is not None:
        for item, ids in zip(items, instances, strict=True):
            item["instances"] = ids
    return items


def load_unlabelled_stack(image_path: str | Path, section_context: int = 0) -> list[dict]:
    """One item per section of an unlabelled stack, for self-supervised training (configs/pretrain.json), whose
    target is the section itself.

    Returns:
        list of ``{"image": (H, W) array, or (2k + 1, H, W) with ``section_context`` k, "label": (H, W) copy of the
        section, "slice": z}``.
    """
    images = read_stack(image_path)
    items = [{"image": images[z], "label": images[z].copy(), "slice": z} for z in range(images.shape[0])]
    return with_section_context(items, section_context)


def heldout_block(num_slices: int, fold: int, num_folds: int) -> range:
    """The contiguous block of sections held out in ``fold`` of ``num_folds``-fold cross-validation.

    With 30 sections and 5 folds: fold 0 holds out 0-5, fold 1 6-11, ..., fold 4 (the default) 24-29.
    """
    if num_folds < 2 or not 0 <= fold < num_folds:
        raise InputError(f"--fold {fold} --num_folds {num_folds}: fold must be in [0, num_folds) with num_folds >= 2")
    if num_slices < num_folds:
        raise InputError(f"--num_folds {num_folds}: {num_slices} sections cannot be split into {num_folds} folds")
    edges = np.linspace(0, num_slices, num_folds + 1).round().astype(int)
    return range(edges[fold], edges[fold + 1])


def validation_block(num_slices: int, fold: int, num_folds: int, validation_fold: int | None = None) -> range:
    """The inner validation block of ``fold``: the block of fold ``validation_fold``, by default ``fold - 1``
    (cyclically).

    With 30 sections and 5 folds: fold 4 validates on 18-23, fold 0 on 24-29; fold 4 with validation fold 0 on 0-5.
    """
    if num_folds < 3:
        raise InputError(
            f"--num_folds {num_folds}: a fold needs a test block, a validation block and training sections, "
            "so num_folds must be >= 3"
        )
    heldout_block(num_slices, fold, num_folds)  # checks the fold
    if validation_fold is None:
        validation_fold = (fold - 1) % num_folds
    if validation_fold == fold or not 0 <= validation_fold < num_folds:
        raise InputError(
            f"--validation_fold {validation_fold}: the validation block must be another block than the test block "
            f"(--fold {fold}), in [0, {num_folds})"
        )
    return heldout_block(num_slices, validation_fold, num_folds)


def split_sections(
    items: list[dict], fold: int, num_folds: int, section_context: int = 0, validation_fold: int | None = None
) -> dict[str, list[dict]]:
    """The ``"train"``, ``"validation"`` and ``"test"`` items of one fold, each part with its own section context
    (see the module docstring); ``validation_fold`` as in :func:`validation_block`."""
    test = heldout_block(len(items), fold, num_folds)
    validation = validation_block(len(items), fold, num_folds, validation_fold)
    part = {"train": [], "validation": [], "test": []}
    for item in items:
        name = "test" if item["slice"] in test else "validation" if item["slice"] in validation else "train"
        part[name].append(item)
    return {name: with_section_context(part_items, section_context) for name, part_items in part.items()}


def with_section_context(items: list[dict], section_context: int) -> list[dict]:
    """``items`` (in slice order) with each image replaced by its section and ``section_context`` neighbours on each
    side among ``items``: (2k + 1, H, W), mirrored at the ends of each run of consecutive slices."""
    if not checked_context(section_context):
        return items
    runs: list[list[dict]] = []
    for item in items:
        if runs and item["slice"] == runs[-1][-1]["slice"] + 1:
            runs[-1].append(item)
        else:
            runs.append([item])
    stacked = []
    for run in runs:
        images = np.stack([item["image"] for item in run])
        for index, item in enumerate(run):
            stacked.append({**item, "image": images[context_sections(index, section_context, len(run))]})
    return stacked
