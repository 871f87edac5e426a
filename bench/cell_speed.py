"""Cost per 512x512 section of extracting cells, beside the network's own cost, on this machine's CPU.

For the first N sections of the shipped test volume: the shipped U-Net through inference.json's own predictor
(preprocessing, sliding window, sigmoid), then each cell method of ``scripts.cells`` on its probability map, and
the per-cell table of ``scripts.cell_table``: its default columns, with ``solidity``, and scikit-image's
``regionprops_table`` with the same columns for comparison. Best of R repeats per step, milliseconds per section.

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
from skimage.measure import regionprops_table  # noqa: E402

from scripts.cell_table import cell_table  # noqa: E402
from scripts.cells import CELL_METHODS, label_cells  # noqa: E402
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
    predictor = config.get_parsed_content("predictor")
    load_weights(predictor.network, BUNDLE / "models" / "model.pt")
    threshold = config.get_parsed_content("membrane_threshold")
    sections = read_stack(BUNDLE / "data" / "isbi2012" / "test-volume.tif")[: args.sections]

    probabilities = np.stack([predictor(section) for section in sections])
    network_ms = best_ms(lambda: [predictor(section) for section in sections], args.repeats)
    rows = [("network (inference.json's predictor: scaling, sliding window, sigmoid)", network_ms / len(sections))]
    for method in CELL_METHODS:
        ms = best_ms(lambda m=method: [label_cells(p, threshold, method=m) for p in probabilities], args.repeats)
        rows.append((f"cells: {method}", ms / len(sections)))
    cells = np.stack([label_cells(p, threshold) for p in probabilities]).astype(np.uint32)
    for name, solidity in (("default columns", False), ("with solidity", True)):
        ms = best_ms(lambda s=solidity: cell_table(cells, sections, (4.0, 4.0), solidity=s), args.repeats)
        rows.append((f"cell table, {name} (pixels and nm)", ms / len(sections)))
    properties = ("label", "area", "perimeter", "centroid", "bbox", "equivalent_diameter_area", "axis_major_length",
                  "axis_minor_length", "eccentricity", "solidity", "orientation", "intensity_mean", "intensity_min",
                  "intensity_max", "intensity_std")  # fmt: skip

    physical = ("label", "area", "centroid", "equivalent_diameter_area", "axis_major_length", "axis_minor_length")

    def regionprops() -> None:  # the same columns in pixels, and those in nm measured again with the spacing
        for labels, image in zip(cells, sections, strict=True):
            regionprops_table(labels, intensity_image=image, properties=properties)
            regionprops_table(labels, properties=physical, spacing=(4.0, 4.0))

    rows.append(("scikit-image regionprops_table, same columns", best_ms(regionprops, args.repeats) / len(sections)))

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
