"""The plugin's sample data: the shipped ISBI 2012 sections, opened through napari's File > Open Sample."""

import numpy as np
import tifffile
from conftest import DATA

from emseg_napari.reader import PIXEL_SIZE_KEY


def test_the_sample_data_opens_the_shipped_sections_at_4_nm(viewer):
    viewer.open_sample("emseg", "isbi2012_training")
    image, membranes = viewer.layers
    assert image.data.shape == membranes.data.shape == (30, 512, 512)
    np.testing.assert_array_equal(image.data, tifffile.imread(DATA / "train-volume.tif"))
    np.testing.assert_array_equal(membranes.data, tifffile.imread(DATA / "train-labels.tif") == 0)
    assert tuple(image.scale) == (4.0, 4.0, 4.0) and image.metadata[PIXEL_SIZE_KEY] == (4.0, 4.0)
