"""The bundle's network as a bioimage.io model package (format 0.5), for Fiji/deepImageJ, ilastik, napari, QuPath.

:class:`BioimageioExport` (the ``export_bioimageio`` of ``configs/bioimageio.json``) describes the network with
``bioimageio.spec`` and packs it into one ``.zip``:

* input ``raw`` (batch, channel, y, x), sizes ``min + n * step`` that the network accepts (:func:`size_constraint`),
  scaled to [0, 1] per image and channel as the bundle's ``ScaleSectionIntensityd`` does (the spec's
  ``scale_range`` at the configured ``intensity_percentiles``, 0 and 100 by default, then ``clip`` for others);
  one channel, or the ``2k + 1`` sections around the section for a network with section context ``k`` (channels
  ``raw_minus_k`` ... ``raw`` ... ``raw_plus_k``); output ``membrane_probability`` of the same size, a sigmoid
  of the network's logit, with a halo that a tiling consumer crops;
* weights as TorchScript, ONNX and a ``pytorch_state_dict`` whose architecture is MONAI's ``UNet`` (from the
  library) or the bundle's ``scripts/networks.py`` (from source, for SegNet, U-SegNet and Tiramisu);
* test tensors from a real ISBI section: the output is what the bundle's own inference predicts for it;
* covers, the model card as documentation, citations, license, tags and authors from ``metadata.json``.

Before the package is written, ``bioimageio.core`` tests it for every weight format (``bioimageio test``); a
package that fails is not written. It is packed under a temporary name and renamed once complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import torch

from .blockwise import context_sections
from .errors import InputError
from .flags import flag
from .networks import size_multiple
from .pipeline import SectionPredictor
from .transforms import FULL_RANGE

__all__ = ["BioimageioExport", "architecture_of", "size_constraint", "WEIGHT_FORMATS"]

logger = logging.getLogger("BioimageioExport")

#: the weight formats of the package, each tested by bioimageio.core before it is written
WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript", "onnx")
ONNX_OPSET = 18

CITATIONS = {
    "isbi2012": (
        "Arganda-Carreras I, Turaga SC, Berger DR, et al. Crowdsourcing the creation of image segmentation "
        "algorithms for connectomics. Frontiers in Neuroanatomy 9:142, 2015 (the ISBI 2012 challenge).",
        "10.3389/fnana.2015.00142",
    ),
    "data": (
        "Cardona A, Saalfeld S, Preibisch S, et al. An integrated micro- and macroarchitectural analysis of the "
        "Drosophila brain by computer-assisted serial section electron microscopy. PLoS Biology 8(10):e1000502, "
        "2010 (the training data).",
        "10.1371/journal.pbio.1000502",
    ),
    "UNet": (
        "Ronneberger O, Fischer P, Brox T. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
        "MICCAI 2015.",
        "10.1007/978-3-319-24574-4_28",
    ),
    "SegNet": (
        "Badrinarayanan V, Kendall A, Cipolla R. SegNet: A Deep Convolutional Encoder-Decoder Architecture for "
        "Image Segmentation. IEEE TPAMI 39(12), 2017.",
        "10.1109/TPAMI.2016.2644615",
    ),
    "USegNet": (
        "Kumar P, Nagar P, Arora C, Gupta A. U-SegNet: Fully Convolutional Neural Network Based Automated Brain "
        "Tissue Segmentation Tool. ICIP 2018.",
        "10.1109/ICIP.2018.8451295",
    ),
    "Tiramisu": (
        "Jegou S, Drozdzal M, Vazquez D, Romero A, Bengio Y. The One Hundred Layers Tiramisu: Fully Convolutional "
        "DenseNets for Semantic Segmentation. CVPR Workshops 2017.",
        "10.1109/CVPRW.2017.156",
    ),
    "MONAI": (
        "Cardoso MJ, Li W, Brown R, et al. MONAI: An open-source framework for deep learning in healthcare. "
        "arXiv:2211.02701, 2022.",
        "10.48550/arXiv.2211.02701",
    ),
}


def _plain(value):
    """A constructor argument as YAML holds it: tuples as lists, enum members as their string."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, str):
        return str(value)  # a StrEnum member (MONAI's Act, Norm) becomes its plain value
    return value


def architecture_of(network: torch.nn.Module) -> tuple[str, str, dict]:
    """How to rebuild ``network``: (``"library"`` or ``"file"``, the import path or file, constructor kwargs).

    MONAI's ``UNet`` comes from the library (its arguments are read from the attributes it keeps); the bundle's
    SegNet, U-SegNet and Tiramisu from the source file ``scripts/networks.py`` (they keep their arguments). The
    description is checked: the rebuilt network, with these weights, gives exactly the same output.

    Raises:
        InputError: for a network that cannot be described this way.
    """
    from monai.networks.nets import UNet

    from . import networks

    if type(network) is UNet:
        names = ("in_channels", "out_channels", "channels", "strides", "kernel_size", "up_kernel_size")
        names += ("num_res_units", "act", "norm", "dropout", "bias", "adn_ordering")
        kwargs = {"spatial_dims": network.dimensions, **{name: getattr(network, name) for name in names}}
        kind, source, callable_name = "library", "monai.networks.nets", "UNet"
    elif type(network) in (networks.SegNet, networks.USegNet, networks.Tiramisu):
        kwargs, kind, source, callable_name = network.arguments, "file", networks.__file__, type(network).__name__
    else:
        raise InputError(
            f"network_def {type(network).__name__}: the bioimage.io export describes MONAI's UNet and the bundle's "
            "SegNet, U-SegNet and Tiramisu only"
        )
    kwargs = _plain(kwargs)
    rebuilt = (UNet if kind == "library" else getattr(networks, callable_name))(**kwargs)
    rebuilt.load_state_dict(network.state_dict(), strict=True)
    probe = torch.rand(1, kwargs["in_channels"], 64, 64)
    with torch.no_grad():
        if not torch.equal(rebuilt.eval()(probe), network.eval()(probe)):
            raise InputError(f"network_def {type(network).__name__}: rebuilt from its arguments, it predicts otherwise")
    return kind, f"{source}:{callable_name}" if kind == "library" else source, kwargs


def size_constraint(network: torch.nn.Module, halo: int) -> tuple[int, int]:
    """(min, step) of the input sizes the network takes per spatial axis: multiples of its total downsampling.

    UNet: the product of its strides; SegNet, U-SegNet: ``2 ** stages``; Tiramisu: ``2 ** pools``. The minimum is
    4 steps and at least ``2 * halo + 64``: the deepest level keeps 4 x 4 pixels for its normalisation, and a tile
    keeps 64 pixels once its halo is cropped.
    """
    step = size_multiple(network)
    smallest = max(4 * step, 2 * halo + 64)
    return -(-smallest // step) * step, step


class BioimageioExport:
    """Writes the bioimage.io package of the configured network.

    Args:
        predictor: inference.json's pipeline (:class:`scripts.pipeline.SectionPredictor`) with the network's weights
            loaded, on the CPU: the test output is the bundle's own prediction.
        metadata_file: the bundle's ``metadata.json`` (version, description, license text, references).
        documentation: the model card (Markdown) shipped as the package's documentation.
        test_image: a stack whose section ``test_section`` becomes the test input.
        test_section: that section.
        output_dir: folder for ``emseg_<network>.bioimageio.zip``.
        overwrite: replace a package already there (otherwise it is an error).
        halo: output pixels per side that a tiling consumer crops.
        check: test the package for every weight format before writing it.
    """

    def __init__(
        self,
        predictor: SectionPredictor,
        metadata_file: str | Path,
        documentation: str | Path,
        test_image: str | Path,
        test_section: int = 0,
        output_dir: str | Path = "runs/bioimageio",
        overwrite: bool | str = False,
        halo: int = 32,
        check: bool | str = True,
    ) -> None:
        self.predictor = predictor.to("cpu")
        self.network = predictor.network
        self.metadata_file, self.documentation = Path(metadata_file), Path(documentation)
        self.test_image, self.test_section = Path(test_image), int(test_section)
        self.output_dir = Path(output_dir)
        self.overwrite, self.check = flag(overwrite, "overwrite"), flag(check, "check")
        self.halo = int(halo)
        self.network_name = type(self.network).__name__
        self.package = self.output_dir / f"emseg_{self.network_name.lower()}.bioimageio.zip"

    def run(self) -> Path:
        if self.package.exists() and not self.overwrite:
            raise InputError(f"{self.package}: a package is already there; --overwrite true replaces it")
        for path in (self.metadata_file, self.documentation, self.test_image):
            if not path.is_file():
                raise InputError(f"{path}: not found (needed for the bioimage.io package)")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".bioimageio-", dir=self.output_dir) as folder:
            folder = Path(folder)
            description = self.describe(folder)
            partial = folder / "package.zip"
            from bioimageio.spec import save_bioimageio_package

            save_bioimageio_package(description, output_path=partial)
            if self.check:
                self.test(partial)
            os.replace(partial, self.package)
        logger.info("wrote %s (%s)", self.package, ", ".join(WEIGHT_FORMATS))
        return self.package

    # -- the package's files -------------------------------------------------------------------------------
    def test_tensors(self) -> tuple[np.ndarray, np.ndarray]:
        """(input, output) of section ``test_section``: raw intensities of it and its context sections as float32
        (1, 2k + 1, H, W), and the bundle's membrane probability for them (the declared pipeline: preprocessing,
        inferer, postprocessing), (1, 1, H, W)."""
        from .stack_io import read_stack

        stack = read_stack(self.test_image)
        if not 0 <= self.test_section < len(stack):
            raise InputError(f"--test_section {self.test_section}: {self.test_image} has {len(stack)} sections")
        sections = stack[context_sections(self.test_section, self.predictor.section_context, len(stack))]
        probability = self.predictor(sections)
        if probability.ndim != 2:
            raise InputError(
                f"the bioimage.io export describes one output channel, the membrane probability; this network's "
                f"postprocessing keeps {len(probability) - 1} more (affinities, or the foreground of objects on a "
                "background), which the package would not describe"
            )
        return sections[None].astype(np.float32), probability[None, None].astype(np.float32)

    def channel_names(self) -> list[str]:
        """The input's channels: ``raw``, with the context sections below (``raw_minus_i``) and above it."""
        context = self.predictor.section_context
        names = {-1: "raw_minus_{}", 0: "raw", 1: "raw_plus_{}"}
        return [names[int(np.sign(i))].format(abs(i)) for i in range(-context, context + 1)]

    def _cover(self, raw: np.ndarray, probability: np.ndarray, path: Path) -> Path:
        """The section and its membrane probability side by side (2:1, as bioimage.io shows covers)."""
        from PIL import Image

        low, high = float(raw.min()), float(raw.max())
        image = np.round((raw - low) / max(high - low, 1e-6) * 255).astype(np.uint8)
        side = np.concatenate([image, np.round(probability * 255).astype(np.uint8)], axis=1)
        Image.fromarray(side).save(path)
        return path

    def _weights(self, folder: Path, example: torch.Tensor) -> dict[str, Path]:
        """The network as a state dict, TorchScript and ONNX (batch, y and x dynamic); ``example``: (1, C, H, W)."""
        paths = {
            "pytorch_state_dict": folder / "weights.pt",
            "torchscript": folder / "weights_torchscript.pt",
            "onnx": folder / "weights.onnx",
        }
        torch.save(self.network.state_dict(), paths["pytorch_state_dict"])
        torch.jit.script(self.network).save(str(paths["torchscript"]))
        # torch.export's exporter: the legacy one cannot trace SegNet's unpooling to a given size
        dynamic = {axis: torch.export.Dim.AUTO for axis in (0, 2, 3)}  # batch, y, x
        torch.onnx.export(
            self.network, (example,), str(paths["onnx"]), input_names=["raw"], output_names=["membrane_logit"],
            dynamic_shapes=(dynamic,), opset_version=ONNX_OPSET, dynamo=True, external_data=False, verbose=False,
        )  # fmt: skip
        return paths

    def describe(self, folder: Path):
        """The package's ``ModelDescr`` (bioimageio.spec, format 0.5), its files written to ``folder``."""
        from bioimageio.spec.model import v0_5 as spec

        metadata = json.loads(self.metadata_file.read_text())
        raw, probability = self.test_tensors()
        percentiles = self.predictor.intensity_percentiles
        np.save(folder / "test_input.npy", raw)
        np.save(folder / "test_output.npy", probability)
        sample = raw[0, 0] if raw.shape[1] == 1 else raw[0]
        tifffile.imwrite(folder / "sample_input.tif", sample.astype(np.uint8 if raw.max() < 256 else np.float32))
        tifffile.imwrite(folder / "sample_output.tif", probability[0, 0])
        cover = self._cover(raw[0, self.predictor.section_context], probability[0, 0], folder / "cover.png")
        weights = self._weights(folder, torch.from_numpy(raw) / 255.0)
        kind, source, kwargs = architecture_of(self.network)
        if kind == "library":
            module, name = source.split(":")
            architecture = spec.ArchitectureFromLibraryDescr(import_from=module, callable=name, kwargs=kwargs)
        else:
            shutil.copy(source, folder / "networks.py")
            architecture = spec.ArchitectureFromFileDescr(
                source=folder / "networks.py", callable=self.network_name, kwargs=kwargs
            )  # fmt: skip
        (folder / "environment.yaml").write_text(
            "name: emseg\nchannels:\n  - conda-forge\ndependencies:\n  - python>=3.11\n  - pip\n  - pip:\n"
            f"      - torch=={torch.__version__.split('+')[0]}\n      - monai=={metadata['monai_version']}\n"
        )  # fmt: skip
        smallest, step = size_constraint(self.network, self.halo)
        raw_id, probability_id = spec.TensorId("raw"), spec.TensorId("membrane_probability")
        yx = [spec.AxisId("y"), spec.AxisId("x")]
        inputs = spec.InputTensorDescr(
            id=raw_id,
            # at most 128 characters (the spec's limit)
            description=f"EM section(s), any range; sides of {smallest} + {step} n px: pad a smaller section by "
            "mirroring it, never with zeros",
            axes=[
                spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(n) for n in self.channel_names()]),
                *(spec.SpaceInputAxis(id=axis, size=spec.ParameterizedSize(min=smallest, step=step), unit="nanometer",
                                      scale=4.0) for axis in yx),
            ],
            test_tensor=spec.FileDescr(source=folder / "test_input.npy"),
            sample_tensor=spec.FileDescr(source=folder / "sample_input.tif"),
            data=spec.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[
                spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
                spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
                    axes=yx, min_percentile=percentiles[0], max_percentile=percentiles[1])),
                *([spec.ClipDescr(kwargs=spec.ClipKwargs(min=0.0, max=1.0))] if percentiles != FULL_RANGE else []),
            ],
        )  # fmt: skip
        outputs = spec.OutputTensorDescr(
            id=probability_id,
            description="membrane probability (membrane where it is at least the bundle's membrane_threshold, 0.4)",
            axes=[
                spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("membrane")]),
                *(spec.SpaceOutputAxisWithHalo(id=axis, halo=self.halo, size=spec.SizeReference(
                    tensor_id=raw_id, axis_id=axis), unit="nanometer", scale=4.0) for axis in yx),
            ],
            test_tensor=spec.FileDescr(source=folder / "test_output.npy"),
            sample_tensor=spec.FileDescr(source=folder / "sample_output.tif"),
            data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            postprocessing=[spec.SigmoidDescr()],
        )  # fmt: skip
        torch_version = spec.Version(torch.__version__.split("+")[0])
        weights_descr = spec.WeightsDescr(
            pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
                source=weights["pytorch_state_dict"], architecture=architecture, pytorch_version=torch_version,
                dependencies=spec.FileDescr(source=folder / "environment.yaml"),
            ),
            torchscript=spec.TorchscriptWeightsDescr(
                source=weights["torchscript"], pytorch_version=torch_version, parent="pytorch_state_dict"
            ),
            onnx=spec.OnnxWeightsDescr(source=weights["onnx"], opset_version=ONNX_OPSET, parent="pytorch_state_dict"),
        )  # fmt: skip
        citations = ["isbi2012", "data", self.network_name if self.network_name in CITATIONS else "UNet", "MONAI"]
        return spec.ModelDescr(
            name=f"emseg {self.network_name} EM membranes ISBI 2012",
            description=metadata["description"][:1023],
            covers=[spec.FileDescr(source=cover)],
            documentation=spec.FileDescr(source=self.documentation.resolve()),
            authors=[spec.Author(name=metadata["authors"])],
            cite=[spec.CiteEntry(text=CITATIONS[key][0], doi=spec.Doi(CITATIONS[key][1])) for key in citations],
            license=spec.LicenseId("Apache-2.0"),
            tags=["electron-microscopy", "membrane-segmentation", "cell-segmentation", "isbi2012", "2d", "pytorch",
                  "monai", self.network_name.lower()],
            version=metadata["version"],
            inputs=[inputs],
            outputs=[outputs],
            weights=weights_descr,
        )  # fmt: skip

    def test(self, package: Path) -> None:
        """``bioimageio test`` of the package for every weight format; the first failure stops the export."""
        from bioimageio.core import test_model

        for weight_format in WEIGHT_FORMATS:
            summary = test_model(package, weight_format=weight_format)
            if summary.status != "passed":
                failed = [detail for detail in summary.details if detail.status == "failed"]
                reason = "; ".join(f"{d.name}: {d.errors[0].msg if d.errors else ''}" for d in failed[:2])
                raise InputError(f"{self.package}: the {weight_format} weights fail bioimageio test ({reason})")
