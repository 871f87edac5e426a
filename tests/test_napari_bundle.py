"""The plugin's way into the bundle: where it is, which network a weights file is, and run inferring step by step."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import BUNDLE, DATA

from emseg_napari import bundle
from emseg_napari.bundle import NETWORKS, network_for_weights, segmentation_steps, shipped_networks


def test_weights_files_are_matched_to_their_network(tmp_path):
    assert network_for_weights(BUNDLE / "models" / "segnet" / "model.pt").name == "SegNet"
    assert network_for_weights(BUNDLE / "models" / "fold4" / "model.pt").name == "U-Net"
    (tmp_path / "broken.pt").write_bytes(b"not weights")
    assert network_for_weights(tmp_path / "broken.pt") is None
    labels = [label for label, _, _ in shipped_networks()]
    assert labels[:2] == ["U-Net (shipped)", "SegNet (shipped)"] and "U-Net: models/fold4/model.pt" in labels


def test_a_missing_bundle_is_named_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(bundle.BUNDLE_VARIABLE, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: holds no emseg bundle \\(configs/inference.json\\)"):
        bundle.bundle_root()


def test_a_closed_run_leaves_no_folder_and_a_finished_one_returns_the_layers(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the run's scratch folder, watched here
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, tifffile.imread(DATA / "test-volume.tif")[:3, :96, :128], photometric="minisblack")
    unet, weights = NETWORKS[0], BUNDLE / "models" / "model.pt"
    steps = segmentation_steps(np.zeros((3, 96, 128)), unet, weights, "cpu", source=path)
    assert next(steps) == (1, 3)
    assert [child.name.startswith("emseg-napari-") for child in tmp_path.iterdir() if child != path] == [True]
    steps.close()
    assert list(tmp_path.iterdir()) == [path]

    steps = segmentation_steps(np.zeros((3, 96, 128)), unet, weights, "cpu", source=path)
    progress = []
    while True:
        try:
            progress.append(next(steps))
        except StopIteration as finished:
            result = finished.value
            break
    assert progress == [(1, 3), (2, 3), (3, 3)] and list(tmp_path.iterdir()) == [path]
    assert result.probability.shape == result.cells.shape == (3, 96, 128)
    assert result.probability.dtype == np.float32 and result.cells.max() == len(result.table) > 0  # from the file
    assert result.table["section"].tolist() == sorted(result.table["section"]) and result.pixel_size is None
    assert Path(path).is_file()  # the layer's own file was the input: read, never written
