"""Run-level progress of training: one log line per epoch."""

from __future__ import annotations

import logging
import numbers
import time

import torch
from ignite.engine import Engine, Events

__all__ = ["TrainingProgress"]


class _QuietWhileTraining(logging.Filter):
    """Drops INFO (and lower) records while ``active``; warnings and errors always pass.

    An error ends the quiet: ignite logs one when a run dies of an exception, and no ``COMPLETED`` follows.
    """

    def __init__(self) -> None:
        super().__init__()
        self.active = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.active = False
        return not self.active or record.levelno > logging.INFO


def _scalar(value) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, numbers.Real):
        return float(value)
    return None


class TrainingProgress:
    """Logs one line per epoch: mean loss, the validation scores, learning rate, elapsed time and ETA.

    ``epoch 3/45 | loss 0.7810 | val_v_rand 0.9137 (best 0.9137 at epoch 3), val_v_info 0.9502, ... | lr 9.81e-04 |
    elapsed 3.8 min, ETA 30.6 min``: the key metric first with the best score so far, then the evaluator's other
    scalar metrics. Attach after the ``ValidationHandler`` so the line shows the validation that just ran; the
    scores are only shown on epochs that ran a validation.

    With ``quiet_engines`` the trainer's and the evaluator's own INFO lines (ignite's "Epoch[N] Complete", the
    validation run's start and end, MONAI's "Got new best metric", "Saved checkpoint at epoch") are dropped from
    the first epoch's start until training completes, so a log has this one line per epoch. Warnings and errors
    pass, and so do the lines before the first epoch (e.g. the checkpoint a resumed run restored) and those of
    the run's end (its total time, and what handlers attached after this one log on ``COMPLETED``).

    Args:
        key_metric: name of the evaluator's key metric to report (e.g. ``"val_v_rand"``).
        evaluator: the validation engine whose metrics are reported.
        name: logger name.
        quiet_engines: drop the engines' own INFO lines while epochs run.
    """

    def __init__(
        self, key_metric: str, evaluator: Engine, name: str = "TrainingProgress", quiet_engines: bool = True
    ) -> None:
        self.key_metric = key_metric
        self.evaluator = evaluator
        self.logger = logging.getLogger(name)
        self.quiet_engines = quiet_engines
        self._quiet = _QuietWhileTraining()
        self._start: float | None = None
        self._first_epoch = 0
        self._losses: list[float] = []
        self._lr: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        if self.quiet_engines:
            for logger in {engine.logger, self.evaluator.logger}:
                if self._quiet not in logger.filters:
                    logger.addFilter(self._quiet)
            engine.add_event_handler(Events.COMPLETED, self._training_ended)
            engine.add_event_handler(Events.TERMINATE, self._training_ended)

    def _training_ended(self, _engine: Engine) -> None:
        self._quiet.active = False

    def _epoch_started(self, engine: Engine) -> None:
        self._quiet.active = self.quiet_engines
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

    def _validation(self) -> str | None:
        """The scores of the validation that ran this epoch, key metric first; None without one."""
        state = self.evaluator.state
        if self.key_metric not in state.metrics:
            return None
        scores = [
            f"{self.key_metric} {_scalar(state.metrics[self.key_metric]):.4f} "
            f"(best {state.best_metric:.4f} at epoch {state.best_metric_epoch})"
        ]
        for name, value in state.metrics.items():
            if name != self.key_metric and _scalar(value) is not None:
                scores.append(f"{name} {_scalar(value):.4f}")
        return ", ".join(scores)

    def _epoch_completed(self, engine: Engine) -> None:
        state = engine.state
        elapsed = time.perf_counter() - (self._start or time.perf_counter())
        remaining = elapsed / max(state.epoch - self._first_epoch, 1) * (state.max_epochs - state.epoch)
        parts = [f"epoch {state.epoch}/{state.max_epochs}"]
        if self._losses:
            parts.append(f"loss {sum(self._losses) / len(self._losses):.4f}")
        validation = self._validation() if self.evaluator.state.epoch == state.epoch else None
        if validation is not None:
            parts.append(validation)
        if self._lr is not None:
            parts.append(f"lr {self._lr:.2e}")
        parts.append(f"elapsed {elapsed / 60:.1f} min, ETA {remaining / 60:.1f} min")
        self.logger.info(" | ".join(parts))
