"""Writing results: atomic files, a lock on a run's outputs, CSV bytes."""

from __future__ import annotations

import contextlib
import csv
import datetime
import fcntl
import io
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["atomic_write", "OutputLocked", "output_lock", "csv_bytes"]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so an interrupted run leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class OutputLocked(InputError):
    """Another run holds the lock of the outputs a run would write; the message names the folder and that run."""


@contextlib.contextmanager
def output_lock(path: Path, what: str) -> Iterator[None]:
    """Hold the lock file ``path`` for the duration, or refuse at once if another run holds it.

    An exclusive ``flock`` on the file: the kernel releases it when its process ends in any way (even
    ``kill -9``), so a stopped run never leaves a stale lock and ``--resume true`` can take over. While held, the
    file names its holder (process, host, start time) for the refusal. The holder removes the file on release;
    a run that locked the removed file sees it is gone and locks the new one, so two runs never both hold it.

    Args:
        path: the lock file (created if missing).
        what: what the lock protects, for the refusal (e.g. the work folder).

    Raises:
        OutputLocked: another process holds the lock; the message names ``what`` and that process.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(handle, 4096).decode(errors="replace").strip() or "another run"
            os.close(handle)
            raise OutputLocked(
                f"{what}: in use by {holder}; wait for it to finish, or write to another --output_dir or --output_name"
            ) from None
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(handle).st_ino:
            break
        os.close(handle)  # the file was replaced between open and lock: lock the new one
    try:
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        holder = f"the run of process {os.getpid()} on {socket.gethostname()}, started {started}"
        os.ftruncate(handle, 0)
        os.pwrite(handle, holder.encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(handle)


def csv_bytes(columns: dict[str, np.ndarray]) -> bytes:
    """Equal-length columns as CSV with a header row; integers as integers, floats to 10 significant digits."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(columns))
    formatted = [
        [str(v) for v in values.tolist()] if np.issubdtype(values.dtype, np.integer) else [f"{v:.10g}" for v in values]
        for values in columns.values()
    ]
    writer.writerows(zip(*formatted, strict=True))
    return buffer.getvalue().encode()
