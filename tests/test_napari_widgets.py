"""The plugin's widgets in a headless viewer: segmenting gives ``run inferring``'s cells and table, a run can be
cancelled, errors come as the command's one line, cells are merged, split and exported with their rows, and the
table and the viewer select together."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import BUNDLE, shipped_predictor, with_inferer
from monai.inferers import SlidingWindowInferer
from napari.utils.interactions import mouse_press_callbacks

from emseg_napari import sample_data
from emseg_napari.reader import read_stack
from emseg_napari.widgets import CellsWidget, SegmentWidget
from scripts.cell_table import cell_table

RUN_TIMEOUT_MS = 300_000


@pytest.fixture
def sample(viewer):
    """Two 160 x 192 crops of the training sample's sections, as the sample opens them (4 nm pixels)."""
    (data, attributes, _), _ = sample_data.isbi2012_training()
    return viewer.add_image(data[:2, 100:260, 200:392], **attributes)


def segment(widget: SegmentWidget, qtbot) -> None:
    worker = widget.start()
    assert worker is not None, widget.status.value
    with qtbot.waitSignal(worker.finished, timeout=RUN_TIMEOUT_MS):
        pass


def test_the_widgets_open_from_the_plugins_menu(viewer):
    _, segment = viewer.window.add_plugin_dock_widget("emseg", "Segment cells")
    _, cells = viewer.window.add_plugin_dock_widget("emseg", "Cells and table")
    assert isinstance(segment, SegmentWidget) and isinstance(cells, CellsWidget)
    assert segment.cells_widget() is cells  # a run's cells go to the dock that is open


def test_the_segment_widget_gives_the_cells_and_table_of_run_inferring(viewer, sample, qtbot, tmp_path):
    widget = SegmentWidget(viewer)
    widget.image.value = sample
    widget.device.value = "cpu"  # as the command below, on a machine with a GPU too
    assert widget.network.value == "U-Net (shipped)" and "SegNet (shipped)" in widget.network.choices
    segment(widget, qtbot)
    cells = viewer.layers[f"{sample.name} cells"]
    probability = viewer.layers[f"{sample.name} membrane probability"]
    assert widget.status.value == f"{len(cells.features)} cells in 2 section(s)"

    tifffile.imwrite(tmp_path / "crop.tif", np.asarray(sample.data), photometric="minisblack")
    command = [
        sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", "configs/inference.json",
        "--input_path", str(tmp_path / "crop.tif"), "--output_dir", str(tmp_path), "--pixel_size", "[4.0,4.0]",
        "--device", "cpu",
    ]  # fmt: skip
    subprocess.run(command, cwd=BUNDLE, capture_output=True, timeout=600, check=True)
    np.testing.assert_array_equal(cells.data, tifffile.imread(tmp_path / "crop_cells.tif"))
    np.testing.assert_array_equal(probability.data, tifffile.imread(tmp_path / "crop_membrane_probability.tif"))
    table = pd.read_csv(tmp_path / "crop_cells.csv")
    pd.testing.assert_frame_equal(cells.features.drop(columns="index"), table)
    assert cells.features["id"].dtype.kind == "i"
    assert tuple(cells.scale) == (4.0, 4.0, 4.0) and cells.metadata["emseg_pixel_size_nm"] == (4.0, 4.0)
    assert any(isinstance(widget, CellsWidget) for widget in viewer.window.dock_widgets.values())


def test_a_region_of_one_section_lands_where_it_was_cut(viewer, sample, qtbot):
    widget = SegmentWidget(viewer)
    widget.image.value = sample
    viewer.dims.set_point(0, 1 * 4.0)  # section 1, in nm
    box = viewer.add_shapes([[[40, 60], [40, 160], [120, 160], [120, 60]]], scale=sample.scale[1:])  # rows, columns
    widget.sections.value, widget.box.value = "current section", box
    segment(widget, qtbot)
    cells = viewer.layers[f"{sample.name} cells"]
    assert cells.data.shape == (1, 80, 100)
    np.testing.assert_allclose(cells.translate, [1 * 4.0, 40 * 4.0, 60 * 4.0])
    # an 80 x 100 region is predicted as inside its section, not as a region padded with zeros to the 512 window
    # (tests/test_pipeline.py measures this against its tolerance): the probability is nearer the whole section's
    region = np.asarray(viewer.layers[f"{sample.name} membrane probability"].data)[0]
    predictor = shipped_predictor()
    (data, _, _), _ = sample_data.isbi2012_training()
    section, pixels = np.asarray(data[1]), (slice(140, 220), slice(260, 360))  # the sample's crop starts at 100, 200
    inside = predictor(section)[pixels]
    zero_padded = with_inferer(predictor, SlidingWindowInferer(predictor.roi, overlap=0.25, mode="gaussian"))
    assert np.abs(region - inside).mean() < 0.5 * np.abs(zero_padded(section[pixels]) - inside).mean()
    assert (cells.features["section"] == 0).all()  # the table is the region's, as the command gives it
    corrections = widget.cells_widget()
    corrections.select_ids(cells.features["id"][:2].tolist())
    corrections.merge()  # measured on the image's pixels under the region
    expected = cell_table(cells.data, np.asarray(sample.data)[1:2, 40:120, 60:160], (4.0, 4.0))
    pd.testing.assert_frame_equal(cells.features.drop(columns="index"), pd.DataFrame(expected), check_dtype=False)


def test_a_run_can_be_cancelled_and_leaves_no_outputs(viewer, qtbot, tmp_path):
    (data, attributes, _), _ = sample_data.isbi2012_training()
    sections = viewer.add_image(data[:12, :128, :128], **attributes)
    widget = SegmentWidget(viewer)
    widget.image.value, widget.device.value = sections, "cpu"
    widget.output_dir.value = tmp_path
    worker = widget.start()
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=RUN_TIMEOUT_MS)
    widget.cancel()
    with qtbot.waitSignal(worker.finished, timeout=RUN_TIMEOUT_MS):
        pass
    assert widget.progress.value < 12 and widget.status.value == "cancelled"
    assert [layer.name for layer in viewer.layers] == [sections.name]
    assert list(tmp_path.iterdir()) == []  # no output, no work folder, no lock
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_a_single_image_is_one_section(viewer, sample, qtbot):
    image = viewer.add_image(np.asarray(sample.data[0]), name="one section", scale=(4.0, 4.0))
    widget = SegmentWidget(viewer)
    widget.image.value, widget.device.value = image, "cpu"
    segment(widget, qtbot)
    cells = viewer.layers["one section cells"]
    assert cells.data.shape == (1, *image.data.shape) and tuple(cells.scale[1:]) == (4.0, 4.0)
    assert len(cells.units) == 3 and len(cells.features) == cells.data.max()


def test_errors_come_as_the_commands_one_line(viewer, sample, qtbot, tmp_path):
    widget = SegmentWidget(viewer)
    widget.image.value = sample
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not weights")
    widget.weights.value = broken
    assert widget.start() is None
    expected = f"ValueError: {broken}: weights match none of the bundle's networks, or cannot be read"
    assert widget.status.value == expected
    import torch

    state = torch.load(BUNDLE / "models" / "model.pt", weights_only=True)  # weights that fit, holding NaN
    name = next(name for name, value in state.items() if value.is_floating_point())
    state[name][...] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    widget.weights.value, widget.device.value = tmp_path / "nan.pt", "cpu"
    segment(widget, qtbot)
    assert (
        widget.status.value
        == f"scripts.errors.InputError: {tmp_path / 'nan.pt'}: weights hold NaN or infinite values ({name})"
    )
    assert widget.run_button.enabled
    widget.weights.value = None
    sample.data = np.full(sample.data.shape, np.nan, np.float32)
    segment(widget, qtbot)
    assert widget.status.value.startswith("scripts.stack_io.StackError: ")
    assert "contains NaN or infinite values" in widget.status.value
    assert len(viewer.layers) == 1


@pytest.fixture
def corrected(viewer, tmp_path):
    """A cells layer as the reader opens run inferring's outputs, its image, and the cells widget on them."""
    images = tifffile.imread(BUNDLE / "data" / "isbi2012" / "train-volume.tif")[:2, :64, :64]
    cells = np.zeros((2, 64, 64), np.uint32)
    cells[0, 5:30, 5:30], cells[0, 5:30, 31:60], cells[0, 35:60, 5:60], cells[1, 10:50, 10:50] = 1, 2, 3, 4
    from emseg_napari.writer import write_cells

    tifffile.imwrite(tmp_path / "stack.tif", images, photometric="minisblack")
    write_cells(tmp_path, "stack", cells, pd.DataFrame(cell_table(cells, images, (4.0, 4.0))), (4.0, 4.0))
    [(data, attributes, _)] = read_stack(tmp_path / "stack.tif")
    image = viewer.add_image(np.asarray(data), **attributes)
    [(data, attributes, _)] = read_stack(tmp_path / "stack_cells.tif")
    layer = viewer.add_labels(data, **attributes)
    widget = CellsWidget(viewer)
    widget.image.value = image
    widget.show_cells(layer)
    return widget, layer, images


def test_the_table_and_the_viewer_select_together(corrected, viewer):
    widget, layer, _ = corrected
    assert widget.model.rowCount() == 4
    widget.table.selectRow(3)
    assert layer.selected_label == 4
    layer.selected_label = 2
    assert widget.selected_ids() == [2]
    layer.mode = "pan_zoom"
    viewer.dims.set_point(0, 0.0)  # a click picks the cell of the section shown
    for position, modifiers in (((0, 10 * 4.0, 10 * 4.0), ()), ((0, 10 * 4.0, 40 * 4.0), ("Shift",))):
        click = SimpleNamespace(type="mouse_press", position=position, modifiers=modifiers, dims_displayed=[1, 2])
        mouse_press_callbacks(layer, click)
    assert widget.selected_ids() == [1, 2] and layer.selected_label == 2  # a click, then a shift-click


def test_merge_then_split_recompute_their_rows_and_export_writes_both_files(corrected, viewer, tmp_path):
    widget, layer, images = corrected
    widget.select_ids([1, 2])
    widget.merge()
    assert widget.status.value == "merged 1, 2 into 1"
    assert layer.features["id"].tolist() == [1, 3, 4] and widget.model.rowCount() == 3
    expected = pd.DataFrame(cell_table(layer.data, images, (4.0, 4.0)))
    pd.testing.assert_frame_equal(layer.features.drop(columns="index"), expected, check_dtype=False)

    seeds = viewer.add_points(np.array([[0, 45, 10], [0, 45, 55]]) * 4.0)
    widget.seeds.value = seeds
    widget.select_ids([3])
    widget.split()
    assert widget.status.value == "split 3 into 3, 5"
    expected = pd.DataFrame(cell_table(layer.data, images, (4.0, 4.0)))
    pd.testing.assert_frame_equal(layer.features.drop(columns="index"), expected, check_dtype=False)

    widget.export_dir.value, widget.export_name.value = tmp_path / "export", "proofread"
    files = widget.export()
    assert [path.name for path in files] == ["proofread_cells.tif", "proofread_cells.csv"]
    np.testing.assert_array_equal(tifffile.imread(files[0]), layer.data)
    pd.testing.assert_frame_equal(pd.read_csv(files[1]), expected, check_dtype=False)
    assert sorted(path.name for path in (tmp_path / "export").iterdir()) == sorted(path.name for path in files)


def test_a_merge_across_sections_is_refused_in_one_line(corrected):
    widget, layer, _ = corrected
    before = np.array(layer.data)
    widget.select_ids([3, 4])
    widget.merge()
    assert widget.status.value.startswith("emseg_napari.proofreading.ProofreadingError: merge: cells are per section")
    np.testing.assert_array_equal(layer.data, before)
