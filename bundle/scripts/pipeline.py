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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import find_objects

from .backends import CompiledNetwork, choose_backend
from .blockwise import (
    Block,
    block_cells,
    checked_context,
    context_sections,
    prediction_region,
    shift_table,
    sliding_window_of,
)
from .cell_table import CellTable
from .cells import CellLabeller
from .errors import InputError
from .inferers import DihedralAverageInferer
from .transforms import FULL_RANGE, MembraneFromAffinitiesd, ScaleSectionIntensityd

__all__ = [
    "EXTRA_CHANNELS",
    "SectionPredictor",
    "declared_predictor",
    "BlockResult",
    "predict_block",
    "label_block",
    "process_block",
]

#: what a postprocessing may keep beside the membrane for the cells, in the order the predictor stacks them
EXTRA_CHANNELS = ("affinities", "foreground")


class SectionPredictor:
    """Membrane probability of a section, or of a region of one, through the configs' declared pipeline.

    Args:
        network: the network with its weights.
        inferer: the configs' inferer (a ``SlidingWindowInferer``, or its test-time-augmentation wrapper).
        preprocessing: the configs' ``preprocessing``, called on ``{"image": (h, w) raw, or (2k + 1, h, w) with
            the neighbouring sections, "intensity_range": the sections' (low, high), one or one per section, or
            None}``; it returns the (2k + 1, h, w) float32 image the network takes.
        postprocessing: the configs' ``postprocessing``, called on ``{"pred": (C, h, w) logits}`` (C = 1 for the
            membrane target, one per offset for affinities, 2 for objects on a background); it returns the
            (1, h, w) membrane probability, and may keep for the cells the (n, h, w) affinities under
            ``"affinities"`` or the (1, h, w) foreground probability under ``"foreground"``.
        device: where the network runs.
        amp: float16 autocast, on CUDA only.
        backend: how the network runs (:mod:`scripts.backends`): ``"eager"``, ``"compile"``, ``"bf16"``, or
            ``"auto"``, chosen by :meth:`plan` for the run's size (before it, as for few windows).
        section_context: ``k``, the neighbouring sections on each side that the network takes as channels.
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
        section_context: int = 0,
    ) -> None:
        if isinstance(inferer, DihedralAverageInferer) and _reads_affinities(postprocessing):
            raise InputError(
                "--test_time_augmentation true: the flipped and turned views of an affinity network are averaged "
                "channel by channel, but a view's affinity channels point in turned directions; not supported"
            )
        self.network = network.eval()
        self.section_context = checked_context(section_context)
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
    def intensity_percentiles(self) -> tuple[float, float]:
        """The percentiles the preprocessing scales each section with (:class:`ScaleSectionIntensityd`), which a
        tiled section's blocks are measured at."""
        transforms = getattr(self.preprocessing, "transforms", [self.preprocessing])
        scales = [transform for transform in transforms if isinstance(transform, ScaleSectionIntensityd)]
        return scales[0].percentiles if scales else FULL_RANGE

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
    def __call__(self, raw: np.ndarray, intensity_range: Sequence | None = None) -> np.ndarray:
        """The (h, w) float32 membrane probability of a section's (h, w) ``raw`` pixels, or of (2k + 1, h, w) with
        its neighbours, scaled with ``intensity_range`` (the sections' minimum and maximum, for a region of them)
        or their own; (1 + n, h, w), the membrane and then the affinities or the foreground, where the
        postprocessing keeps them (:data:`EXTRA_CHANNELS`)."""
        image = self.preprocessing({"image": raw, "intensity_range": intensity_range})["image"]
        image = torch.as_tensor(image, dtype=torch.float32).to(self.device)[None]
        bf16 = self.chosen == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16 if bf16 else None, enabled=self.amp or bf16):
            logits = self.inferer(image, self._network())
        output = self.postprocessing({"pred": logits[0].float()})
        probability = torch.as_tensor(output["pred"]).float()[0].cpu().numpy()
        extra = [
            torch.as_tensor(output[key]).float().cpu().numpy() for key in EXTRA_CHANNELS if output.get(key) is not None
        ]
        return np.concatenate([probability[None], *extra]) if extra else probability


def _reads_affinities(postprocessing: Callable) -> bool:
    transforms = getattr(postprocessing, "transforms", [postprocessing])
    return any(isinstance(transform, MembraneFromAffinitiesd) for transform in transforms)


def declared_predictor(
    config_file: str | Path, network: torch.nn.Module, inferer: Callable, postprocessing: Callable,
    device: torch.device | str = "cpu", amp: bool = False, backend: str = "eager", section_context: int = 0,
    intensity_percentiles: Sequence[float] = FULL_RANGE,
) -> SectionPredictor:  # fmt: skip
    """A predictor around ``network``, ``inferer`` and ``postprocessing`` (the evaluation config's, which train.json
    declares as inference.json does and overlays such as affinities.json change in both) with the preprocessing
    that ``config_file`` (inference.json) declares for ``section_context`` and ``intensity_percentiles``:
    evaluation scores what inference computes, with the backend given here (eager fp32 by default, where ``auto``
    may choose bf16 or ``torch.compile`` for inference)."""
    from monai.bundle import ConfigParser

    config = ConfigParser()
    config.read_config(str(config_file))
    config["section_context"] = section_context
    config["intensity_percentiles"] = list(intensity_percentiles)
    preprocessing = config.get_parsed_content("preprocessing")
    return SectionPredictor(network, inferer, preprocessing, postprocessing, device, amp, backend, section_context)


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
    volume_shape: Sequence[int],
    section_ranges: Mapping[int, tuple[float, float]] | None,
    cell_halo: int,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The network's step of a block: ``(raw, probability, origin)`` of the region around it in its section
    (``origin``: its first section pixel), predicted from that region in the predictor's context sections (the
    z-halo, :func:`scripts.blockwise.context_sections`). ``section_ranges`` (each section's minimum and maximum)
    None: the block is a whole section, and each section is scaled with its own range."""
    halo = cell_halo if section_ranges is not None else 0
    rows, columns = prediction_region(block, volume_shape[1:], predictor.roi, predictor.window.overlap, halo)
    sections = context_sections(block.z, predictor.section_context, volume_shape[0])
    raw = np.stack([read(z, rows, columns) for z in sections])
    probability = predictor(raw, None if section_ranges is None else [section_ranges[z] for z in sections])
    if not np.isfinite(probability).all():
        raise InputError(
            f"{block}: the network gave NaN or infinite membrane probabilities; check the weights (--model_path) "
            "and the input; nothing was written"
        )
    return raw[predictor.section_context], probability, (rows.start, columns.start)


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
    """The cells' step of a block (from :func:`predict_block`'s region, ``probability`` as the predictor gives it):
    block-local cells, seam bands, and the table rows of the cells that touch no seam band (those are measured once
    stitched)."""
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
    membrane = probability[0] if probability.ndim == 3 else probability
    return BlockResult(membrane[crop], labels, seams, touching_boxes, rows)


def process_block(
    block: Block,
    read: Callable[[int, slice, slice], np.ndarray],
    predictor: SectionPredictor,
    cells: CellLabeller,
    table: CellTable,
    volume_shape: Sequence[int],
    section_ranges: Mapping[int, tuple[float, float]] | None = None,
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
        volume_shape: (D, H, W) of the volume.
        section_ranges: each section's (minimum, maximum) when sections are tiled; None for whole-section blocks.
        cell_halo: pixels of context around a tile for its cells.
        band: half-width of the seam bands.
    """
    raw, probability, origin = predict_block(block, read, predictor, volume_shape, section_ranges, cell_halo)
    return label_block(block, raw, probability, origin, volume_shape[1:], cells, table, band)
