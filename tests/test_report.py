"""Evaluation report: threshold calibration, summary numbers and the files written."""

import csv
import json

import numpy as np
import pytest
from conftest import two_cells

from scripts.cells import CellLabeller
from scripts.report import EvaluationReport, evaluation_summary, write_evaluation_report


def _item(slice_index, probability, truth):
    return {
        "slice": slice_index,
        "image": np.random.default_rng(0).random(truth.shape),
        "label": truth,
        "pred": probability,
    }


def test_membrane_threshold_is_chosen_where_validation_slices_score_best(tmp_path):
    truth = two_cells()
    # membrane predicted at 0.7: membrane thresholds up to 0.7 find it, 0.8 and 1.0 merge the cells
    items = [_item(0, truth * 0.7, truth)]
    summary = write_evaluation_report(items, items, tmp_path, thresholds=(1.0, 0.8, 0.6, 0.4))
    assert summary["fixed_threshold"] == 0.6 and summary["calibration_curve"]["v_rand"][:2] == [2 / 3, 2 / 3]


def test_summary_reports_fixed_threshold_and_max_over_thresholds():
    truth = two_cells()
    items = [_item(3, truth * 0.7, truth), _item(4, np.zeros(truth.shape), truth)]
    summary = evaluation_summary(items, threshold=0.5, thresholds=(1.0, 0.5))
    assert summary["slices"] == [3, 4]
    assert summary["mean_at_fixed_threshold"]["v_rand"] == pytest.approx((1 + 2 / 3) / 2)
    assert summary["max_over_thresholds"]["v_rand"] == pytest.approx((1 + 2 / 3) / 2)
    assert summary["max_over_thresholds"]["v_rand_threshold"] == 0.5
    assert summary["mean_curve"]["v_rand"][0] == pytest.approx(2 / 3)
    # membrane at p >= 0.5: slice 3 is exact, slice 4 misses the 4 membrane pixels of 36
    assert summary["per_slice"][0]["pixel_accuracy"] == 1.0
    assert summary["per_slice"][1]["pixel_accuracy"] == pytest.approx(32 / 36)
    assert summary["per_slice"][1]["membrane_dice"] == 0.0


def test_report_files_are_written(tmp_path):
    truth = two_cells(width=33, height=32)
    heldout = [_item(7, truth * 0.9, truth)]
    calibration = [_item(0, truth * 0.9, truth)]
    summary = write_evaluation_report(heldout, calibration, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["evaluation.png", "metrics.csv", "metrics.json"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == json.loads(json.dumps(summary))
    assert "validation slices [0]" in summary["fixed_threshold_source"]
    curve = summary["calibration_curve"]
    assert len(curve["thresholds"]) == len(curve["v_rand"]) == 11
    assert curve["thresholds"][int(np.argmax(curve["v_rand"]))] == summary["fixed_threshold"]
    assert curve["v_rand"][0] < 1.0 and max(curve["v_rand"]) == pytest.approx(1.0)
    given = write_evaluation_report(heldout, None, tmp_path / "given", threshold=0.5)
    assert "calibration_curve" not in given
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    assert [row["slice"] for row in rows] == ["7", "mean"]
    assert float(rows[-1]["v_rand"]) == pytest.approx(1.0)
    assert (tmp_path / "out" / "evaluation.png").read_bytes()[:4] == b"\x89PNG"


def test_the_report_scores_the_cell_maps_too(tmp_path):
    truth = two_cells(width=33, height=32)
    heldout = [_item(7, truth * 0.9, truth), _item(8, np.zeros(truth.shape), truth)]  # exact, then merged
    summary = write_evaluation_report(heldout, None, tmp_path, threshold=0.5, cells=CellLabeller())
    cells = summary["cells"]
    assert cells["labeller"] == {"method": "components", "membrane_threshold": 0.5}
    assert [row["slice"] for row in cells["per_slice"]] == [7, 8]
    assert [row["v_rand"] for row in cells["per_slice"]] == pytest.approx([1.0, 2 / 3])
    assert [(row["cells"], row["merges"]) for row in cells["per_slice"]] == [(2, 0), (1, 1)]
    assert cells["mean"]["v_rand"] == pytest.approx(5 / 6) and cells["mean"]["merges"] == 0.5
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [row["cell_cells"] for row in rows] == ["2", "1", "1.5"]
    assert float(rows[-1]["cell_v_rand"]) == pytest.approx(5 / 6)
    assert (tmp_path / "evaluation.png").read_bytes()[:4] == b"\x89PNG"


def test_instance_labels_add_object_scores_pooled_over_the_sections(tmp_path):
    truth = two_cells(width=33, height=32)
    instances = np.where(truth == 0, 1, 0) * (1 + (np.arange(33) > 16))  # the two cells' ids
    heldout = [_item(7, truth * 0.9, truth), _item(8, np.zeros(truth.shape), truth)]  # exact, then merged
    for item in heldout:
        item["instances"] = instances
    cells = write_evaluation_report(heldout, None, tmp_path, threshold=0.5, cells=CellLabeller())["cells"]
    assert [row["object_f1"] for row in cells["per_slice"]] == [1.0, 0.0]  # the merged cell overlaps each < 0.5
    assert cells["mean"]["object_precision"] == pytest.approx(2 / 3)  # 2 of the 3 predicted objects match
    assert cells["mean"]["object_recall"] == pytest.approx(2 / 4)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert float(rows[-1]["object_f1"]) == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))


def test_report_needs_slices_and_a_threshold_source(tmp_path):
    truth = two_cells()
    with pytest.raises(ValueError, match="no held-out"):
        write_evaluation_report([], None, tmp_path)
    with pytest.raises(ValueError, match="no threshold"):
        write_evaluation_report([_item(0, truth, truth)], [], tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_evaluation_report_scores_what_the_predictor_gives(tmp_path):
    """The predictor's probability of each raw section is scored; the threshold is chosen on the validation items."""
    truth = two_cells(width=33, height=32)

    class Predictor:  # stands in for inference.json's pipeline: raw -> probability, and its preprocessing
        section_context = 0

        def preprocessing(self, item):
            return {"image": item["image"][None] / 255.0}

        def __call__(self, raw):
            return (raw > 100).astype(np.float32) * 0.9

    raw = np.where(truth > 0, 200, 20).astype(np.uint8)
    datalist = [{"slice": 5, "image": raw, "label": truth}]
    report = EvaluationReport(tmp_path, Predictor())
    summary = report.run(datalist, [{"slice": 0, "image": raw, "label": truth}])
    assert summary["slices"] == [5] and "validation slices [0]" in summary["fixed_threshold_source"]
    assert summary["mean_at_fixed_threshold"]["v_rand"] == 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["slices"] == [5]
    with pytest.raises(ValueError, match="no threshold"):  # neither a threshold nor validation sections
        EvaluationReport(tmp_path / "other", Predictor()).run(datalist)
