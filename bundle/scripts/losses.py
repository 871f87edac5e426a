"""Training losses: for the membrane target (and the foreground of objects on a background), soft Dice plus
binary cross-entropy weighted per pixel by the U-Net paper's border weights
(:class:`scripts.transforms.BorderWeightd`), so the network learns to close thin membranes between cells; for
affinities, the same two terms over the pixels each offset's mask keeps
(:class:`scripts.transforms.AffinityTargetsd`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

__all__ = ["BorderWeightedDiceCELoss", "MaskedAffinityLoss"]


class BorderWeightedDiceCELoss(torch.nn.Module):
    """Soft Dice of the target masks plus binary cross-entropy weighted per pixel.

    Without weights (a target of as many channels as the logits) this equals MONAI's ``DiceCELoss(sigmoid=True)``.
    The weighted cross-entropy is normalised by the sum of the weights, so its scale, and the learning rate that
    suits it, stay those of the unweighted loss.

    Args:
        logits: (B, C, H, W) logits: C = 1, the membrane; C = 2 for objects on a background, the membrane and the
            foreground (:class:`scripts.transforms.ForegroundTargetd`).
        target: (B, C, H, W) masks, or (B, C + 1, H, W) masks and per-pixel weights, which weigh every channel
            (see :class:`scripts.transforms.BorderWeightd`).

    Returns:
        scalar loss.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        channels = logits.shape[1]
        if target.shape[1] not in (channels, channels + 1) or logits.shape[2:] != target.shape[2:]:
            raise ValueError(
                f"expected logits (B, C, H, W) and target (B, C or C + 1, H, W); got {tuple(logits.shape)} and "
                f"{tuple(target.shape)}"
            )
        mask = target[:, :channels]
        weights = target[:, channels:] if target.shape[1] > channels else torch.ones_like(mask[:, :1])
        weights = weights.expand_as(mask)
        cross_entropy = F.binary_cross_entropy_with_logits(logits, mask, weight=weights, reduction="sum")
        return self.dice(logits, mask) + cross_entropy / weights.sum()


class MaskedAffinityLoss(torch.nn.Module):
    """Soft Dice plus binary cross-entropy of affinities, over the pixels their mask keeps.

    The Dice is MONAI's, per offset over the batch (``batch=True``) and averaged over the offsets, on the sigmoid
    and the target multiplied by the mask (as torch-em masks its Dice loss); the cross-entropy is the mean over
    the kept pixels. ``cross_entropy=False`` leaves the masked Dice alone (torch-em's ISBI recipe).

    Args:
        logits: (B, n, H, W) affinity logits.
        target: (B, 1 + 2n, H, W): the membrane mask (unused here), the affinities and their mask.

    Returns:
        scalar loss.
    """

    def __init__(self, cross_entropy: bool = True) -> None:
        super().__init__()
        self.dice = DiceLoss(batch=True)
        self.cross_entropy = cross_entropy

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = logits.shape[1]
        if target.shape[1] != 1 + 2 * n or logits.shape[2:] != target.shape[2:]:
            raise ValueError(
                f"expected logits (B, n, H, W) and target (B, 1 + 2n, H, W); got {tuple(logits.shape)} and "
                f"{tuple(target.shape)}"
            )
        affinities, mask = target[:, 1 : 1 + n], target[:, 1 + n :]
        loss = self.dice(torch.sigmoid(logits) * mask, affinities * mask)
        if self.cross_entropy:
            cross_entropy = F.binary_cross_entropy_with_logits(logits, affinities, weight=mask, reduction="sum")
            loss = loss + cross_entropy / mask.sum().clamp(min=1)
        return loss
