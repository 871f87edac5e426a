"""Border-weighted training loss: the U-Net paper's weight map, so the network learns to close thin membranes.

V_rand punishes a gap in a membrane far more than a slightly misplaced line: one missing pixel between two
cells merges them. The thin membranes between touching cells are also where the network is least sure.
Ronneberger et al. (2015, eq. 2) weight every pixel by ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` on top of
its class weight, with ``d1``/``d2`` the distances to the nearest and second-nearest cell; the term is large
only on narrow membranes between two cells. Here it is added to membrane pixels only (weight 1 elsewhere),
and class balance is left to the Dice term of the loss.

The weight map is computed once per ground-truth slice (cached with the deterministic transforms) and
travels through the random spatial transforms as a second channel of the label, so the loss sees the weights
of the augmented patch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.losses import DiceLoss
from monai.transforms import MapTransform
from scipy.ndimage import distance_transform_edt, find_objects
from skimage.measure import label as connected_components


def border_weight_map(membrane: np.ndarray, border_weight: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """Per-pixel loss weights ``1 + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` on membrane pixels, 1 elsewhere.

    Cells are the 4-connected components of the interior (as in the ISBI metric). Distances beyond
    ``4 * sigma`` from a cell are not computed: there the term is below ``w0 * e^-8``.

    Args:
        membrane: (H, W) membrane mask, nonzero = membrane.
        border_weight: ``w0``, the extra weight of a membrane pixel squeezed between two touching cells.
        sigma: width in pixels over which the extra weight decays as the gap between the cells widens.

    Returns:
        (H, W) float32 weights, >= 1.
    """
    if membrane.ndim != 2:
        raise ValueError(f"membrane mask must be (H, W), got shape {membrane.shape}")
    is_membrane = membrane != 0
    cells = connected_components(~is_membrane, connectivity=1)
    reach = int(np.ceil(4 * sigma))
    nearest = np.full(membrane.shape, np.inf)
    second = np.full(membrane.shape, np.inf)
    for index, box in enumerate(find_objects(cells), start=1):
        window = tuple(slice(max(s.start - reach, 0), s.stop + reach) for s in box)
        distance = distance_transform_edt(cells[window] != index)
        second[window] = np.minimum(second[window], np.maximum(nearest[window], distance))
        nearest[window] = np.minimum(nearest[window], distance)
    extra = border_weight * np.exp(-((nearest + second) ** 2) / (2 * sigma**2))
    return (1.0 + np.where(is_membrane, extra, 0.0)).astype(np.float32)


class BorderWeightd(MapTransform):
    """Append :func:`border_weight_map` of a (1, H, W) membrane mask as its second channel: (1, H, W) -> (2, H, W).

    Put it after the deterministic transforms and before the random spatial ones (which then move the weights
    with the mask; use nearest-neighbour interpolation for the label). :class:`BorderWeightedDiceCELoss` reads
    channel 1 as the weights.
    """

    def __init__(self, keys: KeysCollection, border_weight: float = 10.0, sigma: float = 5.0) -> None:
        super().__init__(keys)
        self.border_weight, self.sigma = border_weight, sigma

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = torch.as_tensor(d[key])
            if mask.ndim != 3 or mask.shape[0] != 1:
                raise ValueError(f"BorderWeightd expects '{key}' as a (1, H, W) mask, got shape {tuple(mask.shape)}")
            weights = border_weight_map(mask[0].cpu().numpy(), self.border_weight, self.sigma)
            d[key] = torch.cat([mask, torch.as_tensor(weights, dtype=mask.dtype, device=mask.device)[None]])
        return d


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


class SumOfLosses(torch.nn.Module):
    """``sum_i weights[i] * losses[i](input, target)``: combines MONAI losses from a config without a lambda.

    Args:
        losses: callables ``(input, target) -> scalar``, e.g. ``DiceCELoss`` and ``SoftclDiceLoss``.
        weights: one factor per loss (default 1 each).
    """

    def __init__(self, losses: list, weights: list[float] | None = None) -> None:
        super().__init__()
        self.weights = [1.0] * len(losses) if weights is None else [float(w) for w in weights]
        if not losses or len(self.weights) != len(losses):
            raise ValueError(f"need one weight per loss; got {len(losses)} losses and {len(self.weights)} weights")
        self.losses = torch.nn.ModuleList(losses)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(weight * loss(input, target) for weight, loss in zip(self.weights, self.losses, strict=True))
