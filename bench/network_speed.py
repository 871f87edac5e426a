"""Cost of one training step (forward + backward + Adam update, batch 8 of 1x256x256) for each network the bundle
offers, built from the bundle's own network definitions; best of N steps after a warm-up, on this machine's CPU.

    python bench/network_speed.py [--repeats 5]

Run it on an otherwise idle machine: the numbers are only comparable within one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
sys.path.insert(0, str(BUNDLE))
# name: (config files added to train.json, overrides)
NETWORKS = {
    "U-Net": ([], {}),
    "SegNet (narrow)": (["configs/segnet.json"], {}),
    "U-SegNet (narrow)": (["configs/usegnet.json"], {}),
    "SegNet (full width)": (["configs/segnet.json"], {"network_def#channels": [64, 128, 256, 512, 512]}),
}


def build(extra: list[str], overrides: dict) -> torch.nn.Module:
    config = ConfigParser()
    config.read_config([str(BUNDLE / "configs" / "train.json"), *(str(BUNDLE / f) for f in extra)])
    config.update(overrides)
    return config.get_parsed_content("network_def")


def step_seconds(network: torch.nn.Module, repeats: int) -> float:
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
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.repeats} steps")
    print("| network | parameters | s per step | relative to U-Net |")
    print("| --- | --- | --- | --- |")
    baseline = None
    for name, (extra, overrides) in NETWORKS.items():
        network = build(extra, overrides).train()
        seconds = step_seconds(network, args.repeats)
        baseline = baseline or seconds
        parameters = sum(p.numel() for p in network.parameters()) / 1e6
        print(f"| {name} | {parameters:.1f} M | {seconds:.2f} | {seconds / baseline:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
