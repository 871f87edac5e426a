"""Reading EM stacks: a multi-page TIFF, a single PNG/TIF image, or a folder of per-section PNG/TIF files.

Every reader validates what it reads and raises :class:`StackError` naming the file and the problem, so a
bad input fails before any training or writing starts. Two label conventions are read:

* label **stacks** (``train-labels.tif``, :func:`read_membrane_labels`) follow ISBI 2012: 255 (or 1) = cell
  interior, 0 = membrane;
* per-section label **files** (:func:`read_membrane_index_labels`, e.g. the ones MONAI Label saves) hold the
  class indices of ``channel_def`` in metadata.json: 0 = background (cell interior), 1 = membrane.

Both are returned as the **membrane** mask (1 = membrane), because membrane is what the network predicts.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from .errors import InputError
from .flags import number

__all__ = [
    "SLICE_SUFFIXES",
    "LENGTH_IN_NM",
    "StackError",
    "TiffWarnings",
    "read_image_file",
    "as_sections",
    "list_slice_files",
    "open_tiff_stack",
    "read_stack",
    "read_slice",
    "MAX_MEMBRANE_FRACTION",
    "read_membrane_labels",
    "read_instance_labels",
    "read_membrane_index_labels",
    "read_pixel_size",
]

SLICE_SUFFIXES = (".tif", ".tiff", ".png")


class StackError(InputError):
    """An input image or label stack that cannot be used; the message names the file and the problem."""


def _natural_key(path: Path) -> list:
    """Sort ``slice_2.png`` before ``slice_10.png``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


GRAYSCALE_PIL_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")


class TiffWarnings(logging.Handler):
    """Collects what tifffile logs while reading: it reports broken pages by logging, not raising."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def open_tiff_stack(path: Path) -> tuple[tifffile.TiffFile, tifffile.TiffPageSeries]:
    """An open TIFF and the one image series that holds all its pages.

    A file written one page at a time (``TiffWriter.write`` in a loop) holds one series per page; its pages are
    read as one stack when they all have the same shape and type. A file of several different images (sizes,
    types, or OME-TIFF positions) is refused: reading only its first image would silently drop the others.

    Raises:
        StackError: no pages, a palette (colour-map) TIFF, or several different images; the file is closed then.
    """
    tiff = tifffile.TiffFile(path)
    try:
        if not tiff.pages:
            raise StackError(f"{path}: cannot be read as an image (no TIFF pages)")
        # RGB is not rejected here: tifffile stores a plain 3- or 4-slice grayscale stack as planar RGB(A) unless
        # told otherwise; the readers reject interleaved colour by shape
        if getattr(tiff.pages[0], "photometric", None) == tifffile.PHOTOMETRIC.PALETTE:
            raise StackError(f"{path}: is a palette (colour-map) TIFF; expected single-channel grayscale slices")
        if len(tiff.series) > 1:  # series by page shape and type rather than by write call
            tiff.close()
            tiff = tifffile.TiffFile(path, is_shaped=False)
        if len(tiff.series) > 1:
            shown = ", ".join(f"{series.shape} {series.dtype}" for series in tiff.series[:4])
            more = ", ..." if len(tiff.series) > 4 else ""
            raise StackError(
                f"{path}: holds {len(tiff.series)} different images ({shown}{more}); expected one stack of sections "
                "of one size and type"
            )
    except BaseException:
        tiff.close()
        raise
    return tiff, tiff.series[0]


def _read_tiff(path: Path) -> np.ndarray:
    recorder, tiff_logger = TiffWarnings(), logging.getLogger("tifffile")
    tiff_logger.addHandler(recorder)
    try:
        tiff, series = open_tiff_stack(path)
        with tiff:
            array = series.asarray()
    finally:
        tiff_logger.removeHandler(recorder)
    if recorder.messages:
        raise StackError(f"{path}: corrupt or truncated TIFF ({'; '.join(recorder.messages[:3])})")
    return array


def read_image_file(path: Path) -> np.ndarray:
    """One image file (TIFF, PNG, ...) as an array, any shape; corrupt, empty and colour files are refused."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = _read_tiff(path)
        else:
            with Image.open(path) as image:
                if image.mode not in GRAYSCALE_PIL_MODES:
                    raise StackError(
                        f"{path}: is a {image.mode}-mode image; expected single-channel grayscale slices, "
                        "not colour or palette images"
                    )
                array = np.asarray(image)
    except StackError:
        raise
    except Exception as error:  # tifffile/PIL raise many types for corrupt files
        raise StackError(f"{path}: cannot be read as an image ({type(error).__name__}: {error})") from error
    if array.size == 0:
        raise StackError(f"{path}: cannot be read as an image (no pixel data: corrupt or empty file)")
    return array


def as_sections(array: np.ndarray, path: Path, per_slice_file: bool) -> np.ndarray:
    """Return ``array`` as (Z, H, W); reject colour images with a clear message."""
    colour = array.ndim == 4 or (array.ndim == 3 and array.shape[-1] in (3, 4) and min(array.shape[:2]) > 4)
    if colour or (per_slice_file and array.ndim != 2):
        raise StackError(
            f"{path}: has shape {array.shape}; expected single-channel grayscale slices "
            "(H, W) or a stack (Z, H, W), not colour or multi-channel images"
        )
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise StackError(f"{path}: has shape {array.shape}; expected (H, W) or (Z, H, W)")
    if array.size == 0:
        raise StackError(f"{path}: contains no pixels (shape {array.shape})")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise StackError(f"{path}: has unsupported dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise StackError(f"{path}: contains NaN or infinite values")
    return array


def list_slice_files(folder: Path) -> list[Path]:
    """The PNG/TIF files of a slice folder, in natural order."""
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in SLICE_SUFFIXES), key=_natural_key)
    if not files:
        raise StackError(f"{folder}: folder holds no {'/'.join(SLICE_SUFFIXES)} slices")
    return files


def read_stack(path: str | Path) -> np.ndarray:
    """Read a multi-page TIFF, a single image, or a folder of slice images as a (Z, H, W) array.

    Args:
        path: a ``.tif``/``.tiff``/``.png`` file, or a folder of such files (one slice each, natural order).

    Returns:
        array of shape (Z, H, W) in the file's dtype.
    """
    path = Path(path)
    if not path.exists():
        raise StackError(f"{path}: no such file or folder")
    if path.is_file():
        return as_sections(read_image_file(path), path, per_slice_file=False)
    files = list_slice_files(path)
    slices = [as_sections(read_image_file(f), f, per_slice_file=True)[0] for f in files]
    first = slices[0]
    for file, image in zip(files, slices, strict=True):
        if image.shape != first.shape or image.dtype != first.dtype:
            raise StackError(
                f"{file}: slice is {image.shape} {image.dtype}, but the first slice of {path} is "
                f"{first.shape} {first.dtype}; all slices of a stack must match"
            )
    return np.stack(slices)


#: a label stack read in the default convention with more membrane than this is taken for an inverted one
MAX_MEMBRANE_FRACTION = 0.5


def read_membrane_labels(path: str | Path, membrane_value: int | None = None) -> np.ndarray:
    """Read a binary label stack as a uint8 membrane mask (1 = membrane).

    Args:
        path: the label stack (any input of :func:`read_stack`).
        membrane_value: the value that marks membrane (0, 1 or 255; every other value is cell interior). None:
            the ISBI 2012 convention (0 = membrane, 255 or 1 = interior), checked for plausibility: a stack
            that would be more than :data:`MAX_MEMBRANE_FRACTION` membrane is refused as probably inverted
            (0/1 labels with 1 = membrane, as MONAI Label's per-section labels are).

    Returns:
        array of shape (Z, H, W), dtype uint8, values in {0, 1}.

    Raises:
        StackError: the labels are not binary, hold no membrane at all, or look inverted (default convention).
    """
    labels = read_stack(path)
    values = np.unique(labels)
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise StackError(
            f"{path}: labels must be binary (0 = membrane, 255 or 1 = interior), found values {shown}; instance "
            "labels (one id per object, 0 = background) take --label_format instances"
        )
    if membrane_value is None:
        membrane = labels == 0
        fraction = float(membrane.mean())
        if fraction > MAX_MEMBRANE_FRACTION:
            raise StackError(
                f"{path}: {fraction:.0%} of the pixels would be membrane (value 0), where EM sections have about "
                "10-30 %: the labels look inverted; pass --membrane_label 1 if 1 marks membrane, or "
                "--membrane_label 0 to train on them as they are"
            )
    else:
        value = number(membrane_value, "membrane_label", 0, 255, integer=True)
        if value not in (0, 1, 255):
            raise StackError(f"--membrane_label {membrane_value}: must be 0, 1 or 255 (or null: 0 = membrane, checked)")
        membrane = labels == value
    if not membrane.any():
        raise StackError(f"{path}: holds no membrane pixel; labels must mark the membranes between cells")
    return membrane.astype(np.uint8)


def read_instance_labels(path: str | Path) -> np.ndarray:
    """Read an instance label stack: one id per object in each section, 0 for background (or membrane).

    Ids need not be consecutive, and each section is read on its own (the same id in two sections is two
    objects as far as training is concerned).

    Returns:
        array of shape (Z, H, W), dtype int64, values >= 0.

    Raises:
        StackError: the ids are not whole non-negative numbers, no section holds an object, or the stack holds no
            values but 0 and 1, or 0 and 255 (a binary membrane mask, which the default --label_format reads).
    """
    labels = read_stack(path)
    if labels.dtype == bool or not np.array_equal(labels, np.round(labels)) or labels.min() < 0:
        raise StackError(
            f"{path}: instance labels must be whole numbers >= 0 (one id per object, 0 = background), found "
            f"dtype {labels.dtype} with values from {labels.min()} to {labels.max()}"
        )
    labels = labels.astype(np.int64)
    if not labels.any():
        raise StackError(f"{path}: holds no object (every label is 0 = background)")
    ids = np.unique(labels).tolist()
    if set(ids) <= {0, 1} or set(ids) <= {0, 255}:
        raise StackError(
            f"{path}: holds the values {ids} only, a binary mask rather than one id per object; binary membrane "
            "labels (0 = membrane) take the default --label_format membrane"
        )
    return labels


def read_slice(path: str | Path) -> np.ndarray:
    """Read one grayscale slice (a PNG/TIF file holding a single 2D image).

    Returns:
        array of shape (H, W) in the file's dtype.
    """
    stack = read_stack(path)
    if stack.shape[0] != 1:
        raise StackError(f"{path}: holds {stack.shape[0]} slices; a datalist item must be a single 2D slice")
    return stack[0]


def read_membrane_index_labels(path: str | Path) -> np.ndarray:
    """Read one label slice of class indices (0 = background/cell interior, 1 = membrane) as a membrane mask.

    Returns:
        array of shape (H, W), dtype uint8, values in {0, 1}.
    """
    labels = read_slice(path)
    values = np.unique(labels)
    if not set(values.tolist()) <= {0, 1}:
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise StackError(
            f"{path}: label values must be class indices 0 = background (cell interior) and 1 = membrane, found "
            f"{shown}; ISBI-style label stacks (0 = membrane, 255 = interior) are read through "
            "--image_path/--label_path instead"
        )
    return labels.astype(np.uint8)


#: the length units of TIFF and OME metadata, in nanometres
LENGTH_IN_NM = {
    "nm": 1.0,
    "nanometer": 1.0,
    "µm": 1e3,
    "\u03bcm": 1e3,  # Greek mu, which some writers use for the micro sign
    "um": 1e3,
    "micron": 1e3,
    "micrometer": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "cm": 1e7,
    "centimeter": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "inch": 2.54e7,
}
_RESOLUTION_UNIT_NM = {2: 2.54e7, 3: 1e7}  # TIFF ResolutionUnit: 2 = inch, 3 = centimetre (1 = none)


def _ome_pixel_size(ome_xml: str) -> tuple[float, float] | None:
    import xml.etree.ElementTree as ElementTree

    for element in ElementTree.fromstring(ome_xml).iter():
        if element.tag.endswith("Pixels") and "PhysicalSizeX" in element.attrib:
            sizes = []
            for axis in ("Y", "X"):
                size = float(element.attrib.get(f"PhysicalSize{axis}", element.attrib["PhysicalSizeX"]))
                unit = element.attrib.get(f"PhysicalSize{axis}Unit", "µm")
                sizes.append(size * LENGTH_IN_NM.get(unit, float("nan")))
            return tuple(sizes) if np.isfinite(sizes).all() else None
    return None


def _tiff_pixel_size(path: Path) -> tuple[float, float] | None:
    with tifffile.TiffFile(path) as tiff:
        if tiff.is_ome and tiff.ome_metadata:
            return _ome_pixel_size(tiff.ome_metadata)
        tags = tiff.pages[0].tags
        if "XResolution" not in tags or "YResolution" not in tags:
            return None
        unit = _RESOLUTION_UNIT_NM.get(int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2)
        if tiff.is_imagej and tiff.imagej_metadata and "unit" in tiff.imagej_metadata:
            unit = LENGTH_IN_NM.get(str(tiff.imagej_metadata["unit"]).strip().lower())
        if unit is None:
            return None
        (y_count, y_length), (x_count, x_length) = tags["YResolution"].value, tags["XResolution"].value
        if not (y_count and x_count):
            return None
        return (unit * y_length / y_count, unit * x_length / x_count)


def read_pixel_size(path: str | Path) -> tuple[float, float] | None:
    """The (y, x) pixel size in nm a stack's file records, or None when it records none.

    Read from OME-TIFF ``PhysicalSizeY/X``, ImageJ TIFF (resolution tags in its ``unit``), or the TIFF
    resolution tags with ResolutionUnit inch or centimetre; a folder gives its first slice's. PNG files and
    TIFFs without a unit (ResolutionUnit none, as the shipped ISBI stacks) give None.
    """
    path = Path(path)
    if path.is_dir():
        path = list_slice_files(path)[0]
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        return _tiff_pixel_size(path)
    except Exception as error:  # the pixels were read already; unreadable metadata is reported, not guessed
        raise StackError(f"{path}: cannot read its pixel size ({type(error).__name__}: {error})") from error
