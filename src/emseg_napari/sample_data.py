"""The shipped ISBI 2012 sections as napari sample data (File > Open Sample > emseg)."""

from __future__ import annotations

import numpy as np

from .bundle import bundle_root
from .reader import PIXEL_SIZE_KEY, layer_scale

__all__ = ["isbi2012_training", "isbi2012_test", "ISBI2012_PIXEL_SIZE"]

#: the challenge's pixel size, (y, x) in nm (4 x 4 x 50 nm voxels); the shipped TIFFs record none
ISBI2012_PIXEL_SIZE = (4.0, 4.0)


def _stack(name: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(bundle_root() / "data" / "isbi2012" / name)


def _image(data: np.ndarray, name: str) -> tuple:
    return data, {"name": name, **layer_scale(ISBI2012_PIXEL_SIZE), "metadata": {PIXEL_SIZE_KEY: ISBI2012_PIXEL_SIZE}}


def isbi2012_training() -> list[tuple]:
    """The 30 training sections (512 x 512) and their true membranes (a Labels layer: 1 = membrane)."""
    membranes = (_stack("train-labels.tif") == 0).astype(np.uint8)
    image = _image(_stack("train-volume.tif"), "ISBI 2012 training sections")
    labels = (membranes, {**image[1], "name": "true membranes", "opacity": 0.4})
    return [(*image, "image"), (*labels, "labels")]


def isbi2012_test() -> list[tuple]:
    """The 30 test sections (512 x 512), without labels."""
    return [(*_image(_stack("test-volume.tif"), "ISBI 2012 test sections"), "image")]
