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
``--resume true`` computes just the blocks without a record. A run holds ``<output_dir>/.<name>.lock``
(:func:`scripts.writers.output_lock`) from before it touches the partial folder until its outputs are in place,
so a second run into the same outputs is refused while the first one lives.

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
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch
from distributed.diagnostics.plugin import WorkerPlugin
from monai.utils import ensure_tuple_rep
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
from .flags import flag, number
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
from .writers import atomic_write, csv_bytes, output_lock

__all__ = ["BlockError", "NetworkPlugin", "VolumeInference", "dask_client", "worker_device", "run_block"]

logger = logging.getLogger("VolumeInference")
PLUGIN_NAME = "emseg-network"
#: runs of this many blocks or more get the local cluster's dashboard by default
DASHBOARD_BLOCKS = 100
#: how often this process's workers loaded the network (each worker process: once)
NETWORK_LOADS = {"count": 0}


class BlockError(InputError):
    """A block that cannot be read, computed or written; the message names the block and the file."""


class NetworkPlugin(WorkerPlugin):
    """A Dask worker plugin that puts the network on the worker's device once, when the worker starts.

    Its device (:func:`worker_device`): one GPU per worker when the run or the worker has CUDA, else the CPU. A
    worker runs one block at a time through the network (a lock), however many threads it has.

    Args:
        network: the network with its weights (copied to the CPU for shipping).
        inferer: the configs' inferer.
        device_type: ``"cuda"``, ``"cpu"``, or ``"auto"``: CUDA wherever the worker has it (an existing cluster's
            GPU workers, started from a machine without one).
        amp: autocast on CUDA (None: on wherever the worker's device is CUDA).
        threads: torch threads per worker (None: leave torch's default).
        own_cluster: the workers are the local cluster's, named 0, 1, ... and seeing every GPU.
    """

    name = PLUGIN_NAME

    def __init__(
        self, network: torch.nn.Module, inferer, device_type: str, amp: bool | None, threads: int | None,
        own_cluster: bool = True,
    ) -> None:  # fmt: skip
        self.network = copy.deepcopy(network).cpu().eval()
        self.inferer, self.device_type, self.threads, self.own_cluster = inferer, device_type, threads, own_cluster
        self.amp_option, self.amp = amp, False
        self.device = torch.device("cpu")
        self.lock = None

    def setup(self, worker) -> None:
        import threading

        if self.threads:
            torch.set_num_threads(self.threads)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.device = worker_device(worker.name, self.device_type, count, self.own_cluster)
        self.amp = self.device.type == "cuda" if self.amp_option is None else bool(self.amp_option)
        self.network = self.network.to(self.device).eval()
        self.lock = threading.Lock()
        NETWORK_LOADS["count"] += 1

    def teardown(self, worker) -> None:
        self.network = None


def worker_device(worker_name, device_type: str, cuda_devices: int, own_cluster: bool = True) -> torch.device:
    """The device of a worker that sees ``cuda_devices`` GPUs.

    ``cuda:i`` for the worker named ``i`` of the local cluster the bundle starts (modulo the GPUs); ``cuda:0``, the
    first GPU it sees, for a worker of an existing cluster (dask-cuda and job schedulers give each worker its own
    ``CUDA_VISIBLE_DEVICES``); the CPU for a CPU run or without CUDA. ``device_type`` ``"auto"``: CUDA if any.
    """
    if device_type not in ("cuda", "auto") or cuda_devices < 1:
        return torch.device("cpu")
    index = worker_name if own_cluster and isinstance(worker_name, int) else 0
    return torch.device(f"cuda:{index % cuda_devices}")


def _plugin() -> NetworkPlugin:
    from distributed import get_worker

    return get_worker().plugins[PLUGIN_NAME]


def _network_loads() -> int:
    return NETWORK_LOADS["count"]


def local_worker_count(workers: int | None) -> int:
    """Workers of the local cluster: ``workers``, or one per CUDA device, or one."""
    return int(workers) if workers is not None else max(torch.cuda.device_count(), 1)


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, dashboard: bool = True) -> Iterator:
    """A ``distributed.Client``: of the cluster at ``scheduler`` (e.g. ``tcp://10.0.0.5:8786``), or of a local
    cluster of ``workers`` workers (default: one per CUDA device, else one), in processes when more than one, with
    its dashboard on 127.0.0.1 when ``dashboard`` (an existing cluster's dashboard is its own)."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as error:
            raise InputError(
                f"--dask_scheduler {scheduler}: cannot connect ({type(error).__name__}: {error})"
            ) from error
        with client, tempfile.TemporaryDirectory() as folder:
            # the bundle's scripts/ travel to the workers (and to workers that join later), which may not share
            # this Python path: a zip holding the package, put on each worker's sys.path
            archive = shutil.make_archive(
                str(Path(folder) / "emseg_scripts"), "zip", Path(__file__).parents[1], "scripts"
            )  # fmt: skip
            client.upload_file(archive)  # the scheduler too: it unpickles the tasks
            yield client
        return
    count = local_worker_count(workers)
    if count < 1:
        raise InputError(f"--dask_workers {workers}: needs at least one worker")
    # Dask logs every connection at INFO: keep its warnings only, here and in the worker processes (which read the
    # environment). LocalCluster's silence_logs would also quiet this process's own log handlers
    logging.getLogger("distributed").setLevel(logging.WARNING)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    settings = {
        # the dashboard listens on loopback only; Dask's link would name the machine's address, where nothing listens
        "distributed.dashboard.link": "{scheme}://127.0.0.1:{port}/status",
        # the workers' statistical profiler keeps a profile of every second for the last 1000 (about 0.4 MB each
        # here, torch's deep stacks): memory that grew with the run's length, so with the volume
        "distributed.worker.profile.enabled": False,
    }
    with (
        dask.config.set(settings),
        LocalCluster(
            n_workers=count, threads_per_worker=1, processes=count > 1,
            dashboard_address="127.0.0.1:8787" if dashboard else None,
            silence_logs=False,
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
    """A block record: the arrays as one ``.npz``, written atomically (:func:`scripts.writers.atomic_write`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def _read_block(input_path: str, block: Block, rows: slice, columns: slice) -> np.ndarray:
    """Section ``block.z``'s ``rows`` x ``columns`` of the input; errors name the file and the block. Bad data is a
    :class:`~scripts.stack_io.StackError` (bad input); a failed read (an I/O error) a :class:`BlockError`, which
    keeps the finished blocks for ``--resume true``."""
    try:
        return _open_cached(input_path).read(block.z, rows, columns)
    except StackError as error:
        raise StackError(f"{error}; in {block}") from error
    except OSError as error:
        raise BlockError(f"{block}: cannot read {error.filename or input_path} ({error.strerror or error})") from error


def section_range(input_path: str, block: Block) -> tuple[float, float]:
    """(minimum, maximum) intensity of one block (a task; the section's range is that of its blocks)."""
    raw = _read_block(input_path, block, slice(block.y0, block.y1), slice(block.x0, block.x1))
    return float(raw.min()), float(raw.max())


def run_block(block: Block, settings: dict) -> int:
    """Predict, label and record one block on a worker; returns its cell count (a task of :class:`VolumeInference`).

    ``settings``: ``input_path``, ``work`` (the partial folder), ``section_range`` (or None: this block is a
    whole section), ``cells``, ``cell_halo``, ``band``, ``pixel_size``.
    """
    plugin = _plugin()
    section_shape = _open_cached(settings["input_path"]).shape[1:]
    window = sliding_window_of(plugin.inferer)
    halo = settings["cell_halo"] if settings["section_range"] is not None else 0
    roi = ensure_tuple_rep(window.roi_size, 2)
    rows, columns = prediction_region(block, section_shape, roi, window.overlap, halo)
    raw_region = _read_block(settings["input_path"], block, rows, columns)
    value_range = settings["section_range"] or (float(raw_region.min()), float(raw_region.max()))
    with plugin.lock:  # one block at a time through the network, however many threads the worker runs
        probability = predict_region(
            raw_region, value_range, plugin.network, plugin.inferer, plugin.device, plugin.amp
        )  # fmt: skip
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
    """A (Z, H, W) TIFF written page by page (BigTIFF past 2 GB), with resolution tags for the pixel size. One
    compression thread: with more, tifffile reads the whole iterator ahead (the volume in memory)."""
    options = {}
    if pixel_size is not None:
        options = {"resolution": (1e7 / pixel_size[1], 1e7 / pixel_size[0]), "resolutionunit": "CENTIMETER"}
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    tifffile.imwrite(
        path, data=pages, shape=tuple(shape), dtype=dtype, photometric="minisblack", compression="zlib",
        metadata={"axes": "ZYX"}, bigtiff=size > 2**31, maxworkers=1, **options,
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
        dashboard: the local cluster's Dask dashboard (None: for several workers, or ``DASHBOARD_BLOCKS`` blocks
            and more).
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
        dashboard: bool | str | None = None,
    ) -> None:
        from .writers import _checked_pixel_size

        self.input_path, self.output_dir, self.name = Path(input_path), Path(output_dir), name
        self.network, self.inferer = network, inferer
        self.membrane_threshold = number(membrane_threshold, "membrane_threshold", 0, 1)
        self.cells = cells if cells is not None else CellLabeller(membrane_threshold=self.membrane_threshold)
        self.pixel_size = _checked_pixel_size(pixel_size)
        self.output_format = output_format or default_output_format(input_path)
        if self.output_format not in OUTPUT_FORMATS:
            raise InputError(f"--output_format {output_format}: must be one of {', '.join(OUTPUT_FORMATS)}")
        self.ome_zarr_version = str(ome_zarr_version)
        if self.ome_zarr_version not in OME_ZARR_VERSIONS:
            raise InputError(f"--ome_zarr_version {ome_zarr_version}: must be one of {', '.join(OME_ZARR_VERSIONS)}")
        self.block_size = None if block_size is None else number(block_size, "block_size", 64, integer=True)
        self.band = number(band, "band", 1, integer=True)
        self.cell_halo = number(cell_halo, "cell_halo", self.band, integer=True)
        self.challenge_submission = flag(challenge_submission, "challenge_submission")
        self.scheduler = scheduler or None
        self.workers = None if workers is None else number(workers, "dask_workers", 1, integer=True)
        self.resume = flag(resume, "resume")
        self.device, self.amp = torch.device(device), bool(amp)
        self.progress_bar = None if progress_bar is None else flag(progress_bar, "progress_bar")
        self.dashboard = None if dashboard is None else flag(dashboard, "dask_dashboard")
        self.work = self.output_dir / f".{name}.partial"
        self.token = uuid.uuid4().hex[:12]  # this run's task keys, apart from any other run's on a shared scheduler
        self.written: list[Path] = []
        self.network_loads: dict[str, int] = {}
        self.cell_count = 0
        self._writing: Path | None = None  # the output being written while finishing, named if writing fails

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
        self._check(volume, blocks, tiled)
        settings = {
            "input_path": str(self.input_path.resolve()), "work": str(self.work.resolve()), "cells": self.cells,
            "cell_halo": self.cell_halo, "band": self.band, "pixel_size": pixel_size, "section_range": None,
        }  # fmt: skip
        with output_lock(self.output_dir / f".{self.name}.lock", str(self.work)):
            self._prepare_work(volume, blocks, pixel_size)
            self._compute_and_finish(volume, blocks, pixel_size, settings, tiled)
        return self.written

    def _compute_and_finish(self, volume: Volume, blocks: list[Block], pixel_size, settings: dict, tiled: bool) -> None:
        """The blocks without a record on the cluster, then :meth:`finish`; bad input removes the work folder."""
        try:
            dashboard = self._dashboard(blocks)
            with dask_client(self.scheduler, self.workers, dashboard) as client:
                if client.dashboard_link and (self.scheduler or dashboard):
                    logger.info("Dask dashboard: %s", client.dashboard_link)
                workers = len(client.nthreads())
                threads = None if self.scheduler or workers < 2 else max(1, (os.cpu_count() or 1) // workers)
                # on an existing cluster each worker picks its own device: this machine may have no GPU
                device_type, amp = ("auto", None) if self.scheduler else (self.device.type, self.amp)
                plugin = NetworkPlugin(self.network, self.inferer, device_type, amp, threads, not self.scheduler)
                client.register_plugin(plugin, name=PLUGIN_NAME)
                try:
                    ranges = self._section_ranges(client, blocks, settings) if tiled else None
                    self._run_blocks(client, blocks, settings, ranges)
                    self.network_loads = client.run(_network_loads)  # worker address -> times it loaded the network
                    self.finish(volume, blocks, pixel_size, client)
                finally:
                    if self.scheduler:  # an existing cluster's workers give the network's memory back
                        client.unregister_worker_plugin(PLUGIN_NAME)
        except InputError as error:
            if not isinstance(error, BlockError):  # bad input or weights: nothing to resume
                shutil.rmtree(self.work, ignore_errors=True)
            raise

    def _dashboard(self, blocks: list[Block]) -> bool:
        """Whether the local cluster serves a dashboard: ``dashboard``, or by default for runs of several workers or
        of ``DASHBOARD_BLOCKS`` blocks and more (starting it costs about 0.7 s, a tenth of a 30-section run)."""
        if self.dashboard is not None:
            return self.dashboard
        return local_worker_count(self.workers) > 1 or len(blocks) >= DASHBOARD_BLOCKS

    def _check(self, volume: Volume, blocks: list[Block], tiled: bool) -> None:
        """Settings that cannot work with this volume, before anything is written."""
        if min(volume.shape[1:]) < 2:  # a line of pixels holds no cell (and tifffile writes no 1-pixel-wide pages)
            raise StackError(
                f"{self.input_path}: sections of {volume.shape[1]} x {volume.shape[2]} pixels hold no cells; "
                "sections must be at least 2 pixels high and wide"
            )
        source = self.input_path.resolve()
        for target in self.outputs().values():
            target = target.resolve()
            if target == source or source in target.parents or target in source.parents:
                raise InputError(f"--output_dir {self.output_dir}: {target} would overwrite the input {source}")
        smallest = min(min(block.y1 - block.y0, block.x1 - block.x0) for block in blocks)
        if tiled and smallest < 2 * self.band:
            raise InputError(f"--block_size {self.block_size}: tiles of {smallest} pixels are narrower than 2 x band")
        if tiled and sliding_window_of(self.inferer) is not self.inferer:
            logger.warning(
                "test-time augmentation on tiles: each flipped view places its windows from the tile's far end, so "
                "tiles differ slightly from their whole section (sections up to --block_size are exact)"
            )

    def _signature(self, volume: Volume, blocks: list[Block], pixel_size) -> dict:
        """What a resumed run must share with the run it continues."""
        weights = hashlib.sha256()
        for name, tensor in self.network.state_dict().items():
            weights.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        status = os.stat(self.input_path)
        return {
            "input_path": str(self.input_path.resolve()), "input_modified_ns": status.st_mtime_ns,
            "shape": list(volume.shape), "block_size": self.block_size, "blocks": len(blocks),
            "cell_halo": self.cell_halo, "band": self.band, "cells": repr(self.cells),
            "pixel_size": list(pixel_size) if pixel_size else None, "inferer": _describe(self.inferer),
            "device": self.device.type if not self.scheduler else "auto", "amp": self.amp,
            "output": [self.output_format, self.ome_zarr_version if self.output_format == "ome-zarr" else None],
            "weights": weights.hexdigest(),
        }  # fmt: skip

    def _prepare_work(self, volume: Volume, blocks: list[Block], pixel_size) -> None:
        signature = self._signature(volume, blocks, pixel_size)
        record = self.work / "run.json"
        resumable = record.is_file() and (self.work / "blocks").is_dir() and (self.work / "cells_local").is_dir()
        if self.resume and resumable:
            try:
                previous = json.loads(record.read_text())
            except (OSError, ValueError) as error:
                message = f"--resume true: {record} cannot be read ({error}); rerun with --resume false"
                raise InputError(message) from error
            if previous != signature:
                changed = sorted(key for key in signature if previous.get(key) != signature[key])
                raise InputError(
                    f"--resume true: {self.work} was started with other settings ({', '.join(changed)} differ); "
                    "rerun with --resume false to start again"
                )
            logger.info("resuming %s: %d of %d blocks done", self.work, len(self._done()), len(blocks))
            return
        if self.resume:
            logger.info("--resume true: %s holds no run to resume; starting afresh", self.work)
        shutil.rmtree(self.work, ignore_errors=True)
        chunks = (1, blocks[0].y1 - blocks[0].y0, blocks[0].x1 - blocks[0].x0)  # every tile is whole chunks
        try:
            root, _, _ = create_ome_zarr(self.work, volume.shape, chunks, np.float32, version=self.ome_zarr_version)
            root.create_array("cells_local", shape=volume.shape, chunks=chunks, dtype=np.uint32, fill_value=0)
            (self.work / "blocks").mkdir()
            atomic_write(record, json.dumps(signature).encode())
        except OSError as error:
            raise BlockError(f"{error.filename or self.work}: cannot write ({error.strerror or error})") from error

    def _done(self) -> set[str]:
        return {path.stem for path in (self.work / "blocks").glob("*.npz") if not path.name.startswith(".")}

    def _section_ranges(self, client, blocks: list[Block], settings: dict) -> dict[int, tuple[float, float]]:
        """Each section's (minimum, maximum) intensity over its tiles, once: a resumed run reads them back."""
        saved = self.work / "ranges.json"
        if saved.is_file():
            return {int(z): tuple(pair) for z, pair in json.loads(saved.read_text()).items()}
        keys = [f"emseg-range-{self.token}-{block.name}" for block in blocks]
        futures = client.map(section_range, [settings["input_path"]] * len(blocks), blocks, key=keys)
        ranges: dict[int, tuple[float, float]] = {}
        for block, (low, high) in zip(blocks, client.gather(futures), strict=True):
            old = ranges.get(block.z, (low, high))
            ranges[block.z] = (min(old[0], low), max(old[1], high))
        atomic_write(saved, json.dumps(ranges).encode())
        return ranges

    def _run_blocks(self, client, blocks: list[Block], settings: dict, ranges) -> None:
        from distributed import as_completed
        from tqdm import tqdm

        done = self._done()
        todo = [block for block in blocks if block.name not in done]
        futures = [
            client.submit(
                run_block, block, {**settings, "section_range": ranges and ranges[block.z]},
                key=f"emseg-block-{self.token}-{block.name}", pure=False,
            )
            for block in todo
        ]  # fmt: skip
        workers = len(client.nthreads())
        logger.info("%d blocks (%d to compute) on %d worker%s", len(blocks), len(todo), workers, "s" * (workers != 1))
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

    def _finish_section(self, store, volume, blocks, first_id: int, pixel_size, columns: list[str]) -> tuple:
        """One section's cells: its table rows ordered by id (None: no cell), its cell count, and each block's lookup
        from block-local to volume-wide ids. Only this section's block records are loaded."""
        records = [self._record(block) for block in blocks]
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
            labels = _stitched(store, blocks, lookups, z, slice(y0, y1), slice(x0, x1))
            raw = volume.read(z, slice(y0, y1), slice(x0, x1))
            table = measure_cells(np.where(labels == cell, labels, 0), raw, pixel_size)
            parts.append(shift_table(table, z, (y0, x0), pixel_size))
        parts = [part for part in parts if len(part["id"])]
        if not parts:
            return None, ids.count, lookups
        rows = {column: np.concatenate([part[column] for part in parts]) for column in columns}
        order = np.argsort(rows["id"], kind="stable")
        return {column: values[order] for column, values in rows.items()}, ids.count, lookups

    def _finished_sections(self, store, volume, blocks, pixel_size, table) -> Iterator[tuple[int, list, list]]:
        """Finishes the sections in order: writes each one's table rows to ``table`` and yields ``(z, its blocks,
        their lookups)``, for its stitched ids to be written before the next section is loaded."""
        counts = [self._count(block) for block in blocks]
        columns = [column for column in CELL_COLUMNS if pixel_size or "_nm" not in column]
        table.write((",".join(columns) + "\n").encode())
        per_section = len(blocks) // volume.shape[0]  # every section has the same tiles
        first_id = 0
        for z in range(volume.shape[0]):
            section = slice(z * per_section, (z + 1) * per_section)
            rows, count, lookups = self._finish_section(store, volume, blocks[section], first_id, pixel_size, columns)
            self.cell_count += count
            first_id += sum(counts[section])
            if rows is not None:
                table.write(csv_bytes(rows).split(b"\n", 1)[1])
            yield z, blocks[section], lookups

    def finish(self, volume: Volume, blocks: list[Block], pixel_size, client) -> None:
        """Volume-wide ids, seam merges, the table and the outputs, section by section; each output is written
        under a temporary name, and all are renamed at the end."""
        store = _open_store(str(self.work.resolve()))
        targets = self.outputs()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        temporary = {key: path.with_name(f".{path.name}.partial") for key, path in targets.items()}
        for path in temporary.values():
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        self.cell_count = 0
        self._writing = targets["table"]
        try:
            with temporary["table"].open("wb") as table:
                sections = self._finished_sections(store, volume, blocks, pixel_size, table)
                if self.output_format == "ome-zarr":  # the workers write the ids into labels/cells/0
                    work = str(self.work.resolve())
                    for _, section_blocks, lookups in sections:
                        client.gather(client.map(_relabel_block, section_blocks, lookups, work=work, pure=False))
                else:  # the ids go straight into the cells TIFF, page by page
                    whole = slice(0, volume.shape[1]), slice(0, volume.shape[2])
                    pages = (_stitched(store, b, lookups, z, *whole) for z, b, lookups in sections)
                    self._writing = targets["cells"]
                    _write_pages(temporary["cells"], volume.shape, np.uint32, pages, pixel_size)
            if self.output_format == "ome-zarr":  # the partial folder becomes the output: no longer resumable
                self._writing = targets["ome-zarr"]
                (self.work / "run.json").unlink()
                (self.work / "ranges.json").unlink(missing_ok=True)
                shutil.rmtree(self.work / "blocks")
                del store["cells_local"]
                write_ome_zarr_metadata(store, pixel_size, self.name, self.ome_zarr_version)
            else:
                self._write_tiffs(temporary, targets, store, volume.shape, pixel_size)
        except BaseException as error:  # no hidden output survives a failed finish (a full disk gets its space back)
            for path in temporary.values():
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise BlockError(f"{self._writing}: cannot write ({error.strerror or error})") from error
            raise
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
            ", ".join(str(p) for p in self.written), *volume.shape, len(blocks), self.cell_count,
        )  # fmt: skip

    def _write_tiffs(self, temporary, targets, store, shape, pixel_size) -> None:
        """The probability, segmentation and submission TIFFs (the cells TIFF is written while finishing)."""

        def probability() -> Iterator[np.ndarray]:
            for z in range(shape[0]):
                yield np.asarray(store["0"][z])

        def segmentation() -> Iterator[np.ndarray]:
            for section in probability():
                yield np.where(section >= self.membrane_threshold, 0, 255).astype(np.uint8)

        def submission() -> Iterator[np.ndarray]:
            for section in probability():
                yield 1.0 - section

        pages = {
            "membrane_probability": (np.float32, probability),
            "segmentation": (np.uint8, segmentation),
            "isbi2012_submission": (np.float32, submission),
        }
        for key, (dtype, generate) in pages.items():
            if key in temporary:
                self._writing = targets[key]
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
    """Write one block's volume-wide cell ids into ``labels/cells/0`` (a task of the OME-Zarr finish)."""
    store = _open_store(work)
    target = (block.z, slice(block.y0, block.y1), slice(block.x0, block.x1))
    try:
        store["labels"]["cells"]["0"][target] = lookup[np.asarray(store["cells_local"][target])]
    except OSError as error:
        raise BlockError(f"{block}: cannot write {error.filename or work} ({error.strerror or error})") from error
