"""Each network the bundle offers, exported the Model Zoo way from the inference config: TorchScript with
`python -m monai.bundle ckpt_export` and ONNX with `python -m monai.bundle onnx_export`, both compared with
the eager network on a real 512x512 section."""

import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import tifffile
import torch
from conftest import BUNDLE, DATA
from monai.bundle import ConfigParser

NETWORKS = {"U-Net": [], "SegNet": ["configs/segnet.json"], "U-SegNet": ["configs/usegnet.json"]}


def inference_network(extra: list[str]) -> torch.nn.Module:
    config = ConfigParser()
    config.read_config([str(BUNDLE / "configs" / "inference.json"), *(str(BUNDLE / f) for f in extra)])
    config["device"] = "cpu"
    return config.get_parsed_content("network_def")


@pytest.fixture(scope="module", params=list(NETWORKS))
def checkpoint(request, tmp_path_factory):
    """(config files, checkpoint path, eager network in eval mode, a real section as (1, 1, 512, 512) in [0, 1])."""
    torch.manual_seed(0)
    extra = NETWORKS[request.param]
    network = inference_network(extra)
    with torch.no_grad():  # non-trivial batch-norm statistics
        network.train()(torch.rand(2, 1, 64, 64))
    path = tmp_path_factory.mktemp("export") / "weights.pt"
    torch.save(network.state_dict(), path)
    section = tifffile.imread(DATA / "test-volume.tif")[0].astype(np.float32) / 255.0
    return extra, path, network.eval(), torch.from_numpy(section)[None, None]


def export(command: str, extra: list[str], weights, target, *options: str) -> None:
    config = str(["configs/inference.json", *extra])
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", command, "network_def", "--filepath", str(target),
         "--ckpt_file", str(weights), "--config_file", config, "--meta_file", "configs/metadata.json", *options],
        cwd=BUNDLE, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


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
