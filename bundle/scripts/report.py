"""Evaluation report: ISBI 2012 scores per slice and overall, written as JSON, CSV and a PNG figure.

The challenge's own number is the best threshold in hindsight (max over thresholds of the section mean),
which peeks at the evaluated labels. The honest number uses one threshold fixed before looking at them:
here, the membrane threshold that maximises mean V_rand on the fold's *validation* sections. Thresholds are
membrane thresholds (membrane where ``p >= m``), as everywhere in the bundle.

With a :class:`scripts.cells.CellLabeller`, the report also scores the cell maps the inference writes
(:func:`scripts.metrics.cell_scores`: V_rand and V_info of the cells, their number, splits and merges) and, for
instance labels, the objects (:func:`scripts.metrics.object_matching` at IoU 0.5: precision, recall and F1, per
section and pooled over the sections' matches).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.measure import label as connected_components

from .cells import CellLabeller
from .flags import number
from .metrics import CHALLENGE_THRESHOLDS, cell_scores, object_matching, slice_scores
from .pipeline import SectionPredictor
from .writers import atomic_write

__all__ = [
    "score_curves",
    "mean_v_rand_curve",
    "evaluation_summary",
    "cell_summary",
    "write_evaluation_report",
    "EvaluationReport",
]

CELL_SCORES = ("v_rand", "v_info", "v_rand_split", "v_rand_merge", "cells", "true_cells", "splits", "merges")
#: the object-level scores of instance labels, at :data:`OBJECT_IOU`
OBJECT_SCORES = ("object_precision", "object_recall", "object_f1")
OBJECT_IOU = 0.5


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


def _evidence(prediction: np.ndarray) -> dict:
    """The predictor's output as an item's ``pred`` (membrane probability) and, where the network predicts
    affinities or the foreground too, ``evidence`` (all its channels, what the cells are made of)."""
    if prediction.ndim == 2:
        return {"pred": prediction}
    return {"pred": prediction[0], "evidence": prediction}


def _object_scores(matches: dict) -> dict[str, float]:
    return {f"object_{key}": float(matches[key]) for key in ("precision", "recall", "f1")}


def cell_summary(heldout: Sequence[dict], cells: CellLabeller) -> tuple[dict, list[np.ndarray]]:
    """Scores of the held-out items' cell maps, per slice and mean, and the cell maps themselves; with the items'
    ``instances`` (object ids), the object-level scores too, whose "mean" pools the sections' matches."""
    maps = [cells(item.get("evidence", item["pred"])) for item in heldout]
    per_slice = [
        {"slice": int(item["slice"]), **cell_scores(cell_map, item["label"])}
        for item, cell_map in zip(heldout, maps, strict=True)
    ]
    mean = {key: float(np.nanmean([row[key] for row in per_slice])) for key in CELL_SCORES}
    if all("instances" in item for item in heldout):
        counts = {"tp": 0, "fp": 0, "fn": 0}
        for row, item, cell_map in zip(per_slice, heldout, maps, strict=True):
            matches = object_matching(item["instances"], cell_map, OBJECT_IOU)
            row.update(_object_scores(matches))
            counts = {key: value + matches[key] for key, value in counts.items()}
        tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
        pooled = {
            "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1),
            "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        }
        mean.update(_object_scores(pooled))
    return {"labeller": cells.options, "mean": mean, "per_slice": per_slice}, maps


def _csv_bytes(summary: dict) -> bytes:
    buffer = io.StringIO()
    columns = ["slice", "v_rand", "v_info", "pixel_accuracy", "membrane_dice"]
    rows = [dict(row) for row in summary["per_slice"]] + [{"slice": "mean", **summary["mean_at_fixed_threshold"]}]
    if "cells" in summary:
        cell_rows = [*summary["cells"]["per_slice"], summary["cells"]["mean"]]
        scores = CELL_SCORES + (OBJECT_SCORES if OBJECT_SCORES[0] in summary["cells"]["mean"] else ())
        columns += [key if key in OBJECT_SCORES else f"cell_{key}" for key in scores]
        for row, cell_row in zip(rows, cell_rows, strict=True):
            row.update({key if key in OBJECT_SCORES else f"cell_{key}": cell_row[key] for key in scores})
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _coloured(cells: np.ndarray) -> np.ndarray:
    """(H, W, 3) a random colour per cell id, black for 0."""
    palette = np.random.default_rng(0).uniform(0.25, 1.0, (int(cells.max()) + 1, 3))
    palette[0] = 0.0
    return palette[cells]


def _figure_bytes(
    heldout: Sequence[dict], threshold: float, summary: dict, cell_maps: Sequence[np.ndarray], max_rows: int = 3
) -> bytes:
    """PNG per slice: image, ground truth, membrane probability, thresholded prediction, error overlay and,
    given cell maps, the ground-truth cells beside the predicted cells in colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(heldout)[:max_rows]
    columns = 7 if cell_maps else 5
    figure, axes = plt.subplots(len(rows), columns, figsize=(3.2 * columns, 3.4 * len(rows)), squeeze=False)
    scores = {row["slice"]: row for row in summary["per_slice"]}
    cell_rows = {row["slice"]: row for row in summary.get("cells", {}).get("per_slice", [])}
    for index, (axis_row, item) in enumerate(zip(axes, rows, strict=True)):
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
        if cell_maps:
            row = cell_rows[item["slice"]]
            panels += [
                (_coloured(connected_components(~actual, connectivity=1)), None, f"{row['true_cells']} true cells"),
                (
                    _coloured(cell_maps[index]),
                    None,
                    f"{row['cells']} cells: V_rand {row['v_rand']:.4f}\n{row['splits']} splits, {row['merges']} merges",
                ),
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
    cells: CellLabeller | None = None,
) -> dict:
    """Score the held-out slices and write ``metrics.json``, ``metrics.csv`` and ``evaluation.png``.

    Args:
        heldout: items with ``slice``, ``image``, ``label`` (membrane mask) and ``pred`` (membrane probability).
        calibration: items of the validation slices, used to choose the fixed threshold when ``threshold`` is None.
        output_dir: folder for the three files.
        threshold: fixed membrane threshold; None = choose it on ``calibration``.
        thresholds: thresholds of the max-over-thresholds score.
        cells: also score the cell maps this labeller makes of the held-out slices (``summary["cells"]``).

    Returns:
        the summary written to ``metrics.json``.
    """
    if not heldout:
        raise ValueError("no held-out slices were evaluated")
    if threshold is None:
        if not calibration:
            raise ValueError("no threshold given and no validation slices to choose one on")
        calibration_curve = mean_v_rand_curve(calibration, thresholds)
        threshold = _best_threshold(calibration_curve, thresholds)
        source = f"best mean V_rand on the validation slices {[int(item['slice']) for item in calibration]}"
    else:
        calibration_curve, source = None, "given"
    summary = evaluation_summary(heldout, threshold, thresholds)
    summary["fixed_threshold_source"] = source
    if calibration_curve is not None:
        # kept so a reader can see how clear the choice was: the curve is often flat near its top
        summary["calibration_curve"] = {"thresholds": list(thresholds), "v_rand": calibration_curve}
    cell_maps = []
    if cells is not None:
        summary["cells"], cell_maps = cell_summary(heldout, cells)
    output_dir = Path(output_dir)
    atomic_write(output_dir / "metrics.json", (json.dumps(summary, indent=4) + "\n").encode())
    atomic_write(output_dir / "metrics.csv", _csv_bytes(summary))
    atomic_write(output_dir / "evaluation.png", _figure_bytes(heldout, threshold, summary, cell_maps))
    return summary


class EvaluationReport:
    """Scores held-out sections through the declared inference pipeline and writes the evaluation report.

    Each section's membrane probability is what ``run inferring`` computes for it (``predictor``, built from
    inference.json's preprocessing and the configs' postprocessing by :func:`scripts.pipeline.declared_predictor`).

    Args:
        output_dir: folder for ``metrics.json``, ``metrics.csv`` and ``evaluation.png``.
        predictor: the pipeline from raw section to membrane probability.
        membrane_threshold: fixed membrane threshold, or None to choose it on the validation sections.
        cells: also score the cell maps of this labeller (as inference.json's ``cells``).
    """

    def __init__(
        self,
        output_dir: str | Path,
        predictor: SectionPredictor,
        membrane_threshold: float | None = None,
        cells: CellLabeller | None = None,
    ) -> None:
        self.output_dir, self.predictor, self.cells = output_dir, predictor, cells
        self.membrane_threshold = (
            None if membrane_threshold is None else number(membrane_threshold, "membrane_threshold", 0, 1)
        )
        self.summary: dict | None = None

    def predicted(self, item: dict) -> dict:
        """A datalist item (``image`` raw section, with its neighbours for section context, ``label`` membrane mask,
        ``slice``, and ``instances`` for instance labels) with its membrane probability ``pred`` and its scaled
        ``image`` (the section, for the figure)."""
        raw = np.asarray(item["image"])
        scaled = self.predictor.preprocessing({"image": raw, "intensity_range": None})["image"]
        predicted = {
            "slice": int(item["slice"]),
            "image": np.asarray(scaled)[self.predictor.section_context],
            "label": np.asarray(item["label"]),
            **_evidence(self.predictor(raw)),
        }
        if "instances" in item:
            predicted["instances"] = np.asarray(item["instances"])
        return predicted

    def run(self, heldout: Sequence[dict], validation: Sequence[dict] | None = None) -> dict:
        """Predicts the ``heldout`` sections (and the ``validation`` ones, where the threshold is chosen when none
        is given), scores them and writes the report; returns its summary."""
        calibration = None
        if self.membrane_threshold is None and validation:
            calibration = [self.predicted(item) for item in validation]
        items = [self.predicted(item) for item in heldout]
        self.summary = write_evaluation_report(
            items, calibration, self.output_dir, self.membrane_threshold, cells=self.cells
        )  # fmt: skip
        return self.summary
