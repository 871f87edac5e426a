"""The bioimage.io package of configs/bioimageio.json: it passes ``bioimageio test`` for every weight format,
predicts what the bundle predicts, describes SegNet from source, and bad input writes nothing."""

import contextlib

import numpy as np
import pytest
import tifffile
import torch
from bioimageio.core import Sample, Tensor, create_prediction_pipeline, load_model_description
from bioimageio.core import test_model as bioimageio_test  # not collected by pytest under this name
from bioimageio.spec.model.v0_5 import TensorId
from conftest import BUNDLE, DATA, bundle_config

from scripts.bioimageio import WEIGHT_FORMATS, architecture_of, size_constraint
from scripts.errors import InputError, input_error_in_chain
from scripts.networks import SegNet, Tiramisu


def export(output_dir, files=("configs/bioimageio.json",), **overrides):
    """The export as the documented command runs it: from the bundle folder, where its macros find inference.json."""
    with contextlib.chdir(BUNDLE):
        config = bundle_config(list(files), {"output_dir": str(output_dir), **overrides})
        config.get_parsed_content("initialize")
        return config.get_parsed_content("bioimageio_export").run()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    # the tests below run bioimageio test themselves, so the export's own check is not repeated here
    return export(tmp_path_factory.mktemp("bioimageio"), **{"bioimageio_export#check": False})


@pytest.mark.parametrize("weight_format", WEIGHT_FORMATS)
def test_the_package_passes_bioimageio_test(package, weight_format):
    summary = bioimageio_test(package, weight_format=weight_format)
    failed = [f"{detail.name}: {detail.errors}" for detail in summary.details if detail.status == "failed"]
    assert summary.status == "passed", failed


def test_the_package_predicts_what_the_bundle_predicts(package, tmp_path):
    section = tifffile.imread(DATA / "test-volume.tif")[5]  # not the package's test section (0)
    tifffile.imwrite(tmp_path / "section.tif", section[None], photometric="minisblack")
    settings = {"input_path": str(tmp_path / "section.tif"), "output_dir": str(tmp_path), "backend": "eager"}
    config = bundle_config(["configs/inference.json"], settings)  # eager fp32, as the package's weights run
    config.get_parsed_content("initialize")
    config.get_parsed_content("run")
    bundle = tifffile.imread(tmp_path / "section_membrane_probability.tif")
    description = load_model_description(package)
    raw = Tensor.from_numpy(section[None, None].astype(np.float32), dims=("batch", "channel", "y", "x"))
    for weight_format in WEIGHT_FORMATS:
        with create_prediction_pipeline(description, weight_format=weight_format) as pipeline:
            # the whole section at once, as bioimageio test runs it: a consumer that tiles pads each tile by the
            # halo instead, which moves the instance-norm statistics (docs/bioimageio.md gives by how much)
            sample = pipeline.predict_sample_without_blocking(
                Sample(members={TensorId("raw"): raw}, stat={}, id="section"), skip_input_padding=True,
                skip_output_cropping=True,
            )  # fmt: skip
        predicted = sample.members[TensorId("membrane_probability")].data.values[0, 0]
        assert np.abs(predicted - bundle).max() <= 1e-4, weight_format


def test_the_package_declares_sizes_halo_and_processing_of_the_network(package):
    description = load_model_description(package)
    (raw,), (probability,) = description.inputs, description.outputs
    y = {axis.id: axis for axis in raw.axes}["y"]
    assert (y.size.min, y.size.step) == (128, 16)  # the U-Net halves 4 times; 128 leaves 64 px inside the halo
    assert {axis.id: axis for axis in probability.axes}["y"].halo == 32
    assert [op.id for op in raw.preprocessing][:2] == ["ensure_dtype", "scale_range"]  # the spec adds a last cast
    assert "sigmoid" in [op.id for op in probability.postprocessing]
    assert description.weights.pytorch_state_dict.architecture.callable == "UNet"
    assert {"ISBI 2012", "U-Net"} <= {word for cite in description.cite for word in ("ISBI 2012", "U-Net")
                                       if word in cite.text}  # fmt: skip


def test_segnet_is_described_from_the_bundles_source():
    network = SegNet(channels=(8, 16, 32, 64, 64), convs_per_stage=(1, 1, 1, 1, 1))
    kind, source, kwargs = architecture_of(network)
    assert kind == "file" and source.endswith("scripts/networks.py")
    assert kwargs["channels"] == [8, 16, 32, 64, 64]
    assert size_constraint(network, halo=32) == (128, 32)


def test_tiramisu_is_described_from_the_bundles_source():
    network = Tiramisu(layers_per_block=(2, 1, 3, 1, 2), growth_rate=4, norm="instance")
    kind, source, kwargs = architecture_of(network)
    assert kind == "file" and source.endswith("scripts/networks.py")
    assert kwargs["layers_per_block"] == [2, 1, 3, 1, 2] and kwargs["norm"] == "instance"
    assert size_constraint(network, halo=32) == (128, 4)


def test_the_segnet_package_runs_from_source(tmp_path):
    path = export(tmp_path, ("configs/bioimageio.json", "configs/segnet.json"), **{"bioimageio_export#check": False})
    assert path.name == "emseg_segnet.bioimageio.zip"
    description = load_model_description(path)
    assert description.weights.pytorch_state_dict.architecture.callable == "SegNet"
    assert any("SegNet" in cite.text for cite in description.cite)
    assert bioimageio_test(path, weight_format="pytorch_state_dict").status == "passed"


@pytest.mark.parametrize(
    "files, overrides, message",
    [
        (("configs/bioimageio.json",), {"model_path": "missing.pt"}, "missing.pt: weights file not found"),
        (("configs/bioimageio.json", "configs/segnet.json"), {"model_path": str(BUNDLE / "models" / "model.pt")},
         "weights do not fit the configured network_def"),
    ],
)  # fmt: skip
def test_missing_or_mismatched_weights_write_nothing(tmp_path, files, overrides, message):
    with pytest.raises(Exception) as caught:
        export(tmp_path / "out", files, **overrides)
    assert message in str(input_error_in_chain(caught.value))
    assert not (tmp_path / "out").exists()


def test_an_existing_package_is_kept_unless_overwrite(package):
    before = package.stat().st_mtime_ns
    with pytest.raises(Exception) as caught:
        export(package.parent)
    assert "a package is already there; --overwrite true replaces it" in str(input_error_in_chain(caught.value))
    assert package.stat().st_mtime_ns == before
    assert sorted(path.name for path in package.parent.iterdir()) == [package.name]  # no temporary left


def test_an_unknown_network_is_refused():
    with pytest.raises(InputError, match="describes MONAI's UNet and the bundle's SegNet, U-SegNet and Tiramisu only"):
        architecture_of(torch.nn.Conv2d(1, 1, 3))
