"""Writing results: atomic files, the slices an evaluator produced, and the inference stacks."""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from ignite.engine import Engine, Events

from .errors import InputError
from .flags import flag

__all__ = ["atomic_write", "SliceCollector", "StackWriter"]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so an interrupted run leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _item_arrays(engine: Engine) -> list[dict]:
    """The current iteration's decollated items as numpy arrays: image, pred and (if present) label, slice."""
    items = []
    for batch_item, output_item in zip(engine.state.batch, engine.state.output, strict=True):
        item = {
            "slice": int(batch_item["slice"]),
            "image": batch_item["image"].detach().cpu().numpy()[0],
            "pred": output_item["pred"].detach().float().cpu().numpy()[0],
        }
        if "label" in batch_item:
            item["label"] = batch_item["label"].detach().cpu().numpy()[0]
        items.append(item)
    return items


class SliceCollector:
    """Keeps every slice an evaluator processed (image, label, membrane probability), ordered by slice index.

    Needs ``decollate=True`` (the default) and a ``slice`` key in each data item.
    """

    def __init__(self) -> None:
        self.items: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.items.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self.items.extend(_item_arrays(e)))
        # registered before any handler that reads the items at COMPLETED (e.g. StackWriter)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.items.sort(key=lambda item: item["slice"]))


class StackWriter:
    """Writes an inference run's sections as TIFF stacks once the evaluator finishes.

    Files (``<name>`` = the input file's stem or folder name):

    * ``<name>_membrane_probability.tif``: float32 (Z, H, W), membrane probability ``p`` in [0, 1];
    * ``<name>_segmentation.tif``: uint8 (Z, H, W), 255 = cell interior, 0 = membrane (the labels' convention),
      membrane where ``p >= membrane_threshold``;
    * with ``challenge_submission`` also ``<name>_isbi2012_submission.tif``: float32 interior probability
      ``1 - p``, the map the ISBI 2012 scorer expects.

    All stacks are encoded before the first is written, and each is written atomically, so a failed run leaves
    no partial set of files. Probabilities that are not finite (a diverged network) stop the run unwritten.

    Args:
        output_dir: folder for the stacks (created when writing).
        name: base name of the files.
        membrane_threshold: membrane where the probability is at least this.
        challenge_submission: also write the ISBI 2012 submission stack (a flag, see :func:`scripts.flags.flag`).
    """

    def __init__(
        self,
        output_dir: str | Path,
        name: str,
        membrane_threshold: float = 0.5,
        challenge_submission: bool | str = False,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.name = name
        self.membrane_threshold = membrane_threshold
        self.challenge_submission = flag(challenge_submission, "challenge_submission")
        self.collector = SliceCollector()
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        self.collector.attach(engine)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _write(self, engine: Engine) -> None:
        probability = np.stack([item["pred"] for item in self.collector.items]).astype(np.float32)
        if not np.isfinite(probability).all():
            bad = sorted({int(item["slice"]) for item in self.collector.items if not np.isfinite(item["pred"]).all()})
            raise InputError(
                f"{self.name}: the network gave NaN or infinite membrane probabilities on sections {bad[:10]}; "
                "check the weights (--model_path) and the input; nothing was written"
            )
        stacks = {
            "membrane_probability": probability,
            "segmentation": np.where(probability >= self.membrane_threshold, 0, 255).astype(np.uint8),
        }
        if self.challenge_submission:
            stacks["isbi2012_submission"] = 1.0 - probability
        encoded = {}
        for suffix, stack in stacks.items():
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, stack, photometric="minisblack", compression="zlib", metadata={"axes": "ZYX"})
            encoded[self.output_dir / f"{self.name}_{suffix}.tif"] = buffer.getvalue()
        for path, data in encoded.items():
            atomic_write(path, data)
        self.written = list(encoded)
        logging.getLogger("StackWriter").info(
            "wrote %s (%d sections of %dx%d)", ", ".join(str(p) for p in self.written), *probability.shape
        )
