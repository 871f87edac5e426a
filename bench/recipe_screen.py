"""Training recipes screened on one fold: the target (membrane or affinities) and the section context k.

Each candidate ``TARGET:K`` is the default train.json recipe with ``--section_context K`` and, for
``affinities``, ``configs/affinities.json`` on top, trained on the fold's training sections (default fold 4:
0-17) with a short schedule (``--max_epochs``, default 20; the cosine schedule follows it), the checkpoint chosen
on the validation block (18-23) as always. Each model is then scored on the validation block only, the test
block is not read:

* ``val_v_rand_map``: the best validation V_rand of the membrane map at threshold 0.5 (the training's key
  metric, from its log; for affinities the membrane derived from them) and its epoch;
* ``validation_cells``: the default cell method (components) over ``bench/cell_methods.py``'s grid, the best
  combination's mean V_rand / V_info and splits / merges per section on the validation block (in-sample, the same
  for every candidate: a screen, not an estimate); for affinities also ``validation_cells_learned_<method>``,
  the mutex watershed and the lifted multicut on the network's own affinities over ``LEARNED_GRIDS``;
* ``training_minutes``: the run's wall-clock on this machine, so candidates compare at equal training time, and
  ``median_epoch_seconds`` (an epoch with its validation), which other work on the machine disturbs less.

Runs are kept under ``--work`` (default bundle/runs/recipe_screen: weights, logs; not committed) and skipped
when done, or resumed when interrupted, so a screen can span sessions:

    python bench/recipe_screen.py [--candidates membrane:0 membrane:1 membrane:2 affinities:0]
        [--max_epochs 20] [--fold 4] [--output docs/results/recipe_screen.json]

About 11 minutes per candidate on 2 CPU cores at 20 epochs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402
from cell_methods import BUNDLE, GRIDS, best_on_grid, ms_per_section, predict  # noqa: E402
from cross_validation import bundle  # noqa: E402

from scripts.datalists import load_labelled_stack, split_sections, validation_block  # noqa: E402

EPOCH = re.compile(
    r"^(?P<time>[\d-]+ [\d:]+),\d+ - TrainingProgress - INFO - epoch (?P<epoch>\d+)/\d+ \| loss [\d.]+ \| "
    r"val_v_rand (?P<v_rand>[\d.]+)",
    re.MULTILINE,
)
#: the grids of the cell methods that use an affinity network's own affinities
LEARNED_GRIDS = {
    "mutex_watershed": {
        "membrane_threshold": [0.4, 0.5, 0.6],
        "repulsion_bias": [0.3, 0.5, 0.7, 0.9],
        "min_size": [16, 64],
    },
    "lifted_multicut": {
        "membrane_threshold": [0.4, 0.5],
        "sigma_seeds": [2.0, 4.0],
        "boundary_bias": [0.2, 0.3, 0.4],
        "min_size": [64],
    },
}
FINISHED = re.compile(r"Engine run finished\. Time taken: (?P<h>\d+):(?P<m>\d+):(?P<s>[\d.]+)")


OVERLAYS = {"membrane": [], "affinities": ["configs/affinities.json"]}


def candidate(text: str) -> tuple[str, int]:
    """``TARGET:K`` -> (target, section context)."""
    target, _, context = text.partition(":")
    if target not in OVERLAYS or not context.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected TARGET:K with TARGET one of {list(OVERLAYS)}")
    return target, int(context)


def train(target: str, context: int, args: argparse.Namespace) -> Path:
    """Trains (or resumes, or skips) one candidate; returns its folder."""
    folder = args.work / f"{target}_context_{context}"
    folder.mkdir(parents=True, exist_ok=True)
    models, train_dir = folder / "models", folder / "train"
    if not (folder / "trained").is_file():
        resume = "true" if any(train_dir.glob("checkpoint_epoch=*.pt")) else "false"
        options = {
            "--fold": args.fold,
            "--dataset_dir": args.dataset_dir,
            "--section_context": context,
            "--max_epochs": args.max_epochs,
            "--ckpt_dir": models,
            "--output_dir": train_dir,
            "--resume": resume,
        }
        command = ["training", "--config_file", str(["configs/train.json", *OVERLAYS[target]])]
        bundle(command + [str(part) for pair in options.items() for part in pair], folder / "train.log")
        (folder / "trained").write_text("")
    return folder


def screen(target: str, context: int, folder: Path, args: argparse.Namespace) -> dict:
    """One run's validation scores and training time (see the module docstring)."""
    log = (folder / "train.log").read_text()
    matches = list(EPOCH.finditer(log))
    epochs = [(int(m["epoch"]), float(m["v_rand"])) for m in matches]
    best_epoch, best_map = max(epochs, key=lambda pair: (pair[1], -pair[0]))
    minutes = sum(int(m["h"]) * 60 + int(m["m"]) + float(m["s"]) / 60 for m in FINISHED.finditer(log))
    times = [datetime.fromisoformat(m["time"]) for m in matches]
    epoch_seconds = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    items = load_labelled_stack(args.dataset_dir / "train-volume.tif", args.dataset_dir / "train-labels.tif")
    validation = split_sections(items, args.fold, 5, context)["validation"]
    overlay = OVERLAYS[target][0] if OVERLAYS[target] else None
    network_ms: list[float] = []
    model = folder / "models" / "model.pt"
    evidence = predict(validation, model, network_ms, network_config=overlay, section_context=context)
    membranes = [section[0] if section.ndim == 3 else section for section in evidence]
    result = {"validation_cells": timed_best_on_grid("components", GRIDS["components"], membranes, validation)}
    if target == "affinities":  # the methods on the network's own affinities
        offsets = json.loads((BUNDLE / "configs" / "affinities.json").read_text())["affinity_offsets"]
        for method, grid in LEARNED_GRIDS.items():
            grid = {**grid, "affinity_offsets": [offsets]}
            result[f"validation_cells_learned_{method}"] = timed_best_on_grid(method, grid, evidence, validation)
    return {
        "target": target,
        "section_context": context,
        "input_channels": 2 * context + 1,
        "max_epochs": args.max_epochs,
        "epochs_run": len(epochs),
        "training_minutes": round(minutes, 2),
        "median_epoch_seconds": float(np.median(epoch_seconds)),
        "val_v_rand_map": best_map,
        "best_epoch": best_epoch,
        "network_ms_per_section": network_ms[0],
        **result,
    }


def timed_best_on_grid(method: str, grid: dict, maps: list[np.ndarray], items: list[dict]) -> dict:
    """:func:`cell_methods.best_on_grid` with the chosen combination's milliseconds per section (best of 3)."""
    best = best_on_grid(method, grid, maps, items)
    return {**best, "ms_per_section": ms_per_section(method, best["options"], maps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    candidates = ["membrane:0", "membrane:1", "membrane:2", "affinities:0"]
    parser.add_argument("--candidates", type=candidate, nargs="+", default=[candidate(c) for c in candidates])
    parser.add_argument("--max_epochs", type=int, default=20)
    parser.add_argument("--fold", type=int, default=4)
    parser.add_argument("--dataset_dir", type=Path, default=BUNDLE / "data" / "isbi2012")
    parser.add_argument("--work", type=Path, default=BUNDLE / "runs" / "recipe_screen")
    parser.add_argument("--output", type=Path, default=Path("docs/results/recipe_screen.json"))
    args = parser.parse_args()
    args.work, args.dataset_dir = args.work.resolve(), args.dataset_dir.resolve()
    description = machine.describe()
    print(machine.summary(description), flush=True)
    runs = []
    for target, context in args.candidates:
        runs.append(screen(target, context, train(target, context, args), args))
        run, cells = runs[-1], runs[-1]["validation_cells"]
        print(
            f"{target}, k={context}: map {run['val_v_rand_map']:.4f} (epoch {run['best_epoch']}), "
            f"cells {cells['v_rand']:.4f} / {cells['v_info']:.4f}, {cells['merges']:.1f} merges and "
            f"{cells['splits']:.1f} splits per section, {run['training_minutes']:.1f} min",
            flush=True,
        )
    best = max(runs, key=lambda run: (run["validation_cells"]["v_rand"], run["validation_cells"]["v_info"]))
    summary = {
        "fold": args.fold,
        "validation_slices": list(validation_block(30, args.fold, 5)),
        "best_on_validation": f"{best['target']}:{best['section_context']}",
        "runs": runs,
        "machine": description,
    }
    machine.write_json(args.output, summary)


if __name__ == "__main__":
    main()
