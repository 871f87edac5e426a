"""Resume-checkpoint lookup and weight loading errors (the engines' handlers run in test_configs.py)."""

import os
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from monai.handlers import CheckpointSaver

from scripts.handlers import BestMetricState, GradScalerState, attach_weight_average, latest_checkpoint, load_weights


def test_latest_checkpoint_is_the_newest_complete_one(tmp_path):
    for age, epoch in enumerate((10, 3, 4)):  # an older run reached epoch 10; this run wrote 3, then 4
        path = tmp_path / f"checkpoint_epoch={epoch}.pt"
        torch.save({"epoch": epoch}, path)
        os.utime(path, (1000 + age, 1000 + age))
    torch.save({}, tmp_path / "model.pt")
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=4.pt")
    newest = tmp_path / "checkpoint_epoch=5.pt"
    newest.write_bytes((tmp_path / "checkpoint_epoch=4.pt").read_bytes()[:100])  # cut short by a crash
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=4.pt")


def test_grad_scaler_state_round_trip_and_no_scaler():
    saved = SimpleNamespace(scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    restored = SimpleNamespace(scaler=torch.amp.GradScaler("cpu"))
    state = GradScalerState(saved).state_dict()
    assert state["scale"] == 1024.0
    GradScalerState(restored).load_state_dict(state)
    assert restored.scaler.get_scale() == 1024.0
    without_amp = SimpleNamespace(scaler=None)  # amp off, or before SupervisedTrainer.run() creates the scaler
    assert GradScalerState(without_amp).state_dict() == {}
    GradScalerState(without_amp).load_state_dict(state)


def test_best_metric_state_round_trip(tmp_path):
    def evaluator_and_saver():
        evaluator = Engine(lambda engine, batch: None)
        evaluator.state.best_metric, evaluator.state.best_metric_epoch = -1, -1
        saver = CheckpointSaver(str(tmp_path), {"model": torch.nn.Linear(1, 1)}, save_key_metric=True)
        return evaluator, saver

    evaluator, saver = evaluator_and_saver()
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = 0.93, 7
    saver._key_metric_checkpoint.load_state_dict({"_saved": [(0.93, "model.pt")]})
    state = BestMetricState(evaluator, saver).state_dict()

    restored_evaluator, restored_saver = evaluator_and_saver()
    BestMetricState(restored_evaluator, restored_saver).load_state_dict(state)
    assert (restored_evaluator.state.best_metric, restored_evaluator.state.best_metric_epoch) == (0.93, 7)
    assert restored_saver._key_metric_checkpoint.state_dict() == saver._key_metric_checkpoint.state_dict()


def test_latest_checkpoint_explains_when_there_is_none(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint_epoch=N.pt to resume from"):
        latest_checkpoint(tmp_path)


def test_load_weights_accepts_plain_and_wrapped_state_dicts(tmp_path):
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": source.state_dict()}, tmp_path / "wrapped.pt")
    for name in ("plain.pt", "wrapped.pt"):
        load_weights(target, tmp_path / name)
        assert torch.equal(target.weight, source.weight)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "weights file not found"), (b"not a checkpoint", "cannot be read"), ("other", "do not fit")],
)
def test_load_weights_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "other":
        torch.save(torch.nn.Linear(4, 4).state_dict(), path)
    with pytest.raises((FileNotFoundError, ValueError), match=message) as error:
        load_weights(torch.nn.Linear(3, 2), path)
    assert str(path) in str(error.value)


def test_weight_average_starts_from_weights_loaded_when_training_starts():
    network = torch.nn.Linear(2, 1)
    ema = EMAHandler(network, momentum=0.5)  # copies the network as it is now (the random initialisation)
    pretrained = {"weight": torch.full((1, 2), 3.0), "bias": torch.full((1,), -1.0)}
    trainer = Engine(lambda engine, batch: None)
    trainer.add_event_handler(Events.STARTED, lambda _: network.load_state_dict(pretrained))  # like CheckpointLoader
    attach_weight_average(ema, trainer)
    trainer.run([0, 1], max_epochs=1)
    for name, value in ema.ema_model.state_dict().items():
        torch.testing.assert_close(value, pretrained[name])
