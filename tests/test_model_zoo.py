"""The checks a MONAI Model Zoo submission goes through, run on this bundle: metadata against the (local copy
of the) schema, `verify_net_in_out` for each network, TorchScript export with `ckpt_export` and ONNX export
with `onnx_export` compared with the eager network on a real 512x512 section, and the `ConfigWorkflow`
property check with a run of each workflow on tiny data."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import tifffile
import torch
from conftest import BUNDLE, DATA, bundle_config

# the file metadata.json's "schema" URL names, copied here so the check runs offline
SCHEMA = Path(__file__).parent / "data" / "meta_schema_20220324.json"
NETWORKS = {"U-Net": [], "SegNet": ["configs/segnet.json"], "U-SegNet": ["configs/usegnet.json"]}


def inference_network(extra: list[str]) -> torch.nn.Module:
    return bundle_config(["configs/inference.json", *extra], {"device": "cpu"}).get_parsed_content("network_def")


SHIPPED_WEIGHTS = {"U-Net": "model.pt", "SegNet": "segnet.pt"}


@pytest.fixture(scope="module", params=list(NETWORKS))
def checkpoint(request, tmp_path_factory):
    """(config files, checkpoint path, eager network in eval mode, a real section as (1, 1, 512, 512) in [0, 1]);
    the shipped weights where there are some, else random ones with non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    extra = NETWORKS[request.param]
    network = inference_network(extra)
    path = tmp_path_factory.mktemp("export") / "weights.pt"
    if request.param in SHIPPED_WEIGHTS:
        shutil.copy(BUNDLE / "models" / SHIPPED_WEIGHTS[request.param], path)
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        with torch.no_grad():
            network.train()(torch.rand(2, 1, 64, 64))
        torch.save(network.state_dict(), path)
    section = tifffile.imread(DATA / "test-volume.tif")[0].astype(np.float32) / 255.0
    return extra, path, network.eval(), torch.from_numpy(section)[None, None]


def bundle_command(command: str, *arguments: str) -> str:
    """Runs `python -m monai.bundle <command> ...` from the bundle folder; returns its log."""
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", command, *arguments, "--meta_file", "configs/metadata.json"],
        cwd=BUNDLE, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def export(command: str, extra: list[str], weights, target, *options: str) -> None:
    config = str(["configs/inference.json", *extra])
    bundle_command(
        command, "network_def", "--filepath", str(target), "--ckpt_file", str(weights), "--config_file", config,
        *options,
    )  # fmt: skip


def test_metadata_follows_the_model_zoo_schema():
    assert "metadata is verified with no error" in bundle_command("verify_metadata", "--filepath", str(SCHEMA))


def test_metadata_names_the_versions_installed_here():
    import importlib.metadata

    import monai

    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert metadata["monai_version"] == monai.__version__
    assert metadata["pytorch_version"] == torch.__version__.split("+")[0]
    assert metadata["numpy_version"] == np.__version__
    for name, version in {**metadata["required_packages_version"], **metadata["optional_packages_version"]}.items():
        assert importlib.metadata.version(name) == version, name


def test_bundle_files_are_small_and_configs_are_four_space_json():
    for path in BUNDLE.rglob("*"):
        if path.is_file() and "runs" not in path.relative_to(BUNDLE).parts:
            assert path.stat().st_size < 25 * 1024**2, path  # Model Zoo limit per file
    for path in (BUNDLE / "configs").glob("*.json"):
        text = path.read_text()
        json.loads(text)
        indents = {len(line) - len(line.lstrip(" ")) for line in text.splitlines()}
        assert "\t" not in text and all(indent % 4 == 0 for indent in indents), path


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("n", [1, 3])
def test_network_input_and_output_match_the_metadata(network, n):
    config = str(["configs/inference.json", *NETWORKS[network]])
    log = bundle_command("verify_net_in_out", "network_def", "--config_file", config, "--n", str(n), "--device", "cpu")
    assert "data shape of network is verified with no error" in log


def test_torchscript_export_equals_the_eager_network(checkpoint):
    extra, weights, network, section = checkpoint
    target = weights.with_suffix(".ts")
    export("ckpt_export", extra, weights, target)
    scripted = torch.jit.load(target)
    with torch.no_grad():
        torch.testing.assert_close(scripted(section), network(section), rtol=0, atol=1e-5)


def test_onnx_export_runs_in_onnxruntime_like_the_eager_network(checkpoint):
    extra, weights, network, section = checkpoint
    target = weights.with_suffix(".onnx")
    export("onnx_export", extra, weights, target, "--input_shape", "[1, 1, 512, 512]")
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: section.numpy()})
    with torch.no_grad():
        expected = network(section).numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-3, atol=1e-3)


TINY_OVERRIDES = {"patch_size": [64, 64], "batch_size": 2, "iterations_per_epoch": 3, "num_workers": 0}


def check_workflow(workflow) -> None:
    """The Model Zoo's own check: initialize, no missing or mis-wired property, run, finalize."""
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()


@pytest.mark.parametrize("configs", [["train.json"], ["train.json", "segnet.json"]])
def test_train_config_passes_the_bundle_workflow_property_check(configs, tiny_stack_dir, tmp_path):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(BUNDLE / "configs" / name) for name in configs],
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        workflow_type="train",
        bundle_root=str(BUNDLE),
        dataset_dir=str(tiny_stack_dir),
        output_dir=str(tmp_path / "run"),
        ckpt_dir=str(tmp_path / "models"),
        max_epochs=1,
        **TINY_OVERRIDES,
    )
    check_workflow(workflow)
    assert workflow.max_epochs == 1 and workflow.val_interval == 1
    assert len(list((tmp_path / "models").iterdir())) == 1 and (tmp_path / "run" / "checkpoint_epoch=1.pt").is_file()


@pytest.mark.parametrize(
    "configs", [["inference.json"], ["inference.json", "segnet.json"], ["train.json", "evaluate.json"]]
)
def test_inference_and_evaluation_configs_pass_the_bundle_workflow_property_check(configs, tiny_stack_dir, tmp_path):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(BUNDLE / "configs" / name) for name in configs],
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        workflow_type="infer" if "inference.json" in configs else "train",
        bundle_root=str(BUNDLE),
        dataset_dir=str(tiny_stack_dir),
        output_dir=str(tmp_path),
        **({} if "inference.json" in configs else {"evaluation_threshold": 0.5}),
    )
    check_workflow(workflow)
    written = sorted(path.name for path in tmp_path.iterdir())
    if "inference.json" in configs:
        assert written == ["test-volume_membrane_probability.tif", "test-volume_segmentation.tif"]
    else:
        assert "metrics.json" in written
