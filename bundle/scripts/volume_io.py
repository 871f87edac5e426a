"""Volumes of any size: lazy readers of every input kind, and OME-Zarr output.

:func:`open_volume` opens, without reading the pixels:

* a multi-page TIFF or BigTIFF (``.tif``/``.tiff``), read page by page through tifffile's Zarr store;
* a single PNG/TIF image, or a folder of per-section PNG/TIF files (natural order), read a file at a time;
* a Zarr array (2D or 3D), read chunk by chunk;
* an OME-Zarr image (NGFF 0.4 or 0.5), read with ome-zarr-py: level 0 of the first multiscale image, with its
  pixel size from the ``coordinateTransformations``; axes other than z, y, x must have length 1.

A :class:`Volume` is a (Z, H, W) ``dask.array`` plus the file it came from, its pixel size and its kind; indexed,
it is a dataset of its sections (inference.json's ``dataset``).
:meth:`Volume.read` reads one block and checks it (corrupt pages, slices that do not match, NaN), raising
:class:`~scripts.stack_io.StackError` naming the file and the section. :func:`create_ome_zarr` and
:func:`write_ome_zarr_metadata` write the NGFF image-with-labels layout through ome-zarr-py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from .errors import InputError
from .stack_io import (
    LENGTH_IN_NM,
    SLICE_SUFFIXES,
    StackError,
    TiffWarnings,
    as_sections,
    list_slice_files,
    open_tiff_stack,
    read_image_file,
)
from .stack_io import read_pixel_size as read_stack_pixel_size

__all__ = [
    "Volume",
    "open_volume",
    "is_zarr",
    "read_pixel_size",
    "volume_name",
    "default_output_format",
    "OUTPUT_FORMATS",
    "OME_ZARR_VERSIONS",
    "checked_ome_zarr_version",
    "create_ome_zarr",
    "write_ome_zarr_metadata",
]

OUTPUT_FORMATS = ("tif", "ome-zarr")


@dataclass
class Volume:
    """A lazily read (Z, H, W) image volume.

    Attributes:
        path: the file or folder it was opened from (named in every error).
        array: (Z, H, W) dask array in the input's dtype.
        pixel_size: (y, x) in nm, or None when the input records none.
        kind: ``"tif"``, ``"folder"``, ``"image"``, ``"zarr"`` or ``"ome-zarr"``.
    """

    path: Path
    array: da.Array
    pixel_size: tuple[float, float] | None
    kind: str
    #: reads ``(z, rows, columns)`` directly (a folder's file, a TIFF's or Zarr array's chunks), skipping the dask
    #: graph, which costs ten times the read of a 512 x 512 section
    region_reader: Callable[[int, slice, slice], np.ndarray] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(size) for size in self.array.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, z: int) -> np.ndarray:
        """Section ``z``, whole and checked (a volume is a map-style dataset of its sections)."""
        if not -len(self) <= z < len(self):
            raise IndexError(f"{self.path}: has {len(self)} sections, no section {z}")
        return self.read(z % len(self))

    def read(self, z: int, rows: slice = slice(None), columns: slice = slice(None)) -> np.ndarray:
        """Section ``z``'s pixels in ``rows`` x ``columns`` as a numpy array, checked.

        Args:
            z: the section.
            rows, columns: the part of it (default: all).

        Returns:
            (rows, columns) array in the input's dtype.

        Raises:
            StackError: the block cannot be decoded (corrupt page or chunk, a slice of another shape) or holds NaN.
            OSError: the file system failed to read it (unchanged, so that a run can tell it from bad data).
        """
        recorder, tiff_logger = TiffWarnings(), logging.getLogger("tifffile")
        tiff_logger.addHandler(recorder)
        try:
            if self.region_reader is not None:
                block = np.asarray(self.region_reader(z, rows, columns))
            else:
                block = np.asarray(self.array[z, rows, columns].compute(scheduler="synchronous"))
        except (StackError, OSError):  # bad data named already; an I/O error is the caller's to report
            raise
        except Exception as error:  # zarr, codecs and tifffile raise many types for unreadable data
            raise StackError(
                f"{self.path}: cannot read section {z} ({type(error).__name__}: {error}); the file is corrupt or "
                "truncated there"
            ) from error
        finally:
            tiff_logger.removeHandler(recorder)
        if recorder.messages:
            raise StackError(
                f"{self.path}: corrupt or truncated TIFF in section {z} ({'; '.join(recorder.messages[:3])})"
            )
        if np.issubdtype(block.dtype, np.floating) and not np.isfinite(block).all():
            raise StackError(f"{self.path}: contains NaN or infinite values (section {z})")
        return block


def is_zarr(path: str | Path) -> bool:
    """Whether ``path`` is a Zarr array or group (v2 or v3) on disk."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup"))


def _multiscales(path: Path) -> list | None:
    """The NGFF ``multiscales`` list of a Zarr group (0.5 keeps it under ``ome``), or None."""
    for name in ("zarr.json", ".zattrs"):
        if (path / name).is_file():
            attributes = json.loads((path / name).read_text())
            attributes = attributes.get("attributes", attributes)
            return attributes.get("ome", attributes).get("multiscales")
    return None


def _checked_dtype(array, path: Path):
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise StackError(f"{path}: has unsupported dtype {array.dtype}")
    if 0 in array.shape:
        raise StackError(f"{path}: contains no pixels (shape {tuple(array.shape)})")


def _zarr_reader(array) -> Callable[[int, slice, slice], np.ndarray]:
    """Reads ``(z, rows, columns)`` of a (Z, H, W) Zarr array, or of an (H, W) one as its only section."""
    if array.ndim == 3:
        return lambda z, rows, columns: array[z, rows, columns]
    return lambda z, rows, columns: array[rows, columns]


def _open_tiff(path: Path) -> tuple[da.Array, Callable[[int, slice, slice], np.ndarray]]:
    import zarr

    recorder, tiff_logger = TiffWarnings(), logging.getLogger("tifffile")
    tiff_logger.addHandler(recorder)  # tifffile reports broken pages by logging, not raising
    try:
        tiff, series = open_tiff_stack(path)
        len(tiff.pages)  # reads every page's header: a truncated file is found here, not at its last page
    except StackError:
        raise
    except Exception as error:  # tifffile raises many types for files that are not TIFFs
        raise StackError(f"{path}: cannot be read as an image ({type(error).__name__}: {error})") from error
    finally:
        tiff_logger.removeHandler(recorder)
    if recorder.messages:
        raise StackError(f"{path}: corrupt or truncated TIFF ({'; '.join(recorder.messages[:3])})")
    shape = series.shape
    # the same colour rule as scripts.stack_io (a 3- or 4-slice grayscale stack may be stored as planar RGB)
    if len(shape) == 4 or (len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4) or len(shape) not in (2, 3):
        raise StackError(
            f"{path}: has shape {shape}; expected single-channel grayscale slices (H, W) or a stack (Z, H, W), "
            "not colour or multi-channel images"
        )
    # the file stays open for the reader's life: tifffile's Zarr store reads pages on demand (level 0 of a pyramid)
    try:
        pages = zarr.open_array(series.aszarr(level=0), mode="r")
    except Exception as error:  # tifffile and zarr raise many types for layouts they cannot map
        raise StackError(f"{path}: cannot be read page by page ({type(error).__name__}: {error})") from error
    array = da.from_zarr(pages)
    _checked_dtype(array, path)
    return (array if array.ndim == 3 else array[None]), _zarr_reader(pages)


def _open_folder(path: Path) -> tuple[da.Array, Callable[[int], np.ndarray]]:
    files = list_slice_files(path)
    first = as_sections(read_image_file(files[0]), files[0], per_slice_file=True)[0]

    def read(file: Path) -> np.ndarray:
        image = as_sections(read_image_file(file), file, per_slice_file=True)[0]
        if image.shape != first.shape or image.dtype != first.dtype:
            raise StackError(
                f"{file}: slice is {image.shape} {image.dtype}, but the first slice of {path} is "
                f"{first.shape} {first.dtype}; all slices of a stack must match"
            )
        return image

    sections = [da.from_delayed(dask.delayed(read)(file), first.shape, first.dtype) for file in files]
    return da.stack(sections), lambda z, rows, columns: read(files[z])[rows, columns]


def _open_ome_zarr(path: Path) -> tuple[da.Array, tuple[float, float] | None]:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    try:
        image = next(iter(Reader(parse_url(str(path)))()))
    except Exception as error:  # ome-zarr raises many types for broken metadata
        raise StackError(f"{path}: cannot be read as an OME-Zarr image ({type(error).__name__}: {error})") from error
    array = image.data[0]
    axes = image.metadata.get("axes") or [{"name": name} for name in "tczyx"[-array.ndim :]]
    names = [axis["name"] for axis in axes]
    kept = [name for name in names if name in ("z", "y", "x")]
    others = {name: array.shape[i] for i, name in enumerate(names) if name not in kept}
    if kept[-2:] != ["y", "x"] or any(size != 1 for size in others.values()):
        raise StackError(
            f"{path}: OME-Zarr image has axes {names} with shape {tuple(array.shape)}; expected y and x, optionally "
            "z, and length 1 on every other axis (one channel, one time point)"
        )
    array = array[tuple(slice(None) if name in kept else 0 for name in names)]
    _checked_dtype(array, path)
    pixel_size = None
    transforms = (image.metadata.get("coordinateTransformations") or [None])[0] or []
    scale = next((t["scale"] for t in transforms if t.get("type") == "scale"), None)
    if scale is not None:
        sizes = []
        for name in ("y", "x"):
            unit = axes[names.index(name)].get("unit")
            sizes.append(float(scale[names.index(name)]) * LENGTH_IN_NM.get(unit, float("nan")) if unit else np.nan)
        pixel_size = tuple(sizes) if np.isfinite(sizes).all() else None
    return (array if array.ndim == 3 else array[None]), pixel_size


def _open_zarr_array(path: Path) -> tuple[da.Array, Callable[[int, slice, slice], np.ndarray]]:
    import zarr

    try:
        array = zarr.open_array(str(path), mode="r")
    except Exception as error:
        raise StackError(f"{path}: cannot be read as a Zarr array ({type(error).__name__}: {error})") from error
    if array.ndim not in (2, 3):
        raise StackError(f"{path}: Zarr array has shape {array.shape}; expected (H, W) or (Z, H, W)")
    lazy = da.from_zarr(array)
    _checked_dtype(lazy, path)
    return (lazy if lazy.ndim == 3 else lazy[None]), _zarr_reader(array)


def open_volume(path: str | Path) -> Volume:
    """Open an image volume lazily (the kinds: see the module docstring); no pixel is read.

    Raises:
        StackError: naming ``path`` and what is wrong with it.
    """
    path = Path(path)
    if not path.exists():
        raise StackError(f"{path}: no such file or folder")
    if is_zarr(path):
        if _multiscales(path):
            array, pixel_size = _open_ome_zarr(path)
            return Volume(path, array, pixel_size, "ome-zarr")
        array, reader = _open_zarr_array(path)
        return Volume(path, array, None, "zarr", reader)
    if path.is_dir():
        array, reader = _open_folder(path)
        return Volume(path, array, read_stack_pixel_size(path), "folder", reader)
    if path.suffix.lower() in (".tif", ".tiff"):
        array, reader = _open_tiff(path)
        return Volume(path, array, read_stack_pixel_size(path), "tif", reader)
    if path.suffix.lower() in SLICE_SUFFIXES:
        section = as_sections(read_image_file(path), path, per_slice_file=True)
        return Volume(path, da.from_array(section, chunks=(1, *section.shape[1:])), None, "image")
    raise StackError(
        f"{path}: is not a TIFF, PNG, folder of slices, Zarr array or OME-Zarr image "
        f"(suffixes {'/'.join(SLICE_SUFFIXES)}, or a folder holding zarr.json/.zarray/.zgroup)"
    )


def read_pixel_size(path: str | Path) -> tuple[float, float] | None:
    """The (y, x) pixel size in nm the input records (TIFF tags, OME-TIFF, OME-Zarr), or None."""
    return open_volume(path).pixel_size  # opened first, so a bad input is reported as such, not as its metadata


def volume_name(path: str | Path) -> str:
    """The base name of a volume's outputs: its file or folder name without ``.tif``, ``.ome.tif``, ``.zarr``,
    ``.ome.zarr`` or an image suffix."""
    name = Path(path).name or Path(path).resolve().name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", *SLICE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def default_output_format(input_path: str | Path) -> str:
    """``"ome-zarr"`` for Zarr inputs, ``"tif"`` for every other kind."""
    return "ome-zarr" if is_zarr(input_path) else "tif"


def _axes(pixel_size: tuple[float, float] | None) -> list[dict]:
    unit = {"unit": "nanometer"} if pixel_size is not None else {}
    return [{"name": "z", "type": "space"}, *({"name": name, "type": "space", **unit} for name in "yx")]


#: NGFF versions written: 0.5 (Zarr v3, the default) and 0.4 (Zarr v2, for viewers that read no Zarr v3 yet)
OME_ZARR_VERSIONS = ("0.5", "0.4")


def checked_ome_zarr_version(version: str) -> str:
    """``--ome_zarr_version`` as a string, checked against :data:`OME_ZARR_VERSIONS`."""
    version = str(version)
    if version not in OME_ZARR_VERSIONS:
        raise InputError(f"--ome_zarr_version {version}: must be one of {', '.join(OME_ZARR_VERSIONS)}")
    return version


def _ngff_format(version: str):
    from ome_zarr.format import FormatV04, FormatV05

    return FormatV05() if checked_ome_zarr_version(version) == "0.5" else FormatV04()


def create_ome_zarr(path: str | Path, shape, chunks, image_dtype, label_dtype=np.uint32, version: str = "0.5"):
    """An NGFF image group at ``path``: the image array ``0`` and the label array ``labels/cells/0``, empty.

    A float image is stored uncompressed (a probability map compresses by about a tenth, at several times the
    cost of writing it); the labels are compressed with Zarr's default codec.

    Returns:
        (root group, image array, label array); the metadata follows with :func:`write_ome_zarr_metadata` once the
        arrays are complete.
    """
    import zarr

    version = checked_ome_zarr_version(version)
    zarr_format = 3 if version == "0.5" else 2  # as ome-zarr's FormatV05 / FormatV04, unimported
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    options = {"shape": shape, "chunks": chunks, "fill_value": 0}
    if zarr_format == 3:
        options["dimension_names"] = ["z", "y", "x"]
    else:  # NGFF 0.4 keeps '/' between chunk indices
        options["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    floating = np.issubdtype(image_dtype, np.floating)
    image = root.create_array("0", dtype=image_dtype, compressors=None if floating else "auto", **options)
    labels = root.require_group("labels").require_group("cells").create_array("0", dtype=label_dtype, **options)
    return root, image, labels


def write_ome_zarr_metadata(root, pixel_size: tuple[float, float] | None, name: str, version: str = "0.5") -> None:
    """The NGFF metadata of :func:`create_ome_zarr`'s group, written by ome-zarr-py: the multiscales of the image
    and of the cells label image, the labels list and the label metadata."""
    from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

    fmt = _ngff_format(version)
    scale = [1.0, *(pixel_size if pixel_size is not None else (1.0, 1.0))]
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]
    write_multiscales_metadata(root, datasets, fmt=fmt, axes=_axes(pixel_size), name=f"{name} membrane probability")
    write_multiscales_metadata(root["labels"]["cells"], datasets, fmt=fmt, axes=_axes(pixel_size), name="cells")
    # lists "cells" in labels/ and marks it a label image of the image two levels up
    write_label_metadata(root["labels"], "cells", fmt=fmt, source={"image": "../../"})
