"""Run-level progress of training: one log line per epoch."""

from __future__ import annotations

import logging
import time

from ignite.engine import Engine, Events

__all__ = ["TrainingProgress"]


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
