"""The outputs of inference: TIFF stacks or an OME-Zarr image, as two implementations of one writer interface.

A run computes its blocks into a work folder (a Zarr group: the probability ``0`` and the block-local cells
``cells_local``, see :mod:`scripts.volumes`). Finishing hands the writer the work group and the sections in order,
each with its blocks and the lookups from block-local to volume-wide cell ids. The writer:

* :meth:`~TiffOutputs.write`: writes every output under a hidden temporary name (``.<file>.partial``);
* :meth:`~TiffOutputs.commit`: renames them all into place, once all are complete;
* :meth:`~TiffOutputs.discard`: removes the temporary files after a failure (a full disk gets its space back).

Formats (``--output_format``; :func:`volume_outputs` picks the writer):

* ``tif``: ``<name>_membrane_probability.tif`` (float32), ``<name>_segmentation.tif`` (uint8, 255 = interior,
  0 = membrane at ``membrane_threshold``), ``<name>_cells.tif`` (uint32), with ``challenge_submission`` also
  ``<name>_isbi2012_submission.tif`` (float32 interior probability), written page by page (BigTIFF when large),
  with the pixel size as resolution tags;
* ``ome-zarr``: ``<name>.ome.zarr``, NGFF 0.5 (or 0.4): the membrane probability as the image and the cells as the
  label image ``labels/cells``, chunked like the blocks; the work folder itself becomes it.

The cell table, ``<name>_cells.csv``, is the run's own (:mod:`scripts.volumes`), beside either format.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile

from .blockwise import Block
from .errors import InputError
from .flags import flag, number, pixel_size_flag
from .volume_io import OUTPUT_FORMATS, checked_ome_zarr_version, write_ome_zarr_metadata

__all__ = ["TiffOutputs", "OmeZarrOutputs", "volume_outputs", "stitched_cells", "write_pages"]

#: one finished section: its index, its blocks, and each block's lookup from block-local to volume-wide cell ids
Section = tuple[int, list[Block], list[np.ndarray]]


def write_pages(path: Path, shape, dtype, pages: Iterable[np.ndarray], pixel_size) -> None:
    """A (Z, H, W) TIFF written page by page (BigTIFF past 2 GB), with resolution tags for the pixel size.

    Label and mask stacks are deflate-compressed (60 times smaller); float stacks are not: a probability map
    compresses by about a tenth, at twenty times the cost of writing it. One compression thread: with more, tifffile
    reads the whole iterator ahead (the volume in memory)."""
    options = {}
    if pixel_size is not None:
        options = {"resolution": (1e7 / pixel_size[1], 1e7 / pixel_size[0]), "resolutionunit": "CENTIMETER"}
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    compression = None if np.issubdtype(dtype, np.floating) else "zlib"
    tifffile.imwrite(
        path, data=iter(pages), shape=tuple(shape), dtype=dtype, photometric="minisblack", compression=compression,
        metadata={"axes": "ZYX"}, bigtiff=size > 2**31, maxworkers=1, **options,
    )  # fmt: skip


def stitched_cells(work, blocks: Sequence[Block], lookups: Sequence[np.ndarray], z: int, rows: slice, columns: slice):
    """Volume-wide cell ids of section ``z``'s ``rows`` x ``columns`` from the work group's block-local ids
    (``blocks`` and ``lookups``: those of section ``z``)."""
    local = np.asarray(work["cells_local"][z, rows, columns])
    cells = np.zeros(local.shape, dtype=np.uint32)
    for block, lookup in zip(blocks, lookups, strict=True):
        if block.y1 <= rows.start or block.y0 >= rows.stop or block.x1 <= columns.start or block.x0 >= columns.stop:
            continue
        part = (
            slice(max(block.y0, rows.start) - rows.start, min(block.y1, rows.stop) - rows.start),
            slice(max(block.x0, columns.start) - columns.start, min(block.x1, columns.stop) - columns.start),
        )
        cells[part] = lookup[local[part]]
    return cells


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


class TiffOutputs:
    """The TIFF stacks of a run (the files: see the module docstring).

    Args:
        output_dir: folder for the files.
        name: their base name.
        membrane_threshold: membrane where the probability is at least this (``_segmentation.tif``).
        challenge_submission: also write the ISBI 2012 submission stack.
        pixel_size: (y, x) in nm, or None.
    """

    format = "tif"
    consumes_work = False  # the work folder stays resumable until the files are in place

    def __init__(
        self,
        output_dir: str | Path,
        name: str,
        membrane_threshold: float = 0.5,
        challenge_submission: bool | str = False,
        pixel_size: Sequence[float] | None = None,
    ) -> None:
        self.output_dir, self.name = Path(output_dir), name
        self.membrane_threshold = number(membrane_threshold, "membrane_threshold", 0, 1)
        self.challenge_submission = flag(challenge_submission, "challenge_submission")
        self.pixel_size = pixel_size_flag(pixel_size)
        self.writing: Path | None = None  # the output being written, named if writing fails

    def files(self) -> dict[str, Path]:
        """The outputs, by kind."""
        kinds = ["membrane_probability", "segmentation", "cells"]
        kinds += ["isbi2012_submission"] if self.challenge_submission else []
        return {kind: self.output_dir / f"{self.name}_{kind}.tif" for kind in kinds}

    def _temporary(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.partial")

    def write(self, work, shape: Sequence[int], sections: Iterator[Section]) -> None:
        """Writes the cells while ``sections`` finishes them, then the probability stacks, all under temporary
        names."""
        files = self.files()
        whole = slice(0, shape[1]), slice(0, shape[2])
        self.writing = files["cells"]
        pages = (stitched_cells(work, blocks, lookups, z, *whole) for z, blocks, lookups in sections)
        write_pages(self._temporary(files["cells"]), shape, np.uint32, pages, self.pixel_size)

        def probability() -> Iterator[np.ndarray]:
            return (np.asarray(work["0"][z]) for z in range(shape[0]))

        stacks = {
            "membrane_probability": (np.float32, probability),
            "segmentation": (np.uint8, lambda: (np.where(p >= self.membrane_threshold, 0, 255) for p in probability())),
            "isbi2012_submission": (np.float32, lambda: (1.0 - p for p in probability())),
        }
        for kind, path in files.items():
            if kind in stacks:
                self.writing = path
                dtype, pages = stacks[kind]
                write_pages(
                    self._temporary(path), shape, dtype, (page.astype(dtype) for page in pages()), self.pixel_size
                )

    def commit(self, work_path: Path) -> list[Path]:
        """Renames the complete files into place; the work folder is then removed. Returns the files."""
        for path in self.files().values():
            os.replace(self._temporary(path), path)
        shutil.rmtree(work_path, ignore_errors=True)
        return list(self.files().values())

    def discard(self) -> None:
        for path in self.files().values():
            _remove(self._temporary(path))


class OmeZarrOutputs:
    """The OME-Zarr image of a run (see the module docstring): the work group, completed with the cells' volume-wide
    ids and the NGFF metadata, and renamed.

    Args:
        output_dir, name: the image is ``<output_dir>/<name>.ome.zarr``.
        version: NGFF ``"0.5"`` (Zarr v3) or ``"0.4"`` (Zarr v2, for viewers that read no Zarr v3 yet).
        pixel_size: (y, x) in nm, or None.
    """

    format = "ome-zarr"
    consumes_work = True  # the work folder becomes the output: a failed write leaves nothing to resume

    def __init__(
        self, output_dir: str | Path, name: str, version: str = "0.5", pixel_size: Sequence[float] | None = None
    ) -> None:
        self.output_dir, self.name, self.version = Path(output_dir), name, checked_ome_zarr_version(version)
        self.pixel_size = pixel_size_flag(pixel_size)
        self.writing: Path | None = None

    def files(self) -> dict[str, Path]:
        return {"ome-zarr": self.output_dir / f"{self.name}.ome.zarr"}

    def write(self, work, shape: Sequence[int], sections: Iterator[Section]) -> None:
        """Writes each finished section's cells into ``labels/cells/0`` block by block, then the metadata. The work
        group becomes the output: it is no longer resumable."""
        self.writing = self.files()["ome-zarr"]
        labels = work["labels"]["cells"]["0"]
        for z, blocks, lookups in sections:
            for block, lookup in zip(blocks, lookups, strict=True):
                target = (z, slice(block.y0, block.y1), slice(block.x0, block.x1))
                labels[target] = lookup[np.asarray(work["cells_local"][target])]
        del work["cells_local"]
        write_ome_zarr_metadata(work, self.pixel_size, self.name, self.version)

    def commit(self, work_path: Path) -> list[Path]:
        """Moves the work folder into place (its block records removed first)."""
        target = self.files()["ome-zarr"]
        for record in ("run.json", "ranges.json"):
            (work_path / record).unlink(missing_ok=True)
        shutil.rmtree(work_path / "blocks", ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(work_path, target)
        return [target]

    def discard(self) -> None:
        """Nothing to remove: a failed finish leaves the work folder, removed or resumed by the run."""


def volume_outputs(
    output_format: str,
    output_dir: str | Path,
    name: str,
    membrane_threshold: float = 0.5,
    challenge_submission: bool | str = False,
    pixel_size: Sequence[float] | None = None,
    ome_zarr_version: str = "0.5",
) -> TiffOutputs | OmeZarrOutputs:
    """The writer of ``output_format`` (``"tif"`` or ``"ome-zarr"``), with the options that format takes; every
    option is checked, used by the format or not."""
    checked_ome_zarr_version(ome_zarr_version)
    if output_format == "tif":
        return TiffOutputs(output_dir, name, membrane_threshold, challenge_submission, pixel_size)
    if output_format == "ome-zarr":
        if flag(challenge_submission, "challenge_submission"):
            raise InputError("--challenge_submission true: the submission stack is a TIFF; add --output_format tif")
        return OmeZarrOutputs(output_dir, name, ome_zarr_version, pixel_size)
    raise InputError(f"--output_format {output_format}: must be one of {', '.join(OUTPUT_FORMATS)}")
