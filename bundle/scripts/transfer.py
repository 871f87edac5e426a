"""Transfer learning: start training from pretrained weights, and treat the encoder apart while it adapts.

train.json's ``--pretrained_path`` loads a weights file of the same network before training
(:func:`load_pretrained`); ``encoder_layers`` (a regular expression over parameter names, set by each network's
config) names the encoder, which ``--freeze_encoder_epochs N`` keeps fixed for the first N epochs
(:class:`FreezeEncoder`) and ``--encoder_lr_scale`` trains at a fraction of the learning rate
(:func:`parameter_groups`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.optimizers import generate_param_groups

from .checkpoints import load_weights
from .errors import InputError
from .flags import number

__all__ = ["load_pretrained", "encoder_parameter_names", "SCHEDULE_FLOOR", "parameter_groups", "FreezeEncoder"]


def load_pretrained(network: torch.nn.Module, path: str | Path | None) -> torch.nn.Module:
    """``network`` with the weights of ``path`` loaded strictly (:func:`scripts.checkpoints.load_weights`: never
    unpickled as objects, never a partial load), or unchanged when ``path`` is None or empty.

    Raises:
        InputError: naming the file, when it is missing, unreadable, or does not fit ``network`` (the first
            mismatched layer with its found and expected shapes).
    """
    if not path:
        return network
    if not Path(path).is_file():
        raise InputError(f"{path}: pretrained weights file not found (--pretrained_path)")
    return load_weights(network, path)


def encoder_parameter_names(network: torch.nn.Module, encoder_layers: str) -> list[str]:
    """The names of ``network``'s parameters that the regular expression ``encoder_layers`` matches at their start.

    Raises:
        InputError: when it matches none or all of them (a pattern written for another network).
    """
    pattern = re.compile(encoder_layers)
    names = [name for name, _ in _unwrapped(network).named_parameters()]
    matched = [name for name in names if pattern.match(name)]
    if not names:
        raise InputError(f"network_def {type(network).__name__}: has no parameters to treat as an encoder")
    if not matched or len(matched) == len(names):
        raise InputError(
            f"encoder_layers {encoder_layers!r} matches {'none' if not matched else 'all'} of the {len(names)} "
            f"parameters of {type(network).__name__} (the first is {names[0]!r}); set it for this network_def"
        )
    return matched


#: train.json's cosine schedule decays every parameter group to the same floor, this fraction of the learning rate
SCHEDULE_FLOOR = 0.01


def parameter_groups(network: torch.nn.Module, encoder_layers: str, learning_rate: float, encoder_lr_scale: float = 1):
    """The optimizer's ``params``: every parameter in one group, or, when ``encoder_lr_scale`` is not 1, the
    parameters outside the encoder in a first group (at the optimizer's ``learning_rate``, the one the log shows)
    and the encoder's in a second at ``encoder_lr_scale * learning_rate`` (MONAI's ``generate_param_groups``).

    Args:
        network: the trained network (or its multi-GPU wrapper).
        encoder_layers: regular expression naming the encoder's parameters (:func:`encoder_parameter_names`).
        learning_rate: the optimizer's learning rate.
        encoder_lr_scale: the encoder's fraction of it, from :data:`SCHEDULE_FLOOR` (below it, the cosine schedule's
            common floor would make the encoder's rate rise) up.

    Returns:
        ``network.parameters()``, or a list of two parameter-group dicts.
    """
    scale = number(encoder_lr_scale, "encoder_lr_scale", low=SCHEDULE_FLOOR)
    if scale == 1:
        return network.parameters()
    names = set(encoder_parameter_names(network, encoder_layers))
    encoder, rest = generate_param_groups(
        _unwrapped(network),
        layer_matches=[lambda named: named[0] in names],
        match_types=["filter"],
        lr_values=[scale * learning_rate],
    )
    return [rest, encoder]


def _unwrapped(network: torch.nn.Module) -> torch.nn.Module:
    """The network inside a multi-GPU ``DistributedDataParallel`` wrapper, whose parameter names it prefixes."""
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


class FreezeEncoder:
    """Keeps the encoder's parameters fixed (no gradient, so the optimizer leaves them) for the first ``epochs``
    epochs, then trains them. Set at the start of every epoch, so a resumed run freezes exactly as an
    uninterrupted one. Normalisation statistics that a layer tracks still update.

    Args:
        network: the trained network.
        encoder_layers: regular expression naming the encoder's parameters (:func:`encoder_parameter_names`).
        epochs: number of epochs the encoder stays fixed.
    """

    def __init__(self, network: torch.nn.Module, encoder_layers: str, epochs: int) -> None:
        if isinstance(network, torch.nn.parallel.DistributedDataParallel):
            raise InputError(
                "--freeze_encoder_epochs: not with multi_gpu_train.json (DistributedDataParallel expects a gradient "
                "for every parameter it was built with); use --encoder_lr_scale instead"
            )
        names = set(encoder_parameter_names(network, encoder_layers))
        self.parameters = [parameter for name, parameter in network.named_parameters() if name in names]
        self.epochs = int(epochs)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        trainable = engine.state.epoch > self.epochs
        for parameter in self.parameters:
            parameter.requires_grad_(trainable)
