"""Inference over volumes of any size, block by block on a Dask cluster (the ``run`` of inference.json).

:class:`VolumeInference` streams a volume (any input of :func:`scripts.volume_io.open_volume`) through the
network in blocks (:mod:`scripts.blockwise`): whole sections, or 2D tiles of sections larger than
``block_size``. It runs on ``distributed``: a local cluster sized to the machine by default (one worker per
GPU, or one on the CPU), or any existing cluster given by ``scheduler`` (``--dask_scheduler tcp://HOST:PORT``).
Each worker loads the network once (:class:`NetworkPlugin`) and reads its blocks from the input itself, so the
input and the output folder must be reachable from every worker (a shared file system on a real cluster).

A run works in ``<output_dir>/.<name>.partial/``: a Zarr group holding the probability and the block-local
cells, plus one record per finished block (its cell count, table rows and seam bands), written only after
the block's pixels. Finishing (:meth:`VolumeInference.finish`) gives the cells their volume-wide ids, merges
the cells cut by tile seams, measures those, writes the table and the outputs under temporary names, and
renames them all at the end. A run stopped any way (even ``kill -9``) leaves only the hidden partial folder;
``--resume true`` computes just the blocks without a record.

Outputs (``--output_format``; the default follows the input: OME-Zarr for Zarr inputs, TIFF otherwise):

* ``tif``: ``<name>_membrane_probability.tif`` (float32), ``<name>_segmentation.tif`` (uint8, 255 = interior,
  0 = membrane), ``<name>_cells.tif`` (uint32), with ``challenge_submission`` also
  ``<name>_isbi2012_submission.tif``, written page by page (BigTIFF when large);
* ``ome-zarr``: ``<name>.ome.zarr``, NGFF 0.5 (or 0.4, ``--ome_zarr_version``): the membrane probability as
  the image, the cells as the label image ``labels/cells``, chunked like the blocks and compressed, with the
  pixel size;
* both: ``<name>_cells.csv``, one row per cell (:func:`scripts.cells.cell_table`'s columns).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch
from distributed.diagnostics.plugin import WorkerPlugin
from scipy.ndimage import find_objects

from .blockwise import (
    Block,
    block_cells,
    measure_cells,
    plan_blocks,
    predict_region,
    prediction_region,
    shift_table,
    sliding_window_of,
    stitch_cells,
)
from .cells import CELL_COLUMNS, CellLabeller
from .errors import InputError
from .flags import flag
from .stack_io import StackError
from .volume_io import (
    OME_ZARR_VERSIONS,
    OUTPUT_FORMATS,
    Volume,
    create_ome_zarr,
    default_output_format,
    open_volume,
    write_ome_zarr_metadata,
)
from .writers import csv_bytes

__all__ = ["BlockError", "NetworkPlugin", "VolumeInference", "dask_client"]

logger = logging.getLogger("VolumeInference")
PLUGIN_NAME = "emseg-network"
#: how often this process's workers loaded the network (each worker process: once)
NETWORK_LOADS = {"count": 0}


class BlockError(InputError):
    """A block that cannot be read, computed or written; the message names the block and the file."""


class NetworkPlugin(WorkerPlugin):
    """A Dask worker plugin that puts the network on the worker's device once, when the worker starts.

    A worker of a CUDA run gets one device: ``cuda:i`` for the ``i``-th worker of a local cluster (workers are
    named 0, 1, ...), ``cuda:0`` where each worker sees one GPU (``CUDA_VISIBLE_DEVICES``, as dask-cuda sets).

    Args:
        network: the network with its weights (copied to the CPU for shipping).
        inferer: the configs' inferer.
        device_type: ``"cuda"`` or ``"cpu"``.
        amp: autocast on CUDA.
        threads: torch threads per worker (None: leave torch's default).
    """

    name = PLUGIN_NAME

    def __init__(self, network: torch.nn.Module, inferer, device_type: str, amp: bool, threads: int | None) -> None:
        self.network = copy.deepcopy(network).cpu().eval()
        self.inferer, self.device_type, self.amp, self.threads = inferer, device_type, amp, threads
        self.device = torch.device("cpu")

    def setup(self, worker) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.device_type == "cuda" and torch.cuda.is_available():
            index = worker.name if isinstance(worker.name, int) else 0
            self.device = torch.device(f"cuda:{index % torch.cuda.device_count()}")
        self.network = self.network.to(self.device).eval()
        NETWORK_LOADS["count"] += 1

    def teardown(self, worker) -> None:
        self.network = None


def _plugin() -> NetworkPlugin:
    from distributed import get_worker

    return get_worker().plugins[PLUGIN_NAME]


def _network_loads() -> int:
    return NETWORK_LOADS["count"]


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator:
    """A ``distributed.Client``: of the cluster at ``scheduler`` (e.g. ``tcp://10.0.0.5:8786``), or of a local
    cluster of ``workers`` workers (default: one per CUDA device, else one), in processes when more than one."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as error:
            raise InputError(
                f"--dask_scheduler {scheduler}: cannot connect ({type(error).__name__}: {error})"
            ) from error
        with client, tempfile.TemporaryDirectory() as folder:
            # the bundle's scripts/ travel to the workers, which may not share this Python path. Uploaded alone in a
            # folder of their own, as UploadDirectory puts the uploaded folder on sys.path: scripts/ itself there
            # would make its distributed.py shadow Dask's
            from distributed.diagnostics.plugin import UploadDirectory

            shutil.copytree(Path(__file__).parent, Path(folder) / "emseg_bundle" / "scripts")
            client.register_plugin(UploadDirectory(str(Path(folder) / "emseg_bundle"), update_path=True))
            yield client
        return
    count = int(workers) if workers else max(torch.cuda.device_count(), 1)
    if count < 1:
        raise InputError(f"--dask_workers {workers}: needs at least one worker")
    # Dask logs every connection at INFO: keep its warnings only, here and in the worker processes (which read the
    # environment). LocalCluster's silence_logs would also quiet this process's own log handlers
    logging.getLogger("distributed").setLevel(logging.WARNING)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    with (
        LocalCluster(
            n_workers=count, threads_per_worker=1, processes=count > 1, dashboard_address=":8787", silence_logs=False
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        yield client


@functools.lru_cache(maxsize=8)
def _open_volume_once(path: str, stamp: tuple[int, int]) -> Volume:
    return open_volume(path)


def _open_cached(path: str) -> Volume:
    """The worker process's reader of ``path``, opened once per file version (a TIFF's pages are indexed once)."""
    status = os.stat(path)
    return _open_volume_once(path, (status.st_mtime_ns, status.st_size))


def _open_store(path: str):
    import zarr

    return zarr.open_group(path, mode="r+")


def _atomic_savez(path: Path, **arrays) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(handle)
    try:
        np.savez(temporary, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def section_range(input_path: str, block: Block) -> tuple[float, float]:
    """(minimum, maximum) intensity of one block (a task; the section's range is that of its blocks)."""
    raw = _open_cached(input_path).read(block.z, slice(block.y0, block.y1), slice(block.x0, block.x1))
    return float(raw.min()), float(raw.max())


def run_block(block: Block, settings: dict) -> int:
    """Predict, label and record one block on a worker; returns its cell count (a task of :class:`VolumeInference`).

    ``settings``: ``input_path``, ``work`` (the partial folder), ``section_range`` (or None: this block is a
    whole section), ``cells``, ``cell_halo``, ``band``, ``pixel_size``.
    """
    plugin = _plugin()
    volume = _open_cached(settings["input_path"])
    section_shape = volume.shape[1:]
    window = sliding_window_of(plugin.inferer)
    halo = settings["cell_halo"] if settings["section_range"] is not None else 0
    rows, columns = prediction_region(block, section_shape, window.roi_size, window.overlap, halo)
    try:
        raw_region = volume.read(block.z, rows, columns)
    except StackError as error:
        raise StackError(f"{error}; in {block}") from error
    value_range = settings["section_range"] or (float(raw_region.min()), float(raw_region.max()))
    probability = predict_region(raw_region, value_range, plugin.network, plugin.inferer, plugin.device, plugin.amp)
    if not np.isfinite(probability).all():
        raise InputError(
            f"{block}: the network gave NaN or infinite membrane probabilities; check the weights (--model_path) "
            "and the input; nothing was written"
        )
    crop = (
        slice(block.y0 - rows.start, block.y1 - rows.start),
        slice(block.x0 - columns.start, block.x1 - columns.start),
    )
    labels, seams, touching = block_cells(
        probability, block, (rows.start, columns.start), section_shape, settings["cells"], settings["band"]
    )
    raw = raw_region[crop]
    table = measure_cells(np.where(np.isin(labels, touching), 0, labels), raw, settings["pixel_size"])
    table = shift_table(table, block.z, (block.y0, block.x0), settings["pixel_size"])
    boxes = find_objects(np.where(np.isin(labels, touching), labels, 0).astype(np.int64))
    touching_boxes = np.array(
        [[i + 1, b[0].start + block.y0, b[0].stop + block.y0, b[1].start + block.x0, b[1].stop + block.x0]
         for i, b in enumerate(boxes) if b is not None], dtype=np.int64,
    ).reshape(-1, 5)  # fmt: skip
    work = Path(settings["work"])
    store = _open_store(str(work))
    target = (block.z, slice(block.y0, block.y1), slice(block.x0, block.x1))
    try:
        store["0"][target] = probability[crop]
        store["cells_local"][target] = labels
        _atomic_savez(
            work / "blocks" / f"{block.name}.npz", count=np.int64(labels.max(initial=0)), touching=touching_boxes,
            **{f"seam_{side}": band for side, band in seams.items()}, **{f"table_{k}": v for k, v in table.items()},
        )  # fmt: skip
    except OSError as error:
        raise BlockError(f"{block}: cannot write {error.filename or work} ({error.strerror or error})") from error
    return int(labels.max(initial=0))


def _describe(inferer) -> str:
    window = sliding_window_of(inferer)
    return f"{type(inferer).__name__}(roi_size={list(window.roi_size)}, overlap={window.overlap}, mode={window.mode})"


def _write_pages(path: Path, shape, dtype, pages: Iterator[np.ndarray], pixel_size) -> None:
    """A (Z, H, W) TIFF written page by page (BigTIFF past 2 GB), with resolution tags for the pixel size."""
    options = {}
    if pixel_size is not None:
        options = {"resolution": (1e7 / pixel_size[1], 1e7 / pixel_size[0]), "resolutionunit": "CENTIMETER"}
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    tifffile.imwrite(
        path, data=pages, shape=tuple(shape), dtype=dtype, photometric="minisblack", compression="zlib",
        metadata={"axes": "ZYX"}, bigtiff=size > 2**31, **options,
    )  # fmt: skip


class VolumeInference:
    """Blockwise inference of a volume on Dask (what it writes and how: see the module docstring).

    Args:
        input_path: the volume (TIFF, folder of slices, Zarr array, OME-Zarr image).
        output_dir: folder for the outputs.
        name: base name of the outputs.
        network: the network with its weights loaded.
        inferer: the configs' inferer (a ``SlidingWindowInferer``, or the test-time-augmentation wrapper).
        membrane_threshold: membrane where the probability is at least this (``_segmentation.tif``).
        cells: how sections become cells.
        pixel_size: (y, x) in nm, or None (the input's, when it records one).
        output_format: ``"tif"`` or ``"ome-zarr"`` (None: follows the input).
        ome_zarr_version: NGFF version of OME-Zarr output: ``"0.5"`` (Zarr v3) or ``"0.4"`` (Zarr v2, for viewers
            that read no Zarr v3 yet).
        block_size: sections larger than this are cut into tiles of at most ``block_size`` x ``block_size``.
        cell_halo: pixels of context around a tile for its cells; cells are stitched across tiles in a band of
            ``2 * band`` pixels.
        challenge_submission: also write the ISBI 2012 submission TIFF.
        scheduler: address of an existing Dask scheduler, or None for a local cluster.
        workers: workers of the local cluster (None: one per GPU, or one).
        resume: reuse the blocks an interrupted run of the same settings finished.
        device: the configs' device (CUDA workers get one GPU each).
        amp: autocast on CUDA.
        progress_bar: a progress bar over the blocks (None: only on a terminal).
    """

    def __init__(
        self,
        input_path: str | Path,
        output_dir: str | Path,
        name: str,
        network: torch.nn.Module,
        inferer,
        membrane_threshold: float = 0.5,
        cells: CellLabeller | None = None,
        pixel_size: Sequence[float] | None = None,
        output_format: str | None = None,
        ome_zarr_version: str = "0.5",
        block_size: int | None = 2048,
        cell_halo: int = 128,
        band: int = 8,
        challenge_submission: bool | str = False,
        scheduler: str | None = None,
        workers: int | None = None,
        resume: bool | str = False,
        device: torch.device | str = "cpu",
        amp: bool = False,
        progress_bar: bool | str | None = None,
    ) -> None:
        from .writers import _checked_pixel_size

        self.input_path, self.output_dir, self.name = Path(input_path), Path(output_dir), name
        self.network, self.inferer = network, inferer
        self.membrane_threshold = float(membrane_threshold)
        self.cells = cells if cells is not None else CellLabeller(membrane_threshold=membrane_threshold)
        self.pixel_size = _checked_pixel_size(pixel_size)
        self.output_format = output_format or default_output_format(input_path)
        if self.output_format not in OUTPUT_FORMATS:
            raise InputError(f"--output_format {output_format}: must be one of {', '.join(OUTPUT_FORMATS)}")
        self.ome_zarr_version = str(ome_zarr_version)
        if self.ome_zarr_version not in OME_ZARR_VERSIONS:
            raise InputError(f"--ome_zarr_version {ome_zarr_version}: must be one of {', '.join(OME_ZARR_VERSIONS)}")
        if block_size is not None and int(block_size) < 64:
            raise InputError(f"--block_size {block_size}: must be at least 64 pixels (or null: whole sections)")
        if int(cell_halo) < int(band):
            raise InputError(f"--cell_halo {cell_halo}: must be at least the seam band ({band} pixels)")
        self.block_size, self.cell_halo, self.band = block_size and int(block_size), int(cell_halo), int(band)
        self.challenge_submission = flag(challenge_submission, "challenge_submission")
        self.scheduler, self.workers = scheduler or None, workers
        self.resume = flag(resume, "resume")
        self.device, self.amp = torch.device(device), bool(amp)
        self.progress_bar = None if progress_bar is None else flag(progress_bar, "progress_bar")
        self.work = self.output_dir / f".{name}.partial"
        self.written: list[Path] = []
        self.network_loads: dict[str, int] = {}

    # -- outputs -------------------------------------------------------------------------------------------
    def outputs(self) -> dict[str, Path]:
        if self.output_format == "ome-zarr":
            files = {"ome-zarr": self.output_dir / f"{self.name}.ome.zarr"}
        else:
            suffixes = ["membrane_probability", "segmentation", "cells"]
            suffixes += ["isbi2012_submission"] if self.challenge_submission else []
            files = {suffix: self.output_dir / f"{self.name}_{suffix}.tif" for suffix in suffixes}
        return {**files, "table": self.output_dir / f"{self.name}_cells.csv"}

    # -- the run -------------------------------------------------------------------------------------------
    def run(self) -> list[Path]:
        volume = open_volume(self.input_path)
        pixel_size = self.pixel_size or volume.pixel_size
        blocks = plan_blocks(volume.shape, self.block_size)
        tiled = len(blocks) > volume.shape[0]
        settings = {
            "input_path": str(self.input_path.resolve()), "work": str(self.work.resolve()), "cells": self.cells,
            "cell_halo": self.cell_halo, "band": self.band, "pixel_size": pixel_size, "section_range": None,
        }  # fmt: skip
        self._prepare_work(volume, blocks)
        try:
            with dask_client(self.scheduler, self.workers) as client:
                if client.dashboard_link:
                    logger.info("Dask dashboard: %s", client.dashboard_link)
                workers = len(client.nthreads())
                threads = None if self.scheduler or workers < 2 else max(1, (os.cpu_count() or 1) // workers)
                client.register_plugin(
                    NetworkPlugin(self.network, self.inferer, self.device.type, self.amp, threads), name=PLUGIN_NAME
                )
                ranges = self._section_ranges(client, blocks, settings) if tiled else None
                self._run_blocks(client, blocks, settings, ranges)
                self.network_loads = client.run(_network_loads)  # worker address -> times it loaded the network
                self.finish(volume, blocks, pixel_size, client)
        except InputError as error:
            if not isinstance(error, BlockError):  # bad input or weights: nothing to resume
                shutil.rmtree(self.work, ignore_errors=True)
            raise
        return self.written

    def _signature(self, volume: Volume, blocks: list[Block]) -> dict:
        return {
            "input_path": str(self.input_path.resolve()), "shape": list(volume.shape), "block_size": self.block_size,
            "cell_halo": self.cell_halo, "band": self.band, "cells": repr(self.cells),
            "ome_zarr_version": self.ome_zarr_version,
            "inferer": _describe(self.inferer), "blocks": len(blocks),
            "weights": float(sum(float(p.double().abs().sum()) for p in self.network.state_dict().values())),
        }  # fmt: skip

    def _prepare_work(self, volume: Volume, blocks: list[Block]) -> None:
        signature = self._signature(volume, blocks)
        record = self.work / "run.json"
        if self.resume and record.is_file():
            previous = json.loads(record.read_text())
            if previous != signature:
                changed = sorted(key for key in signature if previous.get(key) != signature[key])
                raise InputError(
                    f"--resume true: {self.work} was started with other settings ({', '.join(changed)} differ); "
                    "rerun with --resume false to start again"
                )
            logger.info("resuming %s: %d of %d blocks done", self.work, len(self._done()), len(blocks))
            return
        shutil.rmtree(self.work, ignore_errors=True)
        chunks = (1, blocks[0].y1 - blocks[0].y0, blocks[0].x1 - blocks[0].x0)
        root, _, _ = create_ome_zarr(self.work, volume.shape, chunks, np.float32, version=self.ome_zarr_version)
        root.create_array("cells_local", shape=volume.shape, chunks=chunks, dtype=np.uint32, fill_value=0)
        (self.work / "blocks").mkdir()
        record.write_text(json.dumps(signature))

    def _done(self) -> set[str]:
        return {path.stem for path in (self.work / "blocks").glob("*.npz") if not path.name.startswith(".")}

    def _section_ranges(self, client, blocks: list[Block], settings: dict) -> dict[int, tuple[float, float]]:
        futures = client.map(section_range, [settings["input_path"]] * len(blocks), blocks, pure=False)
        ranges: dict[int, tuple[float, float]] = {}
        for block, (low, high) in zip(blocks, client.gather(futures), strict=True):
            old = ranges.get(block.z, (low, high))
            ranges[block.z] = (min(old[0], low), max(old[1], high))
        return ranges

    def _run_blocks(self, client, blocks: list[Block], settings: dict, ranges) -> None:
        from distributed import as_completed
        from tqdm import tqdm

        done = self._done()
        todo = [block for block in blocks if block.name not in done]
        futures = [
            client.submit(
                run_block, block, {**settings, "section_range": ranges and ranges[block.z]},
                key=f"emseg-block-{block.name}", pure=False,
            )
            for block in todo
        ]  # fmt: skip
        logger.info("%d blocks (%d to compute) on %d workers", len(blocks), len(todo), len(client.nthreads()))
        with tqdm(total=len(blocks), initial=len(blocks) - len(todo), desc="blocks", disable=self._bar()) as bar:
            try:
                for future in as_completed(futures):
                    future.result()  # re-raises a worker's error here
                    bar.update()
            except BaseException:
                client.cancel(futures)
                raise

    def _bar(self) -> bool | None:
        return None if self.progress_bar is None else not self.progress_bar

    # -- finishing -----------------------------------------------------------------------------------------
    def _record(self, block: Block) -> dict:
        with np.load(self.work / "blocks" / f"{block.name}.npz") as data:
            return {key: data[key] for key in data.files}

    def _count(self, block: Block) -> int:
        with np.load(self.work / "blocks" / f"{block.name}.npz") as data:
            return int(data["count"])

    def _finish_section(self, client, store, volume, blocks, first_id: int, pixel_size) -> tuple:
        """One section's cells: its table rows ordered by id (None: no cell), its cell count, and the futures of
        the tasks writing its stitched ids to ``labels/cells/0``. Only this section's block records are loaded."""
        records = [self._record(block) for block in blocks]
        seams = [{key[len("seam_") :]: value for key, value in r.items() if key.startswith("seam_")} for r in records]
        ids = stitch_cells(blocks, [int(record["count"]) for record in records], seams, first_id)
        lookups = [ids.block_lookup(i) for i in range(len(blocks))]
        relabelled = client.map(_relabel_block, blocks, lookups, work=str(self.work.resolve()), pure=False)
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
            labels = _stitched(store, blocks, lookups, z, slice(y0, y1), slice(x0, x1))
            raw = volume.read(z, slice(y0, y1), slice(x0, x1))
            table = measure_cells(np.where(labels == cell, labels, 0), raw, pixel_size)
            parts.append(shift_table(table, z, (y0, x0), pixel_size))
        parts = [part for part in parts if len(part["id"])]
        if not parts:
            return None, ids.count, relabelled
        columns = [column for column in CELL_COLUMNS if column in parts[0]]
        rows = {column: np.concatenate([part[column] for part in parts]) for column in columns}
        order = np.argsort(rows["id"], kind="stable")
        return {column: values[order] for column, values in rows.items()}, ids.count, relabelled

    def finish(self, volume: Volume, blocks: list[Block], pixel_size, client) -> None:
        """Volume-wide ids, seam merges, the table and the outputs, section by section; each output is written
        under a temporary name, and all are renamed at the end."""
        counts = [self._count(block) for block in blocks]
        store = _open_store(str(self.work.resolve()))
        targets = self.outputs()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        temporary = {key: path.with_name(f".{path.name}.partial") for key, path in targets.items()}
        for path in temporary.values():
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        per_section = len(blocks) // volume.shape[0]  # every section has the same tiles
        cells, relabelled = 0, []
        try:
            with temporary["table"].open("wb") as table:
                header = True
                for z in range(volume.shape[0]):
                    section = slice(z * per_section, (z + 1) * per_section)
                    first_id = sum(counts[: section.start])
                    rows, count, futures = self._finish_section(
                        client, store, volume, blocks[section], first_id, pixel_size
                    )
                    cells, relabelled = cells + count, relabelled + futures
                    if rows is not None:
                        data = csv_bytes(rows)
                        table.write(data if header else data.split(b"\n", 1)[1])
                        header = False
                if header:  # no cell at all: the header alone
                    table.write((",".join(c for c in CELL_COLUMNS if pixel_size or "_nm" not in c) + "\n").encode())
            client.gather(relabelled)
            if self.output_format == "ome-zarr":
                shutil.rmtree(self.work / "blocks")
                del store["cells_local"]
                write_ome_zarr_metadata(store, pixel_size, self.name, self.ome_zarr_version)
            else:
                self._write_tiffs(temporary, store, volume.shape, pixel_size)
        except OSError as error:
            raise BlockError(
                f"{error.filename or self.output_dir}: cannot write the outputs ({error.strerror or error})"
            ) from error
        if self.output_format == "ome-zarr":
            shutil.rmtree(targets["ome-zarr"], ignore_errors=True)
            os.replace(self.work, targets["ome-zarr"])
        for key, path in temporary.items():
            if key != "ome-zarr":
                os.replace(path, targets[key])
        shutil.rmtree(self.work, ignore_errors=True)
        self.written = list(targets.values())
        logger.info(
            "wrote %s (%d sections of %dx%d in %d blocks, %d cells)",
            ", ".join(str(p) for p in self.written), *volume.shape, len(blocks), cells,
        )  # fmt: skip

    def _write_tiffs(self, temporary, store, shape, pixel_size) -> None:
        def probability() -> Iterator[np.ndarray]:
            for z in range(shape[0]):
                yield np.asarray(store["0"][z])

        def segmentation() -> Iterator[np.ndarray]:
            for section in probability():
                yield np.where(section >= self.membrane_threshold, 0, 255).astype(np.uint8)

        def cells() -> Iterator[np.ndarray]:
            for z in range(shape[0]):
                yield np.asarray(store["labels"]["cells"]["0"][z])

        def submission() -> Iterator[np.ndarray]:
            for section in probability():
                yield 1.0 - section

        pages = {
            "membrane_probability": (np.float32, probability),
            "segmentation": (np.uint8, segmentation),
            "cells": (np.uint32, cells),
            "isbi2012_submission": (np.float32, submission),
        }
        for key, (dtype, generate) in pages.items():
            if key in temporary:
                _write_pages(temporary[key], shape, dtype, generate(), pixel_size)


def _stitched(store, blocks: list[Block], lookups: list[np.ndarray], z: int, rows: slice, columns: slice):
    """Volume-wide cell ids of section ``z``'s ``rows`` x ``columns``, from the block-local ids and each block's
    lookup (``blocks`` and ``lookups``: those of section ``z``)."""
    local = np.asarray(store["cells_local"][z, rows, columns])
    cells = np.zeros(local.shape, dtype=np.uint32)
    for block, lookup in zip(blocks, lookups, strict=True):
        if block.y1 <= rows.start or block.y0 >= rows.stop or block.x1 <= columns.start or block.x0 >= columns.stop:
            continue
        part = (
            slice(max(block.y0, rows.start) - rows.start, min(block.y1, rows.stop) - rows.start),
            slice(max(block.x0, columns.start) - columns.start, min(block.x1, columns.stop) - columns.start),
        )
        cells[part] = lookup[local[part]]
    return cells


def _relabel_block(block: Block, lookup: np.ndarray, work: str) -> None:
    """Write one block's volume-wide cell ids into ``labels/cells/0`` (a task of the OME-Zarr output)."""
    store = _open_store(work)
    target = (block.z, slice(block.y0, block.y1), slice(block.x0, block.x1))
    try:
        store["labels"]["cells"]["0"][target] = lookup[np.asarray(store["cells_local"][target])]
    except OSError as error:
        raise BlockError(f"{block}: cannot write {error.filename or work} ({error.strerror or error})") from error
