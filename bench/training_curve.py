"""Turn a training log into the curve of held-out V_rand against wall-clock minutes (CSV + PNG).

Usage:
    python bench/training_curve.py LOG [LOG ...] --out docs/figures/training_curve [--x epoch]

Each LOG is the stdout of `python -m monai.bundle run training ...`; the curve is read from the
`TrainingProgress` lines (one per epoch: elapsed minutes and the validation V_rand at the fixed threshold).
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

LINE = re.compile(
    r"epoch (?P<epoch>\d+)/(?P<max_epochs>\d+) \| loss (?P<loss>[\d.]+) \| val_v_rand (?P<v_rand>[\d.]+) .*"
    r"\| lr (?P<lr>[\d.e+-]+) \| elapsed (?P<minutes>[\d.]+) min"
)


def read_curve(log: Path) -> list[dict]:
    rows = [match.groupdict() for match in map(LINE.search, log.read_text().splitlines()) if match]
    if not rows:
        raise SystemExit(f"{log}: no TrainingProgress lines found")
    return [{key: float(value) for key, value in row.items()} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--labels", nargs="+", help="legend label per log (default: file names)")
    parser.add_argument(
        "--x", choices=("minutes", "epoch"), default="minutes",
        help="x axis: wall-clock minutes, or epochs (to compare recipes run at different machine speeds)",
    )  # fmt: skip
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(7, 4))
    labels = args.labels or [log.stem for log in args.logs]
    if len(labels) != len(args.logs):
        raise SystemExit("give one --labels entry per log")
    lowest = 1.0
    with args.out.with_suffix(".csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["run", "epoch", "minutes", "loss", "val_v_rand", "lr"])
        for log, label in zip(args.logs, labels, strict=True):
            curve = read_curve(log)
            for row in curve:
                writer.writerow([label, int(row["epoch"]), row["minutes"], row["loss"], row["v_rand"], row["lr"]])
            axis.plot([r[args.x] for r in curve], [r["v_rand"] for r in curve], marker=".", label=label)
            lowest = min(lowest, *(r["v_rand"] for r in curve))
    axis.set_xlabel("wall-clock minutes (training + validation)" if args.x == "minutes" else "epoch")
    axis.set_ylabel("held-out V_rand at the validation threshold")
    axis.set_ylim(max(0.0, lowest - 0.02), 1.0)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.out.with_suffix(".png"), dpi=100)
    print(f"wrote {args.out.with_suffix('.csv')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
