"""Exact ISBI 2012 scores on hand-made label images (values worked out by hand in the comments)."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import two_cells

from scripts.metrics import (
    CHALLENGE_THRESHOLDS,
    IsbiScore,
    cell_scores,
    foreground_restricted_scores,
    object_matching,
    slice_scores,
    split_merge_counts,
    thinned_segmentation,
)


def test_challenge_thresholds_are_the_official_interior_grid_as_membrane_thresholds():
    official, value = [], 0.0  # the official Java loop: 0.0, 0.1, ... accumulated in double precision
    while value <= 1.0:
        official.append(value)
        value += 0.1
    assert CHALLENGE_THRESHOLDS == tuple(k / 10 for k in range(11))
    np.testing.assert_allclose(sorted(1 - t for t in official), CHALLENGE_THRESHOLDS, atol=1e-12)


def test_perfect_prediction_scores_one():
    truth = two_cells()
    scores = slice_scores(truth.astype(float), truth, [0.5])
    assert scores["v_rand"][0] == pytest.approx(1.0)
    assert scores["v_info"][0] == pytest.approx(1.0)


def test_merge_of_two_equal_cells():
    # one proposal segment over two 16-pixel cells: sum n^2 = 2*16^2 = 512 = sum A^2, sum B^2 = 32^2
    # split = 1, merge = 1/2, V_rand = 2/3; the proposal has zero entropy, which the official code scores 0
    truth = two_cells()
    scores = slice_scores(np.zeros(truth.shape), truth, [0.5])
    assert scores["v_rand"][0] == pytest.approx(2 / 3)
    assert scores["v_info"][0] == 0.0
    merged = foreground_restricted_scores(_labels(truth), np.ones(truth.shape, dtype=int))
    assert (merged["v_rand_split"], merged["v_rand_merge"]) == (pytest.approx(1.0), pytest.approx(0.5))
    assert (merged["v_info_split"], merged["v_info_merge"]) == (0.0, 1.0)  # the official zero-entropy case


def test_split_by_a_one_pixel_line_counts_line_pixels_as_singletons():
    # proposal adds a membrane line at column 1 inside the left cell: segments of 4 (col 0), 8 (cols 2-3),
    # 16 (right cell) pixels plus 4 singleton line pixels, N = 32.
    # V_rand: sum n^2 = 16 + 64 + 256 = 336, C = 4, sum A^2 = 512 -> split = 340/512, merge = 340/340 = 1
    # V_info: H(T) = ln 2, H(S) = H(S,T) = ln2 * (3/8 + 2/4 + 1/2 + 5/8) = 2 ln 2, I = ln 2 -> 2 I / 3 ln 2 = 2/3
    truth = two_cells()
    proposal = truth.copy()
    proposal[:, 1] = 1
    scores = foreground_restricted_scores(_labels(truth), thinned_segmentation(proposal == 0))
    split = Fraction(340, 512)
    assert scores["v_rand_split"] == pytest.approx(float(split))
    assert scores["v_rand_merge"] == pytest.approx(1.0)
    assert scores["v_rand"] == pytest.approx(float(2 * split / (split + 1)))
    assert scores["v_info"] == pytest.approx(2 / 3)
    assert scores["v_info_split"] == pytest.approx(1 / 2)  # I / H(S) = ln 2 / 2 ln 2
    assert scores["v_info_merge"] == pytest.approx(1.0)  # I / H(T)
    assert slice_scores(proposal.astype(float), truth, [0.5])["v_rand"][0] == pytest.approx(scores["v_rand"])


def _labels(membrane: np.ndarray) -> np.ndarray:
    from skimage.measure import label

    return label(membrane == 0, connectivity=1)


def test_thinning_leaves_one_pixel_lines_and_gives_membrane_to_the_cells():
    interior = np.ones((6, 12), dtype=bool)
    interior[:, 5:8] = False  # 3-pixel-wide membrane between two cells
    segments = thinned_segmentation(interior)
    assert set(np.unique(segments)) == {0, 1, 2}
    assert ((segments == 0).sum(axis=1) == 1).all()


def test_thinning_without_any_interior_is_all_boundary():
    assert (thinned_segmentation(np.zeros((5, 5), dtype=bool)) == 0).all()


def test_thresholds_are_membrane_thresholds():
    truth = two_cells()
    probability = truth * 0.7  # membrane probability 0.7 on the membrane column
    scores = slice_scores(probability, truth, [0.8, 0.7, 0.5])
    assert scores["v_rand"][0] == pytest.approx(2 / 3)  # 0.7 < 0.8: membrane missed, cells merged
    assert scores["v_rand"][1] == pytest.approx(1.0)  # membrane where p >= threshold
    assert scores["v_rand"][2] == pytest.approx(1.0)


def test_ground_truth_without_foreground_gives_nan():
    membrane = np.ones((4, 4), dtype=np.uint8)
    assert np.isnan(slice_scores(np.zeros((4, 4)), membrane, [0.5])["v_rand"][0])


def test_isbi_score_averages_slices_and_keeps_the_best_threshold():
    truth = torch.as_tensor(two_cells(), dtype=torch.float32)[None, None]
    perfect, merged = truth.clone(), torch.zeros_like(truth)
    metric = IsbiScore("v_rand", thresholds=[0.5])
    metric(y_pred=torch.cat([perfect, merged]), y=torch.cat([truth, truth]))
    assert metric.aggregate().item() == pytest.approx((1 + 2 / 3) / 2)

    best_of_two = IsbiScore("v_rand", thresholds=[0.8, 0.5])
    best_of_two(y_pred=truth * 0.7, y=truth)
    assert best_of_two.aggregate().item() == pytest.approx(1.0)


def test_isbi_score_rejects_unknown_scores():
    with pytest.raises(ValueError, match="v_rand"):
        IsbiScore("dice")


def test_splits_and_merges_are_counted_by_majority_overlap():
    truth = np.zeros((4, 12), dtype=int)
    truth[:, :4], truth[:, 4:8], truth[:, 8:] = 1, 2, 3
    proposal = np.zeros((4, 12), dtype=int)
    proposal[:, :2], proposal[:, 2:4] = 1, 2  # cell 1 split in two
    proposal[:, 4:] = 3  # cells 2 and 3 merged
    assert split_merge_counts(truth, proposal) == {"splits": 1, "merges": 1}
    assert split_merge_counts(truth, truth) == {"splits": 0, "merges": 0}
    assert split_merge_counts(truth, np.zeros_like(truth)) == {"splits": 0, "merges": 0}


def test_cell_scores_take_the_cell_map_as_it_is():
    membrane = two_cells()
    cells = thinned_segmentation(membrane == 0)
    scores = cell_scores(cells, membrane)
    assert scores["v_rand"] == scores["v_info"] == 1.0
    assert (scores["cells"], scores["true_cells"], scores["splits"], scores["merges"]) == (2, 2, 0, 0)
    merged = cell_scores(np.ones_like(cells), membrane)  # one cell over both: V_rand 2/3 as in the merge test
    assert merged["v_rand"] == pytest.approx(2 / 3) and merged["merges"] == 1 and merged["cells"] == 1


def test_object_matching_counts_pairs_overlapping_by_half_their_union():
    truth = np.zeros((10, 10), int)
    truth[0:4, 0:4] = 1  # found exactly
    truth[0:4, 6:10] = 2  # found as a half-size object: IoU 0.5, still a match
    truth[6:10, 0:4] = 3  # split in four rows, each a quarter: no match
    truth[6:10, 6:10] = 4  # missed
    predicted = np.zeros((10, 10), int)
    predicted[0:4, 0:4] = 7
    predicted[0:4, 6:8] = 8
    predicted[6:10, 0:4] = np.arange(9, 13)[:, None]
    predicted[5, 5] = 13  # a speck where there is nothing
    scores = object_matching(truth, predicted)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 5, 2)
    assert scores["precision"] == pytest.approx(2 / 7) and scores["recall"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx(4 / 11) and scores["mean_matched_iou"] == pytest.approx(0.75)
    assert object_matching(truth, predicted, iou_threshold=0.6)["tp"] == 1


def test_object_matching_of_identical_labels_and_of_empty_ones():
    labels = np.array([[0, 1, 1], [2, 2, 0], [3, 0, 5]])
    assert object_matching(labels, labels * 3)["f1"] == 1.0  # ids need not agree
    empty = object_matching(np.zeros((3, 3), int), np.zeros((3, 3), int))
    assert (empty["tp"], empty["fp"], empty["fn"], empty["f1"]) == (0, 0, 0, 1.0)
    assert np.isnan(empty["mean_matched_iou"])
    with pytest.raises(ValueError, match="iou_threshold"):
        object_matching(labels, labels, iou_threshold=0)


def test_object_matching_makes_the_most_matches_before_the_highest_summed_iou():
    """At a low threshold one near-perfect pair can block two weak ones: the weak ones count for more."""
    truth, predicted = np.zeros((1, 30), int), np.zeros((1, 30), int)
    truth[0, 0:20], truth[0, 20:30] = 1, 2
    predicted[0, 0:1], predicted[0, 1:21] = 7, 8  # 8 covers 19 of 1's 20 pixels and 1 of 2's
    scores = object_matching(truth, predicted, iou_threshold=0.03)
    assert scores["tp"] == 2  # 1-7 (IoU 0.05) and 2-8 (0.034), not 1-8 (0.905) alone
    assert scores["mean_matched_iou"] == pytest.approx((1 / 20 + 1 / 29) / 2)
