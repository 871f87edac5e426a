"""5-fold cross-validation of the default recipe, each fold's test block untouched by that fold's choices.

For each fold k (test block k, validation block k - 1, training the other three; see scripts.datalists):

1. train with the default train.json (``--fold k``): the checkpoint is chosen on the validation block;
2. choose the default cell method's parameters on the validation block (``bench/cell_methods.py``'s grid);
3. evaluate the test block once with evaluate.json: the membrane threshold is chosen on the validation block,
   the cells are those of step 2.

Each fold writes ``OUTPUT/fold_k/`` (training log, ``metrics.json`` of the test block, ``cells.json``) and the
weights to ``OUTPUT/fold_k/models/`` (not committed). A fold whose ``metrics.json`` exists is skipped, and an
interrupted training run resumes from its latest checkpoint, so the folds can run across sessions:

    python bench/cross_validation.py --folds 0 1 2 3 4 [--output docs/results/cross_validation]
        [--network_config configs/segnet.json] [--train_overrides --max_epochs 20 ...]

``--network_config`` adds a network overlay to training, cell choice and evaluation (the SegNet of the README's
table: ``--folds 4 --network_config configs/segnet.json --output docs/results/segnet_fold4``);
``--train_overrides``, last, passes the rest of the command line to training (a schedule of equal wall-clock).

``OUTPUT/summary.json`` (and the table ``OUTPUT/summary.md``) gets each fold's test scores and their mean +- sd
over the folds done so far. About 40 minutes a fold on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cell_methods import BUNDLE, compare_methods, predict  # noqa: E402

from scripts.datalists import load_labelled_stack, split_sections  # noqa: E402


def config_files(*names: str, network_config: str | None = None) -> str:
    """The ``--config_file`` list of the bundle's config ``names``, with the network overlay last."""
    return str([f"configs/{name}" for name in names] + ([network_config] if network_config else []))


def bundle(command: list[str], log: Path) -> None:
    """``python -m monai.bundle run ...`` from the bundle folder, appending to ``log``; fails loudly."""
    with log.open("a") as stream:
        result = subprocess.run(
            [sys.executable, "-m", "monai.bundle", "run", *command, "--logging_file", "configs/logging.conf"],
            cwd=BUNDLE, stdout=stream, stderr=subprocess.STDOUT,
        )  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"{log}: `monai.bundle run {' '.join(command)}` failed (exit {result.returncode}); see the log")


def train(
    folder: Path, fold: int, dataset_dir: Path, overrides: tuple[str, ...] = (), network_config: str | None = None
) -> Path:
    """Train the default recipe of ``fold`` (with ``overrides``) into ``folder``, unless an earlier run finished;
    an interrupted one resumes from its latest checkpoint. Returns the model file."""
    folder.mkdir(parents=True, exist_ok=True)
    models, train_dir = folder / "models", folder / "train"
    if not (models / "model.pt").is_file() or not (folder / "trained").is_file():
        resume = "true" if any(train_dir.glob("checkpoint_epoch=*.pt")) else "false"
        bundle(
            ["training", "--config_file", config_files("train.json", network_config=network_config),
             "--fold", str(fold), *overrides, "--dataset_dir", str(dataset_dir),
             "--ckpt_dir", str(models), "--output_dir", str(train_dir), "--resume", resume],
            folder / "train.log",
        )  # fmt: skip
        (folder / "trained").write_text("")
    return models / "model.pt"


def run_fold(
    fold: int, output: Path, dataset_dir: Path, network_config: str | None = None, overrides: tuple[str, ...] = ()
) -> dict:
    folder = output / f"fold_{fold}"
    model_path = train(folder, fold, dataset_dir, overrides, network_config=network_config)
    models = model_path.parent
    config = json.loads((BUNDLE / "configs" / "inference.json").read_text())["cells"]
    method = config["method"]
    items = load_labelled_stack(dataset_dir / "train-volume.tif", dataset_dir / "train-labels.tif")
    sections = split_sections(items, fold, 5)
    validation, test = sections["validation"], sections["test"]
    maps = {name: predict(sections[name], model_path, network_config=network_config) for name in ("validation", "test")}
    cells = compare_methods([method], validation, maps["validation"], test, maps["test"])
    chosen = cells[method]["chosen"]
    (folder / "cells.json").write_text(json.dumps(cells, indent=2) + "\n")
    overrides = [part for key, value in chosen.items() for part in (f"--cells#{key}", str(value))]
    bundle(
        ["evaluating", "--config_file", config_files("train.json", "evaluate.json", network_config=network_config),
         "--fold", str(fold), "--dataset_dir", str(dataset_dir),
         "--ckpt_dir", str(models), "--output_dir", str(folder), *overrides],
        folder / "evaluate.log",
    )  # fmt: skip
    return json.loads((folder / "metrics.json").read_text())


SCORES = {
    "V_rand (map)": ("mean_at_fixed_threshold", "v_rand"),
    "V_info (map)": ("mean_at_fixed_threshold", "v_info"),
    "V_rand (cells)": ("cells", "v_rand"),
    "V_info (cells)": ("cells", "v_info"),
}


def summary(output: Path) -> dict:
    """Each finished fold's test scores, and their mean and sd (ddof 1) over the folds."""
    folds = []
    for folder in sorted(output.glob("fold_*")):
        if not (folder / "metrics.json").is_file():
            continue
        metrics = json.loads((folder / "metrics.json").read_text())
        scores = {
            name: metrics[part]["mean"][score] if part == "cells" else metrics[part][score]
            for name, (part, score) in SCORES.items()
        }
        row = {"fold": folder.name, "test_slices": metrics["slices"], "membrane_threshold": metrics["fixed_threshold"]}
        folds.append({**row, "scores": scores})
    values = {name: [fold["scores"][name] for fold in folds] for name in SCORES}
    statistics = {
        name: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None}
        for name, v in values.items()
        if v
    }
    return {"folds": folds, "mean_sd": statistics}


def summary_table(result: dict) -> str:
    """:func:`summary` as the Markdown table of docs/training.md."""
    lines = ["| fold (test sections) | membrane threshold | " + " | ".join(SCORES) + " |", "| --- " * 6 + "|"]
    for fold in result["folds"]:
        scores = " | ".join(f"{value:.4f}" for value in fold["scores"].values())
        sections = f"{fold['test_slices'][0]}–{fold['test_slices'][-1]}"
        lines.append(f"| {fold['fold']} ({sections}) | m = {fold['membrane_threshold']} | {scores} |")
    if result["folds"]:
        spread = [
            f"{s['mean']:.4f} ± {s['sd']:.4f}" if s["sd"] is not None else f"{s['mean']:.4f}"
            for s in result["mean_sd"].values()
        ]
        lines.append(f"| **mean ± sd ({len(result['folds'])} folds)** | | {' | '.join(spread)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--output", type=Path, default=Path("docs/results/cross_validation"))
    parser.add_argument("--dataset_dir", type=Path, default=BUNDLE / "data" / "isbi2012")
    parser.add_argument("--network_config", help="a network overlay of bundle/, e.g. configs/segnet.json")
    parser.add_argument(
        "--train_overrides",
        nargs=argparse.REMAINDER,
        default=[],
        help="the rest goes to training, e.g. --max_epochs 20",
    )
    args = parser.parse_args()
    output = args.output.resolve()
    for fold in args.folds:
        if (output / f"fold_{fold}" / "metrics.json").is_file():
            print(f"fold {fold}: done before, skipped", flush=True)
            continue
        metrics = run_fold(fold, output, args.dataset_dir.resolve(), args.network_config, tuple(args.train_overrides))
        print(f"fold {fold}: cells V_rand {metrics['cells']['mean']['v_rand']:.4f}", flush=True)
    result = summary(output)
    (output / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    table = summary_table(result)
    (output / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
