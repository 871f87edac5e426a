"""Peak memory and speed of inference on large volumes, in one process and on 2 Dask worker processes.

Builds volumes from the shipped test volume, its 512x512 sections tiled 2 x 2 into 1024x1024 and repeated
(``sections x 1024 x 1024`` uint8, uncompressed TIFF, written page by page), then runs the real command on each

    python -m monai.bundle run inferring --config_file configs/inference.json --input_path VOLUME ...

and samples the resident memory of the command and every process it starts (Dask workers included) every
50 ms: the peak of their sum is the peak RSS. Cases:

* one worker (in this process), on 120 and on 480 sections (the memory must not grow with the volume);
* 2 Dask worker processes on 120 sections (the scaling from 1 to 2 workers on this machine).

    python bench/volume_memory.py [--sections 120 480] [--output docs/results/volumes.json]

Run it on an otherwise idle machine; it prints the CPU model and flags with the numbers and stores them, with the
command line, under ``machine`` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
TEST_VOLUME = BUNDLE / "data" / "isbi2012" / "test-volume.tif"


def make_volume(path: Path, sections: int) -> Path:
    """``sections`` x 1024 x 1024 uint8: the test volume's sections tiled 2 x 2, repeated; written page by page."""
    source = tifffile.imread(TEST_VOLUME)

    def pages():
        for z in range(sections):
            yield np.tile(source[z % len(source)], (2, 2))

    tifffile.imwrite(path, data=pages(), shape=(sections, 1024, 1024), dtype=np.uint8, photometric="minisblack")
    return path


def run_measured(arguments: list[str], log: Path, bundle: Path = BUNDLE, env: dict | None = None) -> dict:
    """Runs ``python -m monai.bundle run ...`` in ``bundle`` (this checkout's bundle/ by default), with ``env`` added
    to the environment: its wall time and the peak RSS of its process tree."""
    command = [sys.executable, "-m", "monai.bundle", "run", *arguments, "--logging_file", "configs/logging.conf"]
    started = time.perf_counter()
    with log.open("w") as stream:
        environment = {**os.environ, **(env or {})}
        process = subprocess.Popen(command, cwd=bundle, stdout=stream, stderr=subprocess.STDOUT, env=environment)
        root, peak = psutil.Process(process.pid), 0
        while process.poll() is None:
            total = 0
            for member in [root, *root.children(recursive=True)]:
                try:
                    total += member.memory_info().rss
                except psutil.Error:  # a process that ended between listing and reading
                    pass
            peak = max(peak, total)
            time.sleep(0.05)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"{log}: `{' '.join(arguments)}` failed (exit {process.returncode}); see the log")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak / 2**20, 1)}


def infer(volume: Path, output: Path, log: Path, bundle: Path = BUNDLE, env: dict | None = None, **flags) -> dict:
    shutil.rmtree(output, ignore_errors=True)
    arguments = ["inferring", "--config_file", "configs/inference.json", "--input_path", str(volume)]
    arguments += ["--output_dir", str(output)]
    for name, value in flags.items():
        arguments += [f"--{name}", str(value)]
    return run_measured(arguments, log, bundle, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", type=int, nargs="+", default=[120, 480])
    parser.add_argument("--output", type=Path, default=Path("docs/results/volumes.json"))
    args = parser.parse_args()
    description = machine.describe()
    print(machine.summary(description), flush=True)
    results = {"machine": description, "cases": []}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)

        def record(case: str, sections: int, measured: dict) -> None:
            entry = {"case": case, "sections": sections, **measured}
            entry["seconds_per_section"] = round(measured["seconds"] / sections, 3)
            results["cases"].append(entry)
            print(json.dumps(entry), flush=True)

        for sections in args.sections:
            volume = make_volume(folder / f"volume_{sections}.tif", sections)
            record("one worker, in process", sections, infer(volume, folder / "out", folder / f"b{sections}.log"))
            if sections == args.sections[0]:
                two = infer(volume, folder / "out", folder / f"w{sections}.log", dask_workers=2)
                record("2 Dask worker processes", sections, two)
            volume.unlink()
    machine.write_json(args.output, results)


if __name__ == "__main__":
    main()
