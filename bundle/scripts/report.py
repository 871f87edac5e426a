"""Evaluation report: ISBI 2012 scores per slice and overall, written as JSON, CSV and a PNG figure.

The challenge's own number is the best threshold in hindsight (max over thresholds of the section mean),
which peeks at the evaluated labels. The honest number uses one threshold fixed before looking at them:
here, the membrane threshold that maximises mean V_rand on the *training* sections. Thresholds are membrane
thresholds (membrane where ``p >= m``), as everywhere in the bundle.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events

from .metrics import CHALLENGE_THRESHOLDS, slice_scores
from .writers import SliceCollector, atomic_write

__all__ = ["score_curves", "mean_v_rand_curve", "evaluation_summary", "write_evaluation_report", "EvaluationReport"]


def score_curves(items: Sequence[dict], thresholds: Sequence[float]) -> dict[str, np.ndarray]:
    """Per-slice V_rand and V_info at every threshold: ``{"v_rand": (S, T), "v_info": (S, T)}``."""
    curves = [slice_scores(item["pred"], item["label"], thresholds) for item in items]
    return {key: np.stack([c[key] for c in curves]) for key in ("v_rand", "v_info")}


def mean_v_rand_curve(items: Sequence[dict], thresholds: Sequence[float] = CHALLENGE_THRESHOLDS) -> list[float]:
    """Mean V_rand over ``items`` at each threshold (NaN-aware), one value per threshold."""
    return np.nanmean(score_curves(items, thresholds)["v_rand"], axis=0).tolist()


def _best_threshold(curve: Sequence[float], thresholds: Sequence[float]) -> float:
    return float(thresholds[int(np.nanargmax(curve))])


def _pixel_scores(probability: np.ndarray, truth: np.ndarray, threshold: float) -> tuple[float, float]:
    """Pixel accuracy and membrane Dice with membrane = ``probability >= threshold``."""
    predicted, actual = probability >= threshold, truth > 0
    accuracy = float((predicted == actual).mean())
    denominator = predicted.sum() + actual.sum()
    dice = float(2 * (predicted & actual).sum() / denominator) if denominator else 1.0
    return accuracy, dice


def evaluation_summary(
    heldout: Sequence[dict], threshold: float, thresholds: Sequence[float] = CHALLENGE_THRESHOLDS
) -> dict:
    """Scores of the held-out items: per slice and mean at ``threshold``, and the challenge's max over thresholds."""
    thresholds = tuple(thresholds)
    curves = score_curves(heldout, (*thresholds, threshold))
    per_slice = []
    for index, item in enumerate(heldout):
        accuracy, dice = _pixel_scores(item["pred"], item["label"], threshold)
        per_slice.append(
            {
                "slice": int(item["slice"]),
                "v_rand": float(curves["v_rand"][index, -1]),
                "v_info": float(curves["v_info"][index, -1]),
                "pixel_accuracy": accuracy,
                "membrane_dice": dice,
            }
        )
    # a slice whose ground truth has no cell interior scores NaN and is left out of the means
    mean_curve = {key: np.nanmean(value[:, :-1], axis=0) for key, value in curves.items()}
    best = {key: int(np.nanargmax(curve)) for key, curve in mean_curve.items()}
    return {
        "slices": [row["slice"] for row in per_slice],
        "fixed_threshold": threshold,
        "mean_at_fixed_threshold": {
            key: float(np.nanmean([row[key] for row in per_slice]))
            for key in ("v_rand", "v_info", "pixel_accuracy", "membrane_dice")
        },
        "max_over_thresholds": {
            "v_rand": float(mean_curve["v_rand"][best["v_rand"]]),
            "v_rand_threshold": thresholds[best["v_rand"]],
            "v_info": float(mean_curve["v_info"][best["v_info"]]),
            "v_info_threshold": thresholds[best["v_info"]],
        },
        "mean_curve": {"thresholds": list(thresholds), **{k: v.tolist() for k, v in mean_curve.items()}},
        "per_slice": per_slice,
    }


def _csv_bytes(summary: dict) -> bytes:
    buffer = io.StringIO()
    columns = ["slice", "v_rand", "v_info", "pixel_accuracy", "membrane_dice"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary["per_slice"])
    writer.writerow({"slice": "mean", **summary["mean_at_fixed_threshold"]})
    return buffer.getvalue().encode()


def _figure_bytes(heldout: Sequence[dict], threshold: float, summary: dict, max_rows: int = 3) -> bytes:
    """PNG: image, ground truth, membrane probability, thresholded prediction, error overlay per slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(heldout)[:max_rows]
    figure, axes = plt.subplots(len(rows), 5, figsize=(16, 3.4 * len(rows)), squeeze=False)
    scores = {row["slice"]: row for row in summary["per_slice"]}
    for axis_row, item in zip(axes, rows, strict=True):
        predicted = item["pred"] >= threshold
        actual = item["label"] > 0
        overlay = np.repeat(item["image"][..., None], 3, axis=-1).astype(np.float32)
        overlay = (overlay - overlay.min()) / max(float(np.ptp(overlay)), 1e-8) * 0.6
        overlay[predicted & ~actual] = (1.0, 0.2, 0.2)
        overlay[~predicted & actual] = (0.2, 0.4, 1.0)
        panels = [
            (item["image"], "gray", f"slice {item['slice']}"),
            (actual, "gray", "ground truth membrane"),
            (item["pred"], "magma", "membrane probability"),
            (predicted, "gray", f"prediction (threshold {threshold:.1f})"),
            (overlay, None, f"errors: red extra, blue missed\nV_rand {scores[item['slice']]['v_rand']:.4f}"),
        ]
        for axis, (panel, colour_map, title) in zip(axis_row, panels, strict=True):
            axis.imshow(panel, cmap=colour_map, interpolation="nearest")
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


def write_evaluation_report(
    heldout: Sequence[dict],
    calibration: Sequence[dict] | None,
    output_dir: str | Path,
    threshold: float | None = None,
    thresholds: Sequence[float] = CHALLENGE_THRESHOLDS,
) -> dict:
    """Score the held-out slices and write ``metrics.json``, ``metrics.csv`` and ``evaluation.png``.

    Args:
        heldout: items with ``slice``, ``image``, ``label`` (membrane mask) and ``pred`` (membrane probability).
        calibration: items of the training slices, used to choose the fixed threshold when ``threshold`` is None.
        output_dir: folder for the three files.
        threshold: fixed membrane threshold; None = choose it on ``calibration``.
        thresholds: thresholds of the max-over-thresholds score.

    Returns:
        the summary written to ``metrics.json``.
    """
    if not heldout:
        raise ValueError("no held-out slices were evaluated")
    if threshold is None:
        if not calibration:
            raise ValueError("no threshold given and no training slices to choose one on")
        calibration_curve = mean_v_rand_curve(calibration, thresholds)
        threshold = _best_threshold(calibration_curve, thresholds)
        source = f"best mean V_rand on the training slices {[int(item['slice']) for item in calibration]}"
    else:
        calibration_curve, source = None, "given"
    summary = evaluation_summary(heldout, threshold, thresholds)
    summary["fixed_threshold_source"] = source
    if calibration_curve is not None:
        # kept so a reader can see how clear the choice was: the training slices' curve is often flat near its top
        summary["calibration_curve"] = {"thresholds": list(thresholds), "v_rand": calibration_curve}
    output_dir = Path(output_dir)
    atomic_write(output_dir / "metrics.json", (json.dumps(summary, indent=4) + "\n").encode())
    atomic_write(output_dir / "metrics.csv", _csv_bytes(summary))
    atomic_write(output_dir / "evaluation.png", _figure_bytes(heldout, threshold, summary))
    return summary


class EvaluationReport:
    """Collects the held-out sections an evaluator processes and writes the evaluation report when it completes.

    Args:
        output_dir: folder for ``metrics.json``, ``metrics.csv`` and ``evaluation.png``.
        calibration: the collector of the training sections' predictions, run before this evaluator, where the
            membrane threshold is chosen when ``membrane_threshold`` is None.
        membrane_threshold: fixed membrane threshold, or None to choose it on ``calibration``.
    """

    def __init__(
        self, output_dir: str | Path, calibration: SliceCollector | None = None, membrane_threshold: float | None = None
    ) -> None:
        self.output_dir = output_dir
        self.calibration = calibration
        self.membrane_threshold = membrane_threshold
        self.collector = SliceCollector()
        self.summary: dict | None = None

    def attach(self, engine: Engine) -> None:
        self.collector.attach(engine)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _write(self, engine: Engine) -> None:
        calibration = self.calibration.items if self.calibration is not None else None
        self.summary = write_evaluation_report(
            self.collector.items, calibration, self.output_dir, self.membrane_threshold
        )
