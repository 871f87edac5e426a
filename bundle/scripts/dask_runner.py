"""Blocks on a Dask cluster: a local one of several workers, or an existing one (``--dask_scheduler``).

:class:`DaskRunner` hands each block's :class:`~scripts.work.BlockTask` to the workers. Each worker puts the
network on its device once, when it starts (:class:`NetworkPlugin`), and reads its blocks from the input
itself, so the input and the output folder must be reachable from every worker (a shared file system on a real
cluster). The bundle's ``scripts`` travel to an existing cluster's workers as a zip, so they need not have it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch
from distributed.diagnostics.plugin import WorkerPlugin

from .blockwise import Block
from .errors import InputError
from .pipeline import SectionPredictor
from .transforms import FULL_RANGE
from .work import BlockTask, block_histogram, block_range, section_percentiles, section_ranges

__all__ = ["NetworkPlugin", "DaskRunner", "dask_client", "worker_device", "local_worker_count"]

logger = logging.getLogger("VolumeInference")
PLUGIN_NAME = "emseg-network"


class NetworkPlugin(WorkerPlugin):
    """A Dask worker plugin that puts the predictor's network on the worker's device once, when the worker starts.

    Its device (:func:`worker_device`): one GPU per worker when the run or the worker has CUDA, else the CPU. A
    worker runs one block at a time through the network (a lock), however many threads it has.

    Args:
        predictor: the declared pipeline with its network (copied to the CPU for shipping).
        device_type: ``"cuda"``, ``"cpu"``, or ``"auto"``: CUDA wherever the worker has it (an existing cluster's
            GPU workers, started from a machine without one).
        amp: autocast on CUDA (None: on wherever the worker's device is CUDA).
        threads: torch threads per worker (None: leave torch's default).
        own_cluster: the workers are the local cluster's, named 0, 1, ... and seeing every GPU.
    """

    name = PLUGIN_NAME

    def __init__(
        self, predictor: SectionPredictor, device_type: str, amp: bool | None, threads: int | None,
        own_cluster: bool = True,
    ) -> None:  # fmt: skip
        self.predictor = copy.deepcopy(predictor).to("cpu", amp=False)
        self.device_type, self.amp, self.threads, self.own_cluster = device_type, amp, threads, own_cluster
        self.loads = 0  # times this worker put the network on its device
        self.lock = None

    def setup(self, worker) -> None:
        import threading

        if self.threads:
            torch.set_num_threads(self.threads)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.predictor.to(worker_device(worker.name, self.device_type, count, self.own_cluster), self.amp)
        self.lock = threading.Lock()
        self.loads += 1

    def teardown(self, worker) -> None:
        self.predictor = None


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


def local_worker_count(workers: int | None) -> int:
    """Workers of a local cluster: ``workers``, or one per CUDA device, or one."""
    return int(workers) if workers is not None else max(torch.cuda.device_count(), 1)


def _plugin() -> NetworkPlugin:
    from distributed import get_worker

    return get_worker().plugins[PLUGIN_NAME]


def _run_task(block: Block, task: BlockTask) -> int:
    """One block on a worker (a Dask task); returns its cell count."""
    plugin = _plugin()
    with plugin.lock:  # one block at a time through the network, however many threads the worker runs
        predicted = task.predict(block, plugin.predictor)
    return task.finish(block, predicted)


def _network_loads(dask_worker) -> int:
    """Times the worker put the network on its device (``client.run`` passes the worker by this argument's name)."""
    return dask_worker.plugins[PLUGIN_NAME].loads


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


class DaskRunner:
    """Runs blocks on a Dask cluster (a context manager: the cluster lives while it is entered).

    Args:
        predictor: the declared pipeline (its device decides the local workers' devices).
        scheduler: address of an existing scheduler, or None for a local cluster.
        workers: workers of the local cluster (None: one per GPU, or one).
        dashboard: serve the local cluster's dashboard.
    """

    def __init__(
        self, predictor: SectionPredictor, scheduler: str | None = None, workers: int | None = None,
        dashboard: bool = False,
    ) -> None:  # fmt: skip
        self.predictor, self.scheduler, self.workers, self.dashboard = predictor, scheduler, workers, dashboard
        self.token = uuid.uuid4().hex[:12]  # this run's task keys, apart from any other run's on a shared scheduler
        self.client = None
        self.network_loads: dict[str, int] = {}  # worker address -> times it put the network on its device
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> DaskRunner:
        self.client = self._stack.enter_context(dask_client(self.scheduler, self.workers, self.dashboard))
        if self.client.dashboard_link and (self.scheduler or self.dashboard):
            logger.info("Dask dashboard: %s", self.client.dashboard_link)
        workers = len(self.client.nthreads())
        threads = None if self.scheduler or workers < 2 else max(1, (os.cpu_count() or 1) // workers)
        # on an existing cluster each worker picks its own device: this machine may have no GPU
        device_type, amp = ("auto", None) if self.scheduler else (self.predictor.device.type, self.predictor.amp)
        plugin = NetworkPlugin(self.predictor, device_type, amp, threads, not self.scheduler)
        self.client.register_plugin(plugin, name=PLUGIN_NAME)
        if self.scheduler:  # an existing cluster's workers give the network's memory back
            self._stack.callback(self.client.unregister_worker_plugin, PLUGIN_NAME)
        return self

    def __exit__(self, *exception) -> None:
        self._stack.close()

    @property
    def worker_count(self) -> int:
        return len(self.client.nthreads())

    def ranges(
        self, input_path: str, blocks: list[Block], percentiles: tuple[float, float] = FULL_RANGE
    ) -> dict[int, tuple[float, float]]:
        """Each section's intensities at ``percentiles`` over its blocks (as the local runner's)."""
        keys = [f"emseg-range-{self.token}-{block.name}" for block in blocks]
        futures = self.client.map(block_range, [input_path] * len(blocks), blocks, key=keys)
        extremes = section_ranges(blocks, self.client.gather(futures))
        if percentiles == FULL_RANGE:
            return extremes
        keys = [f"emseg-histogram-{self.token}-{block.name}" for block in blocks]
        section_of = [extremes[block.z] for block in blocks]
        futures = self.client.map(block_histogram, [input_path] * len(blocks), blocks, section_of, key=keys)
        return section_percentiles(blocks, self.client.gather(futures), extremes, percentiles)

    def run(self, blocks: list[Block], task: BlockTask) -> Iterator[Block]:
        """Runs ``task`` on each block; yields each block once its record is written (in any order)."""
        from distributed import as_completed

        futures = {
            self.client.submit(_run_task, block, task, key=f"emseg-block-{self.token}-{block.name}", pure=False): block
            for block in blocks
        }
        try:
            for future in as_completed(futures):
                future.result()  # re-raises a worker's error here
                yield futures[future]
        except BaseException:
            self.client.cancel(list(futures))
            raise
        self.network_loads = self.client.run(_network_loads)
