"""The weight average starts from the weights loaded when training starts, and a resume overrides it."""

import torch
from ignite.engine import Engine, Events

from scripts.averaging import WeightAverage


def _pretrained_loader(network, state):
    return lambda _: network.load_state_dict(state)  # what a CheckpointLoader attached at STARTED does


def test_weight_average_starts_from_weights_loaded_when_training_starts():
    network = torch.nn.Linear(2, 1)
    average = WeightAverage(network, momentum=0.5)  # copies the network as it is now (the random initialisation)
    pretrained = {"weight": torch.full((1, 2), 3.0), "bias": torch.full((1,), -1.0)}
    trainer = Engine(lambda engine, batch: None)
    trainer.add_event_handler(Events.STARTED, _pretrained_loader(network, pretrained))  # MONAI Label's, first
    average.attach(trainer)
    trainer.run([0, 1], max_epochs=1)
    for name, value in average.ema_model.state_dict().items():
        torch.testing.assert_close(value, pretrained[name])


def test_a_resume_attached_afterwards_restores_the_saved_average():
    network = torch.nn.Linear(2, 1)
    average = WeightAverage(network, momentum=0.5)
    saved_average = {"weight": torch.full((1, 2), 7.0), "bias": torch.full((1,), 2.0)}
    trainer = Engine(lambda engine, batch: None)
    average.attach(trainer)
    trainer.add_event_handler(Events.STARTED, _pretrained_loader(average.ema_model, saved_average))  # the resume
    trainer.run([0], max_epochs=1)  # the network does not change, so neither does the average: 0.5 of each
    for name, value in average.ema_model.state_dict().items():
        torch.testing.assert_close(value, (saved_average[name] + network.state_dict()[name]) / 2)


def test_a_resume_attached_before_is_not_overwritten_by_the_copy():
    network = torch.nn.Linear(2, 1)
    average = WeightAverage(network, momentum=0.5)
    saved_average = {"weight": torch.full((1, 2), 7.0), "bias": torch.full((1,), 2.0)}
    trainer = Engine(lambda engine, batch: None)

    def resume(engine):  # restores the trainer's progress and the saved average, as a CheckpointLoader does
        engine.state.iteration, engine.state.epoch = 1, 1
        average.ema_model.load_state_dict(saved_average)

    trainer.add_event_handler(Events.STARTED, resume)
    average.attach(trainer)
    trainer.run([0], max_epochs=2)  # one more epoch of one iteration after the restored one
    for name, value in average.ema_model.state_dict().items():
        torch.testing.assert_close(value, (saved_average[name] + network.state_dict()[name]) / 2)
