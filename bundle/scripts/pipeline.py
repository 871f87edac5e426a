"""The per-block work of inference, built from what ``inference.json`` declares: plain functions on arrays.

:class:`SectionPredictor` is the config's ``preprocessing``, ``inferer``, network and ``postprocessing`` as one
function from raw pixels to membrane probability. :func:`process_block` is one block's whole work: read the
region the block's windows cover (:func:`scripts.blockwise.prediction_region`), predict it, label its cells with
their seam bands (:func:`scripts.blockwise.block_cells`) and measure them. Both know no files, clusters or output
formats: the runners of :mod:`scripts.volumes` call them, on this process or on Dask workers, and write what they
return. The same predictor serves the evaluation (:func:`declared_predictor`) and the bioimage.io export's test
tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import find_objects

from .backends import CompiledNetwork, choose_backend
from .blockwise import Block, block_cells, prediction_region, shift_table, sliding_window_of
from .cell_table import CellTable
from .cells import CellLabeller
from .errors import InputError

__all__ = ["SectionPredictor", "declared_predictor", "BlockResult", "predict_block", "label_block", "process_block"]


class SectionPredictor:
    """Membrane probability of a section, or of a region of one, through the configs' declared pipeline.

    Args:
        network: the network with its weights.
        inferer: the configs' inferer (a ``SlidingWindowInferer``, or its test-time-augmentation wrapper).
        preprocessing: the configs' ``preprocessing``, called on ``{"image": (h, w) raw, "intensity_range": (low,
            high) or None}``; it returns the (1, h, w) float32 image the network takes.
        postprocessing: the configs' ``postprocessing``, called on ``{"pred": (1, h, w) logits}``; it returns the
            (1, h, w) probability.
        device: where the network runs.
        amp: float16 autocast, on CUDA only.
        backend: how the network runs (:mod:`scripts.backends`): ``"eager"``, ``"compile"``, ``"bf16"``, or
            ``"auto"``, chosen by :meth:`plan` for the run's size (before it, as for few windows).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: Callable,
        preprocessing: Callable,
        postprocessing: Callable,
        device: torch.device | str = "cpu",
        amp: bool = False,
        backend: str = "eager",
    ) -> None:
        self.network = network.eval()
        self.inferer, self.preprocessing, self.postprocessing = inferer, preprocessing, postprocessing
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.backend = backend
        self.plan(0)

    def plan(self, windows: int) -> str:
        """Chooses the backend for a run of ``windows`` sliding windows on this device; returns why."""
        self.windows = windows
        self.chosen, reason = choose_backend(self.backend, self.device, windows)
        self._forward: Callable | None = None  # built on first use, in the process that runs it
        return reason

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_forward": None}  # a compiled network stays in its process

    def _network(self) -> Callable:
        if self._forward is None:
            self._forward = CompiledNetwork(self.network) if self.chosen == "compile" else self.network
        return self._forward

    @property
    def window(self):
        """The sliding window the inferer places (checked for blockwise use)."""
        return sliding_window_of(self.inferer)

    @property
    def roi(self) -> tuple[int, int]:
        """The sliding window's (height, width)."""
        roi = self.window.roi_size
        return tuple(roi) if isinstance(roi, Sequence) else (roi, roi)

    def to(self, device: torch.device | str, amp: bool | None = None) -> SectionPredictor:
        """Moves the network to ``device`` and chooses its backend there; ``amp`` None: autocast wherever that is
        CUDA."""
        self.device = torch.device(device)
        self.amp = self.device.type == "cuda" if amp is None else bool(amp) and self.device.type == "cuda"
        self.network = self.network.to(self.device)
        self.plan(self.windows)
        return self

    @torch.no_grad()
    def __call__(self, raw: np.ndarray, intensity_range: Sequence[float] | None = None) -> np.ndarray:
        """The (h, w) float32 membrane probability of (h, w) ``raw`` pixels, scaled with ``intensity_range`` (the
        section's minimum and maximum, for a region of it) or their own."""
        image = self.preprocessing({"image": raw, "intensity_range": intensity_range})["image"]
        image = torch.as_tensor(image, dtype=torch.float32).to(self.device)[None]
        bf16 = self.chosen == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16 if bf16 else None, enabled=self.amp or bf16):
            logits = self.inferer(image, self._network())
        probability = self.postprocessing({"pred": logits[0].float()})["pred"]
        return torch.as_tensor(probability).float()[0].cpu().numpy()


def declared_predictor(
    config_file: str | Path, network: torch.nn.Module, inferer: Callable, device: torch.device | str = "cpu",
    amp: bool = False, backend: str = "eager",
) -> SectionPredictor:  # fmt: skip
    """A predictor around ``network`` and ``inferer`` with the preprocessing and postprocessing that ``config_file``
    (inference.json) declares: evaluation scores what inference computes, with the backend given here (eager fp32
    by default, where ``auto`` may choose bf16 or ``torch.compile`` for inference)."""
    from monai.bundle import ConfigParser

    config = ConfigParser()
    config.read_config(str(config_file))
    preprocessing, postprocessing = (
        config.get_parsed_content("preprocessing"),
        config.get_parsed_content("postprocessing"),
    )
    return SectionPredictor(network, inferer, preprocessing, postprocessing, device, amp, backend)


@dataclass
class BlockResult:
    """What one block gives: its probability and block-local cells (``(y1 - y0, x1 - x0)``), the seam bands and
    touching boxes for stitching, and the table rows of the cells no seam can cut (section coordinates)."""

    probability: np.ndarray
    cells: np.ndarray
    seams: dict[str, np.ndarray]
    touching: np.ndarray
    table: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.cells.max(initial=0))


def predict_block(
    block: Block,
    read: Callable[[int, slice, slice], np.ndarray],
    predictor: SectionPredictor,
    section_shape: Sequence[int],
    section_range: Sequence[float] | None,
    cell_halo: int,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The network's step of a block: ``(raw, probability, origin)`` of the region around it (``origin``: its
    first section pixel). ``section_range`` None: the block is a whole section, scaled with its own range."""
    halo = cell_halo if section_range is not None else 0
    rows, columns = prediction_region(block, section_shape, predictor.roi, predictor.window.overlap, halo)
    raw = read(block.z, rows, columns)
    probability = predictor(raw, section_range)
    if not np.isfinite(probability).all():
        raise InputError(
            f"{block}: the network gave NaN or infinite membrane probabilities; check the weights (--model_path) "
            "and the input; nothing was written"
        )
    return raw, probability, (rows.start, columns.start)


def label_block(
    block: Block,
    raw: np.ndarray,
    probability: np.ndarray,
    origin: tuple[int, int],
    section_shape: Sequence[int],
    cells: CellLabeller,
    table: CellTable,
    band: int,
) -> BlockResult:
    """The cells' step of a block (from :func:`predict_block`'s region): block-local cells, seam bands, and the
    table rows of the cells that touch no seam band (those are measured once stitched)."""
    labels, seams, touching = block_cells(probability, block, origin, section_shape, cells, band)
    crop = (
        slice(block.y0 - origin[0], block.y1 - origin[0]),
        slice(block.x0 - origin[1], block.x1 - origin[1]),
    )
    cut = np.isin(labels, touching)
    rows = table(np.where(cut, 0, labels), raw[crop])
    rows = shift_table(rows, block.z, (block.y0, block.x0), table.pixel_size)
    boxes = find_objects(np.where(cut, labels, 0))
    touching_boxes = np.array(
        [[i + 1, b[0].start + block.y0, b[0].stop + block.y0, b[1].start + block.x0, b[1].stop + block.x0]
         for i, b in enumerate(boxes) if b is not None], dtype=np.int64,
    ).reshape(-1, 5)  # fmt: skip
    return BlockResult(probability[crop], labels, seams, touching_boxes, rows)


def process_block(
    block: Block,
    read: Callable[[int, slice, slice], np.ndarray],
    predictor: SectionPredictor,
    cells: CellLabeller,
    table: CellTable,
    section_shape: Sequence[int],
    section_range: Sequence[float] | None = None,
    cell_halo: int = 128,
    band: int = 8,
) -> BlockResult:
    """One block's whole work: :func:`predict_block`, then :func:`label_block`.

    Args:
        block: the block.
        read: ``read(z, rows, columns)`` gives that part of the input as an array.
        predictor: the declared pipeline.
        cells: how sections become cells.
        table: the cell table's measurer.
        section_shape: (H, W) of the volume's sections.
        section_range: the section's (minimum, maximum) for a tile; None for a whole-section block.
        cell_halo: pixels of context around a tile for its cells.
        band: half-width of the seam bands.
    """
    raw, probability, origin = predict_block(block, read, predictor, section_shape, section_range, cell_halo)
    return label_block(block, raw, probability, origin, section_shape, cells, table, band)
