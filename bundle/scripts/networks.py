"""SegNet and U-SegNet: encoder-decoder networks that upsample with the encoder's max-pooling indices.

SegNet (Badrinarayanan et al. 2015) has no skip connections: each decoder stage puts its input back at the
positions where the matching encoder stage found its maxima (max unpooling) and fills in with convolutions.
U-SegNet (Kumar et al. 2018) adds one U-Net-style skip, a concatenation at the top resolution level, where
the fine membrane detail lives. Both are TorchScript-scriptable: the pooling and unpooling are functional
calls because an ``nn.MaxUnpool2d`` submodule does not script on torch 2.13.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["SegNet", "USegNet"]


def conv_stack(spatial_dims: int, channels: Sequence[int]) -> nn.Sequential:
    """3x3 convolutions, each followed by batch norm and ReLU, through ``channels[0] -> channels[1] -> ...``.

    (N, channels[0], *S) -> (N, channels[-1], *S).
    """
    return nn.Sequential(
        *(
            Convolution(spatial_dims, c_in, c_out, kernel_size=3, act="relu", norm="batch")
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )
    )


class SegNet(nn.Module):
    """SegNet for 2D or 3D images: VGG-style encoder, index-unpooling decoder, 1x1 per-pixel classifier.

    The defaults are the paper's VGG16 encoder (13 convolutions in 5 stages of 64-128-256-512-512 channels);
    ``channels=(16, 32, 64, 128, 128)`` is the narrow variant that trains in reasonable time on a CPU.
    Decoder stage ``k`` mirrors encoder stage ``k``: max unpooling with its indices, then as many convolutions,
    the last of which narrows to the channels of the stage above.

    Any spatial size of at least ``2 ** len(channels)`` per dimension works, multiple of 32 or not: pooling
    drops an odd last row and unpooling restores the exact size of the feature map it came from.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (logits; no activation).
        channels: feature channels of each encoder stage, top (full resolution) first.
        convs_per_stage: number of 3x3 convolutions in each stage (same length as ``channels``).

    Shapes: input (N, in_channels, *S) -> output (N, out_channels, *S).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (64, 128, 256, 512, 512),
        convs_per_stage: Sequence[int] = (2, 2, 3, 3, 3),
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(channels) != len(convs_per_stage) or not channels:
            raise ValueError(
                f"channels {list(channels)} and convs_per_stage {list(convs_per_stage)} must be non-empty and "
                "of the same length (one entry per stage)"
            )
        if min(convs_per_stage) < 1:
            raise ValueError(f"every stage needs at least one convolution, got convs_per_stage {list(convs_per_stage)}")
        self.spatial_dims = spatial_dims
        self.min_size = 2 ** len(channels)
        self.name = type(self).__name__
        #: the constructor's arguments, to rebuild the network elsewhere (the bioimage.io package's architecture)
        self.arguments = {
            "spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels,
            "channels": [int(c) for c in channels], "convs_per_stage": [int(c) for c in convs_per_stage],
        }  # fmt: skip

        widths = list(channels)
        self.encoder = nn.ModuleList()
        stage_in = in_channels
        for width, n_convs in zip(widths, convs_per_stage, strict=True):
            self.encoder.append(conv_stack(spatial_dims, [stage_in] + [width] * n_convs))
            stage_in = width

        # listed in the order they run, deepest first: decoder[-1 - k] mirrors encoder[k]
        self.decoder = nn.ModuleList()
        for k in reversed(range(len(widths))):
            width, above = widths[k], widths[max(k - 1, 0)]
            stage_in = width * 2 if (k == 0 and self._skip_top()) else width
            self.decoder.append(conv_stack(spatial_dims, [stage_in] + [width] * (convs_per_stage[k] - 1) + [above]))
        self.classifier = Convolution(spatial_dims, widths[0], out_channels, kernel_size=1, conv_only=True)

    def _skip_top(self) -> bool:
        return False

    def _pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spatial_dims == 2:
            return F.max_pool2d_with_indices(x, kernel_size=2, stride=2)
        return F.max_pool3d_with_indices(x, kernel_size=2, stride=2)

    def _unpool(self, x: torch.Tensor, indices: torch.Tensor, size: list[int]) -> torch.Tensor:
        if self.spatial_dims == 2:
            return F.max_unpool2d(x, indices, kernel_size=2, stride=2, output_size=size)
        return F.max_unpool3d(x, indices, kernel_size=2, stride=2, output_size=size)

    def check_input_size(self, x: torch.Tensor) -> None:
        size = list(x.shape[2:])
        if x.dim() != self.spatial_dims + 2 or min(size) < self.min_size:
            raise ValueError(
                f"{self.name} expects a {self.spatial_dims}D input (N, C, *spatial) with every spatial size "
                f">= {self.min_size} (one halving per stage), got shape {list(x.shape)}"
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[list[int]], torch.Tensor]:
        """Returns the deepest pooled features, each stage's pooling indices and pre-pooling sizes, and the top
        stage's features before pooling (for U-SegNet's skip)."""
        indices: list[torch.Tensor] = []
        sizes: list[list[int]] = []
        top = x
        for k, stage in enumerate(self.encoder):
            x = stage(x)
            if k == 0:
                top = x
            sizes.append(list(x.shape[2:]))
            x, index = self._pool(x)
            indices.append(index)
        return x, indices, sizes, top

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_size(x)
        x, indices, sizes, top = self.encode(x)
        for i, stage in enumerate(self.decoder):
            k = len(indices) - 1 - i
            x = self._unpool(x, indices[k], sizes[k])
            if k == 0 and self._skip_top():
                x = torch.cat([x, top], dim=1)
            x = stage(x)
        return self.classifier(x)


class USegNet(SegNet):
    """U-SegNet: :class:`SegNet` plus a U-Net-style skip at the top level, where the unpooled decoder features
    are concatenated with the encoder's full-resolution features before the last decoder stage.

    Same arguments and shapes as :class:`SegNet`: (N, in_channels, *S) -> (N, out_channels, *S).
    """

    def _skip_top(self) -> bool:
        return True
