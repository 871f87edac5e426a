"""Transforms the MONAI set lacks: reading datalist items given as file paths, a section with its neighbours as
channels, scaling a section (or a tile of it) with the section's intensity range or percentiles, the U-Net
paper's border weights, the foreground of objects on a background, and affinity targets with the membrane they
imply.

Affinities (``configs/affinities.json``): for an offset ``o`` the target at pixel ``p`` is 1 where ``p`` and
``p + o`` lie in the same cell, else 0 (Turaga et al. 2010; short- and long-range offsets as in the mutex
watershed's and torch-em's ISBI recipes). :class:`InstanceLabelsd` appends each section's cell ids to its label
before augmentation, so the random spatial transforms warp the ids with nearest-neighbour sampling;
:class:`AffinityTargetsd` computes the targets after them, with a mask that is 0 where ``p + o`` leaves the patch
or either pixel comes from outside the section (ids padded with 0). Membrane pixels are boundary: their
affinity to any pixel is 0. :class:`MembraneFromAffinitiesd` turns predicted affinities back into the membrane
probability every output of the bundle is built on.

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

from .blockwise import checked_context
from .errors import InputError
from .stack_io import StackError, read_membrane_index_labels, read_slice

__all__ = [
    "LoadSlice",
    "LoadSliced",
    "SectionContextd",
    "FULL_RANGE",
    "checked_percentiles",
    "intensity_histogram",
    "percentile_range",
    "ScaleSectionIntensityd",
    "border_weight_map",
    "BorderWeight",
    "BorderWeightd",
    "ForegroundTargetd",
    "SplitForegroundd",
    "InstanceLabelsd",
    "AffinityTargetsd",
    "MembraneFromAffinitiesd",
]


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
        if label is not None and image is not None and np.shape(label) != np.shape(image)[-2:]:
            raise StackError(
                f"{_source(data[self.label_key])}: label is {np.shape(label)} but its image "
                f"{_source(data['image'])} is {np.shape(image)}; they must match"
            )
        return item


class SectionContextd(MapTransform):
    """A section and its ``context`` neighbours on each side as channels: (2k + 1, H, W), the section in the middle.

    Items cut from a stack carry the neighbours already (:func:`scripts.datalists.with_section_context`, the
    blockwise engine's z-halo). A lone (H, W) section, as MONAI Label passes one file, is the one-section stack,
    whose mirrored neighbours are itself: it is repeated. With ``context`` 0 this is ``EnsureChannelFirstd`` for an
    image without a channel.

    Args:
        keys: keys of the images.
        context: ``k``, the sections on each side.
        allow_missing_keys: do not raise for keys missing from an item.
    """

    def __init__(self, keys: KeysCollection, context: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.context = checked_context(context)

    def __call__(self, data: dict) -> dict:
        item = dict(data)
        channels = 2 * self.context + 1
        for key in self.key_iterator(item):
            image = item[key]
            if image.ndim == 2:
                item[key] = image[None] if channels == 1 else np.repeat(np.asarray(image)[None], channels, 0)
            elif image.ndim != 3 or image.shape[0] != channels:
                raise StackError(
                    f"{_source(data[key])}: image of shape {tuple(image.shape)} is neither one (H, W) section nor "
                    f"the {channels} sections of --section_context {self.context} (2k + 1, H, W)"
                )
        return item


#: the percentiles of min-max scaling, the default
FULL_RANGE = (0.0, 100.0)
#: the bins of the histogram that other percentiles are read from, the same for a whole section and its tiles
HISTOGRAM_BINS = 65536


def checked_percentiles(percentiles) -> tuple[float, float]:
    """``(lower, upper)`` intensity percentiles, checked: ``0 <= lower < upper <= 100``."""
    try:
        lower, upper = (float(value) for value in percentiles)
    except (TypeError, ValueError):
        lower = upper = float("nan")
    if not 0 <= lower < upper <= 100:
        raise InputError(
            f"--intensity_percentiles {percentiles!r}: must be [lower, upper] with 0 <= lower < upper <= 100"
        )
    return lower, upper


def intensity_histogram(values, section_range: tuple[float, float]) -> np.ndarray:
    """(:data:`HISTOGRAM_BINS`,) counts of ``values`` in equal bins over their section's (minimum, maximum); summed
    over a section's tiles, they are the whole section's."""
    low, high = (float(value) for value in section_range)
    values = np.asarray(values, dtype=np.float64).ravel()
    if high <= low:
        return np.bincount(np.zeros(values.size, np.int64), minlength=HISTOGRAM_BINS)
    return np.histogram(values, bins=HISTOGRAM_BINS, range=(low, high))[0]


def percentile_range(
    histogram: np.ndarray, section_range: tuple[float, float], percentiles: tuple[float, float]
) -> tuple[float, float]:
    """The section's intensities at ``percentiles`` from its :func:`intensity_histogram`: the lower edge of the bin
    that holds each percentile's pixel, within one bin (1/65536 of the section's range) of ``numpy.percentile``'s;
    exact for 0 and 100."""
    low, high = (float(value) for value in section_range)
    cumulative = np.cumsum(histogram)
    width = (high - low) / len(histogram)
    values = []
    for percentile in percentiles:
        if percentile <= 0 or percentile >= 100:
            values.append(low if percentile <= 0 else high)
            continue
        rank = percentile / 100 * (cumulative[-1] - 1)
        values.append(low + int(np.searchsorted(cumulative, rank, side="right")) * width)
    return values[0], values[1]


class ScaleSectionIntensityd(MapTransform):
    """Scales each channel of a (C, H, W) image to [0, 1] with its section's intensities at two percentiles, as
    float32.

    With the default percentiles 0 and 100 that is the section's minimum and maximum, as
    ``ScaleIntensityd(minv=0, maxv=1, channel_wise=True)`` does; others (e.g. 1 and 99.8) keep hot pixels,
    saturated pixels and padding from setting the scale, and clip what lies outside to [0, 1]. A tile of a section
    (blockwise inference of large sections) carries its section's intensities at the percentiles under
    ``range_key``, so each tile is scaled as the whole section would be: one ``(low, high)`` for all channels, or
    one per channel (the sections of :class:`SectionContextd`). A constant section becomes 0.

    Args:
        keys: keys of the images to scale.
        range_key: the item's key holding the sections' ranges, when the image is part of them.
        percentiles: ``(lower, upper)``, the intensity percentiles that become 0 and 1 (:func:`percentile_range`).
        allow_missing_keys: do not raise for keys missing from an item.
    """

    def __init__(
        self,
        keys: KeysCollection,
        range_key: str = "intensity_range",
        percentiles=FULL_RANGE,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.range_key = range_key
        self.percentiles = checked_percentiles(percentiles)

    def __call__(self, data: dict) -> dict:
        item = dict(data)
        for key in self.key_iterator(item):
            image = torch.as_tensor(item[key], dtype=torch.float32)
            if image.ndim != 3:
                raise ValueError(f"ScaleSectionIntensityd expects a (C, H, W) image, got shape {tuple(image.shape)}")
            given = item.get(self.range_key)
            ranges = np.broadcast_to(given, (len(image), 2)) if given is not None else None
            scaled = [self._scale(channel, None if ranges is None else ranges[c]) for c, channel in enumerate(image)]
            item[key] = torch.stack(scaled)
        return item

    def section_range(self, section) -> tuple[float, float]:
        """A whole (H, W) section's intensities at the percentiles."""
        extremes = float(section.min()), float(section.max())
        if self.percentiles == FULL_RANGE:
            return extremes
        return percentile_range(intensity_histogram(section, extremes), extremes, self.percentiles)

    def _scale(self, channel: torch.Tensor, section_range) -> torch.Tensor:
        low, high = section_range if section_range is not None else self.section_range(channel)
        low, high = float(low), float(high)
        scaled = ScaleIntensityRange(low, high, 0.0, 1.0)(channel) if high > low else channel - low
        return scaled if self.percentiles == FULL_RANGE else scaled.clamp(0.0, 1.0)


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
    """Append :func:`border_weight_map` of a label's channel 0, its membrane mask, as its last channel:
    (C, H, W) -> (C + 1, H, W) (C = 1, or 2 with the foreground of :class:`ForegroundTargetd`).

    Args:
        border_weight: ``w0`` of :func:`border_weight_map`.
        sigma: ``sigma`` of :func:`border_weight_map`, in pixels.
    """

    def __init__(self, border_weight: float = 10.0, sigma: float = 5.0) -> None:
        self.border_weight, self.sigma = border_weight, sigma

    def __call__(self, mask) -> torch.Tensor:
        mask = torch.as_tensor(mask)
        if mask.ndim != 3:
            raise ValueError(f"BorderWeight expects a (C, H, W) label, got shape {tuple(mask.shape)}")
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


class ForegroundTargetd(MapTransform):
    """Appends the foreground of a section's objects (``instances`` > 0) to its label: (C, H, W) -> (C + 1, H, W).

    For objects on a background (``configs/objects.json``): the membrane channel alone cannot tell the background
    from the lines between touching objects, since both are "not inside an object". Put it after the deterministic
    transforms and before the random spatial ones, which then warp the foreground with the membrane.

    Args:
        keys: keys of the labels.
        instances_key: the item's object ids, (H, W), 0 = background (``load_labelled_stack`` keeps them for
            ``--label_format instances``).
    """

    def __init__(self, keys: KeysCollection, instances_key: str = "instances") -> None:
        super().__init__(keys)
        self.instances_key = instances_key

    def __call__(self, data: dict) -> dict:
        item = dict(data)
        if self.instances_key not in item:
            raise InputError(
                f"section {item.get('slice', '?')} has no object ids: objects on a background learn their "
                "foreground from instance labels (--label_format instances)"
            )
        for key in self.key_iterator(item):
            label = torch.as_tensor(item[key])
            foreground = torch.as_tensor(np.asarray(item[self.instances_key]) > 0, device=label.device)
            if foreground.shape != label.shape[1:]:
                raise InputError(
                    f"section {item.get('slice', '?')}: object ids of shape {tuple(foreground.shape)} do not match "
                    f"its label of shape {tuple(label.shape[1:])}"
                )
            item[key] = torch.cat([label, foreground[None].to(label.dtype)])
        return item


class SplitForegroundd(MapTransform):
    """Splits a network's (2, H, W) membrane and foreground probabilities: ``pred`` keeps the (1, H, W) membrane
    (as every output of the bundle expects), ``foreground_key`` gets the (1, H, W) foreground, for the cells.

    Args:
        keys: keys of the probabilities.
        foreground_key: the item's key for the foreground probability.
    """

    def __init__(self, keys: KeysCollection, foreground_key: str = "foreground") -> None:
        super().__init__(keys)
        self.foreground_key = foreground_key

    def __call__(self, data: dict) -> dict:
        item = dict(data)
        for key in self.key_iterator(item):
            probabilities = item[key]
            if probabilities.shape[0] != 2:
                raise InputError(
                    f"objects on a background need a network with 2 output channels (membrane, foreground); it "
                    f"gives {probabilities.shape[0]}"
                )
            item[key], item[self.foreground_key] = probabilities[:1], probabilities[1:]
        return item


#: cell ids of :class:`InstanceLabelsd`: 0 outside the section (the spatial transforms' zero padding), 1 membrane
OUTSIDE, BOUNDARY = 0, 1


class InstanceLabelsd(MapTransform):
    """Appends the cell ids of a membrane mask as the label's last channel: (C, H, W) -> (C + 1, H, W).

    Cells are the 4-connected components of the interior of channel 0 (as the ISBI metric and
    :func:`border_weight_map` see them), numbered from 2; membrane pixels are 1 (``BOUNDARY``), and 0
    (``OUTSIDE``) is left for pixels from outside the section, which the spatial transforms pad with zeros.
    Computed once per section with the deterministic transforms (cached), before augmentation.
    """

    def __call__(self, data: dict) -> dict:
        item = dict(data)
        for key in self.key_iterator(item):
            label = torch.as_tensor(item[key])
            is_membrane = label[0].cpu().numpy() != 0
            cells = connected_components(~is_membrane, connectivity=1)
            ids = np.where(is_membrane, BOUNDARY, cells + BOUNDARY)
            item[key] = torch.cat([label, torch.as_tensor(ids, dtype=label.dtype, device=label.device)[None]])
        return item


def _offsets(offsets) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 2 or offsets.shape[1] != 2 or len(offsets) == 0 or not np.abs(offsets).sum(1).all():
        raise InputError(f"affinity_offsets {offsets.tolist()}: must be a list of nonzero [dy, dx] pixel offsets")
    return offsets


class AffinityTargetsd(MapTransform):
    """Affinity targets and their mask from the cell ids :class:`InstanceLabelsd` appended (after augmentation).

    (C, H, W) label whose channel 0 is the membrane mask and last channel the cell ids -> (1 + 2n, H, W): the
    membrane mask (for the training metric), the ``n`` offsets' affinities, and their mask (see the module
    docstring). Uses ``bioimage_cpp.affinities.compute_affinities``.

    Args:
        keys: keys of the labels.
        offsets: ``n`` offsets ``[dy, dx]`` in pixels, e.g. ``[[-1, 0], [0, -1], [-9, 0], [0, -9]]``.
    """

    def __init__(self, keys: KeysCollection, offsets) -> None:
        super().__init__(keys)
        self.offsets = _offsets(offsets)

    def __call__(self, data: dict) -> dict:
        from bioimage_cpp.affinities import compute_affinities

        item = dict(data)
        for key in self.key_iterator(item):
            label = torch.as_tensor(item[key])
            ids = np.rint(label[-1].cpu().numpy()).astype(np.int64)
            boundary = ids == BOUNDARY
            ids[boundary] = ids.max() + 1 + np.arange(boundary.sum())  # a membrane pixel is its own: affinity 0
            affinities, mask = compute_affinities(ids, self.offsets, ignore_label=OUTSIDE)
            targets = torch.as_tensor(np.concatenate([affinities, mask.astype(np.float32)]), dtype=torch.float32)
            item[key] = torch.cat([label[:1].float(), targets.to(label.device)])
        return item


class MembraneFromAffinitiesd(MapTransform):
    """Membrane probability from predicted affinities: (n, H, W) -> (1, H, W).

    A pixel is membrane where it belongs to none of its four nearest neighbours: ``1 - max`` of its affinities
    to them, read from the ``[-1, 0]`` and ``[0, -1]`` channels (a pixel's affinity down or right is its
    neighbour's up or left; neighbours outside the image count as 0). On true affinities this gives the membrane
    mask back, except that a one-pixel cell, alone among its neighbours, reads as membrane.

    Args:
        keys: keys of the affinity probabilities.
        offsets: the network's offsets, in its channel order; must include ``[-1, 0]`` and ``[0, -1]``.
        affinities_key: also keep the affinities under this key of the item (for the cells), or not (None).
    """

    def __init__(self, keys: KeysCollection, offsets, affinities_key: str | None = None) -> None:
        super().__init__(keys)
        self.affinities_key = affinities_key
        offsets = _offsets(offsets).tolist()
        if [-1, 0] not in offsets or [0, -1] not in offsets:
            raise InputError(f"affinity_offsets {offsets}: the membrane needs the nearest ones, [-1, 0] and [0, -1]")
        self.up, self.left = offsets.index([-1, 0]), offsets.index([0, -1])

    def __call__(self, data: dict) -> dict:
        item = dict(data)
        for key in self.key_iterator(item):
            affinities = torch.as_tensor(item[key])
            if self.affinities_key:
                item[self.affinities_key] = affinities
            up, left = affinities[self.up], affinities[self.left]
            nearest = torch.zeros((4, *up.shape), dtype=up.dtype, device=up.device)
            nearest[0, 1:], nearest[1, :-1] = up[1:], up[1:]  # to the pixel above; the one below, seen from it
            nearest[2, :, 1:], nearest[3, :, :-1] = left[:, 1:], left[:, 1:]
            item[key] = 1.0 - nearest.amax(0, keepdim=True)
        return item
