"""Shared fixtures: the bundle on sys.path (configs import it as ``scripts``) and small EM stacks made from
crops of the shipped ISBI 2012 data."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
DATA = BUNDLE / "data" / "isbi2012"
sys.path.insert(0, str(BUNDLE))
# the napari plugin's tests run headless: Qt draws offscreen, and napari's OpenGL canvas gets its context from the
# virtual X display pytest-xvfb starts (where Xvfb is installed)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def bundle_config(files: list[str], overrides: dict | None = None) -> ConfigParser:
    """The bundle's config ``files`` (paths relative to bundle/, later ones override earlier), rooted at bundle/,
    with ``overrides`` applied; nothing is instantiated until a test asks for it."""
    config = ConfigParser()
    config.read_config([str(BUNDLE / name) for name in files])
    config.update({"bundle_root": str(BUNDLE), **(overrides or {})})
    return config


def shipped_predictor():
    """inference.json's predictor with the shipped weights, eager fp32 on the CPU."""
    from scripts.checkpoints import load_weights

    config = bundle_config(["configs/inference.json"], {"device": "cpu", "backend": "eager"})
    load_weights(config.get_parsed_content("network"), config.get_parsed_content("model_path"), "cpu")
    return config.get_parsed_content("predictor")


def with_inferer(predictor, inferer):
    """``predictor``'s network, preprocessing and postprocessing around another ``inferer``."""
    from scripts.pipeline import SectionPredictor

    return SectionPredictor(predictor.network, inferer, predictor.preprocessing, predictor.postprocessing)


@pytest.fixture(scope="session")
def tiny_stack_dir(tmp_path_factory) -> Path:
    """10 slices of 96x96 cropped from the shipped training stack, in the shipped file layout."""
    folder = tmp_path_factory.mktemp("tiny_isbi")
    images = tifffile.imread(DATA / "train-volume.tif")[:10, 200:296, 200:296]
    labels = tifffile.imread(DATA / "train-labels.tif")[:10, 200:296, 200:296]
    tifffile.imwrite(folder / "train-volume.tif", images)
    tifffile.imwrite(folder / "train-labels.tif", labels)
    tifffile.imwrite(folder / "test-volume.tif", images[:3])
    return folder


def two_cells(width: int = 9, height: int = 4) -> np.ndarray:
    """Ground-truth membrane mask (1 = membrane): two 4-pixel-wide cells separated by a membrane column."""
    membrane = np.zeros((height, width), dtype=np.uint8)
    membrane[:, width // 2] = 1
    return membrane


def touching_blobs(sections: int = 3, size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Objects on a background, as nuclei or cultured cells are imaged: discs drawn with scikit-image, later ones
    over earlier ones, so that many touch, on a darker noisy background.

    Returns:
        (Z, H, W) uint16 images (a 16-bit camera's range) and (Z, H, W) int32 instance ids (0 = background).
    """
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    ids = np.zeros((sections, size, size), np.int32)
    for z in range(sections):
        for index in range(1, 9):
            centre = rng.integers(size // 6, size - size // 6, 2)
            rows, columns = disk(tuple(centre), rng.integers(size // 12, size // 6), shape=(size, size))
            ids[z, rows, columns] = index
    brightness = np.where(ids > 0, 30000 + 2000 * (ids % 3), 8000).astype(np.float64)
    images = np.clip(brightness + rng.normal(0, 1500, ids.shape), 0, 65535).astype(np.uint16)
    return images, ids


@pytest.fixture
def viewer(request):
    """A napari viewer (napari's ``make_napari_viewer``, closed after the test), skipped without an X display for
    its OpenGL canvas."""
    if not os.environ.get("DISPLAY"):
        pytest.skip("napari's canvas needs OpenGL from an X display: install Xvfb (apt-get install xvfb)")
    return request.getfixturevalue("make_napari_viewer")()
