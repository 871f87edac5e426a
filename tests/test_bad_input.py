"""Bad input through the real commands: each run stops, its output ends with one line naming the file (or flag)
and the problem, and nothing that looks like a result is left on disk."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from conftest import BUNDLE, DATA
from PIL import Image

INFER = ["inferring", "--config_file", "configs/inference.json"]
TRAIN = ["training", "--config_file", "configs/train.json"]


def run_failing(arguments: list[str], tmp_path) -> str:
    """Runs ``python -m monai.bundle run ...`` writing under tmp_path/out; returns the last line of its output."""
    command = [sys.executable, "-m", "monai.bundle", "run", *arguments, "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(
        command, cwd=BUNDLE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, check=False
    )
    assert result.returncode != 0, result.stdout[-2000:]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    return result.stdout.strip().splitlines()[-1]


def _truncated(path):
    path.write_bytes((DATA / "test-volume.tif").read_bytes()[:2_000_000])
    return path


def _not_an_image(path):
    path.write_text("section 1: 4 x 4 nm pixels\n")
    return path


def _empty_folder(path):
    path.mkdir()
    return path


def _colour(path):
    path = path.with_suffix(".png")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    return path


def _different_images(path):
    sections = tifffile.imread(DATA / "test-volume.tif")[:2, :64, :64]
    with tifffile.TiffWriter(path) as writer:
        writer.write(sections[0], photometric="minisblack")
        writer.write(sections[1, :32], photometric="minisblack")
    return path


def _one_pixel_wide(path):
    tifffile.imwrite(path, tifffile.imread(DATA / "test-volume.tif")[:3, :64, :1], photometric="minisblack")
    return path


def _nan(path):
    image = np.random.default_rng(0).random((2, 64, 64), dtype=np.float32)
    image[1, 10, 10] = np.nan
    tifffile.imwrite(path, image)
    return path


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_truncated, "corrupt or truncated TIFF"),
        (_not_an_image, "cannot be read as an image"),
        (lambda path: path, "no such file or folder"),
        (_empty_folder, "folder holds no .tif/.tiff/.png slices"),
        (_colour, "is a RGB-mode image; expected single-channel grayscale"),
        (_nan, "contains NaN or infinite values"),
        (_different_images, "holds 2 different images ((64, 64) uint8, (32, 64) uint8); expected one stack"),
        (_one_pixel_wide, "sections of 64 x 1 pixels hold no cells"),
    ],
    ids=[
        "truncated-tiff",
        "not-an-image",
        "missing-path",
        "empty-folder",
        "colour-image",
        "nan",
        "different-images",
        "one-pixel-wide",
    ],  # fmt: skip
)
def test_bad_input_stacks(tmp_path, make, problem):
    path = make(tmp_path / "input.tif")
    last = run_failing([*INFER, "--input_path", str(path)], tmp_path)
    assert last.startswith("scripts.stack_io.StackError: ") and f"{path}: " in last and problem in last


def test_image_and_label_stacks_that_do_not_match(tmp_path):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    tifffile.imwrite(stacks / "train-volume.tif", tifffile.imread(DATA / "train-volume.tif")[:6, :96, :96])
    tifffile.imwrite(stacks / "train-labels.tif", tifffile.imread(DATA / "train-labels.tif")[:5, :96, :96])
    last = run_failing([*TRAIN, "--dataset_dir", str(stacks), "--ckpt_dir", str(tmp_path / "out" / "models")], tmp_path)
    assert f"{stacks / 'train-labels.tif'}: label stack has shape (5, 96, 96) but image stack" in last
    assert "they must match section for section" in last


def test_labels_that_look_inverted_stop_training_with_the_fix(tmp_path):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    tifffile.imwrite(stacks / "train-volume.tif", tifffile.imread(DATA / "train-volume.tif")[:6, :96, :96])
    membrane = (tifffile.imread(DATA / "train-labels.tif")[:6, :96, :96] == 0).astype(np.uint8)
    tifffile.imwrite(stacks / "train-labels.tif", membrane)  # 0/1 with 1 = membrane: MONAI Label's convention
    last = run_failing([*TRAIN, "--dataset_dir", str(stacks), "--ckpt_dir", str(tmp_path / "out" / "models")], tmp_path)
    assert last.startswith(f"scripts.stack_io.StackError: {stacks / 'train-labels.tif'}: ")
    assert "the labels look inverted; pass --membrane_label 1 if 1 marks membrane" in last


def _nan_weights(path):
    state = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    next(iter(state.values()))[...] = float("nan")
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("weights", "problem"),
    [
        (lambda path: path, "weights file not found"),
        (lambda path: BUNDLE / "models" / "segnet" / "model.pt", "weights do not fit the configured network_def"),
        (_nan_weights, "weights hold NaN or infinite values"),
    ],
    ids=["missing", "wrong-network", "nan"],
)
def test_bad_weights(tmp_path, weights, problem):
    path = weights(tmp_path / "model.pt")
    last = run_failing([*INFER, "--model_path", str(path)], tmp_path)
    assert last.startswith("scripts.errors.InputError: ") and f"{path}: {problem}" in last


def test_instance_labels_read_as_membrane_labels_name_the_format_to_use(tmp_path):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    tifffile.imwrite(stacks / "train-volume.tif", tifffile.imread(DATA / "train-volume.tif")[:6, :96, :96])
    ids = np.arange(6 * 96 * 96, dtype=np.uint16).reshape(6, 96, 96) % 7
    tifffile.imwrite(stacks / "train-labels.tif", ids)
    last = run_failing([*TRAIN, "--dataset_dir", str(stacks), "--ckpt_dir", str(tmp_path / "out" / "models")], tmp_path)
    assert last.startswith(f"scripts.stack_io.StackError: {stacks / 'train-labels.tif'}: labels must be binary")
    assert last.endswith("instance labels (one id per object, 0 = background) take --label_format instances")


def test_pretrained_weights_of_another_network_stop_training_before_it_starts(tmp_path):
    path = BUNDLE / "models" / "segnet" / "model.pt"
    arguments = [*TRAIN, "--pretrained_path", str(path), "--ckpt_dir", str(tmp_path / "out" / "models")]
    last = run_failing(arguments, tmp_path)
    assert last.startswith(f"scripts.errors.InputError: {path}: weights do not fit the configured network_def")


@pytest.mark.parametrize(
    ("arguments", "flag"),
    [
        ([*INFER, "--test_time_augmentation", "maybe"], "test_time_augmentation"),
        ([*INFER, "--challenge_submission", "2"], "challenge_submission"),
        ([*TRAIN, "--resume", "maybe", "--ckpt_dir", "{out}/models"], "resume"),
        ([*TRAIN, "--progress_bar", "maybe", "--ckpt_dir", "{out}/models"], "progress_bar"),
    ],
)
def test_unknown_flag_values(tmp_path, arguments, flag):
    last = run_failing([argument.format(out=tmp_path / "out") for argument in arguments], tmp_path)
    assert last.startswith(f"scripts.errors.InputError: --{flag}: ") and "is not a boolean flag value" in last


def test_a_bad_pixel_size(tmp_path):
    last = run_failing([*INFER, "--pixel_size", "[4, 0]"], tmp_path)
    assert last.startswith("scripts.errors.InputError: --pixel_size: [4, 0] is not a (y, x) pixel size in nm")


def test_an_unknown_cell_method(tmp_path):
    last = run_failing([*INFER, "--cells#method", "magic"], tmp_path)
    assert last.startswith("scripts.errors.InputError: --cells#method: 'magic' is not one of components, watershed")


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ([*INFER, "--membrane_threshold", "abc"], "--membrane_threshold: 'abc' is not a number"),
        ([*INFER, "--membrane_threshold", "1.5"], "--membrane_threshold: 1.5 is out of range; it must be in [0, 1]"),
        ([*INFER, "--block_size", "abc"], "--block_size: 'abc' is not a whole number"),
        ([*INFER, "--block_size", "10"], "--block_size: 10 is out of range; it must be at least 64"),
        ([*INFER, "--dask_workers", "0"], "--dask_workers: 0 is out of range; it must be at least 1"),
        ([*INFER, "--cells#min_size", "-1"], "--cells#min_size: -1 is out of range; it must be at least 0"),
        ([*INFER, "--output_format", "png"], "--output_format png: must be one of tif, ome-zarr"),
        ([*INFER, "--ome_zarr_version", "0.3"], "--ome_zarr_version 0.3: must be one of"),
        ([*TRAIN, "--membrane_threshold", "abc", "--ckpt_dir", "{out}/models"], "--membrane_threshold: 'abc' is not"),
    ],
    ids=[
        "threshold-text",
        "threshold-range",
        "block-text",
        "block-range",
        "no-workers",
        "min-size",
        "output-format",
        "ome-zarr-version",
        "training-threshold",
    ],  # fmt: skip
)
def test_numeric_and_choice_flags_are_checked_and_named(tmp_path, arguments, problem):
    last = run_failing([argument.format(out=tmp_path / "out") for argument in arguments], tmp_path)
    assert last.startswith("scripts.errors.InputError: ") and problem in last


def test_an_unreachable_dask_scheduler(tmp_path):
    last = run_failing([*INFER, "--dask_scheduler", "tcp://127.0.0.1:9"], tmp_path)  # port 9: nothing listens
    assert last.startswith("scripts.errors.InputError: --dask_scheduler tcp://127.0.0.1:9: cannot connect (")
