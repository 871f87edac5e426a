"""Held-out scores of the shipped weights with each network backend: may ``auto`` use it?

``scripts.backends`` lets ``--backend auto`` choose bf16 autocast (on CPUs with bf16 units) or ``torch.compile``
only where they keep the held-out scores within 0.001 of eager fp32's (issue 24; checked here for ``V_rand`` and
``V_info``, of the map and of the cells). This runs the
evaluation command (fold 4: the membrane threshold chosen on sections 18-23, sections 24-29 scored once) with
``--backend eager``, ``compile`` and ``bf16``, and reports each one's scores of the membrane map and of the cells and
their differences from eager's.

On a CPU without bf16 units (no ``amx_bf16`` or ``avx512_bf16`` flag) torch emulates bf16: about 100 times slower,
but rounding as the hardware does (bfloat16 operands, float32 sums), so the scores hold; the times do not.

    python bench/backend_agreement.py [--backends eager compile bf16] [--output docs/results/backend_agreement.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import machine  # noqa: E402
from pipeline_speed import compile_outcome  # noqa: E402
from volume_memory import run_measured  # noqa: E402

CONFIGS = "['configs/train.json','configs/evaluate.json']"
TOLERANCE = 0.001


def evaluate(backend: str, folder: Path) -> dict:
    """The evaluation command's scores with ``backend``, its wall time and peak RSS."""
    output = folder / backend
    arguments = ["evaluating", "--config_file", CONFIGS, "--backend", backend, "--output_dir", str(output)]
    measured = run_measured(arguments, folder / f"{backend}.log")
    metrics = json.loads((output / "metrics.json").read_text())
    log = (folder / f"{backend}.log").read_text()
    return {
        "compile": compile_outcome(log),
        "membrane_threshold": metrics["fixed_threshold"],
        "map": {key: metrics["mean_at_fixed_threshold"][key] for key in ("v_rand", "v_info")},
        "cells": {key: metrics["cells"]["mean"][key] for key in ("v_rand", "v_info")},
        **measured,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["eager", "compile", "bf16"])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results" / "backend_agreement.json")
    args = parser.parse_args()
    description = machine.describe()
    print(machine.summary(description), flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for backend in dict.fromkeys(["eager", *args.backends]):
            results[backend] = evaluate(backend, Path(folder))
            reference = results["eager"]
            differences = {
                f"{kind}_{key}": results[backend][kind][key] - reference[kind][key]
                for kind in ("map", "cells") for key in ("v_rand", "v_info")
            }  # fmt: skip
            results[backend]["difference_from_eager"] = differences
            results[backend]["within_tolerance"] = all(abs(d) <= TOLERANCE for d in differences.values())
            print(f"{backend}: threshold {results[backend]['membrane_threshold']}, map V_rand "
                  f"{results[backend]['map']['v_rand']:.4f}, cells V_rand {results[backend]['cells']['v_rand']:.4f}; "
                  f"largest difference from eager {max(map(abs, differences.values())):.5f} "
                  f"({results[backend]['seconds']:.0f} s)", flush=True)  # fmt: skip
    machine.write_json(args.output, {"tolerance": TOLERANCE, "backends": results, "machine": description})


if __name__ == "__main__":
    main()
