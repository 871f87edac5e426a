"""Datalists of EM sections and their cross-validation splits.

A stack becomes one datalist item per section, ``{"image": (H, W) array, "label": (H, W) membrane mask,
"slice": z}``, so MONAI datasets and transforms treat the shipped stacks and MONAI Label's per-section files
alike. With section context ``k`` the image is the (2k + 1, H, W) stack of the section and its neighbours
(mirrored at the stack's ends, :func:`scripts.blockwise.context_sections`); the label stays the section's own.

Splits are contiguous blocks of sections, written out by :func:`heldout_block`: neighbouring sections are strongly
correlated, so a section never validates a model trained on its neighbours.

Each fold has three parts (:func:`split_sections`): the *test* block, which no choice sees; the *validation*
block, the fold before it (cyclically), on which the checkpoint, the membrane threshold and the cell
parameters are chosen; and the *training* sections, all the others. With 30 sections and the default fold 4:
train on 0-17, validate on 18-23, test on 24-29.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .blockwise import checked_context, context_sections
from .errors import InputError
from .stack_io import StackError, read_membrane_labels, read_stack

__all__ = ["load_labelled_stack", "heldout_block", "validation_block", "split_sections"]


def load_labelled_stack(
    image_path: str | Path, label_path: str | Path, membrane_label: int | None = None, section_context: int = 0
) -> list[dict]:
    """Read an image stack and its label stack, check they match, and return one item per section.

    Args:
        image_path, label_path: the stacks (:func:`scripts.stack_io.read_stack`).
        membrane_label: the label value that marks membrane, or None for ISBI's 0, checked for plausibility
            (:func:`scripts.stack_io.read_membrane_labels`).
        section_context: ``k``, the neighbouring sections on each side given with each image.

    Returns:
        list of ``{"image": (H, W) array, or (2k + 1, H, W) with context, "label": (H, W) uint8 membrane mask,
        "slice": z}``.
    """
    images = read_stack(image_path)
    membranes = read_membrane_labels(label_path, membrane_label)
    if images.shape != membranes.shape:
        raise StackError(
            f"{label_path}: label stack has shape {membranes.shape} but image stack {image_path} has "
            f"{images.shape}; they must match section for section"
        )
    depth = images.shape[0]
    if not checked_context(section_context):
        return [{"image": images[z], "label": membranes[z], "slice": z} for z in range(depth)]
    return [
        {"image": images[context_sections(z, section_context, depth)], "label": membranes[z], "slice": z}
        for z in range(depth)
    ]


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


def validation_block(num_slices: int, fold: int, num_folds: int) -> range:
    """The inner validation block of ``fold``: the block of fold ``fold - 1`` (cyclically).

    With 30 sections and 5 folds: fold 4 validates on 18-23, fold 0 on 24-29.
    """
    if num_folds < 3:
        raise InputError(
            f"--num_folds {num_folds}: a fold needs a test block, a validation block and training sections, "
            "so num_folds must be >= 3"
        )
    heldout_block(num_slices, fold, num_folds)  # checks the fold
    return heldout_block(num_slices, (fold - 1) % num_folds, num_folds)


def split_sections(items: list[dict], fold: int, num_folds: int) -> dict[str, list[dict]]:
    """The ``"train"``, ``"validation"`` and ``"test"`` items of one fold (see the module docstring)."""
    test = heldout_block(len(items), fold, num_folds)
    validation = validation_block(len(items), fold, num_folds)
    part = {"train": [], "validation": [], "test": []}
    for item in items:
        name = "test" if item["slice"] in test else "validation" if item["slice"] in validation else "train"
        part[name].append(item)
    return part
