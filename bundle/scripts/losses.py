"""Training loss: soft Dice plus binary cross-entropy weighted per pixel by the U-Net paper's border weights
(:class:`scripts.transforms.BorderWeightd`), so the network learns to close thin membranes between cells."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

__all__ = ["BorderWeightedDiceCELoss"]


class BorderWeightedDiceCELoss(torch.nn.Module):
    """Soft Dice of the membrane mask plus binary cross-entropy weighted per pixel.

    Without weights (a one-channel target) this equals MONAI's ``DiceCELoss(sigmoid=True)``. The weighted
    cross-entropy is normalised by the sum of the weights, so its scale, and the learning rate that suits it,
    stay those of the unweighted loss.

    Args:
        logits: (B, 1, H, W) membrane logits.
        target: (B, 1, H, W) membrane mask, or (B, 2, H, W) mask and per-pixel weights (see :class:`BorderWeightd`).

    Returns:
        scalar loss.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 1 or target.shape[1] not in (1, 2) or logits.shape[2:] != target.shape[2:]:
            raise ValueError(
                f"expected logits (B, 1, H, W) and target (B, 1 or 2, H, W); got {tuple(logits.shape)} and "
                f"{tuple(target.shape)}"
            )
        mask = target[:, :1]
        weights = target[:, 1:] if target.shape[1] == 2 else torch.ones_like(mask)
        cross_entropy = F.binary_cross_entropy_with_logits(logits, mask, weight=weights, reduction="sum")
        return self.dice(logits, mask) + cross_entropy / weights.sum()
