"""What a bench result was measured on, and how the bench scripts store what they print.

Every bench script writes its figures to a JSON file under ``docs/results/`` with ``describe()`` under
``"machine"``: the CPU model and the flags its kernels depend on, the cores, the torch version and threads, the
date and the exact command line, so a figure in the docs can be traced to a stored run and its machine.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.writers import atomic_write  # noqa: E402

# the CPU features torch's CPU kernels pick their code paths by (fp32: avx2, avx512f; bf16: avx512_bf16, amx_tile)
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cpuinfo(field: str) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo (Linux), or None."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() == field), None)


def cpu_flags() -> str:
    """Which of ``FLAGS`` this CPU has, space-separated ("unknown" where /proc/cpuinfo is missing)."""
    flags = cpuinfo("flags")
    if flags is None:
        return "unknown"
    return " ".join(flag for flag in FLAGS if flag in flags.split())


def describe() -> dict:
    """This machine and run: CPU model and flags, cores, torch version and threads, date, command line."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpuinfo("model name") or platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(),
        "cores": cores,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.orig_argv),
    }


def summary(machine: dict) -> str:
    """The line a script prints first, e.g. ``AMD EPYC, 2 cores, flags: avx2 avx512f, torch 2.13.0+cpu``."""
    return f"{machine['cpu']}, {machine['cores']} cores, flags: {machine['cpu_flags']}, torch {machine['torch']}"


def write_json(path: Path, data: dict) -> None:
    """Writes ``data`` to ``path`` as the bundle writes its files (:func:`scripts.writers.atomic_write`)."""
    atomic_write(Path(path), (json.dumps(data, indent=2) + "\n").encode())
    print(f"wrote {path}", file=sys.stderr)  # stderr: stdout stays what the script measured
