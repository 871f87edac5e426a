"""Resident memory over time of one blockwise inference run, every second, to see whether it grows per block.

    python bench/volume_memory_trace.py SECTIONS [extra monai.bundle flags ...]

Builds a SECTIONS x 1024 x 1024 volume as bench/volume_memory.py does, runs the default inference command on
it, and prints the summed RSS of the command and its processes every 10 s, then the peak.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import volume_memory  # noqa: E402


def main() -> None:
    sections = int(sys.argv[1])
    with tempfile.TemporaryDirectory() as folder:
        volume = volume_memory.make_volume(Path(folder) / f"volume_{sections}.tif", sections)
        command = [
            sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", "configs/inference.json",
            "--input_path", str(volume), "--output_dir", str(Path(folder) / "out"),
            "--logging_file", "configs/logging.conf", *sys.argv[2:],
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
    print(f"peak {max(m for _, m in samples):.0f} MB, exit {process.returncode}")


if __name__ == "__main__":
    main()
