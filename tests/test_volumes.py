"""Blockwise inference through inference.json: the section-by-section result block by block, OME-Zarr in and out,
a 2-worker cluster, resuming after kill -9, and faults that name the block and the file."""

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from conftest import BUNDLE, DATA, bundle_config
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.writer import write_image

from scripts import dask_runner, outputs, volumes, work
from scripts.cell_table import cell_table
from scripts.dask_runner import worker_device
from scripts.errors import input_error_in_chain
from scripts.volumes import BlockError
from scripts.writers import csv_bytes

# windows smaller than the sections, so tiles cut across them; eager fp32 on every machine (--backend auto takes bf16
# on a CPU with bf16 units)
SMALL = {"inference_roi": [128, 128], "backend": "eager"}
SECTIONS = tifffile.imread(DATA / "test-volume.tif")[:3, 100:400, 50:330]  # stack_path's


@pytest.fixture(scope="module")
def stack_path(tmp_path_factory):
    """3 sections of 300 x 280, written page by page (one TIFF image series per section), as many tools write."""
    path = tmp_path_factory.mktemp("volume") / "stack.tif"
    with tifffile.TiffWriter(path) as writer:
        for section in SECTIONS:
            writer.write(section, photometric="minisblack")
    return path


def infer(input_path, output_dir, **overrides):
    config = bundle_config(
        ["configs/inference.json"],
        {"input_path": str(input_path), "output_dir": str(output_dir), **SMALL, **overrides},
    )
    config.get_parsed_content("initialize")
    config.get_parsed_content("run")
    return config


def read_outputs(folder, name="stack"):
    stacks = ("membrane_probability", "segmentation", "cells")
    outputs = {stack: tifffile.imread(folder / f"{name}_{stack}.tif") for stack in stacks}
    outputs["table"] = list(csv.DictReader((folder / f"{name}_cells.csv").open()))
    return outputs


@pytest.fixture(scope="module")
def in_memory(stack_path):
    """The outputs computed without blocks: the config's own predictor, cells and table, whole section by section."""
    config = bundle_config(["configs/inference.json"], {"input_path": str(stack_path), **SMALL})
    config.get_parsed_content("initialize")
    predictor, cells = config.get_parsed_content("predictor"), config.get_parsed_content("cells")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - 1))  # as the local runner leaves a core to the cells: the same sums
    try:
        probability = np.stack([predictor(section) for section in SECTIONS])
    finally:
        torch.set_num_threads(threads)
    labels = cells.stack(probability)
    table = csv_bytes(cell_table(labels, SECTIONS, config.get_parsed_content("cell_table").pixel_size))
    return {
        "membrane_probability": probability,
        "segmentation": np.where(probability >= config.get_parsed_content("membrane_threshold"), 0, 255),
        "cells": labels,
        "table": list(csv.DictReader(table.decode().splitlines())),
    }


def same_cells(first, second):
    both = (first > 0) & (second > 0)
    pairs = np.unique(np.stack([first[both], second[both]]), axis=1)
    one_to_one = pairs.shape[1] == len(np.unique(first[first > 0])) == len(np.unique(second[second > 0]))
    return one_to_one and ((first > 0) != (second > 0)).mean() < 0.005


def test_whole_section_blocks_give_the_in_memory_outputs_exactly(stack_path, in_memory, tmp_path):
    infer(stack_path, tmp_path, block_size=None)
    blockwise = read_outputs(tmp_path)
    for key in ("membrane_probability", "segmentation", "cells"):
        np.testing.assert_array_equal(blockwise[key], in_memory[key])
    assert blockwise["table"] == in_memory["table"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "stack_cells.csv", "stack_cells.tif", "stack_membrane_probability.tif", "stack_segmentation.tif",
    ]  # fmt: skip


def test_tiles_have_no_seams(stack_path, in_memory, tmp_path):
    config = infer(stack_path, tmp_path, block_size=100, **{"evaluator#cell_halo": 64})
    assert len(volumes.plan_blocks((3, 300, 280), 100)) == 27 and 100 < SMALL["inference_roi"][0]  # tiles < window
    tiled = read_outputs(tmp_path)
    assert np.abs(tiled["membrane_probability"] - in_memory["membrane_probability"]).max() <= 1e-4
    assert same_cells(tiled["cells"], in_memory["cells"])
    ids = [int(row["id"]) for row in tiled["table"]]
    assert sorted(ids) == sorted(set(np.unique(tiled["cells"])) - {0})  # one row per cell, cut by a seam or not
    assert sum(float(row["area_px"]) for row in tiled["table"]) == (tiled["cells"] > 0).sum()
    assert config.get_parsed_content("evaluator").written[-1].name == "stack_cells.csv"


def test_the_blocks_of_a_section_give_its_intensity_percentiles_exactly(stack_path):
    predictor = bundle_config(["configs/inference.json"], {"intensity_percentiles": [1, 99.5]}).get_parsed_content(
        "predictor"
    )
    assert predictor.intensity_percentiles == (1.0, 99.5)
    scale = predictor.preprocessing.transforms[2]
    blocks = volumes.plan_blocks(SECTIONS.shape, 100)
    ranges = volumes.LocalRunner(predictor).ranges(str(stack_path), blocks, predictor.intensity_percentiles)
    assert ranges == {z: scale.section_range(section) for z, section in enumerate(SECTIONS)}
    assert volumes.LocalRunner(predictor).ranges(str(stack_path), blocks) == {
        z: (float(section.min()), float(section.max())) for z, section in enumerate(SECTIONS)
    }


def test_ome_zarr_in_and_out(stack_path, in_memory, tmp_path):
    source = tmp_path / "stack.ome.zarr"
    write_image(
        SECTIONS, zarr.open_group(str(source), mode="w"), axes="zyx", scale_factors=(),
        scale={"z": 0.05, "y": 0.004, "x": 0.004}, axes_units=dict.fromkeys("zyx", "micrometer"),
    )  # fmt: skip
    infer(source, tmp_path / "out")
    output = tmp_path / "out" / "stack.ome.zarr"
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["stack.ome.zarr", "stack_cells.csv"]
    image, _, cells = list(Reader(parse_url(str(output)))())
    assert "Label" in [spec.__class__.__name__ for spec in cells.specs]
    for node in (image, cells):
        assert node.metadata["coordinateTransformations"][0][0]["scale"] == [1.0, 4.0, 4.0]
    np.testing.assert_array_equal(image.data[0].compute(), in_memory["membrane_probability"])
    np.testing.assert_array_equal(cells.data[0].compute(), in_memory["cells"])
    assert zarr.open_array(str(output / "0")).chunks == (1, 300, 280)
    header = (tmp_path / "out" / "stack_cells.csv").read_text().splitlines()[0]
    assert "area_nm2" in header  # the pixel size came from the OME-Zarr metadata


def test_two_worker_processes_on_loopback(stack_path, in_memory, tmp_path):
    config = infer(stack_path, tmp_path, dask_workers=2, block_size=100)  # tiles of 100 x 94 and shorter last ones
    runner = config.get_parsed_content("evaluator").runner
    assert isinstance(runner, dask_runner.DaskRunner)
    assert len(runner.network_loads) == 2 and set(runner.network_loads.values()) == {1}  # each worker loaded it once
    assert all(address.startswith("tcp://127.0.0.1:") for address in runner.network_loads)
    tiled = read_outputs(tmp_path)
    assert np.abs(tiled["membrane_probability"] - in_memory["membrane_probability"]).max() <= 1e-4
    assert same_cells(tiled["cells"], in_memory["cells"])


def test_an_existing_cluster_whose_workers_do_not_have_the_bundle(stack_path, in_memory, tmp_path):
    """A scheduler and a worker started as on a cluster node: outside bundle/, without scripts on their path."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    scheduler_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli"]
    processes = [
        subprocess.Popen([*dask[:2], "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                          "--no-dashboard", "--scheduler-file", str(scheduler_file)], cwd=tmp_path, env=environment),
        subprocess.Popen([*dask[:2], "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file),
                          "--nthreads", "1", "--no-dashboard"], cwd=tmp_path, env=environment),
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        from distributed import Client

        with Client(address) as client:
            client.wait_for_workers(1, timeout=60)
            assert not client.run(lambda: __import__("importlib.util").util.find_spec("scripts") is not None).get(
                next(iter(client.scheduler_info()["workers"]))
            )  # the worker cannot import the bundle by itself
        infer(stack_path, tmp_path / "out", dask_scheduler=address)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
    np.testing.assert_array_equal(read_outputs(tmp_path / "out")["cells"], in_memory["cells"])


#: the real inference command on ``stack_path`` in 27 tiles (3 sections of 3 x 3)
TILED = ["--inference_roi", "[128,128]", "--block_size", "100", "--logging_file", "configs/logging.conf"]

#: runs the bundle's inference like ``python -m monai.bundle run inferring``, with each block's task stopped after
#: the block whose record makes EMSEG_TEST_BLOCKS records: killed with SIGKILL, or paused until a file appears
STOPPING_RUN = """
import os, signal, sys, time
from pathlib import Path
sys.path.insert(0, ".")
import fire
from monai.bundle.scripts import run
from scripts import work

finish, blocks, action = work.BlockTask.finish, int(os.environ["EMSEG_TEST_BLOCKS"]), os.environ["EMSEG_TEST_ACTION"]

def finish_then_stop(task, block, predicted):
    count = finish(task, block, predicted)
    if len(list(Path(task.work_path, "blocks").glob("*.npz"))) == blocks:
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        Path(os.environ["EMSEG_TEST_PAUSED"]).touch()
        deadline = time.monotonic() + 300
        while not Path(os.environ["EMSEG_TEST_GO_ON"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return count

work.BlockTask.finish = finish_then_stop
fire.Fire(run)
"""


def inference_command(input_path, output_dir, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", "configs/inference.json",
        "--input_path", str(input_path), "--output_dir", str(output_dir), *TILED, *extra,
    ]  # fmt: skip


def stopping_run(input_path, output_dir, blocks: int, action: str, flags: Path) -> subprocess.Popen:
    """The inference command, stopped after ``blocks`` blocks (``action`` ``"kill"`` or ``"pause"``)."""
    command = [sys.executable, "-c", STOPPING_RUN, *inference_command(input_path, output_dir)[4:]]
    environment = {
        **os.environ, "EMSEG_TEST_BLOCKS": str(blocks), "EMSEG_TEST_ACTION": action,
        "EMSEG_TEST_PAUSED": str(flags / "paused"), "EMSEG_TEST_GO_ON": str(flags / "go_on"),
    }  # fmt: skip
    return subprocess.Popen(command, cwd=BUNDLE, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def all_outputs(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(stack_path, tmp_path_factory) -> dict[str, bytes]:
    """The files the real command writes for ``stack_path`` in 27 tiles, run without a stop."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(inference_command(stack_path, folder), cwd=BUNDLE, capture_output=True, timeout=600, check=True)
    return all_outputs(folder)


def test_a_run_killed_at_a_block_boundary_resumes_to_the_uninterrupted_outputs(stack_path, uninterrupted, tmp_path):
    process = stopping_run(stack_path, tmp_path / "out", blocks=5, action="kill", flags=tmp_path)
    try:
        process.wait(timeout=600)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL
    records = tmp_path / "out" / ".stack.partial" / "blocks"
    assert len(list(records.glob("*.npz"))) == 5
    # nothing that looks finished: the work folder and the lock file its holder could not remove when killed
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [".stack.lock", ".stack.partial"]
    command = inference_command(stack_path, tmp_path / "out", "--resume", "true")
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=600, check=True)
    assert "27 blocks (22 to compute)" in result.stdout + result.stderr
    assert all_outputs(tmp_path / "out") == uninterrupted  # bitwise: probability, segmentation, cells, table


def test_closing_the_steps_stops_the_run_at_a_block_and_a_resume_finishes_it(stack_path, tmp_path):
    """The napari worker's way of running: one block per step; closed, the run leaves only its work folder."""
    tiled = {"block_size": 100}
    config = bundle_config(
        ["configs/inference.json"],
        {"input_path": str(stack_path), "output_dir": str(tmp_path / "out"), **SMALL, **tiled},
    )
    config.get_parsed_content("initialize")
    steps = config.get_parsed_content("evaluator").steps()
    assert [next(steps) for _ in range(3)] == [(1, 27), (2, 27), (3, 27)]
    steps.close()
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [".stack.partial"]  # the lock is released
    infer(stack_path, tmp_path / "out", resume=True, **tiled)
    infer(stack_path, tmp_path / "whole", **tiled)
    assert all_outputs(tmp_path / "out") == all_outputs(tmp_path / "whole")


def test_a_second_run_into_the_same_outputs_is_refused_while_the_first_lives(stack_path, uninterrupted, tmp_path):
    other = tmp_path / "other" / "stack.tif"  # another input of the same name, as two users' runs would be
    other.parent.mkdir()
    tifffile.imwrite(other, SECTIONS[::-1], photometric="minisblack")
    first = stopping_run(stack_path, tmp_path / "out", blocks=2, action="pause", flags=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "paused").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "paused").exists(), first.communicate(timeout=60)[0][-3000:]
        second = subprocess.run(
            inference_command(other, tmp_path / "out"), cwd=BUNDLE, capture_output=True, text=True, timeout=600
        )
        assert second.returncode != 0
        last_line = second.stderr.strip().splitlines()[-1]
        assert last_line.startswith(f"scripts.writers.OutputLocked: {tmp_path / 'out' / '.stack.partial'}: in use by ")
        assert f"process {first.pid} " in last_line
        (tmp_path / "go_on").touch()
        output = first.communicate(timeout=600)[0]
    finally:
        first.kill()
    assert first.returncode == 0, output[-3000:]
    assert all_outputs(tmp_path / "out") == uninterrupted  # the first run's outputs, untouched by the second
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(uninterrupted)


def test_a_full_disk_names_the_block_and_the_file(stack_path, tmp_path, monkeypatch):
    atomic_write = work.atomic_write

    def full_for_block_records(path, data):
        if path.suffix == ".npz":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        atomic_write(path, data)

    monkeypatch.setattr(work, "atomic_write", full_for_block_records)
    with pytest.raises(RuntimeError) as raised:  # MONAI's "Failed to evaluate", raised from the BlockError
        infer(stack_path, tmp_path, block_size=None)
    error = input_error_in_chain(raised.value)
    assert isinstance(error, BlockError) and str(error) == (
        f"block (section 0, rows 0:300, columns 0:280): cannot write {tmp_path}/.stack.partial/blocks/z0_y0_x0.npz "
        "(No space left on device)"
    )
    assert [path.name for path in tmp_path.iterdir()] == [".stack.partial"]  # kept for --resume; lock released
    monkeypatch.undo()
    with pytest.raises(RuntimeError) as raised:  # a resume with another pixel size would mix units in the table
        infer(stack_path, tmp_path, block_size=None, resume=True, pixel_size=[4, 4])
    assert "pixel_size differ" in str(input_error_in_chain(raised.value))


def test_a_failed_finish_leaves_no_hidden_output_and_names_the_file(stack_path, tmp_path, monkeypatch):
    write_pages = outputs.write_pages

    def disk_full_on_the_segmentation(path, *arguments):
        if "segmentation" in path.name:
            path.write_bytes(b"the part that fitted")
            raise OSError(errno.ENOSPC, "No space left on device")
        write_pages(path, *arguments)

    monkeypatch.setattr(outputs, "write_pages", disk_full_on_the_segmentation)
    with pytest.raises(RuntimeError) as raised:
        infer(stack_path, tmp_path, block_size=None)
    error = input_error_in_chain(raised.value)
    assert str(error) == f"{tmp_path / 'stack_segmentation.tif'}: cannot write (No space left on device)"
    assert [path.name for path in tmp_path.iterdir()] == [".stack.partial"]  # the blocks, kept for --resume
    monkeypatch.undo()
    infer(stack_path, tmp_path, block_size=None, resume=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "stack_cells.csv", "stack_cells.tif", "stack_membrane_probability.tif", "stack_segmentation.tif",
    ]  # fmt: skip


def test_a_plain_zarr_array_in_and_ome_zarr_out(stack_path, in_memory, tmp_path):
    source = tmp_path / "stack.zarr"
    array = zarr.create_array(str(source), shape=(3, 300, 280), chunks=(1, 100, 100), dtype=np.uint8)
    array[:] = SECTIONS
    infer(source, tmp_path / "out", block_size=None)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["stack.ome.zarr", "stack_cells.csv"]
    image = zarr.open_group(str(tmp_path / "out" / "stack.ome.zarr"), mode="r")
    np.testing.assert_array_equal(image["0"][:], in_memory["membrane_probability"])
    np.testing.assert_array_equal(image["labels"]["cells"]["0"][:], in_memory["cells"])


def test_an_output_that_would_overwrite_the_input_is_refused(stack_path, tmp_path):
    source = tmp_path / "stack.ome.zarr"
    write_image(SECTIONS[:1], zarr.open_group(str(source), mode="w"), axes="zyx", scale_factors=())
    with pytest.raises(RuntimeError) as raised:  # the default output, <output_dir>/stack.ome.zarr, is the input
        infer(source, tmp_path)
    assert f"would overwrite the input {source}" in str(input_error_in_chain(raised.value))
    assert source.is_dir() and sorted(path.name for path in tmp_path.iterdir()) == ["stack.ome.zarr"]


@pytest.mark.parametrize(
    ("block_size", "block"),
    [(None, "block (section 1, rows 0:300, columns 0:280)"), (100, "block (section 1, rows 0:100, columns 0:94)")],
    ids=["sections", "tiles"],
)
def test_an_unreadable_chunk_names_the_block_and_the_file(stack_path, tmp_path, block_size, block):
    source = tmp_path / "stack.zarr"
    array = zarr.create_array(str(source), shape=(3, 300, 280), chunks=(1, 300, 280), dtype=np.uint8)
    array[:] = SECTIONS
    (source / "c" / "1" / "0" / "0").write_bytes(b"not a compressed chunk")
    with pytest.raises(RuntimeError) as raised:
        infer(source, tmp_path / "out", block_size=block_size)
    error = input_error_in_chain(raised.value)
    assert str(error).startswith(f"{source}: cannot read section 1 (")
    assert str(error).endswith(f"; in {block}")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # bad input: nothing kept


def test_each_gpu_worker_gets_one_device():
    assert [str(worker_device(name, "cuda", 2)) for name in (0, 1, 2)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert str(worker_device("tcp://10.0.0.7:4001", "cuda", 1)) == "cuda:0"  # a worker that sees one GPU
    assert str(worker_device(1, "cuda", 0)) == "cpu" and str(worker_device(1, "cpu", 4)) == "cpu"


def test_the_dashboard_link_of_the_local_cluster_answers():
    import urllib.request

    with dask_runner.dask_client(dashboard=True) as client:
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        assert urllib.request.urlopen(client.dashboard_link, timeout=10).status == 200


@pytest.mark.parametrize("workers", [1, 2])  # an in-process worker, and worker processes started by nannies
def test_the_workers_of_the_local_cluster_keep_no_profile(workers):
    """The profiler keeps a profile of each of the last 1000 seconds: memory that grows with the run's length."""
    with dask_runner.dask_client(workers=workers) as client:
        profiling = client.run(lambda dask_worker: "profile" in dask_worker.periodic_callbacks)
    assert len(profiling) == workers and not any(profiling.values())


def test_one_local_worker_runs_in_this_process_and_several_on_dask(stack_path, tmp_path):
    def runner(**overrides):
        config = bundle_config(["configs/inference.json"], {"input_path": str(stack_path), **overrides})
        return type(config.get_parsed_content("evaluator")._runner()).__name__

    assert runner() == runner(dask_workers=1) == "LocalRunner"  # no cluster to start for one worker
    assert runner(dask_workers=2) == runner(dask_dashboard=True) == "DaskRunner"
    assert runner(dask_scheduler="tcp://127.0.0.1:8786") == "DaskRunner"


@pytest.mark.parametrize(
    ("started", "asked", "runs"),
    [("compile", "auto", "compile"), (None, "auto", "eager"), ("compile", "eager", "refused")],
)
def test_a_resumed_run_keeps_the_backend_it_started_with(stack_path, tmp_path, started, asked, runs):
    """``auto`` takes the interrupted run's backend (a 0.11.0 folder, without one, ran eager); another backend
    asked for is refused, as any other changed setting."""
    config = bundle_config(
        ["configs/inference.json"],
        {"input_path": str(stack_path), "output_dir": str(tmp_path), "resume": True, **SMALL, "backend": asked},
    )
    evaluator = config.get_parsed_content("evaluator")
    volume = evaluator.volume
    blocks = volumes.plan_blocks(volume.shape, evaluator.block_size)
    evaluator.predictor.plan(0)
    signature = evaluator._signature(volume, blocks)
    if started is None:
        del signature["backend"]
    else:
        signature["backend"] = started
    evaluator.work.create(volume.shape, (1, *volume.shape[1:]), signature, "0.5")
    evaluator._plan_network(volume, blocks)
    if runs == "refused":
        with pytest.raises(Exception, match=r"started with other settings \(backend differ"):
            evaluator._prepare_work(volume, blocks)
        return
    assert evaluator.predictor.chosen == runs
    if started is not None:
        evaluator._prepare_work(volume, blocks)  # the same settings: resumable
