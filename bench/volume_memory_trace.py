"""Resident memory over time of one blockwise inference run, every second, to see whether it grows per block.

    python bench/volume_memory_trace.py SECTIONS [--output docs/results/volume_memory_trace_SECTIONS.json]
        [extra monai.bundle flags ...]

Builds a SECTIONS x 1024 x 1024 volume as bench/volume_memory.py does, runs the default inference command on
it, and prints the summed RSS of the command and its processes every 10 s, then the peak. Every 1-s sample, the
peak and the exit status are stored, with the machine and command line, in ``--output``.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402
import volume_memory  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Other flags go to the command.", allow_abbrev=False
    )
    parser.add_argument("sections", type=int)
    parser.add_argument("--output", type=Path, help="default: docs/results/volume_memory_trace_SECTIONS.json")
    args, extra = parser.parse_known_args()
    output = args.output or RESULTS / f"volume_memory_trace_{args.sections}.json"
    description = machine.describe()
    print(machine.summary(description), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        volume = volume_memory.make_volume(Path(folder) / f"volume_{args.sections}.tif", args.sections)
        command = [
            sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", "configs/inference.json",
            "--input_path", str(volume), "--output_dir", str(Path(folder) / "out"),
            "--logging_file", "configs/logging.conf", *extra,
        ]  # fmt: skip
        started = time.time()
        with (Path(folder) / "run.log").open("w") as log:
            process = subprocess.Popen(command, cwd=volume_memory.BUNDLE, stdout=log, stderr=subprocess.STDOUT)
            root, samples = psutil.Process(process.pid), []
            while process.poll() is None:
                try:
                    members = [root, *root.children(recursive=True)]
                    samples.append((time.time() - started, sum(m.memory_info().rss for m in members) / 2**20))
                except psutil.Error:
                    pass
                time.sleep(1)
    for seconds, megabytes in samples[::10]:
        print(f"{seconds:6.0f} s {megabytes:7.0f} MB")
    peak = max(m for _, m in samples)
    print(f"peak {peak:.0f} MB, exit {process.returncode}")
    results = {
        "sections": args.sections,
        "flags": extra,
        "exit_status": process.returncode,
        "peak_rss_mb": round(peak, 1),
        "samples": [{"seconds": round(s, 1), "rss_mb": round(m, 1)} for s, m in samples],
        "machine": description,
    }
    machine.write_json(output, results)


if __name__ == "__main__":
    main()
