"""The low-label curve of issue 26: cells scored on held-out sections against the number of labelled training
sections, trained from scratch, from self-supervised weights, or from the shipped weights.

The target is a *simulated* new microscope: the ISBI 2012 stacks resampled to coarser pixels, blurred, with another
contrast (gamma) and added noise, written as 16-bit stacks (:data:`SIMULATION`, :func:`simulated_microscope`). The
shipped starting weights saw the original sections 0-17, never 18-29.

For each k in ``--ks`` the k labelled sections are spread evenly over 0-17 (:func:`labelled_sections`); every run
chooses its checkpoint on 18-23 and is scored once on 24-29 (evaluate.json, the default cells), all of the
simulated stack. Three starts, each with the same number of epochs and steps (equal training wall-clock per k):

* ``scratch``: random weights;
* ``self_supervised``: the weights of configs/pretrain.json trained once on the simulated test-volume.tif
  (unlabelled; its minutes are reported apart);
* ``shipped``: the shipped fold-4 weights, ``bundle/models/fold4/model.pt``, trained on the original 0-17 (the
  weights trained on all of 0-23 would have trained on the validation sections too).

Those weights evaluated on the simulated sections without any training are the reference line.

    python bench/transfer_curve.py [--ks 1 2 4 8 18] [--max_epochs 15] [--output docs/results/transfer_curve]

A run whose ``metrics.json`` exists is skipped; an interrupted training resumes. Writes ``OUTPUT/summary.json``,
``OUTPUT/summary.md`` and ``OUTPUT/curve.png``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import tifffile
from scipy.ndimage import gaussian_filter
from skimage.transform import rescale

sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402
from cross_validation import BUNDLE, bundle, config_files, train  # noqa: E402

from scripts.metrics import cell_scores  # noqa: E402
from scripts.stack_io import read_membrane_labels  # noqa: E402

STARTS = ("scratch", "self_supervised", "shipped")
#: the simulated microscope (:func:`simulated_microscope`): pixels a third larger, a wider blur, another
#: contrast, more noise
SIMULATION = {"pixel_scale": 0.75, "blur": 1.0, "gamma": 0.6, "noise": 0.06}
#: the shipped fold-4 weights: trained on sections 0-17 (originals), their checkpoint chosen on 18-23, so that no
#: choice of the simulated runs' 18-23 comes from weights that trained on those sections
SHIPPED = BUNDLE / "models" / "fold4" / "model.pt"
TRAINING_SECTIONS = 18  # 0-17 under fold 4


def labelled_sections(k: int, available: int = TRAINING_SECTIONS) -> list[int]:
    """``k`` sections spread evenly over ``0 .. available - 1``: the centres of ``k`` equal runs."""
    if not 1 <= k <= available:
        raise ValueError(f"k must be in [1, {available}], got {k}")
    return [int((index + 0.5) * available / k) for index in range(k)]


def simulated_microscope(
    images: np.ndarray,
    labels: np.ndarray | None = None,
    pixel_scale: float = 0.75,
    blur: float = 1.0,
    gamma: float = 0.6,
    noise: float = 0.06,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(Z, H, W) 8-bit sections as another microscope would give them, as 16-bit, and their binary labels
    resampled alike (nearest neighbour).

    Args:
        pixel_scale: new pixels per old pixel along each axis (0.75: pixels a third larger).
        blur: Gaussian blur in new pixels (a wider point-spread function).
        gamma: contrast curve applied to the [0, 1] intensities.
        noise: standard deviation of added Gaussian noise, in [0, 1] units.
    """
    rng = np.random.default_rng(seed)
    simulated = []
    for section in images.astype(np.float64) / 255.0:
        resampled = rescale(section, pixel_scale, order=1, anti_aliasing=True, preserve_range=True)
        resampled = gaussian_filter(resampled, blur) ** gamma + rng.normal(0.0, noise, resampled.shape)
        simulated.append(np.clip(resampled, 0.0, 1.0))
    images16 = np.rint(np.stack(simulated) * 65535).astype(np.uint16)
    if labels is None:
        return images16, None
    resampled_labels = np.stack(
        [rescale(section, pixel_scale, order=0, anti_aliasing=False, preserve_range=True) for section in labels]
    ).astype(labels.dtype)
    return images16, resampled_labels


def write_simulated_dataset(source: Path, target: Path, **simulation) -> Path:
    """The simulated stacks of ``source``'s ISBI files in ``target`` (train-volume, train-labels, test-volume)."""
    target.mkdir(parents=True, exist_ok=True)
    if not (target / "test-volume.tif").is_file():
        images, labels = simulated_microscope(
            tifffile.imread(source / "train-volume.tif"), tifffile.imread(source / "train-labels.tif"), **simulation
        )
        unlabelled, _ = simulated_microscope(tifffile.imread(source / "test-volume.tif"), seed=1, **simulation)
        tifffile.imwrite(target / "train-volume.tif", images)
        tifffile.imwrite(target / "train-labels.tif", labels)
        tifffile.imwrite(target / "test-volume.tif", unlabelled)  # last: its presence marks a complete dataset
    return target


def minutes(log: Path) -> float | None:
    """Training minutes of a run's log (Ignite's "Engine run finished. Time taken: HH:MM:SS.sss", summed over the
    stretches of a resumed run)."""
    pattern = r"SupervisedTrainer - INFO - Engine run finished\. Time taken: (\d+):(\d+):([\d.]+)"
    times = re.findall(pattern, log.read_text())  # one per stretch of a resumed run
    if not times:
        return None
    return sum(int(hours) * 60 + int(mins) + float(seconds) / 60 for hours, mins, seconds in times)


def evaluate(folder: Path, dataset: Path, models: Path) -> dict:
    """evaluate.json's scores of ``models/model.pt`` on the simulated 24-29 (threshold chosen on 18-23)."""
    if not (folder / "metrics.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        bundle(
            ["evaluating", "--config_file", config_files("train.json", "evaluate.json"), "--fold", "4",
             "--dataset_dir", str(dataset), "--ckpt_dir", str(models), "--output_dir", str(folder)],
            folder / "evaluate.log",
        )  # fmt: skip
    metrics = json.loads((folder / "metrics.json").read_text())
    return {
        "map_v_rand": metrics["mean_at_fixed_threshold"]["v_rand"],
        "cells_v_rand": metrics["cells"]["mean"]["v_rand"],
        "cells_v_info": metrics["cells"]["mean"]["v_info"],
    }


def all_interior_cells(dataset: Path) -> float:
    """Cells V_rand of the constant all-interior map (one cell per section) on the simulated 24-29, for scale."""
    labels = read_membrane_labels(dataset / "train-labels.tif", None)[24:30]
    return float(np.mean([cell_scores(np.ones(label.shape, np.uint32), label)["v_rand"] for label in labels]))


def run(folder: Path, dataset: Path, k: int, start: str, common: list[str], pretrained: Path | None) -> dict:
    """Train and evaluate one point of the curve; returns its scores."""
    chosen = labelled_sections(k)
    if not (folder / "metrics.json").is_file():
        overrides = ["--train#datalist", f"$[item for item in @sections['train'] if item['slice'] in {chosen}]"]
        overrides += [*common, *(["--pretrained_path", str(pretrained)] if pretrained is not None else [])]
        train(folder, 4, dataset, tuple(overrides))
    scores = evaluate(folder, dataset, folder / "models")
    return {"start": start, "k": k, "sections": chosen, "minutes": minutes(folder / "train.log"), **scores}


def write_figure(points: list[dict], zero_shot: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for start in STARTS:
        line = sorted((p["k"], p["cells_v_rand"]) for p in points if p["start"] == start)
        if line:
            axis.plot(*zip(*line, strict=True), marker="o", label=start.replace("_", "-"))
    axis.axhline(zero_shot["cells_v_rand"], color="grey", linestyle="--", label="shipped, not fine-tuned")
    axis.set_xscale("log", base=2)
    ks = sorted({p["k"] for p in points})
    axis.set_xticks(ks, labels=[str(k) for k in ks])
    axis.set_xlabel("labelled training sections (of 0-17)")
    axis.set_ylabel("cells V_rand, sections 24-29")
    axis.set_title("Simulated new microscope: starting weights against labels")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 18])
    parser.add_argument("--starts", nargs="+", choices=STARTS, default=list(STARTS))
    parser.add_argument("--max_epochs", type=int, default=15)
    parser.add_argument("--output", type=Path, default=Path("docs/results/transfer_curve"))
    parser.add_argument("--dataset_dir", type=Path, default=BUNDLE / "data" / "isbi2012")
    parser.add_argument("overrides", nargs="*", help="more bundle overrides for every training, e.g. a tiny smoke run")
    args = parser.parse_args()
    output = args.output.resolve()
    dataset = write_simulated_dataset(args.dataset_dir.resolve(), output / "simulated_isbi2012", **SIMULATION)
    common = ["--max_epochs", str(args.max_epochs), *args.overrides]
    pretrained = {"scratch": None, "shipped": SHIPPED}
    pretraining_minutes = None
    if "self_supervised" in args.starts:
        pretraining = output / "pretraining"
        # its own folder here, so its file may take the name train() looks for
        overrides = (*common, "--model_name", "model.pt")
        pretrained["self_supervised"] = train(pretraining, 4, dataset, overrides, "configs/pretrain.json")
        pretraining_minutes = minutes(pretraining / "train.log")
    zero_shot = evaluate(output / "shipped_not_fine_tuned", dataset, SHIPPED.parent)
    points = []
    for k in args.ks:
        for start in args.starts:
            point = run(output / f"{start}_k{k}", dataset, k, start, common, pretrained[start])
            print(f"{start:>16} k={k:<2} cells V_rand {point['cells_v_rand']:.4f} ({point['minutes']} min)", flush=True)
            points.append(point)
    summary = {
        "simulation": {**SIMULATION, "of": "ISBI 2012, written as 16-bit stacks"},
        "max_epochs": args.max_epochs,
        "overrides": args.overrides,
        "pretraining_minutes": pretraining_minutes,
        "shipped_not_fine_tuned": zero_shot,
        "all_interior_cells_v_rand": all_interior_cells(dataset),
        "points": points,
        "machine": machine.describe(),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    rows = ["| start | k | sections | map V_rand | cells V_rand | cells V_info | minutes |", "| --- " * 7 + "|"]
    rows += [
        f"| {p['start']} | {p['k']} | {p['sections']} | {p['map_v_rand']:.4f} | {p['cells_v_rand']:.4f} | "
        f"{p['cells_v_info']:.4f} | {p['minutes'] or float('nan'):.1f} |"
        for p in points
    ]
    rows.append(
        f"| shipped, not fine-tuned | 0 | | {zero_shot['map_v_rand']:.4f} | {zero_shot['cells_v_rand']:.4f} | "
        f"{zero_shot['cells_v_info']:.4f} | 0 |"
    )
    rows.append(f"| all-interior map | | | | {summary['all_interior_cells_v_rand']:.4f} | | |")
    (output / "summary.md").write_text("\n".join(rows) + "\n")
    write_figure(points, zero_shot, output / "curve.png")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
