"""Sections smaller than the inference window (issue 37): how the window's padding changes the network's answer.

MONAI's sliding window pads an axis shorter than its 512-pixel window with zeros, and the U-Net's instance norm then
normalises the section together with that band of zeros. Three ways to give a small section to the network:

* ``zeros``: MONAI's default (``SlidingWindowInferer``, constant 0);
* ``reflect_to_window``: the section mirrored (numpy's ``reflect``, repeated where the window is more than twice
  the section) out to the whole 512 window;
* ``fitted``: the window fitted to the section, rounded up to the network's multiple of 16 with the section
  mirrored over the few pixels of rounding (:class:`scripts.inferers.FittedWindowInferer`).

Two measurements choose between them, on the validation sections 18-23 with fold 4's weights (trained on 0-17):

* crops of 64, 100, 256, 384, 511 and 200 x 512 pixels cut from the centre of each section: how far the crop's
  membrane probability lies from the same pixels' probability inside the whole section (mean and 99th percentile
  of the absolute difference, on the pixels at least ``MARGIN`` from the crop's border, and on all);
* the sections downsampled to 358 x 358 (pixels 1.4x larger, labels by nearest neighbour): cells V_rand with the
  default cells, beside the constant all-interior map and the whole sections at full size.

Then, once, the chosen method against ``zeros`` on the test sections 24-29 downsampled alike, with the shipped
weights (``models/model.pt``) and their full-size score beside them.

    python bench/small_sections.py [--output docs/results/small_sections.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from skimage.transform import rescale

sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402

from scripts.checkpoints import load_weights  # noqa: E402
from scripts.datalists import load_labelled_stack, split_sections  # noqa: E402
from scripts.inferers import FittedWindowInferer  # noqa: E402
from scripts.metrics import cell_scores  # noqa: E402
from scripts.networks import size_multiple  # noqa: E402
from scripts.pipeline import SectionPredictor  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
ROI = (512, 512)
CROPS = ((64, 64), (100, 100), (256, 256), (384, 384), (511, 511), (200, 512))
MARGIN = 32  # pixels from a crop's border that the "interior" difference leaves out: there the crop lacks context
PIXEL_SCALE = 0.7  # 512 -> 358 pixels


class ReflectToWindow:
    """MONAI's sliding window on the image mirrored out to the whole window along each shorter axis."""

    def __init__(self, roi: tuple[int, int]) -> None:
        self.roi = roi
        self.window = SlidingWindowInferer(roi, sw_batch_size=1, overlap=0.25, mode="gaussian")

    def __call__(self, image: torch.Tensor, network) -> torch.Tensor:
        height, width = image.shape[-2:]
        extra = [max(side - size, 0) for side, size in zip(self.roi, (height, width), strict=True)]
        pads = [(pad // 2, pad - pad // 2) for pad in extra]
        padded = np.pad(image.cpu().numpy(), [(0, 0), (0, 0), *pads], mode="reflect")
        output = self.window(torch.from_numpy(padded), network)
        return output[..., pads[0][0] : pads[0][0] + height, pads[1][0] : pads[1][0] + width]


def predictors(model_path: Path) -> tuple[dict[str, SectionPredictor], object]:
    """The three predictors over ``model_path``'s weights (inference.json's network, preprocessing and
    postprocessing, eager fp32 on the CPU) and inference.json's cells."""
    config = ConfigParser()
    config.read_config(str(BUNDLE / "configs" / "inference.json"))
    config["bundle_root"] = str(BUNDLE)
    config["device"] = "$torch.device('cpu')"
    network = load_weights(config.get_parsed_content("network"), model_path)
    parts = [config.get_parsed_content(key) for key in ("preprocessing", "postprocessing")]
    inferers = {
        "zeros": SlidingWindowInferer(ROI, sw_batch_size=1, overlap=0.25, mode="gaussian"),
        "reflect_to_window": ReflectToWindow(ROI),
        "fitted": FittedWindowInferer(ROI, size_multiple(network), sw_batch_size=1, overlap=0.25, mode="gaussian"),
    }
    built = {
        name: SectionPredictor(network, inferer, parts[0], parts[1], "cpu", backend="eager")
        for name, inferer in inferers.items()
    }
    return built, config.get_parsed_content("cells")


def centre_crop(shape: tuple[int, int], size: tuple[int, int]) -> tuple[slice, slice]:
    starts = [(whole - side) // 2 for whole, side in zip(shape, size, strict=True)]
    return tuple(slice(start, start + side) for start, side in zip(starts, size, strict=True))


def crop_agreement(items: list[dict], predictors: dict[str, SectionPredictor]) -> dict:
    """Per method and crop size: the absolute difference between a crop's probability and the whole section's.

    Beside them, ``"same_window"``: the whole section predicted with the window a crop gets (its side, rounded up to
    16), against the 512 window, on the crop's pixels. No padding enters either, so this is what the window's size
    alone changes: the context a window sees, and the statistics instance norm takes over it.
    """
    whole = {item["slice"]: predictors["fitted"](item["image"]) for item in items}  # 512 x 512: no padding anywhere
    fitted = predictors["fitted"].inferer
    windows = {
        size: SectionPredictor(
            predictors["fitted"].network,
            FittedWindowInferer(fitted.window(size), fitted.size_multiple, overlap=0.25, mode="gaussian"),
            predictors["fitted"].preprocessing,
            predictors["fitted"].postprocessing,
            "cpu",
            backend="eager",
        )
        for size in CROPS
    }
    result = {}
    for method, predictor in {**predictors, "same_window": None}.items():
        result[method] = {}
        for size in CROPS:
            inner, every = [], []
            for item in items:
                region = centre_crop(item["image"].shape, size)
                crop = windows[size](item["image"])[region] if predictor is None else predictor(item["image"][region])
                difference = np.abs(crop - whole[item["slice"]][region])
                every.append(difference.ravel())
                margin = tuple(slice(MARGIN, side - MARGIN) if side > 2 * MARGIN + 16 else slice(None) for side in size)
                inner.append(difference[margin].ravel())
            inner, every = np.concatenate(inner), np.concatenate(every)
            result[method][f"{size[0]}x{size[1]}"] = {
                "interior_mean": float(inner.mean()),
                "interior_p99": float(np.percentile(inner, 99)),
                "all_mean": float(every.mean()),
                "all_p99": float(np.percentile(every, 99)),
            }
            print(
                f"{method:>18} {size[0]:>3}x{size[1]:<3} interior mean {inner.mean():.4f} "
                f"p99 {np.percentile(inner, 99):.4f}; all mean {every.mean():.4f}",
                flush=True,
            )
    return result


def downsampled(items: list[dict]) -> list[dict]:
    """The sections at ``PIXEL_SCALE`` (linear, anti-aliased) with their membrane labels (nearest neighbour)."""
    return [
        {
            "slice": item["slice"],
            "image": rescale(item["image"].astype(np.float32), PIXEL_SCALE, order=1, anti_aliasing=True),
            "label": rescale(item["label"], PIXEL_SCALE, order=0, anti_aliasing=False, preserve_range=True).astype(
                np.uint8
            ),
        }
        for item in items
    ]


def cells_v_rand(items: list[dict], predictor, cells) -> float:
    """Mean cells V_rand of ``items`` (``predictor`` None: the constant all-interior map, one cell per section)."""
    scores = []
    for item in items:
        cell_map = np.ones(item["label"].shape, np.uint32) if predictor is None else cells(predictor(item["image"]))
        scores.append(cell_scores(cell_map, item["label"])["v_rand"])
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/results/small_sections.json"))
    args = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    described = machine.describe()
    print(machine.summary(described), flush=True)
    data = BUNDLE / "data" / "isbi2012"
    folds = split_sections(load_labelled_stack(data / "train-volume.tif", data / "train-labels.tif"), 4, 5)
    validation, test = folds["validation"], folds["test"]
    result = {"machine": described, "margin": MARGIN, "pixel_scale": PIXEL_SCALE, "window": list(ROI)}

    chosen_by, cells = predictors(BUNDLE / "models" / "fold4" / "model.pt")
    result["validation_crops"] = crop_agreement(validation, chosen_by)
    small = downsampled(validation)
    result["validation_downsampled_cells_v_rand"] = {
        "all_interior": cells_v_rand(small, None, cells),
        "full_size": cells_v_rand(validation, chosen_by["fitted"], cells),
        **{method: cells_v_rand(small, predictor, cells) for method, predictor in chosen_by.items()},
    }
    print("validation 18-23 downsampled, cells V_rand:", result["validation_downsampled_cells_v_rand"], flush=True)
    scores = result["validation_downsampled_cells_v_rand"]
    padded = {method: scores[method] for method in ("reflect_to_window", "fitted")}
    chosen = max(padded, key=padded.get)
    result["chosen"] = chosen

    shipped, cells = predictors(BUNDLE / "models" / "model.pt")
    small = downsampled(test)
    result["test_downsampled_cells_v_rand"] = {
        "all_interior": cells_v_rand(small, None, cells),
        "full_size": cells_v_rand(test, shipped[chosen], cells),
        "zeros": cells_v_rand(small, shipped["zeros"], cells),
        chosen: cells_v_rand(small, shipped[chosen], cells),
    }
    print(f"test 24-29 downsampled ({chosen} chosen), cells V_rand:", result["test_downsampled_cells_v_rand"])
    machine.write_json(args.output, result)


if __name__ == "__main__":
    main()
