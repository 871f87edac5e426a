"""scripts.progress.TrainingProgress on tiny ignite engines: its one line per epoch and the engines' quiet epochs.

The real training command's log (one line per epoch when the output is not a terminal) is checked in
tests/test_configs.py.
"""

import logging
import re

import pytest
import torch
from ignite.engine import Engine, Events

from scripts.progress import TrainingProgress


class Trainer(Engine):  # own logger name (ignite.engine.engine.Trainer), so the tests' filters touch nothing else
    pass


class Evaluator(Engine):
    pass


@pytest.fixture
def engines(caplog):
    """A trainer of 3 epochs of 2 iterations (losses 1, 2, ...) with an optimizer, and an evaluator whose scores
    a handler sets every ``validate_every``-th epoch, as the ValidationHandler runs it."""
    caplog.set_level(logging.INFO)

    def make(validate_every: int = 1, fail_at_epoch: int | None = None):
        def step(engine, batch):
            if engine.state.epoch == fail_at_epoch:
                raise RuntimeError("broken batch")
            return [{"loss": torch.tensor(float(engine.state.iteration))}]

        trainer, evaluator = Trainer(step), Evaluator(lambda engine, batch: None)
        trainer.optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
        evaluator.state.best_metric, evaluator.state.best_metric_epoch = -1.0, -1

        @trainer.on(Events.EPOCH_COMPLETED(every=validate_every))
        def validate(engine):
            evaluator.state.epoch = engine.state.epoch
            score = [0.7, 0.9, 0.8][engine.state.epoch - 1]
            evaluator.state.metrics = {"val_dice": torch.tensor(0.5), "val_map": torch.ones(2), "val_v_rand": score}
            if score > evaluator.state.best_metric:
                evaluator.state.best_metric, evaluator.state.best_metric_epoch = score, engine.state.epoch
            engine.logger.info("Got new best metric")  # what MONAI's engines log at the end of an epoch
            engine.logger.warning("a warning within the epoch")

        return trainer, evaluator

    yield make
    for logger in (
        logging.getLogger("ignite.engine.engine.Trainer"),
        logging.getLogger("ignite.engine.engine.Evaluator"),
    ):
        for added in [f for f in logger.filters if type(f).__name__ == "_QuietWhileTraining"]:
            logger.removeFilter(added)


def _messages(caplog, logger: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger]


def test_one_line_per_epoch_with_loss_every_validation_score_learning_rate_and_eta(engines, caplog):
    trainer, evaluator = engines()
    TrainingProgress("val_v_rand", evaluator).attach(trainer)
    trainer.run([0, 0], max_epochs=3)
    lines = _messages(caplog, "TrainingProgress")
    assert len(lines) == 3
    pattern = (
        r"epoch {epoch}/3 \| loss {loss} \| val_v_rand {score} \(best {best} at epoch {best_epoch}\), "
        r"val_dice 0\.5000 \| lr 1\.00e-02 \| elapsed \d+\.\d min, ETA \d+\.\d min"
    )
    expected = [("1", "1.5000", "0.7000", "0.7000", 1), ("2", "3.5000", "0.9000", "0.9000", 2)]
    expected.append(("3", "5.5000", "0.8000", "0.9000", 2))  # the key metric first; the 2-value map is left out
    for line, (epoch, loss, score, best, best_epoch) in zip(lines, expected, strict=True):
        assert re.fullmatch(
            pattern.format(epoch=epoch, loss=re.escape(loss), score=re.escape(score), best=re.escape(best),
                           best_epoch=best_epoch), line,
        ), line  # fmt: skip


def test_epochs_without_a_validation_show_no_scores(engines, caplog):
    trainer, evaluator = engines(validate_every=2)
    TrainingProgress("val_v_rand", evaluator).attach(trainer)
    trainer.run([0, 0], max_epochs=3)
    lines = _messages(caplog, "TrainingProgress")
    assert ["val_v_rand" in line for line in lines] == [False, True, False]
    assert lines[0].startswith("epoch 1/3 | loss 1.5000 | lr 1.00e-02 | elapsed ")


def test_the_engines_own_info_lines_are_dropped_while_epochs_run(engines, caplog):
    trainer, evaluator = engines()
    TrainingProgress("val_v_rand", evaluator).attach(trainer)
    trainer.add_event_handler(Events.COMPLETED, lambda engine: engine.logger.info("saved the final model"))
    trainer.run([0, 0], max_epochs=3)
    trainer_lines = _messages(caplog, "ignite.engine.engine.Trainer")
    assert not any("Epoch[" in line or "Got new best metric" in line for line in trainer_lines)
    assert trainer_lines.count("a warning within the epoch") == 3  # warnings pass
    assert trainer_lines[0].startswith("Engine run") and trainer_lines[-1].startswith("Engine run finished")
    assert "saved the final model" in trainer_lines  # a later handler's line at the run's end
    trainer.logger.info("after training")  # the quiet ends with the run
    evaluator.logger.info("evaluator after training")
    assert "after training" in _messages(caplog, "ignite.engine.engine.Trainer")
    assert "evaluator after training" in _messages(caplog, "ignite.engine.engine.Evaluator")


def test_an_exception_ends_the_quiet(engines, caplog):
    trainer, evaluator = engines(fail_at_epoch=2)
    TrainingProgress("val_v_rand", evaluator).attach(trainer)
    with pytest.raises(RuntimeError, match="broken batch"):
        trainer.run([0, 0], max_epochs=3)
    assert any("broken batch" in line for line in _messages(caplog, "ignite.engine.engine.Trainer"))
    trainer.logger.info("after the failure")
    assert "after the failure" in _messages(caplog, "ignite.engine.engine.Trainer")


def test_quiet_engines_false_keeps_the_engines_lines(engines, caplog):
    trainer, evaluator = engines()
    TrainingProgress("val_v_rand", evaluator, quiet_engines=False).attach(trainer)
    trainer.run([0, 0], max_epochs=3)
    trainer_lines = _messages(caplog, "ignite.engine.engine.Trainer")
    assert sum(line.startswith("Epoch[") for line in trainer_lines) == 3
    assert trainer_lines.count("Got new best metric") == 3
