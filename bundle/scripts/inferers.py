"""The inferers of the configs: MONAI's sliding window fitted to images smaller than its window, and test-time
augmentation over the 8 symmetries of the square with the switch that turns it on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SlidingWindowInferer

from .errors import InputError
from .flags import flag

__all__ = ["FittedWindowInferer", "DihedralAverageInferer", "with_test_time_augmentation"]


class FittedWindowInferer(SlidingWindowInferer):
    """MONAI's sliding window, with the window fitted to an image shorter than it: the network never sees padding
    that is not the image itself.

    MONAI pads an image axis shorter than the window with zeros up to the window. A network that normalises each
    window by its own statistics (instance norm, as the configs' U-Net) then normalises the image together with
    a band of zeros, and its output on the image collapses. Here the window along such an axis shrinks to the
    image, rounded up to ``size_multiple`` (the network's total downsampling) and to at least two multiples (two
    pixels at the deepest level, for its normalisation); the few pixels of rounding are the image mirrored
    (``padding_mode="reflect"``). Axes at least as long as the window are windowed as by MONAI, so a region of a
    larger image (:func:`scripts.blockwise.prediction_region`) places exactly the windows it has in the image.

    Args:
        roi_size: the window (height, width), each a multiple of ``size_multiple``.
        size_multiple: the input sizes the network takes are multiples of this (:func:`scripts.networks.size_multiple`).
        kwargs: the other arguments of ``SlidingWindowInferer`` (``sw_batch_size``, ``overlap``, ``mode``, ...),
            except ``padding_mode`` and ``cval``.

    Inputs ``(B, C, H, W)`` with ``H, W >= size_multiple``; outputs the network's ``(B, C', H, W)``.
    """

    def __init__(self, roi_size: Sequence[int] | int, size_multiple: int = 1, **kwargs: Any) -> None:
        for fixed in ("padding_mode", "cval"):
            if fixed in kwargs:
                raise TypeError(f"FittedWindowInferer pads by reflection only; {fixed!r} is not an argument")
        super().__init__(roi_size, padding_mode="reflect", **kwargs)
        self.size_multiple = int(size_multiple)
        roi = [int(side) for side in roi_size] if isinstance(roi_size, Sequence) else [int(roi_size)] * 2
        multiple = self.size_multiple
        if len(roi) != 2 or multiple < 1 or any(side < 2 * multiple or side % multiple for side in roi):
            raise InputError(
                f"--inference_roi {roi}: must be 2 sides, each a multiple of {multiple} (the sizes the network "
                f"takes) and at least {2 * multiple}"
            )
        self.roi = tuple(roi)

    def window(self, image_size: Sequence[int]) -> tuple[int, int]:
        """The window for an image of ``image_size`` (H, W): the configured one, with each side longer than the
        image fitted to it (see the class)."""
        if len(image_size) != 2 or min(image_size) < self.size_multiple:
            raise InputError(
                f"an image of {' x '.join(str(int(s)) for s in image_size)} pixels: this network needs a 2D image "
                f"of at least {self.size_multiple} pixels a side"
            )
        multiple = self.size_multiple
        return tuple(
            min(side, max(2 * multiple, -(-int(size) // multiple) * multiple))
            for size, side in zip(image_size, self.roi, strict=True)
        )

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        roi = self.window(inputs.shape[2:])
        if roi == self.roi:
            return super().__call__(inputs, network, *args, **kwargs)
        fitted = SlidingWindowInferer(
            roi,
            self.sw_batch_size,
            self.overlap,
            self.mode,
            self.sigma_scale,
            self.padding_mode,
            self.cval,
            self.sw_device,
            self.device,
            self.progress,
            cpu_thresh=self.cpu_thresh,
            buffer_steps=self.buffer_steps,
            buffer_dim=self.buffer_dim,
            with_coord=self.with_coord,
        )
        return fitted(inputs, network, *args, **kwargs)


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
        inferer: the plain inferer, e.g. the configs' :class:`FittedWindowInferer`.
        enabled: the ``test_time_augmentation`` flag (true/false/1/0/yes/no, see :func:`scripts.flags.flag`).
    """
    return DihedralAverageInferer(inferer) if flag(enabled, "test_time_augmentation") else inferer
