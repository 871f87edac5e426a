"""Weight averaging for training: an exponential moving average of the weights that starts from the loaded ones."""

from __future__ import annotations

from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler

__all__ = ["WeightAverage"]


class WeightAverage(EMAHandler):
    """Ignite's ``EMAHandler`` whose average starts from the network's weights when training starts.

    ``EMAHandler`` copies the network when it is built, before a checkpoint loaded at ``Events.STARTED`` fills the
    network (such as the pretrained-weights ``CheckpointLoader`` MONAI Label puts first in ``train#handlers``);
    the average would then begin at the random initialisation. This handler copies the network again at
    ``STARTED``, after every handler attached before it, unless a resume checkpoint has already restored the
    trainer's progress (and with it the saved average); a resume that runs after the copy overwrites it with the
    saved average. So the average is right whichever way round it and a resume
    (:class:`scripts.checkpoints.TrainingCheckpoint`) are attached.

    Arguments are ``EMAHandler``'s: ``model`` (the trained network), ``momentum``, ``momentum_warmup``,
    ``warmup_iters``.
    """

    def attach(self, engine: Engine, *args, **kwargs) -> None:
        super().attach(engine, *args, **kwargs)
        engine.add_event_handler(Events.STARTED, self._start_from_network)

    def _start_from_network(self, engine: Engine) -> None:
        if engine.state.iteration == 0:  # a fresh start, not a resumed run
            self.ema_model.load_state_dict(self.model.state_dict())
