"""The work folder of a run, ``<output_dir>/.<name>.partial/``: what makes a stopped run resumable.

It is a Zarr group holding the membrane probability ``0`` and the block-local cells ``cells_local`` (laid out as
the OME-Zarr output, :func:`scripts.volume_io.create_ome_zarr`), ``run.json`` (the settings a resumed run must
share), ``ranges.json`` (each tiled section's intensity range) and ``blocks/<block>.npz``, one record per finished
block (its cell count, seam bands, touching boxes and table rows), written atomically after the block's pixels.
A block is done exactly when its record exists.

:class:`BlockTask` is one block's work as the runners hand it out (on this process or on a Dask worker): read
its region of the input, :func:`scripts.pipeline.process_block` it, and write the result here.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .blockwise import Block
from .cell_table import CellTable
from .cells import CellLabeller
from .errors import InputError
from .pipeline import BlockResult, SectionPredictor, label_block, predict_block
from .stack_io import StackError
from .transforms import intensity_histogram, percentile_range
from .volume_io import Volume, create_ome_zarr, open_volume
from .writers import atomic_write

__all__ = [
    "BlockError",
    "WorkFolder",
    "BlockTask",
    "cached_volume",
    "block_reader",
    "block_range",
    "section_ranges",
    "block_histogram",
    "section_percentiles",
]


class BlockError(InputError):
    """A block that cannot be read, computed or written; the message names the block and the file. The finished
    blocks stay for ``--resume true``."""


class WorkFolder:
    """A run's work folder at ``path`` (see the module docstring); safe to use from several processes, which write
    disjoint blocks."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._group = None

    @property
    def group(self):
        """The Zarr group, opened once per process."""
        if self._group is None:
            import zarr

            self._group = zarr.open_group(str(self.path), mode="r+")
        return self._group

    def create(self, shape, chunks, signature: dict, ome_zarr_version: str) -> None:
        """A fresh folder for a volume of ``shape`` in blocks of ``chunks``, recording ``signature``."""
        shutil.rmtree(self.path, ignore_errors=True)
        try:
            root, _, _ = create_ome_zarr(self.path, shape, chunks, np.float32, version=ome_zarr_version)
            root.create_array("cells_local", shape=shape, chunks=chunks, dtype=np.uint32, fill_value=0)
            (self.path / "blocks").mkdir()
            atomic_write(self.path / "run.json", json.dumps(signature).encode())
        except OSError as error:
            raise BlockError(f"{error.filename or self.path}: cannot write ({error.strerror or error})") from error
        self._group = root

    def resumable(self) -> bool:
        return (self.path / "run.json").is_file() and (self.path / "blocks").is_dir()

    def signature(self) -> dict:
        """The settings the folder's run was started with."""
        record = self.path / "run.json"
        try:
            return json.loads(record.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"--resume true: {record} cannot be read ({error}); rerun with --resume false") from error

    def forget_run(self) -> None:
        """Removes the records that make the folder resumable (before its arrays become an output)."""
        for name in ("run.json", "ranges.json"):
            (self.path / name).unlink(missing_ok=True)

    def done(self) -> set[str]:
        """Names of the finished blocks."""
        return {path.stem for path in (self.path / "blocks").glob("*.npz") if not path.name.startswith(".")}

    def write_block(self, block: Block, result: BlockResult) -> None:
        """The block's probability and cells, then its record; errors name the block and the file."""
        target = (block.z, slice(block.y0, block.y1), slice(block.x0, block.x1))
        arrays = {
            "count": np.int64(result.count), "touching": result.touching,
            **{f"seam_{side}": band for side, band in result.seams.items()},
            **{f"table_{column}": values for column, values in result.table.items()},
        }  # fmt: skip
        try:
            self.group["0"][target] = result.probability
            self.group["cells_local"][target] = result.cells
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            atomic_write(self.path / "blocks" / f"{block.name}.npz", buffer.getvalue())
        except OSError as error:
            raise BlockError(
                f"{block}: cannot write {error.filename or self.path} ({error.strerror or error})"
            ) from error

    def record(self, block: Block) -> dict[str, np.ndarray]:
        """A finished block's record: ``count``, ``touching``, ``seam_<side>`` and ``table_<column>`` arrays."""
        with np.load(self.path / "blocks" / f"{block.name}.npz") as data:
            return {key: data[key] for key in data.files}

    def count(self, block: Block) -> int:
        with np.load(self.path / "blocks" / f"{block.name}.npz") as data:
            return int(data["count"])

    def ranges(self) -> dict[int, tuple[float, float]] | None:
        saved = self.path / "ranges.json"
        if not saved.is_file():
            return None
        return {int(z): (low, high) for z, (low, high) in json.loads(saved.read_text()).items()}

    def save_ranges(self, ranges: dict[int, tuple[float, float]]) -> None:
        atomic_write(self.path / "ranges.json", json.dumps(ranges).encode())


@functools.lru_cache(maxsize=8)
def _open_version(path: str, version: tuple[int, int]) -> Volume:
    return open_volume(path)


def cached_volume(path: str) -> Volume:
    """The process's reader of ``path``, opened once per file version (a TIFF's pages are indexed once)."""
    status = os.stat(path)
    return _open_version(path, (status.st_mtime_ns, status.st_size))


def block_reader(input_path: str, block: Block) -> Callable[[int, slice, slice], np.ndarray]:
    """``read(z, rows, columns)`` of the input, naming ``block`` in errors: bad data is a
    :class:`~scripts.stack_io.StackError` (bad input), a failed read a :class:`BlockError` (resumable)."""
    volume = cached_volume(input_path)

    def read(z: int, rows: slice, columns: slice) -> np.ndarray:
        try:
            return volume.read(z, rows, columns)
        except StackError as error:
            raise StackError(f"{error}; in {block}") from error
        except OSError as error:
            raise BlockError(
                f"{block}: cannot read {error.filename or input_path} ({error.strerror or error})"
            ) from error

    return read


def block_range(input_path: str, block: Block) -> tuple[float, float]:
    """(minimum, maximum) intensity of one block (a section's range is that of its blocks)."""
    raw = block_reader(input_path, block)(block.z, *block.region)
    return float(raw.min()), float(raw.max())


def section_ranges(blocks: Sequence[Block], ranges: Iterable[tuple[float, float]]) -> dict[int, tuple[float, float]]:
    """Each section's (minimum, maximum) intensity from those of its blocks (``ranges``, in ``blocks``' order)."""
    sections: dict[int, tuple[float, float]] = {}
    for block, (low, high) in zip(blocks, ranges, strict=True):
        old = sections.get(block.z, (low, high))
        sections[block.z] = (min(old[0], low), max(old[1], high))
    return sections


def block_histogram(input_path: str, block: Block, section_range: tuple[float, float]) -> np.ndarray:
    """The intensity histogram of one block over its section's (minimum, maximum)
    (:func:`scripts.transforms.intensity_histogram`; a section's is the sum of its blocks')."""
    return intensity_histogram(block_reader(input_path, block)(block.z, *block.region), section_range)


def section_percentiles(
    blocks: Sequence[Block],
    histograms: Iterable[np.ndarray],
    extremes: dict[int, tuple[float, float]],
    percentiles: tuple[float, float],
) -> dict[int, tuple[float, float]]:
    """Each section's intensities at ``percentiles``, from its blocks' ``histograms`` (in ``blocks``' order) over its
    ``extremes`` (:func:`section_ranges`), as a whole section's :class:`scripts.transforms.ScaleSectionIntensityd`
    reads them."""
    totals: dict[int, np.ndarray] = {}
    for block, histogram in zip(blocks, histograms, strict=True):
        totals[block.z] = totals[block.z] + histogram if block.z in totals else histogram
    return {z: percentile_range(total, extremes[z], percentiles) for z, total in totals.items()}


@dataclass
class BlockTask:
    """One block's work from the input file to the work folder (picklable, for Dask workers).

    Attributes:
        input_path: the volume (any input of :func:`scripts.volume_io.open_volume`).
        work_path: the work folder.
        cells: how sections become cells.
        table: the cell table's measurer.
        cell_halo: pixels of context around a tile for its cells.
        band: half-width of the seam bands.
        ranges: each section's (minimum, maximum) when sections are tiled, else None.
    """

    input_path: str
    work_path: str
    cells: CellLabeller
    table: CellTable
    cell_halo: int
    band: int
    ranges: dict[int, tuple[float, float]] | None = None

    def predict(self, block: Block, predictor: SectionPredictor) -> tuple:
        """The network's step (:func:`scripts.pipeline.predict_block`)."""
        volume_shape = cached_volume(self.input_path).shape
        read = block_reader(self.input_path, block)
        return predict_block(block, read, predictor, volume_shape, self.ranges, self.cell_halo)

    def finish(self, block: Block, predicted: tuple) -> int:
        """The cells' step and the block's record; returns its cell count."""
        section_shape = cached_volume(self.input_path).shape[1:]
        result = label_block(block, *predicted, section_shape, self.cells, self.table, self.band)
        WorkFolder(self.work_path).write_block(block, result)
        return result.count

    def __call__(self, block: Block, predictor: SectionPredictor) -> int:
        return self.finish(block, self.predict(block, predictor))
