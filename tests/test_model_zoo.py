"""The checks a MONAI Model Zoo submission goes through, run on a copy of ``bundle/`` with nothing around it:
metadata against (a local copy of) the 2024 schema, ``verify_net_in_out`` for each network, TorchScript export
with ``ckpt_export`` and ONNX export with ``onnx_export`` compared with the eager network on a real 512x512
section, the ``ConfigWorkflow`` property check with a run of each workflow, and inference on the default input.
Also the bundle's own rules: files under 25 MB, configs in the Zoo's JSON format, short ``$`` expressions,
no path out of the bundle, every runtime package in the metadata, and the metadata's scores reproduced."""

import ast
import importlib.metadata
import json
import re
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
from packaging.requirements import Requirement

# the file metadata.json's "schema" URL names, copied here so the check runs offline
SCHEMA = Path(__file__).parent / "data" / "meta_schema_20240725.json"
NETWORKS = {"U-Net": [], "SegNet": ["configs/segnet.json"], "U-SegNet": ["configs/usegnet.json"]}
SHIPPED_WEIGHTS = {"U-Net": "models/model.pt", "SegNet": "models/segnet/model.pt"}
METADATA = json.loads((BUNDLE / "configs" / "metadata.json").read_text())


@pytest.fixture(scope="module")
def standalone(tmp_path_factory) -> Path:
    """A copy of bundle/ alone, as the Model Zoo and MONAI Label take it: nothing of the repository beside it."""
    copy = tmp_path_factory.mktemp("zoo") / "emseg"
    shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    return copy


def bundle_command(bundle: Path, command: str, *arguments: str) -> str:
    """Runs `python -m monai.bundle <command> ...` from the bundle folder ``bundle``; returns its log."""
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", command, *arguments, "--meta_file", "configs/metadata.json"],
        cwd=bundle, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def inference_network(extra: list[str]) -> torch.nn.Module:
    return bundle_config(["configs/inference.json", *extra], {"device": "cpu"}).get_parsed_content("network_def")


@pytest.fixture(scope="module", params=list(NETWORKS))
def checkpoint(request, standalone):
    """(config files, checkpoint path, eager network in eval mode, a real section as (1, 1, 512, 512) in [0, 1]);
    the shipped weights where there are some, else random ones with non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    extra = NETWORKS[request.param]
    network = inference_network(extra)
    path = standalone / "runs" / "export" / request.param / "weights.pt"
    path.parent.mkdir(parents=True)
    if request.param in SHIPPED_WEIGHTS:
        shutil.copy(BUNDLE / SHIPPED_WEIGHTS[request.param], path)
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        with torch.no_grad():
            network.train()(torch.rand(2, 1, 64, 64))
        torch.save(network.state_dict(), path)
    section = tifffile.imread(DATA / "test-volume.tif")[0].astype(np.float32) / 255.0
    return extra, path, network.eval(), torch.from_numpy(section)[None, None]


def export(standalone: Path, command: str, extra: list[str], weights, target, *options: str) -> None:
    config = str(["configs/inference.json", *extra])
    bundle_command(
        standalone, command, "network_def", "--filepath", str(target), "--ckpt_file", str(weights),
        "--config_file", config, *options,
    )  # fmt: skip


def test_metadata_follows_the_2024_model_zoo_schema(standalone):
    assert METADATA["schema"].endswith("/" + SCHEMA.name)
    log = bundle_command(standalone, "verify_metadata", "--filepath", str(SCHEMA))
    assert "metadata is verified with no error" in log


# packages the configs use by name (not imported by scripts/): handler or command -> distribution
USED_BY_THE_CONFIGS = {"tensorboard": "TensorBoardStatsHandler", "tqdm": "ignite ProgressBar", "fire": "monai.bundle"}
# distributions metadata.json names in fields of their own
OWN_FIELDS = {"monai": "monai_version", "torch": "pytorch_version", "numpy": "numpy_version"}


def _imported_distributions() -> set[str]:
    """The distributions whose modules bundle/scripts imports (standard library and scripts itself left out)."""
    modules = set()
    for path in (BUNDLE / "scripts").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    third_party = modules - set(sys.stdlib_module_names) - {"__future__"}
    return {distributions[module][0].lower() for module in third_party}


def _pyproject_requirements() -> dict[str, Requirement]:
    """pyproject's [project] dependencies, as the installed emseg package records them (extras left out)."""
    requirements = [Requirement(line) for line in importlib.metadata.requires("emseg")]
    return {r.name.lower(): r for r in requirements if r.marker is None or "extra" not in str(r.marker)}


def test_metadata_names_every_runtime_package():
    named = {name.lower() for name in METADATA["required_packages_version"]} | set(OWN_FIELDS)
    runtime = _imported_distributions() | set(USED_BY_THE_CONFIGS)
    assert {"scipy", "scikit-image", "tifffile", "pytorch-ignite"} <= runtime  # the scan sees the imports
    assert runtime - named == set()
    assert named - set(OWN_FIELDS) <= set(_pyproject_requirements())  # and pyproject declares each


def test_metadata_and_installed_versions_satisfy_pyproject_ranges():
    requirements = _pyproject_requirements()
    versions = {**METADATA["required_packages_version"], **{d: METADATA[f] for d, f in OWN_FIELDS.items()}}
    for name, version in versions.items():
        requirement = requirements[name.lower()]
        assert requirement.specifier.contains(version, prereleases=True), (name, version, str(requirement))
        installed = importlib.metadata.version(name).split("+")[0]
        assert requirement.specifier.contains(installed, prereleases=True), (name, installed, str(requirement))


def test_bundle_files_are_small_and_configs_are_in_the_model_zoo_json_format():
    for path in BUNDLE.rglob("*"):
        if path.is_file() and "runs" not in path.relative_to(BUNDLE).parts:
            assert path.stat().st_size < 25 * 1024**2, path  # Model Zoo limit per file
    for path in (BUNDLE / "configs").glob("*.json"):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", path  # the Zoo's pretty-format-json


def _expressions(value, where: str = ""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _expressions(item, f"{where}#{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _expressions(item, f"{where}#{index}")
    elif isinstance(value, str) and value.startswith("$"):
        yield where, value


def test_config_expressions_are_short_and_flags_are_parsed_in_one_place():
    for path in (BUNDLE / "configs").glob("*.json"):
        for where, expression in _expressions(json.loads(path.read_text())):
            assert len(expression) <= 100, f"{path.name}{where}: {expression}"
            assert ".lower()" not in expression, f"{path.name}{where}: flags go through scripts.flags.flag"
            assert "1.0 - @" not in expression, f"{path.name}{where}: thresholds are membrane thresholds"


def test_nothing_in_the_bundle_points_outside_it():
    for path in (BUNDLE / "configs").glob("*.json"):
        assert "../" not in path.read_text(), path
    links = re.findall(r"\]\(([^)#]+)\)", (BUNDLE / "docs" / "README.md").read_text())
    local = [(BUNDLE / "docs" / link).resolve() for link in links if "://" not in link]
    assert local and all(path.is_file() and path.is_relative_to(BUNDLE) for path in local), local


def test_the_bundle_alone_runs_inference_on_its_default_input(standalone):
    bundle_command(standalone, "run", "inferring", "--config_file", "configs/inference.json")
    written = standalone / "runs" / "inference"
    segmentation = tifffile.imread(written / "test-volume_segmentation.tif")
    assert segmentation.shape == (30, 512, 512) and set(np.unique(segmentation)) == {0, 255}
    assert 0.1 < (segmentation == 0).mean() < 0.4  # membranes are ~20 % of an ISBI section


def test_shipped_weights_reproduce_the_metadata_scores(standalone):
    """metadata eval_metrics: test sections 24-29 (fold 4) at the membrane threshold named in each key, and the
    cells."""
    output = standalone / "runs" / "reproduce"
    metrics = {key: value for key, value in METADATA["eval_metrics"].items() if "_at_membrane_threshold_" in key}
    (threshold,) = {float(key.rsplit("_", 1)[1]) for key in metrics}
    bundle_command(
        standalone, "run", "evaluating", "--config_file", "['configs/train.json','configs/evaluate.json']",
        "--membrane_threshold", str(threshold), "--output_dir", str(output),
    )  # fmt: skip
    summary = json.loads((output / "metrics.json").read_text())
    assert summary["slices"] == list(range(24, 30))
    for key, value in metrics.items():
        name = key.removeprefix("val_").split("_at_membrane_threshold_")[0]
        assert summary["mean_at_fixed_threshold"][name] == pytest.approx(value, abs=5e-5), key
    best = METADATA["eval_metrics"]["val_v_rand_max_over_thresholds"]
    assert summary["max_over_thresholds"]["v_rand"] == pytest.approx(best, abs=5e-5)
    cells = {key.removeprefix("val_cell_"): value for key, value in METADATA["eval_metrics"].items() if "_cell_" in key}
    assert set(cells) == {"v_rand", "v_info"}  # of the cells inference.json writes, as evaluate.json scores them
    for name, value in cells.items():
        assert summary["cells"]["mean"][name] == pytest.approx(value, abs=5e-5), name


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("n", [1, 3])
def test_network_input_and_output_match_the_metadata(standalone, network, n):
    config = str(["configs/inference.json", *NETWORKS[network]])
    log = bundle_command(
        standalone, "verify_net_in_out", "network_def", "--config_file", config, "--n", str(n), "--device", "cpu"
    )
    assert "data shape of network is verified with no error" in log


def test_torchscript_export_equals_the_eager_network(standalone, checkpoint):
    extra, weights, network, section = checkpoint
    target = weights.with_suffix(".ts")
    export(standalone, "ckpt_export", extra, weights, target)
    scripted = torch.jit.load(target)
    with torch.no_grad():
        torch.testing.assert_close(scripted(section), network(section), rtol=0, atol=1e-5)


def test_onnx_export_runs_in_onnxruntime_like_the_eager_network(standalone, checkpoint):
    extra, weights, network, section = checkpoint
    target = weights.with_suffix(".onnx")
    export(standalone, "onnx_export", extra, weights, target, "--input_shape", "[1, 1, 512, 512]")
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
def test_train_config_passes_the_bundle_workflow_property_check(standalone, configs, tiny_stack_dir, tmp_path):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(standalone / "configs" / name) for name in configs],
        meta_file=str(standalone / "configs" / "metadata.json"),
        workflow_type="train",
        bundle_root=str(standalone),
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
def test_inference_and_evaluation_configs_pass_the_bundle_workflow_property_check(
    standalone, configs, tiny_stack_dir, tmp_path
):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(standalone / "configs" / name) for name in configs],
        meta_file=str(standalone / "configs" / "metadata.json"),
        workflow_type="infer" if "inference.json" in configs else "train",
        bundle_root=str(standalone),
        dataset_dir=str(tiny_stack_dir),
        output_dir=str(tmp_path),
        **({} if "inference.json" in configs else {"membrane_threshold": 0.5}),
    )
    check_workflow(workflow)
    written = sorted(path.name for path in tmp_path.iterdir())
    if "inference.json" in configs:
        assert written == [
            "test-volume_cells.csv", "test-volume_cells.tif", "test-volume_membrane_probability.tif",
            "test-volume_segmentation.tif",
        ]  # fmt: skip
    else:
        assert "metrics.json" in written
