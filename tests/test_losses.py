"""Border weight maps on hand-made membranes (values worked out by hand) and the losses built on them."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import two_cells
from monai.losses import DiceCELoss, DiceLoss

from scripts.losses import BorderWeightd, BorderWeightedDiceCELoss, SumOfLosses, border_weight_map


def test_one_pixel_membrane_between_two_cells():
    # every membrane pixel is 1 px from each cell: d1 + d2 = 2, weight 1 + 10 exp(-4 / 50)
    membrane = two_cells()
    weights = border_weight_map(membrane, border_weight=10.0, sigma=5.0)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights[membrane == 1], 1 + 10 * math.exp(-4 / 50), rtol=1e-6)
    np.testing.assert_array_equal(weights[membrane == 0], 1.0)


def test_wider_membrane_gets_less_extra_weight():
    # 3-px membrane: the middle column is 2 px from each cell, the outer ones 1 and 3: d1 + d2 = 4 everywhere
    membrane = np.zeros((4, 11), dtype=np.uint8)
    membrane[:, 4:7] = 1
    weights = border_weight_map(membrane, border_weight=10.0, sigma=5.0)
    np.testing.assert_allclose(weights[:, 4:7], 1 + 10 * math.exp(-16 / 50), rtol=1e-6)
    assert weights[0, 5] < border_weight_map(two_cells(), border_weight=10.0, sigma=5.0)[0, 4]


def test_membrane_next_to_a_single_cell_or_no_cell_is_not_weighted():
    one_cell = np.zeros((5, 5), dtype=np.uint8)
    one_cell[:, 0] = 1  # no second cell: d2 is infinite
    np.testing.assert_array_equal(border_weight_map(one_cell), 1.0)
    np.testing.assert_array_equal(border_weight_map(np.ones((4, 4), dtype=np.uint8)), 1.0)


def test_cells_farther_apart_than_the_reach_do_not_interact():
    membrane = np.zeros((3, 60), dtype=np.uint8)
    membrane[:, 5:55] = 1  # 50-px gap: no membrane pixel is within 4 sigma = 20 px of both cells
    np.testing.assert_array_equal(border_weight_map(membrane, sigma=5.0), 1.0)
    np.testing.assert_array_less(1.0, border_weight_map(membrane, sigma=15.0)[:, 5:55])


def test_border_weight_map_rejects_stacks():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        border_weight_map(np.zeros((2, 4, 4)))


def test_border_weightd_appends_the_weights_as_a_second_label_channel():
    mask = torch.as_tensor(two_cells(), dtype=torch.float32)[None]
    out = BorderWeightd(keys="label")({"label": mask, "image": torch.zeros(1, 4, 9)})
    assert out["label"].shape == (2, 4, 9)
    torch.testing.assert_close(out["label"][0], mask[0])
    torch.testing.assert_close(out["label"][1], torch.as_tensor(border_weight_map(two_cells())))
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        BorderWeightd(keys="label")({"label": mask[0]})


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


def test_sum_of_losses_is_the_weighted_sum():
    logits, mask = _logits_and_mask()
    combined = SumOfLosses([DiceLoss(sigmoid=True), DiceCELoss(sigmoid=True)], weights=[0.5, 2.0])
    expected = 0.5 * DiceLoss(sigmoid=True)(logits, mask) + 2.0 * DiceCELoss(sigmoid=True)(logits, mask)
    torch.testing.assert_close(combined(logits, mask), expected)
    with pytest.raises(ValueError, match="one weight per loss"):
        SumOfLosses([DiceLoss()], weights=[1.0, 2.0])
