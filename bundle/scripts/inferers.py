"""Test-time augmentation over the 8 symmetries of the square, as a MONAI inferer, and the switch that turns it on."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer

from .flags import flag

__all__ = ["DihedralAverageInferer", "with_test_time_augmentation"]


class DihedralAverageInferer(Inferer):
    """Runs ``inferer`` on the 8 flips/quarter-turns of the input, undoes each, and averages the outputs.

    EM sections have no preferred orientation, so the network should give the same answer for each; the
    average removes orientation-dependent errors (a broken membrane seen in one orientation is often
    closed in the others) at 8 times the cost.

    Args:
        inferer: the inferer to wrap, e.g. a ``SlidingWindowInferer``.

    Inputs ``(B, C, H, W)``; outputs the wrapped inferer's ``(B, C', H, W)`` averaged over the 8 views.
    """

    views = 8  # 4 quarter turns, each also flipped

    def __init__(self, inferer: Inferer) -> None:
        super().__init__()
        self.inferer = inferer

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        total = None
        for quarter_turns in range(4):
            for flip in (False, True):
                view = torch.rot90(inputs, quarter_turns, dims=(-2, -1))
                view = view.flip(-1) if flip else view
                output = self.inferer(view, network, *args, **kwargs)
                output = output.flip(-1) if flip else output
                output = torch.rot90(output, -quarter_turns, dims=(-2, -1))
                total = output if total is None else total + output
        return total / self.views


def with_test_time_augmentation(inferer: Inferer, enabled: bool | str) -> Inferer:
    """``inferer`` wrapped in :class:`DihedralAverageInferer` when the flag ``enabled`` is true, else ``inferer``.

    Args:
        inferer: the plain inferer, e.g. the configs' ``SlidingWindowInferer``.
        enabled: the ``test_time_augmentation`` flag (true/false/1/0/yes/no, see :func:`scripts.flags.flag`).
    """
    return DihedralAverageInferer(inferer) if flag(enabled, "test_time_augmentation") else inferer
