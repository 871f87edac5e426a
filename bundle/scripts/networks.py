"""SegNet, U-SegNet and Tiramisu: the study's alternatives to MONAI's U-Net.

SegNet and U-SegNet are encoder-decoder networks that upsample with the encoder's max-pooling indices.

SegNet (Badrinarayanan et al. 2015) has no skip connections: each decoder stage puts its input back at the
positions where the matching encoder stage found its maxima (max unpooling) and fills in with convolutions.
U-SegNet (Kumar et al. 2018) adds one U-Net-style skip, a concatenation at the top resolution level, where
the fine membrane detail lives. Both are TorchScript-scriptable: the pooling and unpooling are functional
calls because an ``nn.MaxUnpool2d`` submodule does not script on torch 2.13.

Tiramisu (FC-DenseNet, Jegou et al. 2017) builds every stage from dense blocks, whose layers each see the
concatenation of all earlier feature maps; its upsampling path carries only the new features of each block, so
the widths stay bounded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN, Convolution
from monai.networks.layers import Conv, Dropout, Pool
from torch import nn

__all__ = ["size_multiple", "SegNet", "USegNet", "DenseBlock", "Tiramisu"]


def size_multiple(network: nn.Module) -> int:
    """The input sizes ``network`` takes per spatial axis are multiples of this, its total downsampling: the product
    of a MONAI ``UNet``'s strides; ``min_size`` (``2 ** stages``) of SegNet, U-SegNet and Tiramisu; 1 otherwise."""
    if hasattr(network, "strides"):
        return int(math.prod(int(stride) for stride in network.strides))
    return int(getattr(network, "min_size", 1))


def check_spatial_size(x: torch.Tensor, name: str, spatial_dims: int, min_size: int, why: str) -> None:
    """Raises ValueError, naming the network ``name`` and ``why``, unless ``x`` is (N, C, *S) with ``spatial_dims``
    spatial axes of at least ``min_size`` pixels each (TorchScript-able: the networks call it in ``forward``)."""
    if x.dim() != spatial_dims + 2 or min(list(x.shape[2:])) < min_size:
        raise ValueError(
            f"{name} expects a {spatial_dims}D input (N, C, *spatial) with every spatial size >= {min_size} "
            f"({why}), got shape {list(x.shape)}"
        )


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
        check_spatial_size(x, self.name, self.spatial_dims, self.min_size, "one halving per stage")

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


#: dense layers per block (down blocks, bottleneck, up blocks) and growth rate of the paper's three networks
TIRAMISU_CONFIGURATIONS = {
    56: ((4,) * 11, 12),
    67: ((5,) * 11, 16),
    103: ((4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4), 16),
}


def pre_activation(spatial_dims: int, channels: int, norm: str | tuple) -> ADN:
    """Normalisation then ReLU, the order of DenseNet's layers: (N, channels, *S) -> same shape."""
    return ADN(ordering="NA", in_channels=channels, act="relu", norm=norm, norm_dim=spatial_dims)


class DenseBlock(nn.Module):
    """Dense layers (norm, ReLU, 3x3 convolution, dropout), each fed the concatenation of the block's input and
    every earlier layer's output.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        layers: number of dense layers.
        growth_rate: channels each layer adds.
        dropout: dropout probability after each convolution.
        norm: normalisation (a MONAI ``Norm`` name).

    Shapes: input (N, in_channels, *S) -> (all, new): ``all`` (N, in_channels + layers * growth_rate, *S) is the
    input followed by every layer's output; ``new`` (N, layers * growth_rate, *S) is the layers' outputs alone.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, layers: int, growth_rate: int, dropout: float, norm: str | tuple
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                pre_activation(spatial_dims, in_channels + k * growth_rate, norm),
                Conv[Conv.CONV, spatial_dims](in_channels + k * growth_rate, growth_rate, kernel_size=3, padding=1),
                Dropout[Dropout.DROPOUT, spatial_dims](dropout),
            )
            for k in range(layers)
        )
        self.out_channels = in_channels + layers * growth_rate

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new: list[torch.Tensor] = []
        for layer in self.layers:
            out = layer(x)
            x = torch.cat([x, out], dim=1)
            new.append(out)
        return x, torch.cat(new, dim=1)


class Tiramisu(nn.Module):
    """Tiramisu, the fully convolutional DenseNet (FC-DenseNet; Jegou et al., CVPR Workshops 2017), 2D or 3D.

    A 3x3 convolution, then ``pools`` dense blocks each followed by a transition down (norm, ReLU, 1x1
    convolution, dropout, 2x max pooling), a bottleneck dense block, and ``pools`` transitions up (3x3 transposed
    convolution of the previous block's new features, stride 2) each concatenated with the matching down block's
    output and followed by a dense block. A 1x1 convolution maps the last block's full output to the logits.

    ``depth`` picks one of the paper's networks: 56 (4 layers per block, growth 12, 1.4 M parameters), 67 (5,
    growth 16, 3.5 M) or 103 (4-5-7-10-12-15-12-10-7-5-4, growth 16, 9.3 M); ``layers_per_block`` and
    ``growth_rate`` given together define another. Every spatial size of at least ``2 ** pools`` works (with
    instance norm, one side must exceed it, so that the bottleneck has 2 pixels to normalise): pooling rounds odd
    sizes up, and each transition up restores the exact size of the skip it joins.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (logits; no activation).
        depth: 56, 67 or 103, the paper's configurations (ignored when ``layers_per_block`` is given).
        layers_per_block: dense layers of each block, down blocks then bottleneck then up blocks
            (``2 * pools + 1`` entries).
        growth_rate: channels each dense layer adds.
        first_channels: channels of the first convolution.
        dropout: dropout probability (the paper: 0.2).
        norm: normalisation (the paper: batch norm).

    Shapes: input (N, in_channels, *S) -> output (N, out_channels, *S).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 103,
        layers_per_block: Sequence[int] | None = None,
        growth_rate: int | None = None,
        first_channels: int = 48,
        dropout: float = 0.2,
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if (layers_per_block is None) != (growth_rate is None):
            raise ValueError("layers_per_block and growth_rate go together: give both, or neither and a depth")
        if layers_per_block is None:
            if depth not in TIRAMISU_CONFIGURATIONS:
                raise ValueError(f"depth must be one of {sorted(TIRAMISU_CONFIGURATIONS)}, got {depth}")
            layers_per_block, growth_rate = TIRAMISU_CONFIGURATIONS[depth]
        layers_per_block = [int(n) for n in layers_per_block]
        if len(layers_per_block) % 2 == 0 or min(layers_per_block) < 1:
            raise ValueError(
                f"layers_per_block {layers_per_block} needs an odd number of entries (down blocks, bottleneck, "
                "up blocks), each at least 1"
            )
        pools = len(layers_per_block) // 2
        self.spatial_dims = spatial_dims
        self.min_size = 2**pools
        self.name = type(self).__name__
        #: instance norm normalises each input with its own statistics, so the bottleneck needs more than one pixel
        self.instance_norm = (norm if isinstance(norm, str) else norm[0]).lower() == "instance"
        #: the dense layers and convolutions in sequence: 56, 67 or 103 for the paper's networks
        self.depth = sum(layers_per_block) + 2 * pools + 2
        #: the constructor's arguments, to rebuild the network elsewhere (the bioimage.io package's architecture)
        self.arguments = {
            "spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels,
            "layers_per_block": layers_per_block, "growth_rate": int(growth_rate),
            "first_channels": first_channels, "dropout": dropout, "norm": norm,
        }  # fmt: skip

        self.first = Conv[Conv.CONV, spatial_dims](in_channels, first_channels, kernel_size=3, padding=1)
        self.down_blocks, self.transitions_down = nn.ModuleList(), nn.ModuleList()
        channels, skip_channels = first_channels, []
        for layers in layers_per_block[:pools]:
            block = DenseBlock(spatial_dims, channels, layers, growth_rate, dropout, norm)
            channels = block.out_channels
            skip_channels.append(channels)
            self.down_blocks.append(block)
            self.transitions_down.append(
                nn.Sequential(
                    pre_activation(spatial_dims, channels, norm),
                    Conv[Conv.CONV, spatial_dims](channels, channels, kernel_size=1),
                    Dropout[Dropout.DROPOUT, spatial_dims](dropout),
                    Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2, ceil_mode=True),
                )
            )
        self.bottleneck = DenseBlock(spatial_dims, channels, layers_per_block[pools], growth_rate, dropout, norm)
        new_channels = layers_per_block[pools] * growth_rate
        self.transitions_up, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        for layers, skip in zip(layers_per_block[pools + 1 :], reversed(skip_channels), strict=True):
            self.transitions_up.append(
                Conv[Conv.CONVTRANS, spatial_dims](new_channels, new_channels, kernel_size=3, stride=2, padding=1)
            )
            block = DenseBlock(spatial_dims, new_channels + skip, layers, growth_rate, dropout, norm)
            self.up_blocks.append(block)
            new_channels, channels = layers * growth_rate, block.out_channels
        self.classifier = Conv[Conv.CONV, spatial_dims](channels, out_channels, kernel_size=1)

    def check_input_size(self, x: torch.Tensor) -> None:
        """Raises ValueError, with the sizes it needs, for an input the network cannot take: not (N, C, *S), a side
        under ``2 ** pools``, or (with instance norm, which normalises each input with its own statistics) a
        bottleneck of a single pixel."""
        check_spatial_size(x, self.name, self.spatial_dims, self.min_size, "one halving per transition down")
        size = list(x.shape[2:])
        bottleneck = 1
        for side in size:
            bottleneck *= (side + self.min_size - 1) // self.min_size
        if self.instance_norm and bottleneck < 2:
            raise ValueError(
                f"{self.name} with instance norm needs 2 pixels or more at its bottleneck to normalise them (a side "
                f"longer than {self.min_size}), got shape {list(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_size(x)
        x = self.first(x)
        skips: list[torch.Tensor] = []
        # zip without strict=: TorchScript's zip takes no keyword (the lists have equal lengths by construction)
        for block, transition in zip(self.down_blocks, self.transitions_down):  # noqa: B905
            x, _ = block(x)
            skips.append(x)
            x = transition(x)
        x, new = self.bottleneck(x)
        for k, (transition, block) in enumerate(zip(self.transitions_up, self.up_blocks)):  # noqa: B905
            skip = skips[len(skips) - 1 - k]
            up = transition(new, output_size=skip.shape[2:])
            x, new = block(torch.cat([up, skip], dim=1))
        return self.classifier(x)
