"""The border-weighted Dice + cross-entropy loss."""

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from scripts.losses import BorderWeightedDiceCELoss


def _logits_and_mask(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, 8, 8, generator=generator)
    mask = (torch.rand(2, 1, 8, 8, generator=generator) > 0.7).float()
    return logits, mask


def test_unweighted_loss_equals_monai_dice_ce():
    logits, mask = _logits_and_mask()
    expected = DiceCELoss(sigmoid=True)(logits, mask)
    loss = BorderWeightedDiceCELoss()
    torch.testing.assert_close(loss(logits, mask), expected)
    torch.testing.assert_close(loss(logits, torch.cat([mask, torch.ones_like(mask)], dim=1)), expected)


def test_weights_select_the_pixels_the_cross_entropy_sees():
    logits, mask = _logits_and_mask()
    weights = torch.zeros_like(mask)
    weights[1, 0, 3, 5] = 4.0  # all weight on one pixel: the weighted mean is that pixel's cross-entropy
    loss = BorderWeightedDiceCELoss()(logits, torch.cat([mask, weights], dim=1))
    one_pixel = F.binary_cross_entropy_with_logits(logits[1, 0, 3, 5], mask[1, 0, 3, 5])
    torch.testing.assert_close(loss, DiceLoss(sigmoid=True)(logits, mask) + one_pixel)


def test_weighted_loss_rejects_mismatched_shapes():
    logits, mask = _logits_and_mask()
    with pytest.raises(ValueError, match="target"):
        BorderWeightedDiceCELoss()(logits, torch.cat([mask, mask, mask], dim=1))
    with pytest.raises(ValueError, match="logits"):
        BorderWeightedDiceCELoss()(logits[:, :, :4], mask)
