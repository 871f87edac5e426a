"""Transforms the MONAI set lacks: reading datalist items given as file paths, scaling a section (or a tile of it)
with the section's intensity range, and the U-Net paper's border weights.

Border weights: V_rand punishes a gap in a membrane far more than a slightly misplaced line, since one missing
pixel between two cells merges them, and the thin membranes between touching cells are where the network is
least sure. Ronneberger et al. (2015, eq. 2) weight every pixel by ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` on
top of its class weight, with ``d1``/``d2`` the distances to the nearest and second-nearest cell; the term is
large only on narrow membranes between two cells. Here it is added to membrane pixels only (weight 1 elsewhere);
class balance is left to the Dice term of the loss. The map is computed once per ground-truth section (cached
with the deterministic transforms) and travels through the random spatial transforms as a second channel of the
label, so the loss (:class:`scripts.losses.BorderWeightedDiceCELoss`) sees the weights of the augmented patch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, ScaleIntensityRange, Transform
from scipy.ndimage import distance_transform_edt, find_objects
from skimage.measure import label as connected_components

from .stack_io import StackError, read_membrane_index_labels, read_slice

__all__ = ["LoadSlice", "LoadSliced", "ScaleSectionIntensityd", "border_weight_map", "BorderWeight", "BorderWeightd"]


class LoadSlice(Transform):
    """Reads one section given as a file path; an in-memory section passes through unchanged.

    * images: one grayscale section (PNG/TIF) -> 2D array in the file's dtype;
    * labels (``labels=True``): class indices, 0 = background (cell interior), 1 = membrane -> 2D uint8
      membrane mask.

    Args:
        labels: read the file as a label section (:func:`scripts.stack_io.read_membrane_index_labels`).
        reverse_indexing: return file sections as (W, H), the axis order of MONAI's ``LoadImage`` (ITK and PIL
            readers), so a writer that follows it (MONAI Label's) saves predictions the right way round;
            ``False`` gives numpy's (H, W). In-memory sections are never transposed.
    """

    def __init__(self, labels: bool = False, reverse_indexing: bool = True) -> None:
        self.read = read_membrane_index_labels if labels else read_slice
        self.reverse_indexing = reverse_indexing

    def __call__(self, section):
        if not isinstance(section, (str, Path)):
            return section
        array = self.read(section)
        return np.array(array.T if self.reverse_indexing else array)


class LoadSliced(MapTransform):
    """Dictionary version of :class:`LoadSlice`: reads the datalist items given as file paths.

    The same preprocessing then takes both the bundle's own items (arrays cut from the shipped stacks by
    :func:`scripts.datalists.load_labelled_stack`) and datalists of per-section files, such as the
    ``{"image": path, "label": path}`` items MONAI Label's ``BundleTrainTask`` puts in ``train#dataset#data`` or
    the image path its ``BundleInferTask`` hands to the preprocessing. A label must have its image's shape.

    Args:
        keys: keys of the images and labels to read.
        label_key: the key holding labels.
        reverse_indexing: see :class:`LoadSlice`.
        allow_missing_keys: do not raise for keys missing from an item.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        reverse_indexing: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.load_image = LoadSlice(labels=False, reverse_indexing=reverse_indexing)
        self.load_label = LoadSlice(labels=True, reverse_indexing=reverse_indexing)

    def __call__(self, data: dict) -> dict:
        item = dict(data)
        for key in self.key_iterator(item):
            item[key] = (self.load_label if key == self.label_key else self.load_image)(item[key])
        label, image = item.get(self.label_key), item.get("image")
        if label is not None and image is not None and np.shape(label) != np.shape(image):
            raise StackError(
                f"{_source(data[self.label_key])}: label is {np.shape(label)} but its image "
                f"{_source(data['image'])} is {np.shape(image)}; they must match"
            )
        return item


class ScaleSectionIntensityd(MapTransform):
    """Scales an image to [0, 1] with its section's minimum and maximum intensity, as float32.

    A whole section is scaled with its own range, as ``ScaleIntensityd(minv=0, maxv=1)`` does. A tile of a section
    (blockwise inference of large sections) carries its section's range under ``range_key``, so each tile is
    scaled as the whole section would be. A constant section becomes 0.

    Args:
        keys: keys of the images to scale.
        range_key: the item's key holding ``(minimum, maximum)`` of the section, when the image is part of one.
        allow_missing_keys: do not raise for keys missing from an item.
    """

    def __init__(self, keys: KeysCollection, range_key: str = "intensity_range", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.range_key = range_key

    def __call__(self, data: dict) -> dict:
        item = dict(data)
        for key in self.key_iterator(item):
            image = torch.as_tensor(item[key], dtype=torch.float32)
            low, high = item[self.range_key] if item.get(self.range_key) is not None else (image.min(), image.max())
            low, high = float(low), float(high)
            item[key] = ScaleIntensityRange(low, high, 0.0, 1.0)(image) if high > low else image - low
        return item


def _source(value: object) -> str:
    return str(value) if isinstance(value, (str, Path)) else "(in-memory section)"


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


class BorderWeight(Transform):
    """Append :func:`border_weight_map` of a (1, H, W) membrane mask as its second channel: (1, H, W) -> (2, H, W).

    Args:
        border_weight: ``w0`` of :func:`border_weight_map`.
        sigma: ``sigma`` of :func:`border_weight_map`, in pixels.
    """

    def __init__(self, border_weight: float = 10.0, sigma: float = 5.0) -> None:
        self.border_weight, self.sigma = border_weight, sigma

    def __call__(self, mask) -> torch.Tensor:
        mask = torch.as_tensor(mask)
        if mask.ndim != 3 or mask.shape[0] != 1:
            raise ValueError(f"BorderWeight expects a (1, H, W) mask, got shape {tuple(mask.shape)}")
        weights = border_weight_map(mask[0].cpu().numpy(), self.border_weight, self.sigma)
        return torch.cat([mask, torch.as_tensor(weights, dtype=mask.dtype, device=mask.device)[None]])


class BorderWeightd(MapTransform):
    """Dictionary version of :class:`BorderWeight`.

    Put it after the deterministic transforms and before the random spatial ones (which then move the weights
    with the mask; use nearest-neighbour interpolation for the label).
    """

    def __init__(self, keys: KeysCollection, border_weight: float = 10.0, sigma: float = 5.0) -> None:
        super().__init__(keys)
        self.transform = BorderWeight(border_weight, sigma)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d
