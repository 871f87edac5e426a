"""The screenshot of docs/napari.md: the plugin's widgets on the ISBI 2012 sample, segmented with the shipped U-Net.

Headless, on a virtual X display as CI runs the plugin's tests; Qt's ``xcb`` platform draws napari's OpenGL canvas
into the window (the tests' ``offscreen`` platform leaves the canvas out of a screenshot):

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb python bench/napari_screenshot.py

(Debian packages: xvfb, libxcb-icccm4, libxcb-keysyms1, libxcb-cursor0.) Writes ``docs/figures/napari.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from emseg_napari import sample_data
from emseg_napari.widgets import SegmentWidget

REPO = Path(__file__).resolve().parents[1]


def wait(condition, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the segmentation did not finish")
        QApplication.processEvents()
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", type=int, default=3, help="the first sections of the training sample")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "figures" / "napari.png")
    args = parser.parse_args()

    viewer = napari.Viewer(title="emseg in napari")
    viewer.window.resize(1600, 1000)
    (images, attributes, _), _ = sample_data.isbi2012_training()
    image = viewer.add_image(images[: args.sections], **attributes)
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="emseg: segment", area="right")
    segment.image.value = image
    segment.device.value = "cpu"
    segment.start()
    wait(lambda: segment.worker is not None and not segment.worker.is_running and segment.run_button.enabled)
    cells_widget = segment.cells_widget()
    cells = viewer.layers[f"{image.name} cells"]
    largest = int(cells.features.loc[cells.features["section"] == 0, "area_px"].idxmax())
    cells_widget.follow.value = False
    cells_widget.table.selectRow(largest)
    cells.opacity = 0.45
    viewer.dims.set_point(0, 0.0)
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(np.asarray(shot)).save(args.output)
    print(f"wrote {args.output} ({shot.shape[1]} x {shot.shape[0]}): {segment.status.value}")
    viewer.close()


if __name__ == "__main__":
    main()
