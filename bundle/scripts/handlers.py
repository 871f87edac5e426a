"""Small Ignite handlers and helpers the MONAI handler set lacks: run-level progress, slice collection,
TIFF stack writing, resume-checkpoint lookup, weight averaging that starts from loaded weights and weight loading
with clear errors."""

from __future__ import annotations

import io
import logging
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import tifffile
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler

from .report import atomic_write

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
    raise FileNotFoundError(
        f"{folder}: no complete checkpoint_epoch=N.pt to resume from; run training without --resume first "
        "or point --output_dir at the interrupted run's folder"
    )


def attach_weight_average(ema: EMAHandler | None, trainer: Engine) -> None:
    """Attach ``ema`` to ``trainer`` so the average starts from the network's weights when training starts.

    ``EMAHandler`` copies the network when it is built, before a checkpoint loaded at ``Events.STARTED`` (such as
    the pretrained-weights ``CheckpointLoader`` MONAI Label puts first in ``train#handlers``) fills the network;
    without this the average would begin at the random initialisation. A resume ``CheckpointLoader`` attached
    after this call still restores the saved average. ``None`` (averaging disabled) does nothing.
    """
    if ema is None:
        return
    ema.attach(trainer)
    trainer.add_event_handler(Events.STARTED, lambda _: ema.ema_model.load_state_dict(ema.model.state_dict()))


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


class TrainingProgress:
    """Logs one line per epoch: mean loss, learning rate, latest and best key metric, elapsed time and ETA.

    Attach after the ``ValidationHandler`` so the line shows the validation that just ran; the metric is
    only shown on epochs that ran a validation.

    Args:
        key_metric: name of the evaluator's key metric to report (e.g. ``"val_v_rand"``).
        evaluator: the validation engine whose metrics are reported.
        name: logger name.
    """

    def __init__(self, key_metric: str, evaluator: Engine, name: str = "TrainingProgress") -> None:
        self.key_metric = key_metric
        self.evaluator = evaluator
        self.logger = logging.getLogger(name)
        self._start: float | None = None
        self._first_epoch = 0
        self._losses: list[float] = []
        self._lr: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine: Engine) -> None:
        if self._start is None:  # first epoch of this process, after any checkpoint was restored
            self._start = time.perf_counter()
            self._first_epoch = engine.state.epoch - 1
        self._losses = []
        optimizer = getattr(engine, "optimizer", None)
        self._lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None

    def _iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, list) and output and "loss" in output[0]:
            self._losses.append(float(output[0]["loss"]))

    def _epoch_completed(self, engine: Engine) -> None:
        state = engine.state
        elapsed = time.perf_counter() - (self._start or time.perf_counter())
        remaining = elapsed / max(state.epoch - self._first_epoch, 1) * (state.max_epochs - state.epoch)
        parts = [f"epoch {state.epoch}/{state.max_epochs}"]
        if self._losses:
            parts.append(f"loss {sum(self._losses) / len(self._losses):.4f}")
        validated = self.evaluator.state.epoch == state.epoch
        if validated and self.key_metric in self.evaluator.state.metrics:
            parts.append(
                f"{self.key_metric} {self.evaluator.state.metrics[self.key_metric]:.4f} "
                f"(best {self.evaluator.state.best_metric:.4f} at epoch {self.evaluator.state.best_metric_epoch})"
            )
        if self._lr is not None:
            parts.append(f"lr {self._lr:.2e}")
        parts.append(f"elapsed {elapsed / 60:.1f} min, ETA {remaining / 60:.1f} min")
        self.logger.info(" | ".join(parts))


def _item_arrays(engine: Engine) -> list[dict]:
    """The current iteration's decollated items as numpy arrays: image, pred and (if present) label, slice."""
    items = []
    for batch_item, output_item in zip(engine.state.batch, engine.state.output, strict=True):
        item = {
            "slice": int(batch_item["slice"]),
            "image": batch_item["image"].detach().cpu().numpy()[0],
            "pred": output_item["pred"].detach().float().cpu().numpy()[0],
        }
        if "label" in batch_item:
            item["label"] = batch_item["label"].detach().cpu().numpy()[0]
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


def load_weights(network: torch.nn.Module, path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Load a ``model.pt`` state dict (plain, or under a ``"model"`` key) into ``network``, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found; train the bundle first or pass --model_path")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: cannot be read as PyTorch weights ({type(error).__name__}: {error})") from error
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit the configured network_def ({error})") from error
    return network


class StackWriter:
    """Writes an inference run's slices as TIFF stacks once the evaluator finishes.

    Files (``<name>`` = the input file's stem or folder name), each written atomically:

    * ``<name>_membrane_probability.tif``: float32 (Z, H, W), membrane probability in [0, 1];
    * ``<name>_segmentation.tif``: uint8 (Z, H, W), 255 = cell interior, 0 = membrane (the labels' convention),
      interior where ``1 - probability > threshold``;
    * with ``challenge_submission=True`` also ``<name>_isbi2012_submission.tif``: float32 interior probability
      ``1 - p``, the map the ISBI 2012 scorer thresholds.

    Args:
        output_dir: folder for the stacks (created when writing).
        name: base name of the files.
        threshold: threshold on the interior map for the segmentation.
        challenge_submission: also write the ISBI 2012 submission stack.
    """

    def __init__(
        self, output_dir: str | Path, name: str, threshold: float = 0.5, challenge_submission: bool = False
    ) -> None:
        self.output_dir = Path(output_dir)
        self.name = name
        self.threshold = threshold
        self.challenge_submission = challenge_submission
        self.collector = SliceCollector()
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        self.collector.attach(engine)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _write(self, engine: Engine) -> None:
        probability = np.stack([item["pred"] for item in self.collector.items]).astype(np.float32)
        stacks = {
            "membrane_probability": probability,
            "segmentation": np.where(1.0 - probability > self.threshold, 255, 0).astype(np.uint8),
        }
        if self.challenge_submission:
            stacks["isbi2012_submission"] = 1.0 - probability
        self.written = []
        for suffix, stack in stacks.items():
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, stack, photometric="minisblack", compression="zlib", metadata={"axes": "ZYX"})
            path = self.output_dir / f"{self.name}_{suffix}.tif"
            atomic_write(path, buffer.getvalue())
            self.written.append(path)
        logging.getLogger("StackWriter").info(
            "wrote %s (%d slices of %dx%d)", ", ".join(str(p) for p in self.written), *probability.shape
        )
