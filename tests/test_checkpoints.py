"""Resume checkpoints: lookup, saved state, the resume-and-save handler, and strict weight loading."""

import os
import random
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import CheckpointSaver
from monai.transforms import RandGaussianNoise

from scripts.averaging import WeightAverage
from scripts.checkpoints import (
    AverageWarmupState,
    BestMetricState,
    EpochSeeds,
    GradScalerState,
    TrainingCheckpoint,
    checkpoint_objects,
    latest_checkpoint,
    load_weights,
    resume_path,
)
from scripts.errors import InputError


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
    with pytest.raises(InputError, match="no complete checkpoint_epoch=N.pt to resume from"):
        latest_checkpoint(tmp_path)


def test_load_weights_accepts_plain_and_wrapped_state_dicts(tmp_path):
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": source.state_dict()}, tmp_path / "wrapped.pt")
    for name in ("plain.pt", "wrapped.pt"):
        load_weights(target, tmp_path / name)
        assert torch.equal(target.weight, source.weight)


def _other_shape(path):
    torch.save(torch.nn.Linear(4, 4).state_dict(), path)


def _extra_tensor(path):
    torch.save({**torch.nn.Linear(3, 2).state_dict(), "extra": torch.zeros(1)}, path)


def _nan_weights(path):
    state = torch.nn.Linear(3, 2).state_dict()
    state["weight"][0, 0] = float("nan")
    torch.save(state, path)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda path: None, "weights file not found"),
        (lambda path: path.write_bytes(b"not a checkpoint"), "cannot be read as PyTorch weights"),
        (lambda path: torch.save([torch.zeros(1)], path), "is not a state dict of tensors"),
        (_other_shape, r"do not fit .* \(size mismatch: weight \(4, 4\) instead of \(2, 3\)"),
        (_extra_tensor, "do not fit the configured network_def \\(unexpected: extra\\); nothing was loaded"),
        (_nan_weights, "NaN or infinite values \\(weight\\)"),
    ],
    ids=["missing", "not-torch", "not-a-state-dict", "wrong-shape", "extra-tensor", "nan"],
)
def test_load_weights_errors_name_the_file_and_never_load_partly(tmp_path, write, message):
    path = tmp_path / "model.pt"
    write(path)
    network = torch.nn.Linear(3, 2)
    before = {name: value.clone() for name, value in network.state_dict().items()}
    with pytest.raises(InputError, match=message) as error:
        load_weights(network, path)
    assert str(path) in str(error.value)
    assert all(torch.equal(before[name], value) for name, value in network.state_dict().items())


@pytest.mark.parametrize(
    ("trained", "configured", "hint"),
    [
        ((3, 2), (1, 2), "; the weights take 3 sections: --section_context 1; nothing was loaded"),
        ((1, 8), (1, 2), "; the weights give 8 output channels: add configs/affinities.json; nothing"),
        ((1, 2), (1, 1), "; the weights give 2 output channels: add configs/objects.json; nothing"),
        ((1, 1), (1, 2), "output channels: leave out configs/affinities.json and configs/objects.json"),
    ],
)
def test_weights_of_another_section_context_or_target_say_so(tmp_path, trained, configured, hint):
    torch.save(torch.nn.Conv2d(*trained, 3).state_dict(), tmp_path / "model.pt")
    with pytest.raises(InputError, match=re.escape(hint)):
        load_weights(torch.nn.Conv2d(*configured, 3), tmp_path / "model.pt")


def _training_objects(tmp_path, amp=False, weight_average=None):
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    trainer, evaluator = Engine(lambda engine, batch: None), Engine(lambda engine, batch: None)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = -1, -1
    saver = CheckpointSaver(str(tmp_path / "models"), {"model": network}, save_key_metric=True)
    return checkpoint_objects(network, optimizer, scheduler, trainer, evaluator, saver, weight_average, amp), trainer


def test_checkpoint_objects_hold_the_average_and_scaler_only_when_in_use(tmp_path):
    objects, trainer = _training_objects(tmp_path)
    assert set(objects) == {"model", "optimizer", "lr_scheduler", "trainer", "best_metric"}
    average = SimpleNamespace(ema_model=torch.nn.Linear(2, 1))
    objects, trainer = _training_objects(tmp_path, amp=True, weight_average=average)
    assert objects["averaged_model"] is average.ema_model and objects["grad_scaler"].trainer is trainer
    assert objects["average_warmup"].weight_average is average


def test_the_average_warmup_position_round_trips():
    def attached_average():
        average = WeightAverage(torch.nn.Linear(2, 1), momentum=0.01, momentum_warmup=0.1, warmup_iters=10)
        engine = Engine(lambda engine, batch: None)
        average.attach(engine)
        return average, engine

    average, engine = attached_average()
    engine.run([0, 1, 2], max_epochs=2)
    state = AverageWarmupState(average).state_dict()
    assert state == {"event_index": 6}
    fresh, _ = attached_average()
    AverageWarmupState(fresh).load_state_dict(state)
    assert fresh.momentum_scheduler.event_index == 6


def test_a_checkpoint_without_every_object_is_refused_before_training(tmp_path):
    objects, trainer = _training_objects(tmp_path)
    TrainingCheckpoint(tmp_path / "run", objects).attach(trainer)
    trainer.run([0], max_epochs=1)
    average = SimpleNamespace(ema_model=torch.nn.Linear(2, 1))
    objects, _ = _training_objects(tmp_path, weight_average=average)  # a run with averaging on
    path = tmp_path / "run" / "checkpoint_epoch=1.pt"
    with pytest.raises(InputError, match=rf"^{path}: holds no averaged_model, average_warmup, so this run cannot"):
        TrainingCheckpoint(tmp_path / "run", objects, resume_from=path)


def _draws(seeds: EpochSeeds, transform, epoch: int) -> list:
    seeds(SimpleNamespace(state=SimpleNamespace(epoch=epoch)))
    noise = transform(np.zeros((1, 4, 4), np.float32))
    return [random.random(), float(np.random.rand()), float(torch.rand(1)), np.asarray(noise).tolist()]


def test_each_epoch_draws_the_same_numbers_whatever_came_before():
    transform = RandGaussianNoise(prob=1.0)
    seeds = EpochSeeds(seed=0, dataset=SimpleNamespace(transform=transform))
    first = _draws(seeds, transform, 3)
    _draws(seeds, transform, 1), torch.rand(5), np.random.rand(5)  # other epochs and draws in between
    assert _draws(seeds, transform, 3) == first
    assert _draws(seeds, transform, 4) != first
    assert _draws(EpochSeeds(seed=1, dataset=SimpleNamespace(transform=transform)), transform, 3) != first
    assert EpochSeeds(seed=1).epoch_seed(2) != EpochSeeds(seed=0).epoch_seed(3)  # no shifted copies across seeds


def test_training_checkpoint_saves_every_epoch_and_resumes_from_the_newest(tmp_path):
    objects, trainer = _training_objects(tmp_path)
    TrainingCheckpoint(tmp_path / "run", objects).attach(trainer)
    trainer.run([0], max_epochs=3)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]

    objects, trainer = _training_objects(tmp_path)
    resume_from = resume_path("yes", tmp_path / "run")
    assert resume_from.endswith("checkpoint_epoch=3.pt")
    resumed = TrainingCheckpoint(tmp_path / "run", objects, resume_from=resume_from, save=False)
    assert resumed.loader is not None and resumed.saver is None
    resumed.attach(trainer)
    trainer.run([0], max_epochs=4)
    assert trainer.state.epoch == 4 and trainer.state.iteration == 4  # continued after epoch 3


@pytest.mark.parametrize("resume", [False, "0", "no", 0])
def test_without_resume_nothing_is_looked_for_or_loaded(tmp_path, resume):
    assert resume_path(resume, tmp_path / "nowhere") is None
    objects, _ = _training_objects(tmp_path)
    assert TrainingCheckpoint(tmp_path / "empty", objects, resume_from=None).loader is None


def test_resume_rejects_an_unknown_value_and_a_folder_without_checkpoints(tmp_path):
    with pytest.raises(InputError, match="--resume: 'maybe' is not a boolean"):
        resume_path("maybe", tmp_path)
    with pytest.raises(InputError, match="no complete checkpoint_epoch=N.pt"):
        resume_path(True, tmp_path)
