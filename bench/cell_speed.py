"""Cost per 512x512 section of extracting cells, beside the network's own cost, on this machine's CPU.

For the first N sections of the shipped test volume: the shipped U-Net's sliding-window inference (as
inference.json runs it), then each cell method of ``scripts.cells`` on its probability map and the per-cell table
(``regionprops_table``). Best of R repeats per step, milliseconds per section.

    python bench/cell_speed.py [--sections 6] [--repeats 3] [--output docs/results/cell_speed.json]

Prints a markdown table and stores it, with the machine (CPU model and flags) and command line, in ``--output``.
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
sys.path.insert(0, str(BUNDLE))
sys.path.insert(0, str(REPO / "bench"))

import machine  # noqa: E402

from scripts.cells import CELL_METHODS, cell_table, label_cells  # noqa: E402
from scripts.checkpoints import load_weights  # noqa: E402
from scripts.stack_io import read_stack  # noqa: E402


def best_ms(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results" / "cell_speed.json")
    args = parser.parse_args()
    description = machine.describe()
    config = ConfigParser()
    config.read_config(str(BUNDLE / "configs" / "inference.json"))
    config.update({"bundle_root": str(BUNDLE), "device": "cpu"})
    network = load_weights(config.get_parsed_content("network_def"), BUNDLE / "models" / "model.pt").eval()
    inferer = config.get_parsed_content("sliding_window_inferer")
    threshold = config.get_parsed_content("membrane_threshold")
    sections = read_stack(BUNDLE / "data" / "isbi2012" / "test-volume.tif")[: args.sections]
    images = torch.from_numpy(sections.astype(np.float32) / 255.0)[:, None]

    with torch.no_grad():
        probabilities = torch.sigmoid(inferer(images, network))[:, 0].numpy()
        network_ms = best_ms(lambda: [inferer(image[None], network) for image in images], args.repeats)
    rows = [("network (sliding window, threshold not included)", network_ms / len(sections))]
    for method in CELL_METHODS:
        ms = best_ms(lambda m=method: [label_cells(p, threshold, method=m) for p in probabilities], args.repeats)
        rows.append((f"cells: {method}", ms / len(sections)))
    cells = np.stack([label_cells(p, threshold) for p in probabilities]).astype(np.uint32)
    table_ms = best_ms(lambda: cell_table(cells, sections, pixel_size=(4.0, 4.0)), args.repeats)
    rows.append(("cell table (regionprops_table, pixels and nm)", table_ms / len(sections)))

    print(f"CPU: {machine.summary(description)}, {torch.get_num_threads()} torch threads")
    print(f"{len(sections)} sections of {sections.shape[1]}x{sections.shape[2]}, best of {args.repeats}")
    print("| step | ms per section |\n| --- | --- |")
    for name, ms in rows:
        print(f"| {name} | {ms:.0f} |")
    results = {
        "sections": len(sections),
        "section_shape": list(sections.shape[1:]),
        "repeats": args.repeats,
        "membrane_threshold": float(threshold),
        "ms_per_section": dict(rows),
        "machine": description,
    }
    machine.write_json(args.output, results)


if __name__ == "__main__":
    main()
