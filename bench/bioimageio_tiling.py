"""How far the bioimage.io package's predictions move from the bundle's when a consumer pads or tiles.

The bundle predicts each 512 x 512 section whole. bioimage.io consumers run the package's model in other ways:

* ``whole``: the section as one tensor, no padding (how ``bioimageio test`` runs it);
* ``halo padded``: what bioimageio.core's ``predict`` does by default: the section padded by the output halo
  (32 px), the halo cropped from the output;
* ``tiled``: what ``predict(blocksize_parameter=n)`` does: tiles of ``min + n * step`` pixels with that halo, as a
  consumer with little memory runs it.

The U-Net normalises each feature map by its own statistics (instance norm), so what it sees around a pixel moves
its output. For each mode, the mean and the largest absolute difference from the bundle's probability, and the
fraction of pixels on the other side of the membrane threshold, over the sections of the test volume:

    python bench/bioimageio_tiling.py [--sections 0 1 2] [--blocksize 4] [--weight_format torchscript]
        [--output docs/results/bioimageio_tiling.json]

The script prints them as JSON and stores the same, with the machine and command line, in ``--output``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
sys.path.insert(0, str(BUNDLE))
sys.path.insert(0, str(REPO / "bench"))

import machine  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402


def export(folder: Path) -> tuple[Path, ConfigParser]:
    with contextlib.chdir(BUNDLE):
        config = ConfigParser()
        config.read_config(str(BUNDLE / "configs" / "bioimageio.json"))
        config.update({"bundle_root": str(BUNDLE), "output_dir": str(folder), "bioimageio_export#check": False})
        config.get_parsed_content("initialize")
        return config.get_parsed_content("bioimageio_export").run(), config


def as_sample(raw: np.ndarray, name: int):
    """A bioimageio.core sample of the (1, 1, H, W) section ``raw`` as the input ``raw``."""
    from bioimageio.core import Sample, Tensor
    from bioimageio.spec.model.v0_5 import TensorId

    tensor = Tensor.from_numpy(raw, dims=("batch", "channel", "y", "x"))
    return Sample(members={TensorId("raw"): tensor}, stat={}, id=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", type=int, nargs="+", default=list(range(0, 30, 5)))
    parser.add_argument("--blocksize", type=int, default=4, help="n of the tiles' min + n * step")
    parser.add_argument("--weight_format", default="torchscript")
    parser.add_argument("--threshold", type=float, default=0.4, help="inference.json's membrane_threshold")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results" / "bioimageio_tiling.json")
    args = parser.parse_args()
    measured_on = machine.describe()
    from bioimageio.core import create_prediction_pipeline, load_model_description
    from bioimageio.spec.model.v0_5 import TensorId

    stack = tifffile.imread(BUNDLE / "data" / "isbi2012" / "test-volume.tif")
    out_id = TensorId("membrane_probability")
    differences: dict[str, list] = {"whole": [], "halo padded": [], "tiled": []}
    with tempfile.TemporaryDirectory() as folder:
        package, config = export(Path(folder))
        network, preprocessing = config.get_parsed_content("network"), config.get_parsed_content("preprocessing")
        inferer = config.get_parsed_content("sliding_window_inferer")
        description = load_model_description(package)
        with create_prediction_pipeline(description, weight_format=args.weight_format) as pipeline:
            for z in args.sections:
                section = stack[z]
                with torch.no_grad():
                    image = preprocessing({"image": section})["image"][None]
                    bundle = torch.sigmoid(inferer(image, network))[0, 0].numpy()
                raw = section[None, None].astype(np.float32)
                whole = pipeline.predict_sample_without_blocking(
                    as_sample(raw, z), skip_input_padding=True, skip_output_cropping=True
                )  # fmt: skip
                padded = pipeline.predict_sample_without_blocking(as_sample(raw, z))  # bioimageio.core's predict
                tiled = pipeline.predict_sample_with_blocking(as_sample(raw, z), ns=args.blocksize)
                for mode, sample in (("whole", whole), ("halo padded", padded), ("tiled", tiled)):
                    predicted = sample.members[out_id].data.transpose("batch", "channel", "y", "x").values[0, 0]
                    flipped = (predicted >= args.threshold) != (bundle >= args.threshold)
                    differences[mode].append((np.abs(predicted - bundle), flipped.mean()))
    step = description.inputs[0].axes[2].size
    rows = {}
    for mode, values in differences.items():
        absolute = np.stack([value for value, _ in values])
        rows[mode] = {
            "mean_abs_difference": float(absolute.mean()),
            "max_abs_difference": float(absolute.max()),
            "pixels_across_threshold": float(np.mean([flipped for _, flipped in values])),
        }
    results = {"sections": args.sections, "tile": step.min + args.blocksize * step.step, **rows}
    results["machine"] = measured_on
    print(json.dumps(results, indent=2))
    machine.write_json(args.output, results)


if __name__ == "__main__":
    main()
