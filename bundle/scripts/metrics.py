"""ISBI 2012 challenge metrics: foreground-restricted Rand and information-theoretic scores after border thinning.

This follows the official evaluation (Arganda-Carreras et al., Front. Neuroanat. 2015; Fiji's
``trainableSegmentation.metrics``, the "Segmentation evaluation after border thinning" script):

* ground-truth segments are the 4-connected components of the cell interior; ground-truth membrane
  pixels are excluded from every count (foreground restriction);
* the proposal is an *interior* probability map, binarised as ``interior > t``; its membrane is
  thinned to 1-pixel lines by a 4-connected watershed of the binary map seeded with the 4-connected
  interior components, and every pixel left on those lines is its own singleton segment;
* with ``n_ij`` the overlap counts, ``A_i`` the ground-truth and ``B_j`` the proposal segment sizes and
  ``C`` the number of line pixels (all restricted to ground-truth foreground, ``N`` pixels)::

      V_rand_split = (sum n_ij^2 + C) / sum A_i^2
      V_rand_merge = (sum n_ij^2 + C) / (sum B_j^2 + C)
      V_rand = 2 * split * merge / (split + merge)
      V_info_split = I(S;T) / H(S),  V_info_merge = I(S;T) / H(T)   (S proposal, T ground truth;
      probabilities p = count / N, singletons p = 1 / N),  V_info = 2 I(S;T) / (H(S) + H(T))

* scores are computed per 2D slice and averaged over slices; the challenge number is the maximum over
  thresholds t = 0.0, 0.1, ..., 1.0 of that mean.

The network in this bundle predicts *membrane* probability ``p``, and every threshold in the bundle is a
**membrane threshold** ``m``: membrane where ``p >= m``, cell interior where ``p < m``. The challenge's
interior map is ``1 - p``, so its threshold ``t`` is ``m = 1 - t`` here, and the grid 0.0, 0.1, ..., 1.0 maps
onto itself: the max over thresholds is the challenge's number (equal up to ties at a grid value).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from scipy.optimize import linear_sum_assignment
from skimage.measure import label as connected_components
from skimage.segmentation import watershed

from .flags import number

__all__ = [
    "CHALLENGE_THRESHOLDS",
    "thinned_segmentation",
    "foreground_restricted_scores",
    "slice_scores",
    "split_merge_counts",
    "cell_scores",
    "object_matching",
    "IsbiScore",
]

#: the challenge's 11 thresholds 0.0, 0.1, ..., 1.0, as membrane thresholds
CHALLENGE_THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(11))


def thinned_segmentation(interior: np.ndarray, seeds: np.ndarray | None = None) -> np.ndarray:
    """Label a binary interior map, splitting touching regions along 1-pixel watershed lines.

    Args:
        interior: (H, W) bool, True = cell interior.
        seeds: (H, W) int markers to flood from; default (the scorer's) the 4-connected components of
            ``interior``. ``scripts.cells`` passes them with small components removed.

    Returns:
        (H, W) int32 labels: 1..K for segments, 0 for the 1-pixel boundary lines between them.
    """
    if seeds is None:
        seeds = connected_components(interior, connectivity=1)
    if seeds.max() == 0:
        return np.zeros(interior.shape, dtype=np.int32)
    relief = (~interior).astype(np.uint8)
    return watershed(relief, markers=seeds, connectivity=1, watershed_line=True).astype(np.int32)


def _contingency(truth: np.ndarray, proposal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Overlap counts on ground-truth foreground: (n_ij of proposal labels > 0, A_i, B_j, C)."""
    keep = truth > 0
    truth, proposal = truth[keep].astype(np.int64), proposal[keep].astype(np.int64)
    singletons = int((proposal == 0).sum())
    _, truth_sizes = np.unique(truth, return_counts=True)
    segmented = proposal > 0
    pair_codes = truth[segmented] * (int(proposal.max()) + 1) + proposal[segmented]
    _, pair_counts = np.unique(pair_codes, return_counts=True)
    _, proposal_sizes = np.unique(proposal[segmented], return_counts=True)
    return pair_counts, truth_sizes, proposal_sizes, singletons


def _f_score(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def foreground_restricted_scores(truth: np.ndarray, proposal: np.ndarray) -> dict[str, float]:
    """Foreground-restricted Rand and information-theoretic scores of a proposal against ground truth.

    Args:
        truth: (H, W) int ground-truth segments, 0 = membrane (excluded from all counts).
        proposal: (H, W) int proposal segments, 0 = boundary pixels (each a singleton segment).

    Returns:
        ``v_rand``, ``v_rand_split``, ``v_rand_merge``, ``v_info``, ``v_info_split``, ``v_info_merge``;
        all NaN when the ground truth has no foreground pixel.
    """
    if not (truth > 0).any():
        return dict.fromkeys(
            ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge"), float("nan")
        )
    pair_counts, truth_sizes, proposal_sizes, singletons = _contingency(truth, proposal)
    total = int(truth_sizes.sum())
    sum_pairs = float((pair_counts.astype(np.float64) ** 2).sum()) + singletons
    rand_split = sum_pairs / float((truth_sizes.astype(np.float64) ** 2).sum())
    rand_merge = sum_pairs / (float((proposal_sizes.astype(np.float64) ** 2).sum()) + singletons)

    def plogp(counts: np.ndarray) -> float:
        p = counts / total
        return float((p * np.log(p)).sum())

    singleton_term = singletons / total * np.log(1.0 / total)
    truth_entropy = -plogp(truth_sizes)
    proposal_entropy = -(plogp(proposal_sizes) + singleton_term)
    joint_entropy = -(plogp(pair_counts) + singleton_term)
    mutual_information = max(truth_entropy + proposal_entropy - joint_entropy, 0.0)  # >= 0 but for rounding
    # splitting a cell raises H(S), merging cells lowers I relative to H(T); the official code's
    # conventions for a segmentation with zero entropy (a single segment) follow
    info_split, info_merge = (
        (mutual_information / proposal_entropy, mutual_information / truth_entropy)
        if truth_entropy > 0 and proposal_entropy > 0
        else ((1.0, 0.0) if proposal_entropy > 0 else (0.0, 1.0))
    )
    return {
        "v_rand": _f_score(rand_split, rand_merge),
        "v_rand_split": rand_split,
        "v_rand_merge": rand_merge,
        "v_info": _f_score(info_split, info_merge),
        "v_info_split": info_split,
        "v_info_merge": info_merge,
    }


def slice_scores(
    membrane_probability: np.ndarray, membrane_truth: np.ndarray, thresholds: Sequence[float] = CHALLENGE_THRESHOLDS
) -> dict[str, np.ndarray]:
    """V_rand and V_info of one 2D section at each membrane threshold.

    Args:
        membrane_probability: (H, W) float in [0, 1], the network's membrane probability.
        membrane_truth: (H, W) ground-truth membrane mask (nonzero = membrane).
        thresholds: membrane thresholds; the proposal's cell interior is ``membrane_probability < threshold``.

    Returns:
        ``{"v_rand": (T,), "v_info": (T,)}`` float64 arrays.
    """
    truth = connected_components(np.asarray(membrane_truth) == 0, connectivity=1)
    probability = np.asarray(membrane_probability, dtype=np.float64)
    scores = [foreground_restricted_scores(truth, thinned_segmentation(probability < m)) for m in thresholds]
    return {key: np.array([s[key] for s in scores]) for key in ("v_rand", "v_info")}


def split_merge_counts(truth: np.ndarray, proposal: np.ndarray) -> dict[str, int]:
    """How many cells were split and merged: each cell is matched to the cell of the other map it overlaps most.

    Overlaps are counted on ground-truth foreground, without the proposal's line pixels (0). A ground-truth
    cell matched by k proposal cells counts k - 1 splits; a proposal cell matched by k ground-truth cells counts
    k - 1 merges. So a fragment counts as a split however small it is (``scripts.cells`` merges fragments below
    ``min_size``).

    Args:
        truth: (H, W) int ground-truth cells, 0 = membrane.
        proposal: (H, W) int proposal cells, 0 = lines.

    Returns:
        ``{"splits": int, "merges": int}``.
    """
    keep = (truth > 0) & (proposal > 0)
    _, truth_ids = np.unique(truth[keep], return_inverse=True)
    _, proposal_ids = np.unique(proposal[keep], return_inverse=True)
    if truth_ids.size == 0:
        return {"splits": 0, "merges": 0}
    overlap = np.zeros((truth_ids.max() + 1, proposal_ids.max() + 1), dtype=np.int64)
    np.add.at(overlap, (truth_ids, proposal_ids), 1)
    truth_of_proposal = np.bincount(overlap.argmax(axis=0), minlength=overlap.shape[0])
    proposal_of_truth = np.bincount(overlap.argmax(axis=1), minlength=overlap.shape[1])
    return {
        "splits": int(np.maximum(truth_of_proposal - 1, 0).sum()),
        "merges": int(np.maximum(proposal_of_truth - 1, 0).sum()),
    }


def cell_scores(cells: np.ndarray, membrane_truth: np.ndarray) -> dict[str, float]:
    """Scores of one section's cell map against its ground-truth membrane mask.

    The official metric takes the cell map as the proposal as it is (its 0 pixels are singletons), without
    thresholding or thinning.

    Args:
        cells: (H, W) int cell ids, 0 = lines (e.g. from :func:`scripts.cells.label_cells`).
        membrane_truth: (H, W) ground-truth membrane mask (nonzero = membrane).

    Returns:
        the scores of :func:`foreground_restricted_scores`, ``cells`` and ``true_cells`` (the counts of each
        map) and ``splits``/``merges`` (:func:`split_merge_counts`).
    """
    truth = connected_components(np.asarray(membrane_truth) == 0, connectivity=1)
    return {
        **foreground_restricted_scores(truth, cells),
        "cells": int(len(np.unique(cells[cells > 0]))),
        "true_cells": int(truth.max()),
        **split_merge_counts(truth, cells),
    }


def object_matching(truth: np.ndarray, predicted: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float | int]:
    """Object-level scores of predicted objects against true ones (the StarDist and Cellpose convention).

    A true and a predicted object match when their intersection over union is at least ``iou_threshold``; each
    object matches at most one other, the pairs chosen to give the most matches and, among those, the highest
    summed IoU (from a threshold of 0.5 up, an object has at most one candidate but for ties). Unmatched predicted
    objects are false positives, unmatched true ones false negatives.

    Args:
        truth, predicted: (H, W) or (Z, H, W) integer labels, 0 = background (not an object). An id is one object
            wherever it occurs, across sections too: score sections one by one where ids are per section.
        iou_threshold: the IoU a match needs.

    Returns:
        ``tp``, ``fp``, ``fn``; ``precision`` tp / (tp + fp), ``recall`` tp / (tp + fn), ``f1`` 2 tp / (2 tp + fp + fn)
        (1.0 where there is nothing to find and nothing was found); ``mean_matched_iou`` (NaN without a match).
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    truth, predicted = np.asarray(truth).ravel(), np.asarray(predicted).ravel()
    if truth.shape != predicted.shape:
        raise ValueError(f"truth and prediction differ in size: {truth.size} and {predicted.size} pixels")
    true_ids, true_index = np.unique(truth, return_inverse=True)
    predicted_ids, predicted_index = np.unique(predicted, return_inverse=True)
    true_sizes, predicted_sizes = np.bincount(true_index), np.bincount(predicted_index)
    both = (truth > 0) & (predicted > 0)
    pairs, overlap = np.unique(
        true_index[both].astype(np.int64) * len(predicted_ids) + predicted_index[both], return_counts=True
    )
    rows, columns = pairs // len(predicted_ids), pairs % len(predicted_ids)
    iou = overlap / (true_sizes[rows] + predicted_sizes[columns] - overlap)
    candidate = iou >= iou_threshold
    rows, columns, iou = rows[candidate], columns[candidate], iou[candidate]
    matched = np.zeros(0)
    if len(iou):
        true_rows, row = np.unique(rows, return_inverse=True)
        predicted_columns, column = np.unique(columns, return_inverse=True)
        # a match is worth more than all IoUs together, so the assignment maximises the count, then the IoU
        scores = np.zeros((len(true_rows), len(predicted_columns)))
        scores[row, column] = len(iou) + iou
        chosen_rows, chosen_columns = linear_sum_assignment(scores, maximize=True)
        matched = scores[chosen_rows, chosen_columns]
        matched = matched[matched > 0] - len(iou)
    tp = len(matched)
    fp = int((predicted_ids > 0).sum()) - tp
    fn = int((true_ids > 0).sum()) - tp
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "mean_matched_iou": float(matched.mean()) if tp else float("nan"),
    }


class IsbiScore(CumulativeIterationMetric):
    """V_rand or V_info as a MONAI metric: per-slice scores, averaged over slices, best threshold kept.

    With ``thresholds=[m]`` this is the score at the fixed membrane threshold ``m``; with the default
    :data:`CHALLENGE_THRESHOLDS` it is the challenge's max-over-thresholds number.

    Inputs of ``__call__``: ``y_pred`` membrane probability and ``y`` membrane mask, (B, 1, H, W) or
    lists of (1, H, W) tensors.
    """

    def __init__(self, score: str = "v_rand", thresholds: Sequence[float] = CHALLENGE_THRESHOLDS) -> None:
        super().__init__()
        if score not in ("v_rand", "v_info"):
            raise ValueError(f"score must be 'v_rand' or 'v_info', got {score!r}")
        self.score = score
        # the configs pass [@membrane_threshold]: a bad value is named as that flag before training starts
        self.thresholds = tuple(number(t, "membrane_threshold", 0, 1) for t in thresholds)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Returns (B, T) scores, one row per slice."""
        if y is None:
            raise ValueError("IsbiScore needs the ground-truth membrane mask `y`")
        probabilities = y_pred.detach().float().cpu().numpy().reshape(-1, *y_pred.shape[-2:])
        truths = y.detach().cpu().numpy().reshape(-1, *y.shape[-2:])
        rows = [slice_scores(p, t, self.thresholds)[self.score] for p, t in zip(probabilities, truths, strict=True)]
        return torch.as_tensor(np.stack(rows), dtype=torch.float64)

    def aggregate(self) -> torch.Tensor:
        per_slice = self.get_buffer()
        if not isinstance(per_slice, torch.Tensor) or per_slice.numel() == 0:
            raise ValueError("IsbiScore has no slices to aggregate")
        # a slice whose ground truth has no cell interior scores NaN and is left out of the mean
        return per_slice.nanmean(dim=0).max()
