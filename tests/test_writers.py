"""The lock on a run's outputs: a second holder refused, the lock released when its holder dies."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

from scripts.writers import OutputLocked, output_lock


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
