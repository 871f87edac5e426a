"""The checks a MONAI Model Zoo submission goes through, run on a copy of ``bundle/`` with nothing around it:
metadata against (a local copy of) the 2024 schema, ``verify_net_in_out`` for each network, TorchScript export
with ``ckpt_export`` and ONNX export with ``onnx_export`` compared with the eager network on a real 512x512
section, the ``ConfigWorkflow`` property check with a run of each workflow, and inference on the default input.
Also the bundle's own rules: files under 25 MB, configs in the Zoo's JSON format, short ``$`` expressions,
no path out of the bundle, every runtime package in the metadata, and each shipped weights file's published scores
reproduced."""

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
NETWORKS = {
    "U-Net": [],
    "SegNet": ["configs/segnet.json"],
    "U-SegNet": ["configs/usegnet.json"],
    "Tiramisu": ["configs/tiramisu.json"],
}
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
def checkpoint(request, standalone, tmp_path_factory):
    """(config files, checkpoint path, eager network in eval mode, a real section as (1, 1, 512, 512) in [0, 1]);
    the shipped weights where there are some, else random ones with non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    extra = NETWORKS[request.param]
    network = inference_network(extra)
    path = tmp_path_factory.mktemp(f"export_{request.param}") / "weights.pt"  # set up anew when the order asks
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


def test_the_package_and_the_bundle_share_one_version():
    assert importlib.metadata.version("emseg") == METADATA["version"]


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
    # eager fp32: --backend auto would take bf16 on a CPU with bf16 units (tests/test_backends.py checks that choice)
    bundle_command(standalone, "run", "inferring", "--config_file", "configs/inference.json", "--backend", "eager")
    written = standalone / "runs" / "inference"
    segmentation = tifffile.imread(written / "test-volume_segmentation.tif")
    probability = tifffile.imread(written / "test-volume_membrane_probability.tif")
    assert segmentation.shape == probability.shape == (30, 512, 512) and set(np.unique(segmentation)) == {0, 255}
    # no labels were released for this stack, so no score is published for it: what the run must reproduce is the
    # shipped U-Net itself, section by section (the first and last block), and the segmentation at its threshold
    network = inference_network([])
    network.load_state_dict(torch.load(BUNDLE / SHIPPED_WEIGHTS["U-Net"], map_location="cpu", weights_only=True))
    sections = tifffile.imread(DATA / "test-volume.tif")[[0, 29]].astype(np.float32) / 255.0
    with torch.no_grad():
        expected = torch.sigmoid(network.eval()(torch.from_numpy(sections)[:, None]))[:, 0].numpy()
    np.testing.assert_allclose(probability[[0, 29]], expected, rtol=0, atol=1e-5)  # float32, summed in another order
    threshold = bundle_config(["configs/inference.json"]).get_parsed_content("membrane_threshold")
    np.testing.assert_array_equal(segmentation, np.where(probability >= threshold, 0, 255))


def published_scores(weights: str) -> dict:
    """The model card's table of held-out scores for ``weights`` (its first column header, e.g.
    ``models/segnet/model.pt``), as published: the membrane map at the threshold chosen on 18-23, the cells with
    their method and parameters, and the best thresholds in hindsight. Numbers stay strings, to keep their
    decimals."""
    lines = (BUNDLE / "docs" / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| `{weights}` "))
    header = [cell.strip().lower().replace(" ", "_") for cell in lines[start].strip("|").split("|")][1:]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        name, *cells = (cell.replace("**", "").strip() for cell in line.strip("|").split("|"))
        rows[name.split(" ")[0]] = (name, dict(zip(header, cells, strict=True)))
    map_name, map_scores = rows["membrane"]
    cells_name, cell_scores = rows["cells"]
    method, cell_threshold = re.search(r"`(\w+)`, threshold ([\d.]+)", cells_name).groups()
    parameters = {
        name: float(value) if "." in value else int(value)
        for name, value in re.findall(r"`(\w+)` ([\d.]+)", cells_name)
    }
    best = {
        name: re.fullmatch(r"([\d.]+) \(m = ([\d.]+)\)", value).groups()
        for name, value in rows["best"][1].items()
        if value
    }
    return {
        "membrane_threshold": float(re.search(r"threshold ([\d.]+) \(chosen on 18–23\)", map_name).group(1)),
        "map": map_scores,
        "cells": {name: value for name, value in cell_scores.items() if value},
        "cell_options": {"method": method, "membrane_threshold": float(cell_threshold), **parameters},
        "best": best,
    }


def assert_reproduced(measured: float, published: str, what: str) -> None:
    """``measured`` rounds to ``published`` at the decimals it was published with."""
    decimals = len(published.split(".")[1])
    assert measured == pytest.approx(float(published), abs=0.5 * 10**-decimals), (what, measured, published)


def test_the_metadata_scores_are_the_model_cards():
    card, metrics = published_scores(SHIPPED_WEIGHTS["U-Net"]), METADATA["eval_metrics"]
    at = f"_at_membrane_threshold_{card['membrane_threshold']}"
    assert {key for key in metrics if at in key} == {f"val_{name}{at}" for name in card["map"]}
    for name, value in card["map"].items():
        assert metrics[f"val_{name}{at}"] == float(value), name
    for name, value in card["cells"].items():
        assert metrics[f"val_cell_{name}"] == float(value), name
    assert metrics["val_v_rand_max_over_thresholds"] == float(card["best"]["v_rand"][0])
    # the U-Net card's cells are "as inference writes them": inference.json's own cell parameters
    cells = bundle_config(["configs/inference.json"]).get("cells")
    assert {key: cells[key] for key in card["cell_options"]} == card["cell_options"]


@pytest.mark.parametrize("network", list(SHIPPED_WEIGHTS))
def test_shipped_weights_reproduce_their_published_scores(standalone, network):
    """The held-out scores of each shipped weights file, as its model card table publishes them (the U-Net's are
    also the metadata's eval_metrics), reproduced by the evaluate command on the shipped data: test sections 24-29 at
    the card's membrane threshold, the cells with the card's parameters, and the best thresholds in hindsight. Each
    figure must round to the published one. (The threshold is passed, not chosen again on 18-23: that calibration
    would add about 12 s per network on 2 CPU cores; tests/test_report.py checks how it is chosen.)"""
    card = published_scores(SHIPPED_WEIGHTS[network])
    output = standalone / "runs" / "reproduce" / network
    config = str(["configs/train.json", "configs/evaluate.json", *NETWORKS[network]])
    options = {
        "membrane_threshold": card["membrane_threshold"],
        **{f"cells#{k}": v for k, v in card["cell_options"].items()},
    }
    flags = [item for key, value in options.items() for item in (f"--{key}", str(value))]
    bundle_command(standalone, "run", "evaluating", "--config_file", config, "--output_dir", str(output), *flags)
    summary = json.loads((output / "metrics.json").read_text())
    assert summary["slices"] == list(range(24, 30))
    assert summary["fixed_threshold"] == card["membrane_threshold"]
    assert set(card["map"]) == {"v_rand", "v_info", "pixel_accuracy", "membrane_dice"}
    for name, value in card["map"].items():
        assert_reproduced(summary["mean_at_fixed_threshold"][name], value, name)
    labeller = summary["cells"]["labeller"]  # evaluate.json's other cell parameters, which this method ignores, too
    assert {key: labeller[key] for key in card["cell_options"]} == card["cell_options"]
    assert set(card["cells"]) == {"v_rand", "v_info"}
    for name, value in card["cells"].items():
        assert_reproduced(summary["cells"]["mean"][name], value, f"cell {name}")
    assert set(card["best"]) == {"v_rand", "v_info"}
    for name, (value, threshold) in card["best"].items():
        assert_reproduced(summary["max_over_thresholds"][name], value, f"best {name}")
        assert summary["max_over_thresholds"][f"{name}_threshold"] == pytest.approx(float(threshold)), name


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("n", [1, 3])
def test_network_input_and_output_match_the_metadata(standalone, network, n):
    """The metadata's ``32*n`` inputs; Tiramisu with the config's instance norm at ``64*n``, since a 32 x 32 input
    leaves its bottleneck (five halvings down) a single pixel to normalise."""
    n = 2 * n if network == "Tiramisu" else n
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
    # SegNet's unpooling puts each value where max pooling found the maximum: where two inputs of a pooling window
    # are within rounding of each other, onnxruntime and torch may pick different ones (seen on 4 of 262144
    # logits, off by < 2e-3 on an AVX2 CPU); everything else agrees to 1e-3
    close = np.isclose(output, expected, rtol=1e-3, atol=1e-3)
    assert close.all() if not extra else close.mean() > 0.9999, f"{(~close).sum()} logits differ"  # U-Net: all
    np.testing.assert_allclose(output, expected, rtol=1e-2, atol=1e-2)


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
