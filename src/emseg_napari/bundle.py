"""The emseg bundle the plugin runs: where it is, its networks, and ``run inferring`` one block at a time.

The plugin holds no copy of the pipeline. :func:`segmentation_steps` reads ``configs/inference.json`` (with a
network's overlay) through MONAI's :class:`~monai.bundle.ConfigParser`, with the widget's choices as overrides,
and runs what that config's ``run`` runs (its ``initialize``, then its ``evaluator``), through
:meth:`scripts.volumes.VolumeInference.steps`, which yields after each block so that a worker thread can report
progress and stop.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

__all__ = [
    "BUNDLE_VARIABLE",
    "NETWORKS",
    "Network",
    "SegmentationResult",
    "bundle_root",
    "scripts_module",
    "shipped_networks",
    "network_for_weights",
    "inference_config",
    "output_name",
    "segmentation_steps",
]

#: environment variable naming the bundle folder, for an install that is not an editable one of the repository
BUNDLE_VARIABLE = "EMSEG_BUNDLE"


@dataclass(frozen=True)
class Network:
    """A network the bundle configures: its name, the overlays added after inference.json, its shipped weights."""

    name: str
    overlays: tuple[str, ...] = ()
    weights: str | None = None


#: the bundle's networks, in the order weights are matched against them (configs/*.json overlays)
NETWORKS = (
    Network("U-Net", (), "models/model.pt"),
    Network("SegNet", ("configs/segnet.json",), "models/segnet/model.pt"),
    Network("U-SegNet", ("configs/usegnet.json",)),
    Network("Tiramisu", ("configs/tiramisu.json",)),
    Network("U-Net, objects on a background", ("configs/objects.json",)),
    Network("U-Net, affinities", ("configs/affinities.json",)),
)


def bundle_root() -> Path:
    """The bundle folder (``$EMSEG_BUNDLE``, else ``bundle/`` of the repository this package is installed from),
    on ``sys.path`` so that its configs import ``scripts``.

    Raises:
        FileNotFoundError: no bundle there, in one line.
    """
    configured = os.environ.get(BUNDLE_VARIABLE)
    root = Path(configured) if configured else Path(__file__).resolve().parents[2] / "bundle"
    if not (root / "configs" / "inference.json").is_file():
        raise FileNotFoundError(
            f"{root}: holds no emseg bundle (configs/inference.json); install the plugin from the repository with "
            f"pip install -e '.[napari]', or set {BUNDLE_VARIABLE} to the bundle folder"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def scripts_module(name: str):
    """The bundle's ``scripts.<name>`` module."""
    bundle_root()
    return importlib.import_module(f"scripts.{name}")


def shipped_networks() -> list[tuple[str, Network, Path]]:
    """``(label, network, weights)`` for the shipped U-Net and SegNet, then every other ``models/**/*.pt``, labelled
    by its path and matched to its network by its tensors' names and shapes."""
    root = bundle_root()
    choices, seen = [], set()
    for network in NETWORKS:
        if network.weights and (root / network.weights).is_file():
            choices.append((f"{network.name} (shipped)", network, root / network.weights))
            seen.add((root / network.weights).resolve())
    for path in sorted((root / "models").rglob("*.pt")):
        if path.resolve() not in seen:
            network = network_for_weights(path)
            if network is not None:
                choices.append((f"{network.name}: {path.relative_to(root)}", network, path))
    return choices


def _state_shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {name: tuple(value.shape) for name, value in state.items()}


@cache
def _network_shapes(network: Network) -> dict[str, tuple[int, ...]]:
    config = inference_config(network, {})
    return _state_shapes(config.get_parsed_content("network_def").state_dict())


def network_for_weights(path: str | Path) -> Network | None:
    """The first of :data:`NETWORKS` whose tensors the weights file ``path`` holds exactly (names and shapes), or
    None (an unreadable file too; the run then reports why in its own line)."""
    try:
        state = scripts_module("checkpoints").read_state_dict(path)
    except scripts_module("errors").InputError:
        return None
    shapes = _state_shapes(state)
    return next((network for network in NETWORKS if _network_shapes(network) == shapes), None)


def inference_config(network: Network, overrides: dict):
    """inference.json with ``network``'s overlays and ``overrides`` (config ids, ``#`` paths allowed), rooted at the
    bundle, as ``python -m monai.bundle run inferring --config_file ... --<id> <value>`` reads it."""
    from monai.bundle import ConfigParser

    root = bundle_root()
    config = ConfigParser()
    config.read_config([str(root / "configs" / "inference.json"), *(str(root / name) for name in network.overlays)])
    config.update({"bundle_root": str(root), **overrides})
    return config


@dataclass
class SegmentationResult:
    """What a run gives the viewer: the membrane probability and the cells, (Z, H, W), and the cell table as the
    cells layer's features (:func:`emseg_napari.reader.cell_features`)."""

    probability: np.ndarray
    cells: np.ndarray
    table: object  # pandas.DataFrame, one row per cell
    pixel_size: tuple[float, float] | None


def _input_stack(image, source: Path | None, region: tuple[slice, slice, slice] | None, pixel_size, path: Path) -> Path:
    """The input for ``--input_path``: the layer's own file when the whole of it is segmented and the bundle reads
    it as the same (Z, H, W) stack, else the pixels (of the region) written as a TIFF stack with the pixel size to
    ``path``."""
    volume_io = scripts_module("volume_io")
    image = image if np.ndim(image) == 3 else image[None]
    if source is not None and region is None:
        try:
            if volume_io.open_volume(source).shape == tuple(image.shape):
                return source
        except Exception:  # a file napari read through another plugin: segment the pixels it shows
            pass
    stack = np.asarray(image[region] if region is not None else image)
    scripts_module("outputs").write_pages(path, stack.shape, stack.dtype, iter(stack), pixel_size)
    return path


def output_name(layer_name: str) -> str:
    """A file name for a layer's outputs: its name with what file systems refuse replaced by ``_``."""
    return re.sub(r"[^\w.-]+", "_", layer_name).strip("._") or "layer"


def segmentation_steps(
    image: np.ndarray,
    network: Network,
    weights: str | Path,
    device: str,
    region: tuple[slice, slice, slice] | None = None,
    source: str | Path | None = None,
    pixel_size: Sequence[float] | None = None,
    output_dir: str | Path | None = None,
    name: str = "layer",
    overrides: dict | None = None,
) -> Iterator[tuple[int, int]]:
    """``run inferring`` on an image or a region of it, one block at a time.

    Yields ``(blocks done, blocks in all)`` after each block, and returns a :class:`SegmentationResult` (the
    generator's return value). Closing it stops the run; its folder then holds no outputs.

    Args:
        image: (Z, H, W) or (H, W) array-like (a napari layer's data).
        network, weights: the network and its weights file.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.
        region: (sections, rows, columns) slices of ``image``, or None for all of it.
        source: the file the image was read from; used as the input when the bundle reads it and no region is set.
        pixel_size: (y, x) in nm, or None (the table then has pixel units only).
        output_dir: where the outputs are written (kept); None writes them to a temporary folder removed afterwards.
            A run stopped early leaves nothing there.
        name: the layer's name, the base name of the outputs (``<name>_cells.tif``, ...).
        overrides: further config overrides (``{"cells#method": "watershed"}``).
    """
    import tifffile

    from .reader import cell_features  # the reader builds on this module

    with tempfile.TemporaryDirectory(prefix="emseg-napari-") as scratch:
        scratch = Path(scratch)
        outputs = Path(output_dir) if output_dir is not None else scratch / "outputs"
        name = output_name(name)
        input_path = _input_stack(image, Path(source) if source else None, region, pixel_size, scratch / f"{name}.tif")
        config = inference_config(
            network,
            {
                "input_path": str(input_path), "output_dir": str(outputs), "output_name": name,
                "output_format": "tif", "model_path": str(weights), "device": device, "progress_bar": False,
                # this process, on the device chosen (several GPUs would otherwise start a Dask cluster in napari)
                "dask_workers": 1, "dask_dashboard": False,
                **({"pixel_size": list(pixel_size)} if pixel_size is not None else {}), **(overrides or {}),
            },
        )  # fmt: skip
        config.get_parsed_content("initialize")
        inference = config.get_parsed_content("evaluator")
        steps, started = inference.steps(), False
        try:
            for progress in steps:
                started = True  # this run holds the outputs' lock: the work folder is its own
                yield progress
        finally:
            steps.close()
            if started and not inference.written:  # stopped: no resumable work folder is left in output_dir
                shutil.rmtree(inference.work.path, ignore_errors=True)
        files = {path.name: path for path in inference.written}
        shape = inference.volume.shape
        return SegmentationResult(
            probability=tifffile.imread(files[f"{name}_membrane_probability.tif"]).reshape(shape),
            cells=tifffile.imread(files[f"{name}_cells.tif"]).reshape(shape),
            table=cell_features(files[f"{name}_cells.csv"]),
            pixel_size=inference.table.pixel_size,
        )
