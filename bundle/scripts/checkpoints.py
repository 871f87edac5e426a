"""Checkpoints: resumable training state, the resume-and-save wiring, and loading weights with clear errors.

A resume checkpoint (``<output_dir>/checkpoint_epoch=N.pt``) holds everything a run needs to continue as if
it had never stopped (:func:`checkpoint_objects`); :class:`TrainingCheckpoint` writes one after every epoch
and, with ``--resume true``, restores the newest complete one (:func:`resume_path`) before training starts.
:class:`EpochSeeds` makes each epoch's random draws a function of the epoch, so a resumed run draws what the
uninterrupted one would have. A model file (``models/model.pt``) holds only the network's weights;
:func:`load_weights` loads it strictly.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.utils import manual_seed
from monai.data.utils import set_rnd
from monai.handlers import CheckpointLoader, CheckpointSaver

from .errors import InputError
from .flags import flag

__all__ = [
    "latest_checkpoint",
    "read_state_dict",
    "BestMetricState",
    "GradScalerState",
    "AverageWarmupState",
    "checkpoint_objects",
    "resume_path",
    "TrainingCheckpoint",
    "EpochSeeds",
    "load_weights",
]

_CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(folder: str | Path) -> str:
    """The most recently written complete ``checkpoint_epoch=N.pt`` in ``folder`` (for resuming).

    Newest by modification time, so a second run into the same folder resumes from its own checkpoints
    rather than from an older run's higher epoch; a file cut short by a crash during saving is skipped.
    """
    folder = Path(folder)
    candidates = sorted(
        (p for p in folder.glob("checkpoint_epoch=*.pt") if _CHECKPOINT_PATTERN.search(p.name)),
        key=lambda p: (p.stat().st_mtime, int(_CHECKPOINT_PATTERN.search(p.name).group(1))),
        reverse=True,
    )
    for path in candidates:
        if zipfile.is_zipfile(path):  # torch.save writes a zip archive; a truncated one has no directory
            return str(path)
    raise InputError(
        f"{folder}: no complete checkpoint_epoch=N.pt to resume from; run training without --resume first "
        "or point --output_dir at the interrupted run's folder"
    )


class BestMetricState:
    """Makes the evaluator's best key metric part of a resumable checkpoint.

    Ignite saves an engine's epoch and iteration but not MONAI's ``best_metric``, nor which score the
    key-metric :class:`monai.handlers.CheckpointSaver` last saved ``model.pt`` at; without them a resumed run
    would overwrite ``model.pt`` with its first, possibly worse, model. Put this object in the checkpoint's
    ``save_dict`` / ``load_dict`` next to the model and optimizer.

    Args:
        evaluator: the validation engine.
        saver: the key-metric ``CheckpointSaver`` attached to it.
    """

    def __init__(self, evaluator: Engine, saver) -> None:
        # `_key_metric_checkpoint` is CheckpointSaver's ignite Checkpoint (monai 1.6.1, pinned);
        # tests/test_handlers.py fails if that changes
        self.evaluator = evaluator
        self.saver = saver

    def state_dict(self) -> dict:
        return {
            "best_metric": self.evaluator.state.best_metric,
            "best_metric_epoch": self.evaluator.state.best_metric_epoch,
            "saved": self.saver._key_metric_checkpoint.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        self.saver._key_metric_checkpoint.load_state_dict(state["saved"])


class GradScalerState:
    """Makes a trainer's mixed-precision ``GradScaler`` part of a resumable checkpoint.

    MONAI's ``SupervisedTrainer`` creates its scaler inside ``run()`` (only when ``amp`` is on), after the
    checkpoint's ``save_dict`` is built, so the checkpoint holds this proxy, which reaches the scaler when the
    checkpoint is saved or loaded. Without it a resumed CUDA run restarts the loss scale from its initial value.

    Args:
        trainer: the training engine.
    """

    def __init__(self, trainer: Engine) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict:
        scaler = getattr(self.trainer, "scaler", None)
        return scaler.state_dict() if scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        scaler = getattr(self.trainer, "scaler", None)
        if scaler is not None and state:
            scaler.load_state_dict(state)


class AverageWarmupState:
    """Makes the position of a weight average's momentum warm-up part of a resumable checkpoint.

    Ignite's ``EMAHandler`` ramps its momentum up with a scheduler that counts the iterations itself; no state dict
    holds that count, so a resumed run would restart the warm-up and average differently from an uninterrupted one.

    Args:
        weight_average: the ``EMAHandler`` (its scheduler exists once it is attached, with a warm-up).
    """

    def __init__(self, weight_average) -> None:
        self.weight_average = weight_average

    def state_dict(self) -> dict:
        scheduler = getattr(self.weight_average, "momentum_scheduler", None)
        return {"event_index": scheduler.event_index} if scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        scheduler = getattr(self.weight_average, "momentum_scheduler", None)
        if scheduler is not None and state:
            scheduler.event_index = int(state["event_index"])


def checkpoint_objects(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    trainer: Engine,
    evaluator: Engine,
    best_model_saver: CheckpointSaver,
    weight_average=None,
    amp: bool = False,
) -> dict:
    """The objects a resume checkpoint saves and restores, by name.

    Args:
        network: the trained network (``"model"``).
        optimizer, lr_scheduler, trainer: their state continues where it stopped.
        evaluator, best_model_saver: the best validation score so far and the model file it was saved at
            (``"best_metric"``, :class:`BestMetricState`), so a resumed run replaces ``model.pt`` only by a better one.
        weight_average: the ``EMAHandler`` of the weights, or None when averaging is off (``"averaged_model"``, and
            its momentum warm-up's position, ``"average_warmup"``, :class:`AverageWarmupState`).
        amp: mixed precision is on, so the loss scale is kept too (``"grad_scaler"``, :class:`GradScalerState`).
    """
    objects = {
        "model": network,
        "optimizer": optimizer,
        "lr_scheduler": lr_scheduler,
        "trainer": trainer,
        "best_metric": BestMetricState(evaluator, best_model_saver),
    }
    if weight_average is not None:
        objects["averaged_model"] = weight_average.ema_model
        objects["average_warmup"] = AverageWarmupState(weight_average)
    if amp:
        objects["grad_scaler"] = GradScalerState(trainer)
    return objects


def resume_path(resume: bool | str, folder: str | Path) -> str | None:
    """The checkpoint a run resumes from: the newest complete one in ``folder`` when the flag ``resume`` is true.

    train.json evaluates it in ``initialize``, so a bad ``--resume`` value or a folder without checkpoints stops
    the run before the trainer (and its TensorBoard files) exist.

    Returns:
        the checkpoint's path, or None when not resuming.
    """
    return latest_checkpoint(folder) if flag(resume, "resume") else None


class TrainingCheckpoint:
    """Writes a resume checkpoint after every epoch and, when resuming, restores the given one first.

    Attach it to the trainer after the trainer is built: the checkpoint holds the trainer's own state, so it
    cannot be one of the trainer's handlers.

    Args:
        folder: where ``checkpoint_epoch=N.pt`` files go (``output_dir``).
        objects: what they hold, see :func:`checkpoint_objects`.
        resume_from: the checkpoint to restore when training starts (:func:`resume_path`), or None.
        save: write checkpoints (False on all but the first process of a multi-GPU run).
        map_location: device the restored tensors go to.
        n_saved: how many of the latest checkpoints to keep.
    """

    def __init__(
        self,
        folder: str | Path,
        objects: dict,
        resume_from: str | Path | None = None,
        save: bool = True,
        map_location: torch.device | str | None = None,
        n_saved: int = 2,
    ) -> None:
        self.loader = self.saver = None
        if resume_from is not None:
            _check_resumable(Path(resume_from), objects)
            self.loader = CheckpointLoader(str(resume_from), load_dict=objects, map_location=map_location)
        if save:
            self.saver = CheckpointSaver(str(folder), save_dict=objects, save_interval=1, n_saved=n_saved)

    def attach(self, trainer: Engine) -> None:
        for handler in (self.loader, self.saver):
            if handler is not None:
                handler.attach(trainer)


def _check_resumable(path: Path, objects: dict) -> None:
    """Refuses, naming the file, a checkpoint that lacks some of ``objects`` (another bundle version or settings)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # its keys; tensors stay on disk
    except Exception as error:
        raise InputError(f"{path}: cannot be read as a checkpoint ({type(error).__name__}: {error})") from error
    missing = [name for name in objects if name not in saved]
    if missing:
        raise InputError(
            f"{path}: holds no {', '.join(missing)}, so this run cannot continue it exactly (it was written by "
            "another bundle version, or with other --ema_momentum or --amp settings); resume with the settings "
            "it was written with, or start afresh with --resume false"
        )


class EpochSeeds:
    """Seeds every random generator of training at the start of each epoch, from the seed, the rank and the epoch.

    A resumed run then draws the same patches, augmentations and batch order in each epoch as the uninterrupted
    run, so a run resumed after any epoch ends bitwise equal to one never stopped (on the CPU;
    tests/test_configs.py). Reseeded: Python's, NumPy's and torch's generators (the sampler's order and the
    loader workers' seeds are drawn from torch's) and the random transforms of ``dataset`` in this process (a
    loader with ``num_workers=0``). Loader workers must start afresh each epoch (``persistent_workers=False``):
    a persistent worker's transforms would go on from the epoch before, which no checkpoint holds.

    Args:
        seed: the run's seed.
        dataset: the training dataset, whose random transforms are reseeded (None: leave them).
    """

    def __init__(self, seed: int, dataset=None) -> None:
        self.seed, self.dataset = int(seed), dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def epoch_seed(self, epoch: int) -> int:
        """The seed of ``epoch`` in this process (independent streams for each seed, rank and epoch)."""
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return int(np.random.SeedSequence([self.seed, rank, epoch]).generate_state(1)[0])

    def __call__(self, engine: Engine) -> None:
        seed = self.epoch_seed(engine.state.epoch)
        manual_seed(seed)  # random, numpy, torch (and every CUDA device)
        if self.dataset is not None:
            set_rnd(self.dataset, seed)


def _state_mismatch(expected: dict, found: dict) -> str:
    """What keeps ``found`` from loading into a network whose state dict is ``expected``; empty if nothing.

    Checked before loading because ``load_state_dict`` copies the tensors that fit before it raises for the rest.
    """

    def listed(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    resized = [
        f"{name} {tuple(found[name].shape)} instead of {tuple(value.shape)}"
        for name, value in expected.items()
        if name in found and found[name].shape != value.shape
    ]
    parts = [
        f"{label}: {listed(names)}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("size mismatch", resized))
        if names
    ]
    return "; ".join(parts)


def _channels_hint(expected: dict, found: dict) -> str:
    """Where the first and last layers of a 2D convolutional network disagree on their channels, what the weights
    were trained for."""
    hints = []
    first, last = next(iter(expected)), next(reversed(expected))
    if expected[first].ndim != 4:
        return ""
    if first in found and found[first].ndim == 4 and found[first].shape[1] != expected[first].shape[1]:
        sections = found[first].shape[1]
        hints.append(f"the weights take {sections} sections: --section_context {(sections - 1) // 2}")
    if last in found and found[last].ndim and found[last].shape[0] != expected[last].shape[0]:
        outputs = found[last].shape[0]
        overlay = {1: "leave out configs/affinities.json and configs/objects.json", 2: "add configs/objects.json"}
        overlay = overlay.get(outputs, "add configs/affinities.json")
        hints.append(f"the weights give {outputs} output channels: {overlay}")
    return "".join(f"; {hint}" for hint in hints)


def read_state_dict(path: str | Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A model file's state dict, plain or under a ``"model"`` key, never unpickled as arbitrary objects.

    Raises:
        InputError: naming the file, when it is missing, is not PyTorch weights or is not a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weights file not found; train the bundle first or pass --model_path")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        raise InputError(f"{path}: cannot be read as PyTorch weights ({type(error).__name__}: {error})") from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise InputError(f"{path}: is not a state dict of tensors (torch.save(network.state_dict(), path) writes one)")
    return state


def load_weights(network: torch.nn.Module, path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Load a model file (:func:`read_state_dict`) into ``network``, strictly.

    Raises:
        InputError: naming the file, when it is missing, is not PyTorch weights, holds NaN or infinite values, or
            does not fit ``network`` (missing, unexpected or differently shaped tensors: never a partial load).
    """
    state = read_state_dict(path, device)
    broken = [name for name, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise InputError(f"{path}: weights hold NaN or infinite values ({', '.join(broken[:3])})")
    problem = _state_mismatch(network.state_dict(), state)
    if problem:
        hint = _channels_hint(network.state_dict(), state)
        raise InputError(f"{path}: weights do not fit the configured network_def ({problem}){hint}; nothing was loaded")
    network.load_state_dict(state, strict=True)
    return network
