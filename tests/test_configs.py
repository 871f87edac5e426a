"""The real bundle configs, run through `python -m monai.bundle` exactly as a user runs them, on tiny data.

Each run is a subprocess from the bundle folder with overrides that shrink the data (10 slices of 96x96),
patches, batch and schedule; nothing else about the configs is changed.
"""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from conftest import BUNDLE, DATA, bundle_config, touching_blobs
from monai.transforms import Compose
from PIL import Image
from skimage.measure import label as connected_components

import scripts.checkpoints
import scripts.stack_io

TRAIN = ["--config_file", "configs/train.json"]
EVALUATE = ["--config_file", "['configs/train.json','configs/evaluate.json']"]
INFER = ["--config_file", "configs/inference.json"]
COMMON = ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]
TINY_TRAINING = ["--patch_size", "[64,64]", "--batch_size", "2", "--iterations_per_epoch", "3", "--num_workers", "0"]


def bundle_run(
    run_id: str, config: list[str], *overrides: str, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, *config, *COMMON, *overrides]
    environment = {**os.environ, **(env or {})}
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=600, env=environment)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


#: the trained fixture's run, which the resume test repeats with a kill after epoch 2: one loader worker, so the
#: workers' random draws are part of what a resume must reproduce
TRAINED = ["--max_epochs", "3", *TINY_TRAINING, "--num_workers", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_stack_dir):
    """A 3-epoch training run on the tiny stack, with its own temporary folder: (output_dir, ckpt_dir, log, tmp); the
    log is stdout, then stderr.

    Tests only read it (they pass alone and in any order); a test that trains further copies it first."""
    root = tmp_path_factory.mktemp("train")
    output_dir, ckpt_dir, temporary = root / "run", root / "models", root / "tmp"
    temporary.mkdir()
    result = bundle_run(
        "training", TRAIN, "--dataset_dir", str(tiny_stack_dir), "--output_dir", str(output_dir),
        "--ckpt_dir", str(ckpt_dir), *TRAINED, env={"TMPDIR": str(temporary)},
    )  # fmt: skip
    return output_dir, ckpt_dir, result.stdout + result.stderr, temporary


def test_training_writes_best_and_latest_checkpoints_and_reports_progress(trained):
    output_dir, ckpt_dir, log, _ = trained
    assert (ckpt_dir / "model.pt").is_file()
    assert (output_dir / "checkpoint_epoch=3.pt").is_file()
    checkpoint = torch.load(output_dir / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer", "best_metric", "average_warmup"} <= set(checkpoint)
    assert "epoch 3/3 | loss" in log and "val_v_rand" in log and "ETA" in log
    losses = [float(line.split("| loss ")[1].split()[0]) for line in _epoch_lines(log)]
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert any(path.name.startswith("events.out.tfevents") for path in output_dir.iterdir())


#: TrainingProgress's line: mean loss, every validation score (V_rand first, with its best), learning rate, ETA
PROGRESS_LINE = re.compile(
    r"\S+ \S+ - TrainingProgress - INFO - epoch (\d+)/(\d+) \| loss [\d.]+ \| val_v_rand [\d.]+ "
    r"\(best [\d.]+ at epoch \d+\), val_v_info [\d.]+, val_accuracy [\d.]+, val_dice [\d.]+ \| "
    r"lr [\d.]+e[+-]\d+ \| elapsed [\d.]+ min, ETA [\d.]+ min"
)


def _epoch_lines(log: str) -> list[str]:
    """What the log has between the trainer's first line ("Engine run ...") and its last ("Engine run finished")."""
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if "SupervisedTrainer - INFO - Engine run" in line)
    end = next(i for i, line in enumerate(lines) if "SupervisedTrainer - INFO - Engine run finished" in line)
    return lines[start + 1 : end]


def test_a_log_that_is_not_a_terminal_has_one_line_per_epoch(trained):
    """The fixture's output is captured, not a terminal: between the trainer's start and end the log has one line
    per epoch, no per-iteration losses (they made 1,800 lines of the default schedule) and no engine chatter."""
    epochs = [PROGRESS_LINE.fullmatch(line) for line in _epoch_lines(trained[2])]
    assert all(epochs), _epoch_lines(trained[2])
    assert [match.groups() for match in epochs] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert "Loading dataset" not in trained[2]  # no progress bar either, not even the dataset cache's


def test_the_progress_bar_on_request_goes_to_stderr_and_the_log_keeps_one_line_per_epoch(tiny_stack_dir, tmp_path):
    result = bundle_run(
        "training", TRAIN, "--dataset_dir", str(tiny_stack_dir), "--output_dir", str(tmp_path / "run"),
        "--ckpt_dir", str(tmp_path / "models"), "--max_epochs", "2", *TINY_TRAINING, "--progress_bar", "true",
    )  # fmt: skip
    for epoch in (1, 2):  # a bar per epoch; which states it draws depends on tqdm's refresh interval
        assert re.search(rf"Epoch \[{epoch}/2\]: \[\d/3\]", result.stderr), result.stderr[-2000:]
    epochs = [PROGRESS_LINE.fullmatch(line) for line in _epoch_lines(result.stdout)]
    assert all(epochs) and [match.groups() for match in epochs] == [("1", "2"), ("2", "2")]


def test_training_on_sections_smaller_than_the_window_keeps_a_model_that_learned(tiny_stack_dir, tmp_path):
    """96-pixel sections, validated through the 512 window: learning shows in validation, and the model kept is one
    that learned. With MONAI's zero padding up to the window, the validation Dice fell while the training loss fell,
    and epoch 2's weights were kept (docs/inference.md#sections-smaller-than-the-window)."""
    result = bundle_run(
        "training", TRAIN, "--dataset_dir", str(tiny_stack_dir), "--output_dir", str(tmp_path / "run"),
        "--ckpt_dir", str(tmp_path / "models"), "--max_epochs", "5", "--patch_size", "[64,64]", "--batch_size", "4",
        "--iterations_per_epoch", "4", "--num_workers", "0", "--device", "$torch.device('cpu')",
    )  # fmt: skip
    epochs = [PROGRESS_LINE.fullmatch(line) for line in _epoch_lines(result.stdout)]
    assert all(epochs) and len(epochs) == 5
    dice = [float(re.search(r"val_dice ([\d.]+)", match.group(0)).group(1)) for match in epochs]
    best_epoch = int(re.search(r"at epoch (\d+)\)", epochs[-1].group(0)).group(1))
    assert dice[-1] > dice[0] + 0.05 and best_epoch >= 4, _epoch_lines(result.stdout)


def test_isbi_labels_given_as_instances_train_exactly_as_the_membrane_labels(trained, tiny_stack_dir, tmp_path):
    """--label_format instances: each section's ids (here the ISBI cells, one id each, membrane 0) give the
    membrane mask training learns, so the run is the trained fixture's, bit for bit."""
    membrane = tifffile.imread(tiny_stack_dir / "train-labels.tif") == 0
    ids = np.stack([connected_components(~section, connectivity=1) for section in membrane]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "instances.tif", ids)
    bundle_run(
        "training", TRAIN, "--dataset_dir", str(tiny_stack_dir), "--label_format", "instances",
        "--label_path", str(tmp_path / "instances.tif"), "--output_dir", str(tmp_path / "run"),
        "--ckpt_dir", str(tmp_path / "models"), *TRAINED,
    )  # fmt: skip
    expected = torch.load(trained[1] / "model.pt", map_location="cpu", weights_only=True)
    found = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(found[name], value) for name, value in expected.items())


def test_training_leaves_nothing_in_the_temporary_folder(trained):
    # torchinductor_<user> is torch's compile cache, one per user and reused by every run, not a run's leftover
    left = [path.name for path in trained[3].iterdir() if not path.name.startswith("torchinductor_")]
    assert left == []  # the loader workers' pymp-* folders (their sockets) are gone


def _states_equal(first, second, where: str = "") -> list[str]:
    """Where two nested checkpoint states differ (tensors bitwise), as a list of paths; empty when equal."""
    if isinstance(first, torch.Tensor):
        return [] if isinstance(second, torch.Tensor) and torch.equal(first, second) else [where]
    if isinstance(first, dict):
        if not isinstance(second, dict) or set(first) != set(second):
            return [where]
        return [path for key in first for path in _states_equal(first[key], second[key], f"{where}/{key}")]
    if isinstance(first, list | tuple):
        if not isinstance(second, list | tuple) or len(first) != len(second):
            return [where]
        return [
            path
            for i, (a, b) in enumerate(zip(first, second, strict=True))
            for path in _states_equal(a, b, f"{where}[{i}]")
        ]
    return [] if first == second else [where]


def test_a_run_killed_after_an_epoch_resumes_to_the_uninterrupted_result(trained, tiny_stack_dir, tmp_path):
    """The real training command, killed with SIGKILL right after epoch 2's checkpoint (a handler added to `run`),
    then resumed: its last checkpoint and model file are bitwise those of the run never stopped (the fixture)."""
    common = ["--dataset_dir", str(tiny_stack_dir), "--output_dir", str(tmp_path / "run")]
    common += ["--ckpt_dir", str(tmp_path / "models"), *TRAINED]
    kill_after_epoch_2 = (
        "['$@train#checkpoint.attach(@train#trainer)', '$@train#trainer.add_event_handler("
        "ignite.engine.Events.EPOCH_COMPLETED(once=2), lambda engine: os.kill(os.getpid(), 9))', "
        "'$@train#trainer.run()']"
    )
    killed = bundle_run("training", TRAIN, *common, "--run", kill_after_epoch_2, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(path.name for path in (tmp_path / "run").glob("checkpoint_epoch=*.pt")) == [
        "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt",
    ]  # fmt: skip
    resumed = bundle_run("training", TRAIN, *common, "--resume", "true")
    assert "checkpoint_epoch=2.pt" in resumed.stdout  # restored from the latest checkpoint
    assert "epoch 3/3" in resumed.stdout and "epoch 1/3" not in resumed.stdout and "epoch 2/3" not in resumed.stdout
    output_dir, ckpt_dir, log, _ = trained
    expected = torch.load(output_dir / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    found = torch.load(tmp_path / "run" / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    # model, optimizer (Adam's moments and step), weight average and its warm-up, learning-rate schedule, trainer
    # counters, best score: all equal, so were the random draws of epoch 3 (patches, augmentations, batch order)
    assert _states_equal(expected, found) == []
    assert (tmp_path / "models" / "model.pt").read_bytes() == (ckpt_dir / "model.pt").read_bytes()
    assert _epoch_report(log, 3) == _epoch_report(resumed.stdout, 3)  # loss, validation score, best, learning rate


def _epoch_report(log: str, epoch: int) -> str:
    """The loss, validation score and learning rate TrainingProgress logged for ``epoch`` (not its times)."""
    line = next(line for line in log.splitlines() if f"epoch {epoch}/" in line and "| loss" in line)
    return " | ".join(line.split(" | ")[1:4])


def test_evaluate_writes_metrics_for_the_heldout_slices(trained, tiny_stack_dir, tmp_path):
    ckpt_dir = trained[1]
    bundle_run(
        "evaluating", EVALUATE, "--dataset_dir", str(tiny_stack_dir), "--ckpt_dir", str(ckpt_dir),
        "--output_dir", str(tmp_path),
    )  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["slices"] == [8, 9]  # fold 4 of 5 over 10 slices: test 8-9, validation 6-7
    assert metrics["fixed_threshold_source"] == "best mean V_rand on the validation slices [6, 7]"
    assert [row["slice"] for row in metrics["cells"]["per_slice"]] == [8, 9]
    assert metrics["cells"]["labeller"] == cell_options("configs/train.json", "configs/evaluate.json")
    assert metrics["cells"]["mean"]["true_cells"] > 0 and 0.0 <= metrics["cells"]["mean"]["v_rand"] <= 1.0
    assert "cell_v_rand" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
    for value in (*metrics["mean_at_fixed_threshold"].values(), metrics["max_over_thresholds"]["v_rand"]):
        assert 0.0 <= value <= 1.0
    assert metrics["max_over_thresholds"]["v_rand"] >= metrics["mean_at_fixed_threshold"]["v_rand"] - 1e-12
    assert (tmp_path / "metrics.csv").read_text().splitlines()[-1].startswith("mean,")
    assert (tmp_path / "evaluation.png").stat().st_size > 0


def cell_options(*config_files: str) -> dict:
    """The cells' options as the labeller records them (null ones, as a membrane network's affinity_offsets, are
    none)."""
    config = bundle_config(list(config_files))
    options = {key: config.get_parsed_content(f"cells#{key}") for key in config.get("cells") if not key.startswith("_")}
    return {key: value for key, value in options.items() if value is not None}


@pytest.mark.parametrize("overlay", [[], ["configs/objects.json"]])
def test_evaluation_scores_the_cells_inference_writes(overlay):
    evaluated = cell_options("configs/train.json", "configs/evaluate.json", *overlay)
    assert evaluated == cell_options("configs/inference.json", *overlay)
    assert evaluated["objects_on_background"] is bool(overlay)


def test_a_learned_edge_classifier_is_one_override_away_and_recorded_by_its_path(tmp_path):
    from scripts.edge_costs import NUM_FEATURES, EdgeClassifier

    path = tmp_path / "edge_classifier.json"
    EdgeClassifier(np.zeros(NUM_FEATURES), np.ones(NUM_FEATURES), np.zeros(NUM_FEATURES), 0.0).save(path)
    overrides = {"cells#method": "gasp", "cells#edge_classifier": str(path)}
    labeller = bundle_config(["configs/inference.json"], overrides).get_parsed_content("cells")
    assert json.loads(json.dumps(labeller.options))["edge_classifier"] == str(path)  # as metrics.json records it
    assert isinstance(labeller._label_options["edge_classifier"], EdgeClassifier)


def test_intensity_percentiles_scale_training_evaluation_and_inference_alike(tiny_stack_dir):
    """One --intensity_percentiles reaches the training transforms, the evaluation's predictor (built from
    inference.json) and inference, and they scale a section the same way."""
    overrides = {"intensity_percentiles": [1, 99.5], "dataset_dir": str(tiny_stack_dir), "device": "cpu"}
    train = bundle_config(["configs/train.json", "configs/evaluate.json"], overrides)
    item = train.get_parsed_content("labelled_slices")[0]
    trained = Compose(train.get_parsed_content("deterministic_transforms"))(item)["image"]
    evaluated = train.get_parsed_content("predictor").preprocessing({"image": item["image"], "intensity_range": None})
    inferred = bundle_config(["configs/inference.json"], overrides).get_parsed_content("predictor")
    assert inferred.intensity_percentiles == (1.0, 99.5)
    inferred = inferred.preprocessing({"image": item["image"], "intensity_range": None})["image"]
    np.testing.assert_array_equal(trained, evaluated["image"])
    np.testing.assert_array_equal(trained, inferred)
    assert (trained == 0).float().mean() > 0.005 and (trained == 1).float().mean() > 0.003  # clipped at both ends


@pytest.mark.parametrize("overlay", [[], ["configs/affinities.json"], ["configs/objects.json"]])
def test_training_and_evaluation_derive_the_membrane_as_inference_does(overlay):
    """train.json's postprocessing (validation, evaluation) is inference.json's, with or without an overlay."""
    train = bundle_config(["configs/train.json", "configs/evaluate.json", *overlay]).get("postprocessing")
    assert train == bundle_config(["configs/inference.json", *overlay]).get("postprocessing")


def test_evaluate_with_a_given_threshold_and_test_time_augmentation(trained, tiny_stack_dir, tmp_path):
    common = ["--dataset_dir", str(tiny_stack_dir), "--ckpt_dir", str(trained[1]), "--membrane_threshold", "0.7"]
    bundle_run("evaluating", EVALUATE, *common, "--output_dir", str(tmp_path), "--test_time_augmentation", "true")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["fixed_threshold"] == 0.7 and metrics["fixed_threshold_source"] == "given"
    # what the 8-view average computes is tested exactly in test_inferers.py and, through inference, below
    config = bundle_config(["configs/train.json", "configs/evaluate.json"], {"test_time_augmentation": True})
    inferer = config.get_parsed_content("validate#inferer")  # the calibration's and the test sections' inferer
    assert (
        type(inferer).__name__ == "DihedralAverageInferer" and type(inferer.inferer).__name__ == "FittedWindowInferer"
    )


def test_inference_writes_probability_and_segmentation_stacks(trained, tiny_stack_dir, tmp_path):
    ckpt_dir = trained[1]
    bundle_run(
        "inferring", INFER, "--dataset_dir", str(tiny_stack_dir), "--ckpt_dir", str(ckpt_dir),
        "--output_dir", str(tmp_path), "--challenge_submission", "yes", "--membrane_threshold", "0.6",
    )  # fmt: skip
    probability = tifffile.imread(tmp_path / "test-volume_membrane_probability.tif")
    segmentation = tifffile.imread(tmp_path / "test-volume_segmentation.tif")
    submission = tifffile.imread(tmp_path / "test-volume_isbi2012_submission.tif")
    assert probability.shape == segmentation.shape == (3, 96, 96)
    with tifffile.TiffFile(tmp_path / "test-volume_segmentation.tif") as written:  # 3 slices, not one RGB image
        assert len(written.pages) == 3 and written.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    assert probability.dtype == np.float32 and segmentation.dtype == np.uint8
    assert 0.0 <= probability.min() and probability.max() <= 1.0
    assert set(np.unique(segmentation)) <= {0, 255}
    np.testing.assert_array_equal(segmentation == 255, probability < 0.6)  # interior below the membrane threshold
    np.testing.assert_allclose(submission, 1.0 - probability)
    cells = tifffile.imread(tmp_path / "test-volume_cells.tif")
    assert cells.dtype == np.uint32 and cells.shape == (3, 96, 96)
    ids = [set(np.unique(section)) - {0} for section in cells]
    assert all(ids) and not ids[0] & ids[1] and not ids[1] & ids[2]  # unique across sections
    rows = list(csv.DictReader((tmp_path / "test-volume_cells.csv").open()))
    assert sorted(int(row["id"]) for row in rows) == sorted(set().union(*ids))
    assert "area_nm2" not in rows[0]  # the tiny stack records no pixel size


def test_a_16_bit_stack_gives_the_cells_of_its_8_bit_original(trained, tiny_stack_dir, tmp_path):
    """Each section is scaled with its own range, so a 16-bit camera's stack (the 8-bit one times 257) is read
    exactly as its 8-bit original."""
    stack = tifffile.imread(tiny_stack_dir / "test-volume.tif")
    for name, pixels in (("eight", stack), ("sixteen", stack.astype(np.uint16) * 257)):
        tifffile.imwrite(tmp_path / f"{name}.tif", pixels, photometric="minisblack")
        bundle_run(
            "inferring", INFER, "--input_path", str(tmp_path / f"{name}.tif"), "--ckpt_dir", str(trained[1]),
            "--output_dir", str(tmp_path / name),
        )  # fmt: skip
    eight, sixteen = (tifffile.imread(tmp_path / name / f"{name}_cells.tif") for name in ("eight", "sixteen"))
    np.testing.assert_array_equal(sixteen, eight)


def test_inference_keeps_the_pixel_size_given_on_the_command_line(trained, tiny_stack_dir, tmp_path):
    ckpt_dir = trained[1]
    bundle_run(
        "inferring", INFER, "--dataset_dir", str(tiny_stack_dir), "--ckpt_dir", str(ckpt_dir),
        "--output_dir", str(tmp_path), "--pixel_size", "[4, 4]",
    )  # fmt: skip
    for name in ("membrane_probability", "segmentation", "cells"):
        assert scripts.stack_io.read_pixel_size(tmp_path / f"test-volume_{name}.tif") == pytest.approx((4.0, 4.0))
    row = next(csv.DictReader((tmp_path / "test-volume_cells.csv").open()))
    assert float(row["area_nm2"]) == pytest.approx(16 * float(row["area_px"]))


def test_inference_on_a_folder_of_png_slices_of_any_size(trained, tmp_path):
    """Any section size, and test-time augmentation exactly as the symmetry it relies on: the 8-view average of a
    quarter-turned stack is the quarter-turned average (the network alone is not equivariant)."""
    images = tifffile.imread(DATA / "test-volume.tif")[:2, :70, :130]
    for name, stack in (("my_stack", images), ("turned", np.rot90(images, 1, axes=(1, 2)))):
        (tmp_path / name).mkdir()
        for index, image in enumerate(stack):
            Image.fromarray(np.ascontiguousarray(image)).save(tmp_path / name / f"section_{index}.png")

    def infer(name: str, augmented: str) -> np.ndarray:
        output = tmp_path / f"{name}_{augmented}"
        bundle_run(
            "inferring", INFER, "--input_path", str(tmp_path / name), "--ckpt_dir", str(trained[1]),
            "--output_dir", str(output), "--test_time_augmentation", augmented,
        )  # fmt: skip
        return tifffile.imread(output / f"{name}_membrane_probability.tif")

    plain, averaged, turned = infer("my_stack", "false"), infer("my_stack", "true"), infer("turned", "true")
    assert plain.shape == averaged.shape == (2, 70, 130) and turned.shape == (2, 130, 70)
    np.testing.assert_allclose(turned, np.rot90(averaged, 1, axes=(1, 2)), atol=1e-5)  # float sums in another order
    assert np.abs(averaged - plain).max() > 1e-2  # the average is not the plain map


@pytest.fixture(scope="module")
def slice_files(tmp_path_factory, tiny_stack_dir) -> list[dict]:
    """The tiny stack the way MONAI Label keeps it: one PNG per section, labels as class indices (1 = membrane)."""
    folder = tmp_path_factory.mktemp("slice_files")
    images = tifffile.imread(tiny_stack_dir / "train-volume.tif")
    membranes = (tifffile.imread(tiny_stack_dir / "train-labels.tif") == 0).astype(np.uint8)
    items = []
    for index, (image, membrane) in enumerate(zip(images, membranes, strict=True)):
        Image.fromarray(image).save(folder / f"section_{index}.png")
        Image.fromarray(membrane).save(folder / f"section_{index}_label.png")
        items.append(
            {"image": str(folder / f"section_{index}.png"), "label": str(folder / f"section_{index}_label.png")}
        )
    return items


@pytest.mark.parametrize("num_validation", [2, 0])
def test_training_on_a_datalist_of_slice_files_as_monai_label_passes_it(slice_files, tmp_path, num_validation):
    """MONAI Label's BundleTrainTask sets train#dataset#data, validate#dataset#data and train#trainer#max_epochs;
    the stacks under dataset_dir are then never read. Without validation data the final network becomes the model."""
    result = bundle_run(
        "run", TRAIN, "--dataset_dir", str(tmp_path / "no_stacks_here"), "--output_dir", str(tmp_path / "run"),
        "--ckpt_dir", str(tmp_path / "models"), "--train#trainer#max_epochs", "2", *TINY_TRAINING,
        "--train#dataset#data", json.dumps(slice_files[:6]),
        "--validate#dataset#data", json.dumps(slice_files[6 : 6 + num_validation]),
    )  # fmt: skip
    assert "epoch 2/2 | loss" in result.stdout
    assert ("val_v_rand" in result.stdout) == (num_validation > 0)
    weights = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    network = parsed_train_config({"device": "cpu"}).get_parsed_content("network_def")
    network.load_state_dict(weights)  # a complete U-Net state dict, whichever saver wrote it


def test_learning_rate_schedule_follows_the_trainer_epochs_monai_label_sets():
    config = parsed_train_config({"train#trainer#max_epochs": 3, "device": "cpu"})
    assert config.get_parsed_content("lr_scheduler").T_max == 3


def test_inference_post_transforms_give_the_label_map_monai_label_writes():
    config = bundle_config(["configs/inference.json"], {"membrane_threshold": 0.4})
    logits = torch.logit(torch.tensor([[[0.05, 0.39], [0.41, 0.95]]]))  # (1, H, W) membrane logits
    label_map = config.get_parsed_content("post_transforms")({"pred": logits})["pred"]
    assert isinstance(label_map, np.ndarray) and label_map.dtype == np.uint8
    np.testing.assert_array_equal(label_map, [[0, 0], [1, 1]])  # membrane where p >= 0.4, as in the stacks
    labels = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]
    assert labels["pred"]["channel_def"] == {"0": "background", "1": "membrane"}


@pytest.mark.parametrize("network", ["segnet", "usegnet", "tiramisu"])
def test_each_network_keeps_its_weights_in_its_own_folder_which_monai_label_does_not_list(network):
    ckpt_dir = bundle_config(["configs/train.json", f"configs/{network}.json"]).get_parsed_content("ckpt_dir")
    assert ckpt_dir == str(BUNDLE / "models" / network)
    assert bundle_config(["configs/inference.json", f"configs/{network}.json"]).get_parsed_content("model_path") == (
        str(BUNDLE / "models" / network / "model.pt")
    )
    assert sorted(path.name for path in (BUNDLE / "models").glob("*.pt")) == ["model.pt"]  # MONAI Label's glob


@pytest.mark.parametrize("network_config", ["segnet.json", "usegnet.json", "tiramisu.json"])
def test_other_networks_train_evaluate_and_infer_through_the_same_configs(network_config, tiny_stack_dir, tmp_path):
    def with_network(*files: str) -> list[str]:
        return ["--config_file", str([*(f"configs/{name}" for name in files), f"configs/{network_config}"])]

    common = ["--dataset_dir", str(tiny_stack_dir), "--ckpt_dir", str(tmp_path / "models")]
    bundle_run(
        "training", with_network("train.json"), *common, "--output_dir", str(tmp_path / "run"), "--max_epochs", "1",
        *TINY_TRAINING,
    )  # fmt: skip
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == ["model.pt"]
    weights = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    network = bundle_config(["configs/train.json", f"configs/{network_config}"]).get_parsed_content("network_def")
    assert weights.keys() == network.state_dict().keys()

    bundle_run(
        "evaluating", with_network("train.json", "evaluate.json"), *common, "--output_dir", str(tmp_path / "evaluate")
    )
    assert json.loads((tmp_path / "evaluate" / "metrics.json").read_text())["slices"] == [8, 9]

    bundle_run("inferring", with_network("inference.json"), *common, "--output_dir", str(tmp_path / "inference"))
    segmentation = tifffile.imread(tmp_path / "inference" / "test-volume_segmentation.tif")
    assert segmentation.shape == (3, 96, 96) and set(np.unique(segmentation)) <= {0, 255}


def test_section_context_trains_evaluates_and_infers_through_the_same_configs(tiny_stack_dir, tmp_path):
    """``--section_context 1``: three sections in, the same outputs; tiles with their z-halo give the whole
    sections' probability; weights of another context are refused in one line."""
    common = ["--dataset_dir", str(tiny_stack_dir), "--ckpt_dir", str(tmp_path / "models"), "--section_context", "1"]
    bundle_run("training", TRAIN, *common, "--output_dir", str(tmp_path / "run"), "--max_epochs", "1", *TINY_TRAINING)
    weights = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert next(iter(weights.values())).shape[1] == 3  # the first convolution takes the three sections

    bundle_run("evaluating", EVALUATE, *common, "--output_dir", str(tmp_path / "evaluate"))
    assert json.loads((tmp_path / "evaluate" / "metrics.json").read_text())["slices"] == [8, 9]

    blocks_of = {"whole": [], "tiled": ["--block_size", "64"]}
    for name, blocks in blocks_of.items():
        bundle_run("inferring", INFER, *common, "--output_dir", str(tmp_path / name), *blocks)
    whole, tiled = (tifffile.imread(tmp_path / name / "test-volume_membrane_probability.tif") for name in blocks_of)
    assert whole.shape == (3, 96, 96) and np.abs(whole - tiled).max() <= 1e-4

    plain = bundle_run("inferring", INFER, *common[:-2], "--output_dir", str(tmp_path / "plain"), check=False)
    assert plain.returncode != 0
    last_line = plain.stderr.strip().splitlines()[-1]
    assert "model.pt: weights do not fit the configured network_def" in last_line
    assert "the weights take 3 sections: --section_context 1" in last_line


def with_overlay(overlay: str, *files: str) -> list[str]:
    """``--config_file`` of the bundle's config ``files`` with the target ``overlay`` last."""
    return ["--config_file", str([*(f"configs/{name}" for name in (*files, overlay))])]


def test_affinities_train_evaluate_and_infer_through_the_same_configs(tiny_stack_dir, tmp_path):
    """configs/affinities.json: eight offsets out, the membrane derived from them for every output."""

    def with_affinities(*files: str) -> list[str]:
        return with_overlay("affinities.json", *files)

    common = ["--dataset_dir", str(tiny_stack_dir), "--ckpt_dir", str(tmp_path / "models")]
    bundle_run(
        "training", with_affinities("train.json"), *common, "--output_dir", str(tmp_path / "run"),
        "--max_epochs", "1", *TINY_TRAINING,
    )  # fmt: skip
    weights = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert list(weights.values())[-1].shape[0] == 8  # the last layer's bias: one logit per offset
    bundle_run(
        "evaluating", with_affinities("train.json", "evaluate.json"), *common, "--output_dir", str(tmp_path / "e")
    )
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["slices"] == [8, 9]
    bundle_run("inferring", with_affinities("inference.json"), *common, "--output_dir", str(tmp_path / "inference"))
    probability = tifffile.imread(tmp_path / "inference" / "test-volume_membrane_probability.tif")
    assert probability.shape == (3, 96, 96) and 0 <= probability.min() and probability.max() <= 1
    learned = ["--cells#method", "mutex_watershed", "--output_dir", str(tmp_path / "learned")]  # on its affinities
    bundle_run("inferring", with_affinities("inference.json"), *common, *learned)
    assert tifffile.imread(tmp_path / "learned" / "test-volume_cells.tif").shape == (3, 96, 96)


def test_objects_on_a_background_train_evaluate_and_infer_through_the_same_configs(tiny_stack_dir, tmp_path):
    """configs/objects.json on 16-bit touching blobs with instance labels: membrane and foreground out, the
    membrane for every output, the cells scored as objects too."""
    images, ids = touching_blobs(sections=10)
    folder = tmp_path / "blobs"
    folder.mkdir()
    tifffile.imwrite(folder / "train-volume.tif", images)
    tifffile.imwrite(folder / "train-labels.tif", ids.astype(np.uint16))
    tifffile.imwrite(folder / "test-volume.tif", images[:3])

    def with_objects(*files: str) -> list[str]:
        return with_overlay("objects.json", *files)

    common = ["--dataset_dir", str(folder), "--ckpt_dir", str(tmp_path / "models")]
    bundle_run(
        "training", with_objects("train.json"), *common, "--output_dir", str(tmp_path / "run"),
        "--max_epochs", "1", *TINY_TRAINING,
    )  # fmt: skip
    weights = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert list(weights.values())[-1].shape[0] == 2  # the last layer's bias: membrane and foreground
    bundle_run("evaluating", with_objects("train.json", "evaluate.json"), *common, "--output_dir", str(tmp_path / "e"))
    cells = json.loads((tmp_path / "e" / "metrics.json").read_text())["cells"]
    assert cells["labeller"]["objects_on_background"] is True
    assert [sorted(row)[:3] for row in cells["per_slice"]] == [["cells", "merges", "object_f1"]] * 2
    assert 0 <= cells["mean"]["object_f1"] <= 1
    bundle_run("inferring", with_objects("inference.json"), *common, "--output_dir", str(tmp_path / "inference"))
    probability = tifffile.imread(tmp_path / "inference" / "test-volume_membrane_probability.tif")
    assert probability.shape == (3, 96, 96)
    assert tifffile.imread(tmp_path / "inference" / "test-volume_cells.tif").shape == (3, 96, 96)
    membrane_labels = ["--dataset_dir", str(tiny_stack_dir), "--label_format", "membrane"]
    refused = bundle_run(
        "training", with_objects("train.json"), *membrane_labels, *common[2:], "--output_dir", str(tmp_path / "no"),
        check=False,
    )  # fmt: skip
    assert "learn their foreground from instance labels (--label_format instances)" in refused.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("override", "expected", "border_weights"),
    [
        ({}, "BorderWeightedDiceCELoss", True),
        ({"loss": "$torch.nn.BCEWithLogitsLoss()", "border_weight": 0}, "BCEWithLogitsLoss", False),
        ({"loss": "$monai.losses.DiceLoss(sigmoid=True)", "border_weight": 0}, "DiceLoss", False),
        ({"loss": {"_target_": "DiceCELoss", "sigmoid": True}, "border_weight": 0}, "DiceCELoss", False),
    ],
)
def test_documented_loss_overrides(override, expected, border_weights):
    config = parsed_train_config(override)
    assert type(config.get_parsed_content("loss")).__name__ == expected
    transforms = config.get_parsed_content("train#preprocessing").transforms
    assert any(type(t).__name__ == "BorderWeightd" for t in transforms) is border_weights


@pytest.mark.parametrize("ema_momentum", [0, 0.005])
def test_validation_and_model_file_use_the_averaged_weights_when_averaging(tiny_stack_dir, tmp_path, ema_momentum):
    config = parsed_train_config(
        {"dataset_dir": str(tiny_stack_dir), "output_dir": str(tmp_path), "ema_momentum": ema_momentum}
    )
    network = config.get_parsed_content("network")
    validated = config.get_parsed_content("train#validated_network")
    assert (validated is network) is (ema_momentum == 0)
    assert config.get_parsed_content("validate#evaluator").network is validated
    assert config.get_parsed_content("validate#best_model_saver").save_dict["model"] is validated
    saved = config.get_parsed_content("train#checkpoint_objects")
    assert saved["model"] is network
    assert ("averaged_model" in saved) is (ema_momentum != 0)


def test_training_with_weight_averaging_saves_the_averaged_model(tiny_stack_dir, tmp_path):
    bundle_run(
        "training", TRAIN, "--dataset_dir", str(tiny_stack_dir), "--output_dir", str(tmp_path / "run"),
        "--ckpt_dir", str(tmp_path / "models"), "--max_epochs", "1", "--ema_momentum", "0.01", *TINY_TRAINING,
    )  # fmt: skip
    checkpoint = torch.load(tmp_path / "run" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    best = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    for name, averaged in checkpoint["averaged_model"].items():
        torch.testing.assert_close(best[name], averaged)  # one epoch: the best model is the averaged one
    assert any(not torch.equal(checkpoint["model"][n], checkpoint["averaged_model"][n]) for n in best)


@pytest.mark.parametrize("amp", [False, True])
def test_resume_checkpoint_holds_the_mixed_precision_scaler_when_amp_is_on(tiny_stack_dir, tmp_path, amp):
    config = parsed_train_config({"dataset_dir": str(tiny_stack_dir), "output_dir": str(tmp_path), "amp": amp})
    saved = config.get_parsed_content("train#checkpoint_objects")
    assert ("grad_scaler" in saved) is amp
    if amp:
        assert saved["grad_scaler"].trainer is config.get_parsed_content("train#trainer")


@pytest.mark.parametrize("optimizer", ["torch.optim.Adam", "torch.optim.SGD", "torch.optim.Adagrad"])
def test_documented_optimizer_overrides(optimizer):
    config = parsed_train_config({"optimizer#_target_": optimizer, "learning_rate": 1e-4})
    built = config.get_parsed_content("optimizer")
    assert f"{type(built).__module__}.{type(built).__name__}".endswith(optimizer.split(".")[-1])
    assert built.param_groups[0]["lr"] == 1e-4


@pytest.mark.parametrize(("device", "amp"), [("cpu", False), ("cuda", True), ("cuda:1", True)])
def test_amp_follows_the_device_in_use(device, amp):
    assert parsed_train_config({"device": device}).get_parsed_content("amp") is amp


def parsed_train_config(override: dict):
    return bundle_config(["configs/train.json"], override)


@pytest.mark.parametrize(("weights", "extra"), [("model.pt", []), ("segnet/model.pt", ["configs/segnet.json"])])
def test_shipped_weights_fit_the_inference_config_of_their_network(weights, extra):
    config = bundle_config(["configs/inference.json", *extra], {"device": "cpu"})
    model_path = config.get_parsed_content("model_path")
    assert model_path == str(BUNDLE / "models" / weights)
    network = scripts.checkpoints.load_weights(config.get_parsed_content("network_def"), model_path)
    section = tifffile.imread(DATA / "train-volume.tif")[24]  # a test section: no choice saw it
    truth = tifffile.imread(DATA / "train-labels.tif")[24] == 0
    with torch.no_grad():
        membrane = torch.sigmoid(network.eval()(torch.from_numpy(section / 255.0).float()[None, None]))[0, 0]
    agreement = float(((membrane.numpy() >= config.get_parsed_content("membrane_threshold")) == truth).mean())
    constant = max(truth.mean(), 1 - truth.mean())  # what all-membrane or all-interior would score
    assert agreement > constant + 0.05  # the scores they reproduce: tests/test_model_zoo.py


def test_multi_gpu_config_trains_with_two_processes_on_cpu(tiny_stack_dir, tmp_path):
    """torchrun with 2 processes and the gloo backend: both ranks train, rank 0 alone logs and writes files."""
    logs = tmp_path / "logs"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--log-dir", str(logs),
        "--redirects", "3", "-m", "monai.bundle", "run", "training",
        "--config_file", "['configs/train.json','configs/multi_gpu_train.json']", *COMMON,
        "--dataset_dir", str(tiny_stack_dir), "--output_dir", str(tmp_path / "run"),
        "--ckpt_dir", str(tmp_path / "models"), "--max_epochs", "1", *TINY_TRAINING,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=600)
    rank_logs = {int(p.parent.name): p.read_text() for p in logs.rglob("stdout.log")}
    rank_errors = "".join(f"rank {p.parent.name}:\n{p.read_text()[-2000:]}" for p in logs.rglob("stderr.log"))
    assert result.returncode == 0, result.stderr[-2000:] + rank_errors
    assert sorted(rank_logs) == [0, 1]
    for rank, log in rank_logs.items():
        assert f"emseg: process {rank} of 2 on cpu with gloo" in log
    epochs = [PROGRESS_LINE.fullmatch(line) for line in _epoch_lines(rank_logs[0])]  # one line per epoch
    assert all(epochs) and [match.groups() for match in epochs] == [("1", "1")]
    assert np.isfinite(float(epochs[0].group(0).split("| loss ")[1].split()[0]))
    assert "| loss" not in rank_logs[1] and "val_v_rand" not in rank_logs[1]  # rank 0 alone logs
    written = sorted(path.name for path in (tmp_path / "run").iterdir())
    assert [name for name in written if name.startswith("checkpoint")] == ["checkpoint_epoch=1.pt"]
    assert len([name for name in written if name.startswith("events.out")]) == 3  # rank 0's TensorBoard files only
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == ["model.pt"]
