"""What test-time augmentation and the average of several models gain for the cells, per unit of inference time.

For one fold's validation block (default 4: sections 18-23) and membrane models trained on that fold's training
sections (so none of them saw a validation section's labels; their checkpoints were chosen on it, so this is a
screen, not a held-out estimate), each of these membrane maps is computed as inference.json does:

* each model alone, plain and with test-time augmentation (the mean over the 8 flips and quarter turns);
* the mean of all the models' maps, plain and with test-time augmentation.

Each map is scored as cells with the default method (components) over ``bench/cell_methods.py``'s grid, the best
combination on the block (the same in-sample choice for every map), and timed: the network's best-of-3
milliseconds per 512² section on this machine, summed over the models it needs. ``gain_per_network_ms`` is the
V_rand gained over the first model's plain map per extra millisecond.

    python bench/averaging.py --models bundle/models/fold4/model.pt OTHER.pt ... [--fold 4]
        [--output docs/results/averaging.json]

A few minutes on 2 CPU cores for two models.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402
from cell_methods import BUNDLE, GRIDS, best_on_grid, predict  # noqa: E402

from scripts.datalists import load_labelled_stack, split_sections  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True)
    parser.add_argument("--fold", type=int, default=4)
    parser.add_argument("--dataset_dir", type=Path, default=BUNDLE / "data" / "isbi2012")
    parser.add_argument("--output", type=Path, default=Path("docs/results/averaging.json"))
    args = parser.parse_args()
    description = machine.describe()
    print(machine.summary(description), flush=True)
    items = load_labelled_stack(args.dataset_dir / "train-volume.tif", args.dataset_dir / "train-labels.tif")
    validation = split_sections(items, args.fold, 5)["validation"]

    maps, network_ms = {}, {}
    for index, model in enumerate(args.models):
        for tta in (False, True):
            timings: list[float] = []
            maps[index, tta] = predict(validation, model, timings, test_time_augmentation=tta)
            network_ms[index, tta] = timings[0]
    models = range(len(args.models))
    groups = [[index] for index in models] + ([list(models)] if len(models) > 1 else [])
    rows = []
    for tta in (False, True):
        for group in groups:
            averaged = [np.mean(sections, axis=0) for sections in zip(*(maps[i, tta] for i in group), strict=True)]
            row = {"maps": [str(args.models[i]) for i in group], "test_time_augmentation": tta}
            row["network_ms"] = sum(network_ms[i, tta] for i in group)
            row["validation_cells"] = best_on_grid("components", GRIDS["components"], averaged, validation)
            rows.append(row)
    baseline = rows[0]
    for row in rows:
        extra_ms = row["network_ms"] - baseline["network_ms"]
        gain = row["validation_cells"]["v_rand"] - baseline["validation_cells"]["v_rand"]
        row["gain_per_network_ms"] = gain / extra_ms if extra_ms > 0 else None
        name = " + ".join(row["maps"]) + " (TTA)" * row["test_time_augmentation"]
        cells = row["validation_cells"]
        print(f"{name}: cells {cells['v_rand']:.4f} / {cells['v_info']:.4f}, {row['network_ms']:.0f} ms", flush=True)
    slices = [item["slice"] for item in validation]
    machine.write_json(
        args.output, {"fold": args.fold, "validation_slices": slices, "rows": rows, "machine": description}
    )


if __name__ == "__main__":
    main()
