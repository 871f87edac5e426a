"""Writing results: atomic files, the slices an evaluator produced, and the inference stacks."""

from __future__ import annotations

import contextlib
import csv
import datetime
import fcntl
import io
import logging
import os
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch
from ignite.engine import Engine, Events

from .cells import CellLabeller, cell_table
from .errors import InputError
from .flags import flag, number

__all__ = ["atomic_write", "OutputLocked", "output_lock", "tiff_bytes", "csv_bytes", "SliceCollector", "StackWriter"]


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


def tiff_bytes(stack: np.ndarray, pixel_size: Sequence[float] | None = None) -> bytes:
    """A (Z, H, W) stack as a zlib-compressed grayscale TIFF, with resolution tags when the (y, x) pixel size in nm
    is known (so Fiji, napari and :func:`scripts.stack_io.read_pixel_size` read it back)."""
    options = {}
    if pixel_size is not None:
        y_nm, x_nm = (float(size) for size in pixel_size)
        options = {"resolution": (1e7 / x_nm, 1e7 / y_nm), "resolutionunit": "CENTIMETER"}
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, stack, photometric="minisblack", compression="zlib", metadata={"axes": "ZYX"}, **options)
    return buffer.getvalue()


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


def _item_arrays(engine: Engine) -> list[dict]:
    """The current iteration's decollated items as (H, W) numpy arrays: image, pred and, where present, label and
    raw_image (the intensities before scaling), with the slice index."""
    items = []
    for batch_item, output_item in zip(engine.state.batch, engine.state.output, strict=True):
        item = {"slice": int(batch_item["slice"]), "pred": output_item["pred"].detach().float().cpu().numpy()[0]}
        for key in ("image", "label", "raw_image"):
            if key in batch_item:
                item[key] = torch.as_tensor(batch_item[key]).detach().cpu().numpy()[0]
        items.append(item)
    return items


class SliceCollector:
    """Keeps every slice an evaluator processed (image, label, membrane probability), ordered by slice index.

    Needs ``decollate=True`` (the default) and a ``slice`` key in each data item.
    """

    def __init__(self) -> None:
        self.items: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.items.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self.items.extend(_item_arrays(e)))
        # registered before any handler that reads the items at COMPLETED (e.g. StackWriter)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.items.sort(key=lambda item: item["slice"]))


class StackWriter:
    """Writes an inference run's sections as TIFF stacks and its cells as a table once the evaluator finishes.

    Files (``<name>`` = the input file's stem or folder name):

    * ``<name>_membrane_probability.tif``: float32 (Z, H, W), membrane probability ``p`` in [0, 1];
    * ``<name>_segmentation.tif``: uint8 (Z, H, W), 255 = cell interior, 0 = membrane (the labels' convention),
      membrane where ``p >= membrane_threshold``;
    * ``<name>_cells.tif``: uint32 (Z, H, W), one id per cell, unique across the stack, 0 = membrane lines
      (``cells``, each section in 2D);
    * ``<name>_cells.csv``: one row per cell (:func:`scripts.cells.cell_table`), intensities of the raw image;
    * with ``challenge_submission`` also ``<name>_isbi2012_submission.tif``: float32 interior probability
      ``1 - p``, the map the ISBI 2012 scorer expects.

    TIFFs carry the pixel size when it is known. Every file is encoded before the first is written, and each
    is written atomically, so a failed run leaves no partial set of files. Probabilities that are not finite (a
    diverged network) stop the run unwritten.

    Args:
        output_dir: folder for the files (created when writing).
        name: base name of the files.
        membrane_threshold: membrane where the probability is at least this.
        challenge_submission: also write the ISBI 2012 submission stack (a flag, see :func:`scripts.flags.flag`).
        pixel_size: (y, x) pixel size in nm, or None (tables in pixel units only).
        cells: how sections become cells (default: the components of the map thresholded at ``membrane_threshold``).
    """

    def __init__(
        self,
        output_dir: str | Path,
        name: str,
        membrane_threshold: float = 0.5,
        challenge_submission: bool | str = False,
        pixel_size: Sequence[float] | None = None,
        cells: CellLabeller | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.name = name
        self.membrane_threshold = number(membrane_threshold, "membrane_threshold", 0, 1)
        self.challenge_submission = flag(challenge_submission, "challenge_submission")
        self.pixel_size = _checked_pixel_size(pixel_size)
        self.cells = cells if cells is not None else CellLabeller(membrane_threshold=self.membrane_threshold)
        self.collector = SliceCollector()
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        self.collector.attach(engine)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _write(self, engine: Engine) -> None:
        items = self.collector.items
        probability = np.stack([item["pred"] for item in items]).astype(np.float32)
        if not np.isfinite(probability).all():
            bad = sorted({int(item["slice"]) for item in items if not np.isfinite(item["pred"]).all()})
            raise InputError(
                f"{self.name}: the network gave NaN or infinite membrane probabilities on sections {bad[:10]}; "
                "check the weights (--model_path) and the input; nothing was written"
            )
        cells = self.cells.stack(probability)
        raw = np.stack([item.get("raw_image", item["image"]) for item in items])
        stacks = {
            "membrane_probability": probability,
            "segmentation": np.where(probability >= self.membrane_threshold, 0, 255).astype(np.uint8),
            "cells": cells,
        }
        if self.challenge_submission:
            stacks["isbi2012_submission"] = 1.0 - probability
        encoded = {
            self.output_dir / f"{self.name}_{suffix}.tif": tiff_bytes(s, self.pixel_size)
            for suffix, s in stacks.items()
        }
        encoded[self.output_dir / f"{self.name}_cells.csv"] = csv_bytes(cell_table(cells, raw, self.pixel_size))
        for path, data in encoded.items():
            atomic_write(path, data)
        self.written = list(encoded)
        logging.getLogger("StackWriter").info(
            "wrote %s (%d sections of %dx%d, %d cells)",
            ", ".join(str(p) for p in self.written),
            *probability.shape,
            int(cells.max()),
        )


def _checked_pixel_size(pixel_size: Sequence[float] | None) -> tuple[float, float] | None:
    if pixel_size is None:
        return None
    try:
        sizes = tuple(float(size) for size in pixel_size)
    except (TypeError, ValueError):
        sizes = ()
    if len(sizes) != 2 or not all(np.isfinite(sizes)) or min(sizes) <= 0:
        raise InputError(f"--pixel_size: {pixel_size!r} is not a (y, x) pixel size in nm, e.g. '[4, 4]'")
    return sizes
