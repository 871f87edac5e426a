"""Inference over volumes of any size, block by block (the ``run`` of inference.json).

:class:`VolumeInference` streams a volume (any input of :func:`scripts.volume_io.open_volume`) through the
declared pipeline (:mod:`scripts.pipeline`) in blocks (:mod:`scripts.blockwise`): whole sections, or 2D tiles of
sections larger than ``block_size``. Blocks run in this process (:class:`LocalRunner`: the network on one thread,
the cells of the block before on another), or on a Dask cluster (:class:`scripts.dask_runner.DaskRunner`) when
asked for several workers or given an existing cluster.

A run works in ``<output_dir>/.<name>.partial/`` (:class:`scripts.work.WorkFolder`). Finishing gives the cells
their volume-wide ids, merges the cells cut by tile seams, measures those, writes the table and the outputs
(:mod:`scripts.outputs`) under temporary names, and renames them all at the end. A run stopped any way (even
``kill -9``) leaves only the hidden work folder; ``--resume true`` computes just the blocks it lacks. A run holds
``<output_dir>/.<name>.lock`` (:func:`scripts.writers.output_lock`) from before it touches the work folder until
its outputs are in place, so a second run into the same outputs is refused while the first one lives.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .blockwise import Block, plan_blocks, shift_table, stitch_cells, window_count
from .cell_table import CellTable
from .cells import CellLabeller
from .errors import InputError
from .flags import flag, number
from .inferers import DihedralAverageInferer
from .outputs import OmeZarrOutputs, TiffOutputs, stitched_cells
from .pipeline import SectionPredictor
from .stack_io import StackError
from .transforms import FULL_RANGE
from .volume_io import Volume
from .work import BlockError, BlockTask, WorkFolder, block_histogram, block_range, section_percentiles, section_ranges
from .writers import csv_bytes, output_lock

if TYPE_CHECKING:
    from .dask_runner import DaskRunner

__all__ = ["VolumeInference", "LocalRunner", "SectionFinisher", "BlockError"]

logger = logging.getLogger("VolumeInference")


class LocalRunner:
    """Runs blocks in this process: the network's step of each block on this thread while a second thread labels,
    measures and records the block before (numpy, scipy and scikit-image release the GIL), at most one block behind.
    On the CPU the network leaves that thread a core (torch threads: cores - 1, at least 1), as the two would
    otherwise slow each other down. No cluster starts, so a small stack costs no more than its blocks."""

    worker_count = 1

    def __init__(self, predictor: SectionPredictor) -> None:
        self.predictor = predictor

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exception) -> None:
        pass

    def ranges(
        self, input_path: str, blocks: list[Block], percentiles: tuple[float, float] = FULL_RANGE
    ) -> dict[int, tuple[float, float]]:
        """Each section's intensities at ``percentiles`` over its blocks: the (minimum, maximum), then for other
        percentiles than 0 and 100 a second pass of histograms over it."""
        extremes = section_ranges(blocks, (block_range(input_path, block) for block in blocks))
        if percentiles == FULL_RANGE:
            return extremes
        histograms = (block_histogram(input_path, block, extremes[block.z]) for block in blocks)
        return section_percentiles(blocks, histograms, extremes, percentiles)

    def run(self, blocks: list[Block], task: BlockTask) -> Iterator[Block]:
        """Runs ``task`` on each block in order; yields each block once its record is written."""
        threads = torch.get_num_threads()
        if self.predictor.device.type == "cpu":
            torch.set_num_threads(max(1, threads - 1))
        try:
            yield from self._overlapped(blocks, task)
        finally:
            torch.set_num_threads(threads)

    def _overlapped(self, blocks: list[Block], task: BlockTask) -> Iterator[Block]:
        with ThreadPoolExecutor(1, thread_name_prefix="emseg-cells") as cells:
            pending = collections.deque()
            try:
                for block in blocks:
                    pending.append((block, cells.submit(task.finish, block, task.predict(block, self.predictor))))
                    while len(pending) > 1 or (pending and pending[0][1].done()):
                        finished, future = pending.popleft()
                        future.result()
                        yield finished
                while pending:
                    finished, future = pending.popleft()
                    future.result()
                    yield finished
            finally:
                for _, future in pending:
                    future.cancel()


class VolumeInference:
    """Blockwise inference of a volume (what it writes and how: see the module docstring).

    Args:
        volume: the input (:func:`scripts.volume_io.open_volume`: TIFF, folder of slices, Zarr array, OME-Zarr).
        predictor: the declared pipeline (preprocessing, inferer, network, postprocessing).
        cells: how sections become cells.
        cell_table: the table's measurer (its pixel size, its optional columns).
        outputs: the writer (:class:`~scripts.outputs.TiffOutputs` or :class:`~scripts.outputs.OmeZarrOutputs`).
        block_size: sections larger than this are cut into tiles of at most ``block_size`` x ``block_size``.
        cell_halo: pixels of context around a tile for its cells; cells are stitched across tiles in a band of
            ``2 * band`` pixels.
        resume: reuse the blocks an interrupted run of the same settings finished.
        scheduler: address of an existing Dask scheduler; None runs locally.
        workers: local Dask workers (None: one per GPU, or one; one runs in this process without Dask).
        progress_bar: a progress bar over the blocks (None: only on a terminal).
        dashboard: a local Dask cluster's dashboard (None: with several workers).
    """

    def __init__(
        self,
        volume: Volume,
        predictor: SectionPredictor,
        cells: CellLabeller,
        cell_table: CellTable,
        outputs: TiffOutputs | OmeZarrOutputs,
        block_size: int | None = 2048,
        cell_halo: int = 128,
        band: int = 8,
        resume: bool | str = False,
        scheduler: str | None = None,
        workers: int | None = None,
        progress_bar: bool | str | None = None,
        dashboard: bool | str | None = None,
    ) -> None:
        self.volume, self.predictor, self.cells, self.table = volume, predictor, cells, cell_table
        self.input_path = Path(volume.path)
        self.outputs = outputs
        self.block_size = None if block_size is None else number(block_size, "block_size", 64, integer=True)
        self.band = number(band, "band", 1, integer=True)
        self.cell_halo = number(cell_halo, "cell_halo", self.band, integer=True)
        self.resume = flag(resume, "resume")
        self.scheduler = scheduler or None
        self.workers = None if workers is None else number(workers, "dask_workers", 1, integer=True)
        self.progress_bar = None if progress_bar is None else flag(progress_bar, "progress_bar")
        self.dashboard = None if dashboard is None else flag(dashboard, "dask_dashboard")
        self.work = WorkFolder(self.outputs.output_dir / f".{self.outputs.name}.partial")
        self.runner: LocalRunner | DaskRunner | None = None
        self.written: list[Path] = []

    def run(self) -> list[Path]:
        """Runs the whole volume; returns the files written."""
        for _ in self.steps():
            pass
        return self.written

    def steps(self) -> Iterator[tuple[int, int]]:
        """The run one block at a time, for a caller that shows progress or may stop it (napari's worker thread):
        yields ``(blocks done, blocks in all)`` after each block. Closing the iterator stops the run as an interrupt
        would: the lock is released and the work folder stays, resumable; the outputs exist only once it is
        exhausted (:attr:`written`)."""
        volume = self.volume
        blocks = plan_blocks(volume.shape, self.block_size)
        self._check(volume, blocks)
        self._plan_network(volume, blocks)
        lock = self.outputs.output_dir / f".{self.outputs.name}.lock"
        with output_lock(lock, str(self.work.path)), self._runner() as self.runner:
            try:
                self._prepare_work(volume, blocks)
                yield from self._compute(volume, blocks)
                self.finish(volume, blocks)
            except InputError as error:
                if not isinstance(error, BlockError):  # bad input or weights: nothing to resume
                    shutil.rmtree(self.work.path, ignore_errors=True)
                raise

    def _runner(self) -> LocalRunner | DaskRunner:
        """Dask for an existing cluster, several local workers (one per GPU by default) or a dashboard; else this
        process (Dask and its cluster, about a second to start, are then not even imported)."""
        several = self.workers > 1 if self.workers is not None else torch.cuda.device_count() > 1
        dashboard = several if self.dashboard is None else self.dashboard
        if self.scheduler or several or dashboard:
            from .dask_runner import DaskRunner

            return DaskRunner(self.predictor, self.scheduler, self.workers, dashboard)
        return LocalRunner(self.predictor)

    def _check(self, volume: Volume, blocks: list[Block]) -> None:
        """Settings that cannot work with this volume, before anything is written."""
        if min(volume.shape[1:]) < 2:  # a line of pixels holds no cell (and tifffile writes no 1-pixel-wide pages)
            raise StackError(
                f"{self.input_path}: sections of {volume.shape[1]} x {volume.shape[2]} pixels hold no cells; "
                "sections must be at least 2 pixels high and wide"
            )
        source = self.input_path.resolve()
        for target in [*self.outputs.files().values(), self._table_path()]:
            target = target.resolve()
            if target == source or source in target.parents or target in source.parents:
                raise InputError(f"--output_dir {self.outputs.output_dir}: {target} would overwrite the input {source}")
        smallest = min(min(block.y1 - block.y0, block.x1 - block.x0) for block in blocks)
        tiled = len(blocks) > volume.shape[0]
        if tiled and smallest < 2 * self.band:
            raise InputError(f"--block_size {self.block_size}: tiles of {smallest} pixels are narrower than 2 x band")
        if tiled and self.predictor.window is not self.predictor.inferer:
            logger.warning(
                "test-time augmentation on tiles: each flipped view places its windows from the tile's far end, so "
                "tiles differ slightly from their whole section (sections up to --block_size are exact)"
            )

    def _plan_network(self, volume: Volume, blocks: list[Block]) -> None:
        """The network's backend for this run's windows (:mod:`scripts.backends`): ``auto`` chooses for the windows
        each local process computes, and a resumed run keeps the backend it started with (0.11.0's: eager)."""
        predictor = self.predictor
        if predictor.backend == "auto" and self.resume and self.work.resumable():
            predictor.backend = self.work.signature().get("backend", "eager")
        halo = self.cell_halo if len(blocks) > volume.shape[0] else 0  # tiles are predicted with their halo
        windows = window_count(blocks, volume.shape[1:], predictor.roi, predictor.window.overlap, halo)
        if isinstance(predictor.inferer, DihedralAverageInferer):
            windows *= DihedralAverageInferer.views
        logger.info("network on %s: %s", predictor.device, predictor.plan(windows // (self.workers or 1)))

    def _table_path(self) -> Path:
        return self.outputs.output_dir / f"{self.outputs.name}_cells.csv"

    def _signature(self, volume: Volume, blocks: list[Block]) -> dict:
        """What a resumed run must share with the run it continues."""
        weights = hashlib.sha256()
        for name, tensor in self.predictor.network.state_dict().items():
            weights.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        window = self.predictor.window
        signature = {
            "input_path": str(self.input_path.resolve()), "input_modified_ns": os.stat(self.input_path).st_mtime_ns,
            "shape": list(volume.shape), "block_size": self.block_size, "blocks": len(blocks),
            "cell_halo": self.cell_halo, "band": self.band, "cells": repr(self.cells), "solidity": self.table.solidity,
            "pixel_size": list(self.table.pixel_size) if self.table.pixel_size else None,
            "inferer": f"{type(self.predictor.inferer).__name__}({type(window).__name__}, roi_size="
            f"{list(self.predictor.roi)}, overlap={window.overlap}, mode={window.mode})",
            "device": self.predictor.device.type if not self.scheduler else "auto", "amp": self.predictor.amp,
            "backend": self.predictor.chosen if not self.scheduler else self.predictor.backend,
            "output": [self.outputs.format, getattr(self.outputs, "version", None)], "weights": weights.hexdigest(),
        }  # fmt: skip
        if self.predictor.intensity_percentiles != FULL_RANGE:  # absent by default: earlier runs stay resumable
            signature["intensity_percentiles"] = list(self.predictor.intensity_percentiles)
        return signature

    def _prepare_work(self, volume: Volume, blocks: list[Block]) -> None:
        signature = self._signature(volume, blocks)
        if self.resume and self.work.resumable():
            previous = self.work.signature()
            if previous != signature:
                changed = sorted(key for key in signature if previous.get(key) != signature[key])
                raise InputError(
                    f"--resume true: {self.work.path} was started with other settings ({', '.join(changed)} "
                    "differ); rerun with --resume false to start again"
                )
            logger.info("resuming %s: %d of %d blocks done", self.work.path, len(self.work.done()), len(blocks))
            return
        if self.resume:
            logger.info("--resume true: %s holds no run to resume; starting afresh", self.work.path)
        chunks = (1, blocks[0].y1 - blocks[0].y0, blocks[0].x1 - blocks[0].x0)  # every tile is whole chunks
        self.work.create(volume.shape, chunks, signature, getattr(self.outputs, "version", "0.5"))

    def _compute(self, volume: Volume, blocks: list[Block]) -> Iterator[tuple[int, int]]:
        """The blocks without a record, yielding ``(done, total)`` after each; a tiled volume's section ranges first
        (saved, for a resumed run)."""
        from tqdm import tqdm

        input_path = str(self.input_path.resolve())
        ranges = None
        if len(blocks) > volume.shape[0]:
            ranges = self.work.ranges()
            if ranges is None:
                ranges = self.runner.ranges(input_path, blocks, self.predictor.intensity_percentiles)
                self.work.save_ranges(ranges)
        work_path = str(self.work.path.resolve())
        task = BlockTask(input_path, work_path, self.cells, self.table, self.cell_halo, self.band, ranges)
        done = self.work.done()
        todo = [block for block in blocks if block.name not in done]
        workers = self.runner.worker_count
        logger.info("%d blocks (%d to compute) on %d worker%s", len(blocks), len(todo), workers, "s" * (workers != 1))
        bar = None if self.progress_bar is None else not self.progress_bar
        with (
            tqdm(total=len(blocks), initial=len(blocks) - len(todo), desc="blocks", disable=bar) as progress,
            contextlib.closing(self.runner.run(todo, task)) as finished,
        ):
            for done, _ in enumerate(finished, start=len(blocks) - len(todo) + 1):
                progress.update()
                yield done, len(blocks)

    def finish(self, volume: Volume, blocks: list[Block]) -> None:
        """Volume-wide ids, seam merges, the table and the outputs, section by section, under temporary names;
        all are renamed at the end."""
        table_path = self._table_path()
        temporary_table = table_path.with_name(f".{table_path.name}.partial")
        self.outputs.output_dir.mkdir(parents=True, exist_ok=True)
        self.outputs.discard()
        finisher = SectionFinisher(self.work, volume, self.table)
        try:
            with temporary_table.open("wb") as table:
                sections = finisher.sections(blocks, table)
                if self.outputs.consumes_work:
                    self.work.forget_run()
                self.outputs.write(self.work.group, volume.shape, sections)
        except BaseException as error:  # no hidden output survives a failed finish (a full disk gets its space back)
            temporary_table.unlink(missing_ok=True)
            self.outputs.discard()
            if isinstance(error, OSError):
                raise BlockError(
                    f"{self.outputs.writing or table_path}: cannot write ({error.strerror or error})"
                ) from error
            raise
        os.replace(temporary_table, table_path)
        self.written = [*self.outputs.commit(self.work.path), table_path]
        logger.info(
            "wrote %s (%d sections of %dx%d in %d blocks, %d cells)",
            ", ".join(str(p) for p in self.written), *volume.shape, len(blocks), finisher.cell_count,
        )  # fmt: skip


class SectionFinisher:
    """Finishes a run's sections from its block records: volume-wide cell ids (block offsets and seam merges), and
    the table rows, those of the cells cut by seams measured once whole.

    Args:
        work: the run's work folder, every block recorded.
        volume: the input (the raw pixels of the cells measured here).
        table: the cell table's measurer.
    """

    def __init__(self, work: WorkFolder, volume: Volume, table: CellTable) -> None:
        self.work, self.volume, self.table = work, volume, table
        self.cell_count = 0

    def sections(self, blocks: list[Block], csv_file) -> Iterator[tuple[int, list, list]]:
        """Finishes the sections in order: writes each one's table rows to ``csv_file`` and yields ``(z, its blocks,
        their lookups)``, for the writer to write its cells before the next section is loaded."""
        volume = self.volume
        counts = [self.work.count(block) for block in blocks]
        csv_file.write((",".join(self.table.columns) + "\n").encode())
        per_section = len(blocks) // volume.shape[0]  # every section has the same tiles
        first_id = 0
        for z in range(volume.shape[0]):
            section = slice(z * per_section, (z + 1) * per_section)
            rows, count, lookups = self._section(blocks[section], first_id)
            self.cell_count += count
            first_id += sum(counts[section])
            if rows is not None:
                csv_file.write(csv_bytes(rows).split(b"\n", 1)[1])
            yield z, blocks[section], lookups

    def _section(self, blocks: list[Block], first_id: int) -> tuple:
        """One section's cells: its table rows ordered by id (None: no cell), its cell count, and each block's lookup
        from block-local to volume-wide ids. Only this section's block records are loaded."""
        records = [self.work.record(block) for block in blocks]
        seams = [{key[len("seam_") :]: value for key, value in r.items() if key.startswith("seam_")} for r in records]
        ids = stitch_cells(blocks, [int(record["count"]) for record in records], seams, first_id)
        lookups = [ids.block_lookup(i) for i in range(len(blocks))]
        parts, boxes = [], {}  # boxes: id of a cell cut by a seam -> its bounding box over all its tiles
        for record, lookup in zip(records, lookups, strict=True):
            table = {key[len("table_") :]: value for key, value in record.items() if key.startswith("table_")}
            table["id"] = lookup[table["id"].astype(np.int64)].astype(np.int64)
            parts.append(table)
            for local, y0, y1, x0, x1 in record["touching"]:
                box = boxes.get(int(lookup[local]), [y0, y1, x0, x1])
                boxes[int(lookup[local])] = [min(box[0], y0), max(box[1], y1), min(box[2], x0), max(box[3], x1)]
        z = blocks[0].z
        for cell, (y0, y1, x0, x1) in sorted(boxes.items()):  # measured whole, once stitched
            labels = stitched_cells(self.work.group, blocks, lookups, z, slice(y0, y1), slice(x0, x1))
            raw = self.volume.read(z, slice(y0, y1), slice(x0, x1))
            rows = self.table(np.where(labels == cell, labels, 0), raw)
            parts.append(shift_table(rows, z, (y0, x0), self.table.pixel_size))
        parts = [part for part in parts if len(part["id"])]
        if not parts:
            return None, ids.count, lookups
        rows = {column: np.concatenate([part[column] for part in parts]) for column in self.table.columns}
        order = np.argsort(rows["id"], kind="stable")
        return {column: values[order] for column, values in rows.items()}, ids.count, lookups
