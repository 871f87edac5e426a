"""The inference writer: every stack and the cell table, with the pixel size; nothing when the output is bad."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from conftest import REPO
from ignite.engine import Engine

from scripts.cells import CellLabeller
from scripts.errors import InputError
from scripts.stack_io import read_pixel_size
from scripts.writers import OutputLocked, StackWriter, output_lock


def run_writer(writer: StackWriter, probabilities: list[np.ndarray]) -> None:
    """An evaluator over one section per iteration, its output the given membrane probabilities."""
    batches = [
        [{"image": torch.zeros(1, *p.shape), "raw_image": torch.full((1, *p.shape), 7.0), "slice": z}]
        for z, p in enumerate(probabilities)
    ]
    engine = Engine(lambda engine, batch: [{"pred": torch.as_tensor(probabilities[batch[0]["slice"]])[None]}])
    writer.attach(engine)
    engine.run(batches)


def two_cells() -> np.ndarray:
    probability = np.zeros((8, 11), dtype=np.float32)
    probability[:, 5] = 0.9
    return probability


def test_writes_every_stack_and_the_cell_table_with_the_pixel_size(tmp_path):
    writer = StackWriter(tmp_path, "stack", membrane_threshold=0.5, challenge_submission="yes", pixel_size=[4, 4])
    run_writer(writer, [two_cells(), two_cells()])
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == [
        "stack_cells.csv", "stack_cells.tif", "stack_isbi2012_submission.tif", "stack_membrane_probability.tif",
        "stack_segmentation.tif",
    ]  # fmt: skip
    cells = tifffile.imread(tmp_path / "stack_cells.tif")
    assert cells.dtype == np.uint32 and cells.shape == (2, 8, 11)
    assert [sorted(set(np.unique(s)) - {0}) for s in cells] == [[1, 2], [3, 4]]
    rows = list(csv.DictReader((tmp_path / "stack_cells.csv").open()))
    assert [int(row["id"]) for row in rows] == [1, 2, 3, 4] and [row["section"] for row in rows] == list("0011")
    assert sum(float(row["area_px"]) for row in rows) == (cells > 0).sum()
    assert float(rows[0]["intensity_mean"]) == 7.0  # the raw image, not the scaled one
    assert float(rows[0]["area_nm2"]) == 16 * float(rows[0]["area_px"])
    for name in names:
        if name.endswith(".tif"):
            assert read_pixel_size(tmp_path / name) == pytest.approx((4.0, 4.0))


def test_without_a_pixel_size_the_table_is_in_pixels(tmp_path):
    run_writer(StackWriter(tmp_path, "stack"), [two_cells()])
    header = (tmp_path / "stack_cells.csv").read_text().splitlines()[0].split(",")
    assert "area_px" in header and not any(column.endswith(("_nm", "_nm2")) for column in header)
    assert read_pixel_size(tmp_path / "stack_cells.tif") is None


def test_a_stack_without_cells_gives_a_header_only_table(tmp_path):
    run_writer(StackWriter(tmp_path, "stack"), [np.ones((6, 6), np.float32)])
    assert len((tmp_path / "stack_cells.csv").read_text().splitlines()) == 1
    assert not tifffile.imread(tmp_path / "stack_cells.tif").any()


def test_nan_probabilities_stop_the_run_and_nothing_is_written(tmp_path):
    broken = two_cells()
    broken[2, 2] = np.nan
    with pytest.raises(InputError, match=r"stack: the network gave NaN .* sections \[1\]; .*nothing was written"):
        run_writer(StackWriter(tmp_path / "out", "stack"), [two_cells(), broken])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("pixel_size", [[4], [4, -1], "four", [4, float("nan")]])
def test_a_bad_pixel_size_is_rejected(tmp_path, pixel_size):
    with pytest.raises(InputError, match="--pixel_size: .* is not a \\(y, x\\) pixel size in nm"):
        StackWriter(tmp_path, "stack", pixel_size=pixel_size)


def test_the_cells_come_from_the_labeller_given(tmp_path):
    membrane = np.zeros((30, 61), dtype=np.float32)
    membrane[:, 30] = 0.6  # a faint membrane: interior for a 0.7 threshold
    labeller = CellLabeller("mutex_watershed", membrane_threshold=0.7, long_range=5, repulsion_bias=0.9)
    run_writer(StackWriter(tmp_path, "stack", cells=labeller), [membrane])
    cells = tifffile.imread(tmp_path / "stack_cells.tif")
    assert cells[0, 5, 5] != cells[0, 5, 50]
    run_writer(StackWriter(tmp_path / "default", "stack"), [membrane])  # default: components at 0.5
    assert tifffile.imread(tmp_path / "default" / "stack_cells.tif").max() == 2


def test_an_output_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    lock = tmp_path / "out" / ".stack.lock"
    with output_lock(lock, "out/.stack.partial"):
        assert f"the run of process {os.getpid()} on " in lock.read_text()
        with pytest.raises(OutputLocked, match=rf"^out/.stack.partial: in use by the run of process {os.getpid()} "):
            with output_lock(lock, "out/.stack.partial"):
                pass
    assert not lock.exists()  # released and removed
    with output_lock(lock, "out/.stack.partial"):  # free again
        pass


def test_an_output_lock_is_released_when_its_holder_dies(tmp_path):
    lock = tmp_path / ".stack.lock"
    holder = "import sys, time; sys.path.insert(0, 'bundle'); from scripts.writers import output_lock; "
    holder += f"lock = output_lock(__import__('pathlib').Path({str(lock)!r}), 'x'); lock.__enter__(); "
    holder += "print('held', flush=True); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", holder], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        with pytest.raises(OutputLocked):
            with output_lock(lock, "x"):
                pass
    finally:
        process.kill()
        process.wait(timeout=30)
    with output_lock(lock, "x"):  # the file is still there (kill -9 removes nothing), its lock went with the process
        pass
