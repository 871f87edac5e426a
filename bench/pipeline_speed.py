"""The whole inference command against Python's start-up and against the network alone, on this machine's CPU.

One run measures:

1. start-up: ``python -c "import torch, monai.bundle"``, best of ``--repeats``;
2. the default command, ``python -m monai.bundle run inferring --config_file configs/inference.json`` on the shipped
   30-section test volume, best of ``--repeats`` (wall time and the peak RSS of its process tree), alternating with
   the start-up so both see the same machine;
3. a ``--sections`` x 1024 x 1024 volume (the test volume's sections tiled 2 x 2, repeated, as
   ``bench/volume_memory.py`` builds it) through the same command once: its pipeline throughput is
   ``sections / (wall - start-up)``, everything after Python's start-up counted (reading, the network's backend
   choice and a ``torch.compile`` with an empty cache where it chooses that, network, cells, table, writing,
   finishing);
4. the network alone on the same 1024 x 1024 sections in this process: inference.json's own predictor
   (scaling, sliding window, sigmoid), with the backend the command chose for that volume (compiled untimed), at
   the command's torch threads, best of ``--repeats`` over 4 sections;
5. where the command's time goes, in this process on the test volume: building the config's components, the
   blocks, finishing; and the blocks run three ways: as ``LocalRunner`` runs them (the network on cores - 1
   threads beside a thread for the cells), one step after the other on every core, and overlapped with the
   network on every core.

``--compile-cost`` measures only what a cold ``torch.compile`` costs the command: the test volume with ``--backend
eager``, and with ``--backend compile`` from an empty compile cache, with Inductor's default pool of compile
processes and with ``TORCHINDUCTOR_COMPILE_THREADS=1`` (wall time and peak RSS of each).

It reports the command's time over the start-up, the pipeline's throughput as a fraction of the network's, and
the peak RSS of each run.

    python bench/pipeline_speed.py [--sections 120] [--repeats 3] [--output docs/results/pipeline_speed.json]
    python bench/pipeline_speed.py --bundle /tmp/emseg-0.10.0/bundle --output docs/results/pipeline_speed_0.10.0.json

``--bundle`` times the command of another checkout's bundle (e.g. ``git worktree add /tmp/emseg-0.10.0 94d7cae``)
the same way, parts 1 to 3 only: an earlier version on the same machine, as the baseline.

``bench/inference_speed.py`` runs it after its network measurements (unless ``--network-only``). Run it on an
otherwise idle machine; it stores the machine (CPU model and flags) and the command line with the numbers.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
sys.path.insert(0, str(BUNDLE))
sys.path.insert(0, str(REPO / "bench"))

import machine  # noqa: E402
from volume_memory import TEST_VOLUME, infer, make_volume  # noqa: E402

from scripts.stack_io import read_stack  # noqa: E402


def startup_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, monai.bundle"], check=True)
    return time.perf_counter() - started


def network_sections_per_second(repeats: int, backend: str, sections: int) -> float:
    """inference.json's predictor alone on 1024 x 1024 sections (the test volume's, tiled 2 x 2), in this process,
    with ``backend`` chosen as for the command on ``sections`` such sections."""
    from monai.bundle import ConfigParser

    from scripts.blockwise import plan_blocks, window_count
    from scripts.checkpoints import load_weights

    config = ConfigParser()
    config.read_config(str(BUNDLE / "configs" / "inference.json"))
    config.update({"bundle_root": str(BUNDLE), "device": "cpu", "backend": backend})
    predictor = config.get_parsed_content("predictor")
    load_weights(predictor.network, BUNDLE / "models" / "model.pt")
    window = predictor.window
    predictor.plan(
        window_count(plan_blocks((sections, 1024, 1024), None), (1024, 1024), window.roi_size, window.overlap)
    )
    sections = [np.tile(section, (2, 2)) for section in read_stack(TEST_VOLUME)[:4]]
    predictor(sections[0])  # warm-up
    best = min(
        timed(lambda: [predictor(section) for section in sections]) for _ in range(repeats)
    )  # fmt: skip
    return len(sections) / best


def phases(repeats: int) -> dict:
    """Seconds of each phase of the test volume's run in this process (best of ``repeats``), and of its blocks
    under three schedules of the network and the cells."""
    import shutil

    from monai.bundle import ConfigParser

    from scripts import volumes

    def sequential(runner, blocks, task):  # no second thread: each block's steps one after the other
        for block in blocks:
            task.finish(block, task.predict(block, runner.predictor))
            yield block

    def every_core(runner, blocks, task):  # the cells' thread beside a network on every core
        yield from runner._overlapped(blocks, task)

    schedules = {
        "LocalRunner": volumes.LocalRunner.run,
        "one after the other": sequential,
        "both on every core": every_core,
    }
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            for name, schedule in schedules.items():
                started = time.perf_counter()
                config = ConfigParser()
                config.read_config(str(BUNDLE / "configs" / "inference.json"))
                config.update({"bundle_root": str(BUNDLE), "output_dir": folder})
                config.get_parsed_content("initialize")
                evaluator = config.get_parsed_content("evaluator")
                built = time.perf_counter()
                volume = evaluator.volume
                blocks = volumes.plan_blocks(volume.shape, evaluator.block_size)
                runner = volumes.LocalRunner(evaluator.predictor)
                runner.run = functools.partial(schedule, runner)
                evaluator.runner = runner
                evaluator._prepare_work(volume, blocks)
                evaluator._compute(volume, blocks)
                computed = time.perf_counter()
                evaluator.finish(volume, blocks)
                finished = time.perf_counter()
                shutil.rmtree(Path(folder), ignore_errors=True)
                for phase, seconds in ((f"blocks, {name}", computed - built), ("build", built - started),
                                       ("finish", finished - computed)):  # fmt: skip
                    best[phase] = min(best.get(phase, float("inf")), seconds)
    return best


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def compile_cost() -> dict:
    """The test volume's command eager, and compiled from an empty cache (default compile pool, one thread)."""
    cases = {"eager": ({}, "eager"), "compile": ({}, "compile"),
             "compile, 1 compile thread": ({"TORCHINDUCTOR_COMPILE_THREADS": "1"}, "compile")}  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for name, (env, backend) in cases.items():
            env = {"TORCHINDUCTOR_CACHE_DIR": str(folder / f"cache_{len(results)}"), **env}
            results[name] = infer(TEST_VOLUME, folder / "out", folder / "run.log", BUNDLE, env, backend=backend)
            results[name]["compile"] = compile_outcome((folder / "run.log").read_text())
            measured = results[name]
            print(
                f"test volume, {name}: {measured['seconds']:.1f} s, peak RSS {measured['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    return results


def compile_outcome(log: str) -> str | None:
    """What a command's log says ``torch.compile`` did: matched eager, fell back to eager, or nothing (None)."""
    if "torch.compile failed" in log or "torch.compile differs" in log:
        return "fell back to eager"
    return "matched eager" if "torch.compile matches eager" in log else None


def chosen_backend(log: str) -> str | None:
    """What a command's log says the network ran on (``network on cpu: ...``; None for bundles before 0.12.0)."""
    lines = [line.split("network on ", 1)[1] for line in log.splitlines() if "network on " in line]
    return lines[0] if lines else None


def measure(sections: int = 120, repeats: int = 3, bundle: Path = BUNDLE, backend: str = "auto") -> dict:
    """The measurements of the module docstring, as a dict (also printed); for another ``bundle``, parts 1 to 3."""
    results: dict = {"torch_threads": torch.get_num_threads(), "repeats": repeats, "backend": backend}
    flags = {"backend": backend} if bundle == BUNDLE else {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        startups, commands = [], []
        for _ in range(repeats):
            startups.append(startup_seconds())
            commands.append(infer(TEST_VOLUME, folder / "out", folder / "test.log", bundle, **flags))
        startup = min(startups)
        best = min(commands, key=lambda measured: measured["seconds"])
        results["startup_seconds"] = startups
        results["test_volume"] = {"runs": commands, "best_seconds": best["seconds"]}
        results["test_volume"]["network"] = chosen_backend((folder / "test.log").read_text())
        over = best["seconds"] - startup
        print(f"start-up {startup:.2f} s; the command on the 30-section test volume {best['seconds']:.2f} s "
              f"({over:.2f} s more), peak RSS {best['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
        results["test_volume"]["seconds_over_startup"] = over

        volume = make_volume(folder / f"volume_{sections}.tif", sections)
        cache = {"TORCHINDUCTOR_CACHE_DIR": str(folder / "compile_cache")}  # a compile, if chosen, from nothing
        large = infer(volume, folder / "out", folder / "large.log", bundle, cache, **flags)
        log = (folder / "large.log").read_text()
        large["network"], large["compile"] = chosen_backend(log), compile_outcome(log)
        volume.unlink()
        pipeline = sections / (large["seconds"] - startup)
        if bundle != BUNDLE:
            results["large_volume"] = {
                "shape": [sections, 1024, 1024],
                **large,
                "pipeline_sections_per_second": pipeline,
            }
            print(f"{sections} x 1024 x 1024: {large['seconds']:.1f} s, peak RSS {large['peak_rss_mb']:.0f} MB; "
                  f"pipeline {pipeline:.2f} sections/s", flush=True)  # fmt: skip
            return results
        network = network_sections_per_second(repeats, backend, sections)
        results["large_volume"] = {
            "shape": [sections, 1024, 1024], **large, "pipeline_sections_per_second": pipeline,
            "network_sections_per_second": network, "pipeline_over_network": pipeline / network,
        }  # fmt: skip
        print(f"{sections} x 1024 x 1024: {large['seconds']:.1f} s, peak RSS {large['peak_rss_mb']:.0f} MB; pipeline "
              f"{pipeline:.2f} sections/s, network alone {network:.2f} sections/s: {pipeline / network:.2f} of the "
              f"network's pace; network on {large['network']}", flush=True)  # fmt: skip
    results["phases_seconds"] = phases(repeats)
    for phase, seconds in results["phases_seconds"].items():
        print(f"test volume in this process, {phase}: {seconds:.2f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="auto", help="--backend of the command and the network alone")
    parser.add_argument("--compile-cost", action="store_true", help="only the cost of a cold torch.compile")
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="the bundle folder whose command is timed")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results" / "pipeline_speed.json")
    args = parser.parse_args()
    description = machine.describe()
    print(machine.summary(description), flush=True)
    if args.compile_cost:
        results = {"compile_cost": compile_cost()}
    else:
        results = measure(args.sections, args.repeats, args.bundle.resolve(), args.backend)
    machine.write_json(args.output, {**results, "bundle": str(args.bundle), "machine": description})


if __name__ == "__main__":
    main()
