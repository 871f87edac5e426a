"""Set-up and tear-down of a multi-process (torchrun) training run, for ``configs/multi_gpu_train.json``."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from ignite.engine import Engine

__all__ = ["start_process_group", "log_on_first_process_only", "end_process_group"]


def start_process_group(backend: str, device: torch.device) -> None:
    """Join torchrun's process group (``nccl`` for CUDA, ``gloo`` for CPU processes) and pick this rank's GPU.

    Prints one line per process (``emseg: process R of N on DEVICE with BACKEND``) so a launch shows every rank.
    """
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    print(f"emseg: process {dist.get_rank()} of {dist.get_world_size()} on {device} with {backend}", flush=True)


def log_on_first_process_only(*engines: Engine, progress_logger: str = "TrainingProgress") -> None:
    """Keep INFO logging of the engines and of the epoch progress on rank 0; other ranks log warnings only."""
    level = logging.INFO if dist.get_rank() == 0 else logging.WARNING
    for logger in (logging.getLogger(progress_logger), *(engine.logger for engine in engines)):
        logger.setLevel(level)


def end_process_group() -> None:
    """Wait for every rank, then leave the process group (no rank tears down while another still saves)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
