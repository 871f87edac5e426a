"""Scores of trivial predictions on the held-out slices, to put the model's numbers in scale.

Usage: python bench/baselines.py [--fold 4] [--output docs/results/baselines.json]

"all interior" predicts no membrane at all; "ground truth" feeds the labels back as the prediction
(must score 1.0: a check of the metric code on real data). Prints a markdown table and stores the same scores,
with the machine and command line, in ``--output``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from skimage.measure import label as connected_components

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bundle"))
sys.path.insert(0, str(REPO / "bench"))

import machine  # noqa: E402

from scripts.datalists import load_labelled_stack, split_sections  # noqa: E402
from scripts.report import evaluation_summary  # noqa: E402

SCORES = ("pixel_accuracy", "membrane_dice", "v_rand", "v_info")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold", type=int, default=4)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results" / "baselines.json")
    args = parser.parse_args()
    data = REPO / "bundle" / "data" / "isbi2012"
    labelled = load_labelled_stack(data / "train-volume.tif", data / "train-labels.tif")
    items = split_sections(labelled, args.fold, 5)["test"]
    predictions = {
        "all interior": lambda item: np.zeros(item["label"].shape, dtype=np.float32),
        "ground truth": lambda item: item["label"].astype(np.float32),
    }
    results = {"fold": args.fold, "test_slices": [item["slice"] for item in items], "threshold": 0.5}
    results["predictions"] = {}
    print(f"test slices {results['test_slices']}, threshold 0.5")
    print("| prediction | pixel accuracy | membrane Dice | V_rand | V_info |")
    print("| --- | --- | --- | --- | --- |")
    for name, predict in predictions.items():
        scored = [{**item, "pred": predict(item)} for item in items]
        mean = evaluation_summary(scored, threshold=0.5, thresholds=(0.5,))["mean_at_fixed_threshold"]
        results["predictions"][name] = {score: float(mean[score]) for score in SCORES}
        print(f"| {name} | " + " | ".join(f"{mean[score]:.4f}" for score in SCORES) + " |")
    # the label facts the docs quote: what "all interior" scores on the training sections (the study's accuracy
    # was over training batches) and how many ground-truth cells of each test section the min_size filter (64 px)
    # cannot keep (cells as tests/test_metrics.py and scripts.metrics count them: 4-connected interior)
    train = split_sections(labelled, args.fold, 5)["train"]
    results["train_interior_fraction"] = float(np.mean([1 - item["label"].mean() for item in train]))
    results["test_true_cells_under_64_px"] = {
        int(item["slice"]): int(
            (np.bincount(connected_components(item["label"] == 0, connectivity=1).ravel())[1:] < 64).sum()
        )
        for item in items
    }
    print(f"all interior on the training sections: pixel accuracy {results['train_interior_fraction']:.4f}")
    print(f"ground-truth cells under 64 px per test section: {results['test_true_cells_under_64_px']}")
    machine.write_json(args.output, {**results, "machine": machine.describe()})


if __name__ == "__main__":
    main()
