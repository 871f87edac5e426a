"""Time per image/label pair of the training augmentation: the bundle's single fused resampling against
separate elastic + affine passes on the full slice, each followed by the same flips and intensity jitter.

Usage: python bench/augmentation_cost.py [--pairs 200] [--repeats 3] [--output docs/results/augmentation_cost.json]

Runs on one thread (as a DataLoader worker does); prints the best of --repeats runs in ms per pair and stores them
(every run's time too), with the machine and command line, in ``--output``. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bundle"))
sys.path.insert(0, str(REPO / "bench"))

import machine  # noqa: E402


def pipelines() -> dict:
    from monai.bundle import ConfigParser
    from monai.transforms import Compose, Rand2DElasticd, RandAffined, RandSpatialCropd

    config = ConfigParser()
    config.read_config(REPO / "bundle" / "configs" / "train.json")
    config["bundle_root"] = str(REPO / "bundle")
    deterministic = Compose(config.get_parsed_content("deterministic_transforms"))
    fused = config.get_parsed_content("train#random_transforms")
    elastic = json.loads(json.dumps(config.get("train#random_transforms")[0]))
    keys, modes = elastic["keys"], elastic["mode"]
    separate = [
        Rand2DElasticd(keys, spacing=elastic["spacing"], magnitude_range=elastic["magnitude_range"], prob=1.0,
                       mode=modes, padding_mode="reflection"),
        RandAffined(keys, prob=1.0, rotate_range=elastic["rotate_range"], shear_range=elastic["shear_range"],
                    translate_range=elastic["translate_range"], scale_range=elastic["scale_range"], mode=modes,
                    padding_mode="reflection"),
        RandSpatialCropd(keys, roi_size=config.get_parsed_content("patch_size"), random_size=False),
        *fused[1:],
    ]  # fmt: skip
    return {
        "deterministic": deterministic,
        "fused (bundle)": Compose(fused),
        "separate elastic + affine": Compose(separate),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results" / "augmentation_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    description = machine.describe()
    print(machine.summary(description), flush=True)
    from scripts.datalists import load_labelled_stack

    data = REPO / "bundle" / "data" / "isbi2012"
    built = pipelines()
    items = [
        built["deterministic"](item)
        for item in load_labelled_stack(data / "train-volume.tif", data / "train-labels.tif")
    ]
    results = {"pairs": args.pairs, "repeats": args.repeats, "torch_threads": 1, "pipelines": {}}
    for name in ("fused (bundle)", "separate elastic + affine"):
        pipeline = built[name]
        pipeline.set_random_state(0)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for index in range(args.pairs):
                out = pipeline(dict(items[index % len(items)]))
            times.append((time.perf_counter() - start) / args.pairs * 1000)
        results["pipelines"][name] = {
            "ms_per_pair": min(times),
            "ms_per_pair_each_repeat": times,
            "output_shape": list(out["image"].shape),
        }
        print(f"{name}: {min(times):.1f} ms per pair (output {tuple(out['image'].shape)})", flush=True)
    machine.write_json(args.output, {**results, "machine": description})


if __name__ == "__main__":
    main()
