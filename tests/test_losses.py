"""The border-weighted Dice + cross-entropy loss."""

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from scripts.losses import BorderWeightedDiceCELoss, MaskedAffinityLoss


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


def test_membrane_and_foreground_channels_share_the_weights():
    logits, mask = _logits_and_mask()
    logits, mask = torch.cat([logits, -logits], dim=1), torch.cat([mask, 1 - mask], dim=1)
    loss = BorderWeightedDiceCELoss()
    expected = DiceLoss(sigmoid=True)(logits, mask) + F.binary_cross_entropy_with_logits(logits, mask)
    torch.testing.assert_close(loss(logits, mask), expected)  # MONAI's DiceCELoss takes C > 1 as softmax classes
    weights = torch.zeros_like(mask[:, :1])
    weights[0, 0, 2, 2] = 1.0  # one pixel, seen in both channels
    one_pixel = F.binary_cross_entropy_with_logits(logits[0, :, 2, 2], mask[0, :, 2, 2])
    weighted = loss(logits, torch.cat([mask, weights], dim=1))
    torch.testing.assert_close(weighted, DiceLoss(sigmoid=True)(logits, mask) + one_pixel)


def test_weighted_loss_rejects_mismatched_shapes():
    logits, mask = _logits_and_mask()
    with pytest.raises(ValueError, match="target"):
        BorderWeightedDiceCELoss()(logits, torch.cat([mask, mask, mask], dim=1))
    with pytest.raises(ValueError, match="logits"):
        BorderWeightedDiceCELoss()(logits[:, :, :4], mask)


def _affinity_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 8, 8, generator=generator)
    affinities = (torch.rand(2, 3, 8, 8, generator=generator) > 0.3).float()
    mask = (torch.rand(2, 3, 8, 8, generator=generator) > 0.2).float()
    return logits, affinities, mask


def test_masked_affinity_loss_is_dice_and_cross_entropy_over_the_kept_pixels():
    logits, affinities, mask = _affinity_batch()
    target = torch.cat([torch.zeros_like(mask[:, :1]), affinities, mask], dim=1)
    kept = mask.bool()
    dice = DiceLoss(batch=True)(torch.sigmoid(logits) * mask, affinities * mask)
    cross_entropy = F.binary_cross_entropy_with_logits(logits[kept], affinities[kept])
    torch.testing.assert_close(MaskedAffinityLoss()(logits, target), dice + cross_entropy)
    torch.testing.assert_close(MaskedAffinityLoss(cross_entropy=False)(logits, target), dice)


def test_masked_pixels_do_not_move_the_affinity_loss():
    logits, affinities, mask = _affinity_batch(1)
    target = torch.cat([torch.zeros_like(mask[:, :1]), affinities, mask], dim=1)
    changed = torch.where(mask.bool(), logits, logits + 5.0), torch.where(mask.bool(), affinities, 1 - affinities)
    other = torch.cat([target[:, :1], changed[1], mask], dim=1)
    torch.testing.assert_close(MaskedAffinityLoss()(changed[0], other), MaskedAffinityLoss()(logits, target))
    with pytest.raises(ValueError, match=r"expected logits \(B, n, H, W\) and target \(B, 1 \+ 2n, H, W\)"):
        MaskedAffinityLoss()(logits, target[:, :5])
