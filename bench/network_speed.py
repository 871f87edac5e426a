"""Cost of one training step (forward + backward + Adam update, batch 8 of 1x256x256) for each network the bundle
offers, built from the bundle's own network definitions; best of N steps after a warm-up, on this machine's CPU.

    python bench/network_speed.py [--repeats 5] [--networks U-Net ...] [--output docs/results/network_speed.json]

Prints a markdown table and stores it (every step's time too), with the machine and command line, in ``--output``.
Run it on an otherwise idle machine: the numbers are only comparable within one run (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
sys.path.insert(0, str(BUNDLE))
sys.path.insert(0, str(REPO / "bench"))

import machine  # noqa: E402

# name: (config files added to train.json, overrides)
NETWORKS = {
    "U-Net": ([], {}),
    "SegNet (narrow)": (["configs/segnet.json"], {}),
    "U-SegNet (narrow)": (["configs/usegnet.json"], {}),
    "SegNet (full width)": (["configs/segnet.json"], {"network_def#channels": [64, 128, 256, 512, 512]}),
    "Tiramisu (FC-DenseNet56)": (["configs/tiramisu.json"], {}),
    "Tiramisu (FC-DenseNet103)": (["configs/tiramisu.json"], {"network_def#depth": 103}),
}


def build(extra: list[str], overrides: dict) -> torch.nn.Module:
    config = ConfigParser()
    config.read_config([str(BUNDLE / "configs" / "train.json"), *(str(BUNDLE / f) for f in extra)])
    config.update(overrides)
    return config.get_parsed_content("network_def")


def step_seconds(network: torch.nn.Module, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` training steps, after one warm-up step that is not counted."""
    torch.manual_seed(0)
    images, labels = torch.rand(8, 1, 256, 256), (torch.rand(8, 1, 256, 256) > 0.8).float()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    loss_function = torch.nn.BCEWithLogitsLoss()
    times = []
    for _ in range(repeats + 1):  # the first step warms up allocators and kernels
        started = time.perf_counter()
        optimizer.zero_grad()
        loss_function(network(images), labels).backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results" / "network_speed.json")
    args = parser.parse_args()
    description = machine.describe()
    print(f"{machine.summary(description)}, {torch.get_num_threads()} threads; best of {args.repeats} steps")
    print("| network | parameters | s per step | relative to U-Net |")
    print("| --- | --- | --- | --- |")
    results = {"batch": [8, 1, 256, 256], "repeats": args.repeats, "networks": {}}
    for name in (name for name in NETWORKS if name in args.networks):
        network = build(*NETWORKS[name]).train()
        times = step_seconds(network, args.repeats)
        seconds = min(times)
        unet = results["networks"].get("U-Net", {}).get("seconds_per_step", seconds if name == "U-Net" else None)
        results["networks"][name] = {
            "parameters": sum(p.numel() for p in network.parameters()),
            "seconds_per_step": seconds,
            "relative_to_unet": seconds / unet if unet else None,  # None: U-Net not measured in this run
            "step_seconds": times,
        }
        parameters = results["networks"][name]["parameters"] / 1e6
        relative = f"{seconds / unet:.1f}x" if unet else "–"
        print(f"| {name} | {parameters:.1f} M | {seconds:.2f} | {relative} |", flush=True)
    machine.write_json(args.output, {**results, "machine": description})


if __name__ == "__main__":
    main()
