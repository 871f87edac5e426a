"""Cell methods compared on the same probability maps, every parameter chosen on the fold's validation block.

For one fold (default 4: validation sections 18-23, test 24-29), the network (default: ``models/fold4/``,
trained under that fold's protocol) predicts each validation and test section as inference.json does. Then,
for every method of ``scripts.cells`` and every combination of its parameter grid, the cell maps of the
validation sections are scored (V_rand, V_info of the cells, as ``run evaluating`` scores them):

* the chosen combination is the best mean V_rand on the whole validation block;
* ``validation_leave_one_out`` is the leave-one-section-out estimate of that choice: each validation section
  scored with the combination chosen on the other five, so it shows how much the choice itself overfits;
* the test block is scored once, with each method's chosen combination;
* the recommended default is the method with the best *validation* score among those that take at most
  ``MAX_COST_OVER_NETWORK`` (3) times as long per section as the network (issue 25's speed requirement; issue 12's
  was 1); ``best_on_validation`` names the best regardless of speed.

    python bench/cell_methods.py [--fold 4] [--model_path bundle/models/fold4/model.pt] [--output FILE.json]

With ``--oof_maps bench/nested_folds.py's oof_maps.npz`` the choices are made on the out-of-fold maps of all 24
sections of 0-23 instead (each predicted by an inner fold's model that did not train on it), the leave-one-out
column leaves a whole block of 6 sections out, and the test block is still predicted by ``--model_path``.

Prints a markdown table (also saved beside the JSON as .md) with the cost per section on this machine's CPU
(best of 3, CPU model and flags printed; the JSON also holds the machine and command line under ``machine``).
Takes about 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
sys.path.insert(0, str(BUNDLE))

import machine  # noqa: E402

from scripts.cells import label_cells  # noqa: E402
from scripts.checkpoints import load_weights  # noqa: E402
from scripts.datalists import heldout_block, load_labelled_stack, split_sections  # noqa: E402
from scripts.metrics import cell_scores  # noqa: E402

GRIDS = {
    "components": {
        "membrane_threshold": [0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7],
        "min_size": [0, 16, 64, 128, 256],
    },
    "watershed": {
        "membrane_threshold": [0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        "seed_depth": [3.0, 5.0, 8.0, 12.0, 16.0, 24.0, 32.0],
        "min_size": [0, 64],
    },
    "mutex_watershed": {
        "membrane_threshold": [0.5],
        "long_range": [9, 15, 25],
        "repulsion_bias": [0.5, 0.65, 0.8],
        "min_size": [16, 64, 128],
    },
    "agglomeration": {
        "membrane_threshold": [0.4, 0.6, 0.7],
        "seed_depth": [2.0],
        "merge_threshold": [0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        "min_size": [64, 256],
    },
    "multicut": {
        "membrane_threshold": [0.4, 0.5, 0.6],
        "sigma_seeds": [2.0, 3.0, 4.0, 6.0],
        "boundary_bias": [0.02, 0.05, 0.1, 0.2, 0.3, 0.4],
        "min_size": [64, 128],
    },
    "gasp": {
        "membrane_threshold": [0.4, 0.5, 0.6],
        "sigma_seeds": [2.0, 3.0, 4.0, 6.0],
        "boundary_bias": [0.02, 0.05, 0.1, 0.2, 0.3, 0.4],
        "min_size": [64, 128],
    },
}
#: the recommended default costs at most this many times the network per section (issue 25; issue 12 said 1)
MAX_COST_OVER_NETWORK = 3.0
SCORES = ("v_rand", "v_info", "v_rand_split", "v_rand_merge", "cells", "true_cells", "splits", "merges")


def predict(
    items: list[dict],
    model_path: Path,
    timings: list | None = None,
    network_config: str | None = None,
    section_context: int = 0,
    test_time_augmentation: bool = False,
) -> list[np.ndarray]:
    """Membrane probabilities of the items' images, with inference.json's preprocessing, network, inferer and
    postprocessing (``network_config``: an overlay such as ``configs/segnet.json`` on top; items of
    ``load_labelled_stack(..., section_context)`` for a network with section context; averaged over the 8 flips
    and quarter turns with ``test_time_augmentation``); appends the network's best-of-3 milliseconds per section
    to ``timings`` when given."""
    config = ConfigParser()
    overlays = [str(BUNDLE / network_config)] if network_config else []
    config.read_config([str(BUNDLE / "configs" / "inference.json"), *overlays])
    config.update(
        {
            "bundle_root": str(BUNDLE),
            "device": "cpu",
            "section_context": section_context,
            "test_time_augmentation": test_time_augmentation,
        }
    )
    network = load_weights(config.get_parsed_content("network_def"), model_path).eval()
    preprocessing, postprocessing = (
        config.get_parsed_content("preprocessing"),
        config.get_parsed_content("postprocessing"),
    )
    inferer = config.get_parsed_content("inferer")
    images = [preprocessing({"image": item["image"]})["image"][None] for item in items]
    with torch.no_grad():
        maps = [evidence(postprocessing({"pred": inferer(image, network)[0]})) for image in images]
        if timings is not None:
            runs = []
            for _ in range(3):
                started = time.perf_counter()
                for image in images:
                    inferer(image, network)
                runs.append(time.perf_counter() - started)
            timings.append(1000 * min(runs) / len(images))
    return maps


def evidence(output: dict) -> np.ndarray:
    """The postprocessing's (H, W) membrane probability, or (1 + n, H, W) with the affinities it keeps."""
    membrane = np.asarray(output["pred"][0])
    if output.get("affinities") is None:
        return membrane
    return np.concatenate([membrane[None], np.asarray(output["affinities"])])


def combinations(grid: dict[str, list]) -> list[dict]:
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def score(method: str, options: dict, maps: list[np.ndarray], items: list[dict]) -> list[dict]:
    pairs = zip(maps, items, strict=True)
    return [cell_scores(label_cells(p, method=method, **options), item["label"]) for p, item in pairs]


def best_on_grid(method: str, grid: dict, maps: list[np.ndarray], items: list[dict]) -> dict:
    """The grid's best combination by mean V_rand (then V_info) on ``items``, with its mean scores."""
    scored = []
    for options in combinations(grid):
        rows = score(method, options, maps, items)
        scored.append({"options": options, **{key: float(np.mean([row[key] for row in rows])) for key in rows[0]}})
    return max(scored, key=lambda row: (row["v_rand"], row["v_info"]))


def ms_per_section(method: str, options: dict, maps: list[np.ndarray], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for p in maps:
            label_cells(p, method=method, **options)
        times.append(time.perf_counter() - started)
    return 1000 * min(times) / len(maps)


def leave_one_out(v_rand: np.ndarray, v_info: np.ndarray, groups: list[int] | None = None) -> dict[str, float]:
    """(combinations, sections) scores -> mean over sections of the score at the choice made without the section's
    group (by default each section is its own group; out-of-fold maps leave a whole block out)."""
    groups = np.arange(v_rand.shape[1]) if groups is None else np.asarray(groups)
    chosen = {g: int(np.argmax(v_rand[:, groups != g].mean(axis=1))) for g in np.unique(groups)}
    return {
        "v_rand": float(np.mean([v_rand[chosen[g], s] for s, g in enumerate(groups)])),
        "v_info": float(np.mean([v_info[chosen[g], s] for s, g in enumerate(groups)])),
    }


def compare_methods(
    methods: list[str],
    validation: list[dict],
    validation_maps: list,
    test: list[dict],
    test_maps: list,
    groups: list[int] | None = None,
) -> dict[str, dict]:
    """Each method's grid scored on the validation sections, its best combination scored once on the test ones
    (``groups``: the validation sections' blocks, left out together in ``validation_leave_one_out``)."""
    results = {}
    for method in methods:
        started = time.perf_counter()
        grid = combinations(GRIDS[method])
        rows = [score(method, options, validation_maps, validation) for options in grid]
        v_rand = np.array([[s["v_rand"] for s in row] for row in rows])
        v_info = np.array([[s["v_info"] for s in row] for row in rows])
        best = int(np.lexsort((v_info.mean(axis=1), v_rand.mean(axis=1)))[-1])
        chosen = grid[best]
        test_rows = score(method, chosen, test_maps, test)
        results[method] = {
            "chosen": chosen,
            "validation": {key: float(np.mean([s[key] for s in rows[best]])) for key in SCORES},
            "validation_leave_one_out": leave_one_out(v_rand, v_info, groups),
            "test": {key: float(np.mean([s[key] for s in test_rows])) for key in SCORES},
            "test_per_section": [{"slice": item["slice"], **s} for item, s in zip(test, test_rows, strict=True)],
            "ms_per_section": ms_per_section(method, chosen, validation_maps),
            "grid": [
                {**options, "v_rand": float(r.mean()), "v_info": float(i.mean())}
                for options, r, i in zip(grid, v_rand, v_info, strict=True)
            ],
        }
        seconds = time.perf_counter() - started
        print(f"{method}: {len(grid)} combinations in {seconds:.0f} s, chose {chosen}", flush=True)
        for key, value in chosen.items():  # the best may lie beyond the grid: widen it (on validation scores only)
            if len(GRIDS[method][key]) > 1 and value in (GRIDS[method][key][0], GRIDS[method][key][-1]):
                print(f"  {key} {value} is at the edge of its grid {GRIDS[method][key]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold", type=int, default=4)
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--model_path", type=Path, default=BUNDLE / "models" / "fold4" / "model.pt")
    parser.add_argument("--dataset_dir", type=Path, default=BUNDLE / "data" / "isbi2012")
    parser.add_argument("--methods", nargs="+", default=list(GRIDS))
    parser.add_argument("--oof_maps", type=Path, help="choose on these out-of-fold maps (bench/nested_folds.py)")
    parser.add_argument("--output", type=Path, default=Path("docs/results/cell_methods.json"))
    args = parser.parse_args()
    description = machine.describe()
    items = load_labelled_stack(args.dataset_dir / "train-volume.tif", args.dataset_dir / "train-labels.tif")
    sections = split_sections(items, args.fold, args.num_folds)
    test, network_ms = sections["test"], []
    test_maps = predict(test, args.model_path, network_ms)
    if args.oof_maps:
        validation, validation_maps, groups = out_of_fold(args.oof_maps, items, args.num_folds)
    else:
        validation, groups = sections["validation"], None
        validation_maps = predict(validation, args.model_path)

    results = compare_methods(args.methods, validation, validation_maps, test, test_maps, groups)

    def validation_score(method: str) -> tuple[float, float]:
        return results[method]["validation"]["v_rand"], results[method]["validation"]["v_info"]

    fast_enough = [m for m in results if results[m]["ms_per_section"] <= MAX_COST_OVER_NETWORK * network_ms[0]]
    recommended = max(fast_enough or results, key=validation_score)
    summary = {
        "fold": args.fold,
        "validation_slices": [item["slice"] for item in validation],
        "test_slices": [item["slice"] for item in test],
        "model_path": str(args.model_path),
        "validation_maps": str(args.oof_maps) if args.oof_maps else "the model's own",
        "cpu": f"{description['cpu']}, {description['torch_threads']} torch threads, flags: {description['cpu_flags']}",
        "network_ms_per_section": network_ms[0],
        "max_cost_over_network": MAX_COST_OVER_NETWORK,
        "recommended": recommended,
        "best_on_validation": max(results, key=validation_score),
        "methods": results,
        "machine": description,
    }
    machine.write_json(args.output, summary)
    table = markdown_table(summary)
    args.output.with_suffix(".md").write_text(table + "\n")
    print(table)


def out_of_fold(path: Path, items: list[dict], num_folds: int) -> tuple[list[dict], list[np.ndarray], list[int]]:
    """The items, maps and blocks (folds of ``num_folds``) of the sections in ``bench/nested_folds.py``'s file."""
    stored = np.load(path)
    slices = [int(z) for z in stored["slices"]]
    blocks = [next(j for j in range(num_folds) if z in heldout_block(len(items), j, num_folds)) for z in slices]
    return [items[z] for z in slices], list(stored["maps"]), blocks


def markdown_table(summary: dict) -> str:
    validation = f"{summary['validation_slices'][0]}–{summary['validation_slices'][-1]}"
    test = f"{summary['test_slices'][0]}–{summary['test_slices'][-1]}"
    left_out = "section" if summary.get("validation_maps", "the model's own") == "the model's own" else "block"
    lines = [
        f"CPU: {summary['cpu']}; the network: {summary['network_ms_per_section']:.0f} ms per section",
        "",
        f"| method | parameters (chosen on {validation}) | V_rand / V_info {validation} "
        f"| leave-one-{left_out}-out {validation} | **V_rand / V_info {test}** | splits / merges per section {test} "
        "| cells per section (truth) | ms per section |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, result in summary["methods"].items():
        name = f"**{method}** (recommended)" if method == summary["recommended"] else method
        chosen = ", ".join(f"{key} {value}" for key, value in result["chosen"].items())
        v, loo, t = result["validation"], result["validation_leave_one_out"], result["test"]
        lines.append(
            f"| {name} | {chosen} | {v['v_rand']:.4f} / {v['v_info']:.4f} | {loo['v_rand']:.4f} / {loo['v_info']:.4f} "
            f"| {t['v_rand']:.4f} / {t['v_info']:.4f} | {t['splits']:.1f} / {t['merges']:.1f} "
            f"| {t['cells']:.0f} ({t['true_cells']:.0f}) | {result['ms_per_section']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
