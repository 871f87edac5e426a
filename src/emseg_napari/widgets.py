"""The plugin's dock widgets: segment an image layer (:class:`SegmentWidget`), and look at, correct and export the
cells with their table (:class:`CellsWidget`).

Both hold only the interface: the run is :func:`emseg_napari.bundle.segmentation_steps` (the bundle's ``run
inferring``) on a worker thread, the corrections are :mod:`emseg_napari.proofreading`, the export is
:func:`emseg_napari.writer.write_cells`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    create_widget,
)
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import GeneratorWorker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt
from qtpy.QtWidgets import QAbstractItemView, QTableView

from . import proofreading
from .bundle import Network, network_for_weights, scripts_module, segmentation_steps, shipped_networks
from .reader import PIXEL_SIZE_KEY, SOURCE_KEY

__all__ = ["SegmentWidget", "CellsWidget", "FeatureTableModel", "SegmentationFailed", "region_of"]

SECTIONS = ("all sections", "current section")


def _devices() -> list[str]:
    import torch

    return [*(f"cuda:{index}" for index in range(torch.cuda.device_count())), "cpu"]


class SegmentationFailed(Exception):
    """A run that failed, carrying the command's last line (raised again on the worker thread as this type: superqt
    takes a ``RuntimeError``, which MONAI's config errors are, for a deleted worker and reports nothing)."""


def _last_line(error: BaseException) -> str:
    if isinstance(error, SegmentationFailed):
        return str(error)
    return scripts_module("errors").last_line(error)


def _frame(layer) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(scale, translate, units) of a layer's last three axes; a 2D layer is one section."""
    if layer.ndim >= 3:
        return np.asarray(layer.scale[-3:], float), np.asarray(layer.translate[-3:], float), tuple(layer.units[-3:])
    return np.asarray((1.0, *layer.scale)), np.asarray((0.0, *layer.translate)), (layer.units[0], *layer.units)


def region_of(image: Image, current_z: int | None, box=None) -> tuple[slice, slice, slice] | None:
    """The (sections, rows, columns) of ``image``'s data to segment: one section or all, and the bounding box of
    ``box`` (a Shapes layer, in world coordinates) or whole sections; None for the whole of it."""
    shape = image.data.shape[-3:] if image.data.ndim >= 3 else (1, *image.data.shape)
    sections = slice(current_z, current_z + 1) if current_z is not None else slice(0, shape[0])
    rows, columns = slice(0, shape[1]), slice(0, shape[2])
    if box is not None and len(box.data):
        corners = np.array([box.data_to_world(vertex)[-2:] for shape_data in box.data for vertex in shape_data])
        pixels = (corners - np.asarray(image.translate[-2:])) / np.asarray(image.scale[-2:])  # rows, columns
        low = np.clip(np.floor(pixels.min(axis=0)).astype(int), 0, shape[1:])
        high = np.clip(np.ceil(pixels.max(axis=0)).astype(int), 0, shape[1:])
        if (high - low < 2).any():
            raise ValueError(f"{box.name}: its box lies outside {image.name} or is under 2 pixels wide")
        rows, columns = slice(low[0], high[0]), slice(low[1], high[1])
    region = (sections, rows, columns)
    return None if all(s.start == 0 and s.stop == size for s, size in zip(region, shape, strict=True)) else region


def _follow_layers(widget: Container, viewer) -> None:
    """Keeps ``widget``'s layer choices current, docked or not (napari updates only docked widgets)."""
    for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.reordered):
        event.connect(widget.reset_choices)


class SegmentWidget(Container):
    """Runs the bundle's inference on an image layer: the membrane probability and the cells, with their table,
    come back as layers; the cells open in :class:`CellsWidget`."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = viewer = napari_viewer
        self.networks = {label: (network, path) for label, network, path in shipped_networks()}
        self.image = create_widget(annotation=Image, label="image")
        self.sections = ComboBox(choices=SECTIONS, value=SECTIONS[0], label="sections")
        self.box = create_widget(annotation=Shapes | None, label="box (Shapes)")
        self.network = ComboBox(choices=list(self.networks), label="network")
        self.weights = FileEdit(mode="r", filter="*.pt", label="other weights", nullable=True, value=None)
        self.device = ComboBox(choices=_devices(), label="device")
        self.output_dir = FileEdit(mode="d", label="keep outputs in", nullable=True, value=None)
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(min=0, max=1, value=0, label="blocks")
        self.status = Label(value="")
        self.extend([
            self.image, self.sections, self.box, self.network, self.weights, self.device, self.output_dir,
            self.run_button, self.cancel_button, self.progress, self.status,
        ])  # fmt: skip
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        _follow_layers(self, viewer)
        self.worker: GeneratorWorker | None = None
        self._cancelled = threading.Event()
        self._placement: dict = {}

    def _network(self) -> tuple[Network, Path]:
        other = self.weights.value
        if other is not None:
            network = network_for_weights(other)
            if network is None:
                raise ValueError(f"{other}: weights match none of the bundle's networks, or cannot be read")
            return network, Path(other)
        return self.networks[self.network.value]

    def start(self) -> GeneratorWorker | None:
        """Starts a run on a worker thread; returns the worker (None when the choices are refused)."""
        image = self.image.value
        try:
            if image is None:
                raise ValueError("choose an image layer to segment")
            if image.multiscale or image.rgb or image.data.ndim not in (2, 3):
                raise ValueError(
                    f"{image.name}: is {'multiscale' if image.multiscale else f'of shape {image.data.shape}'}; "
                    "segment a grayscale (Z, H, W) or (H, W) layer (a multiscale one: run the command on its file)"
                )
            current = None
            if self.sections.value == "current section" and image.data.ndim == 3:
                current = int(round(image.world_to_data(self.viewer.dims.point)[0]))
                if not 0 <= current < image.data.shape[0]:
                    raise ValueError(f"{image.name}: the section on screen, {current}, is not one of its sections")
            region = region_of(image, current, self.box.value)
            network, weights = self._network()
        except Exception as error:
            return self._fail(error)
        source = image.metadata.get(SOURCE_KEY) or image.source.path or None
        steps = segmentation_steps(
            image.data, network, weights, self.device.value, region=region, source=source,
            pixel_size=image.metadata.get(PIXEL_SIZE_KEY), output_dir=self.output_dir.value, name=image.name,
        )  # fmt: skip
        scale, translate, units = _frame(image)
        offset = np.array([r.start for r in region]) if region is not None else np.zeros(3)
        self._placement = {"image": image, "scale": scale, "translate": translate + offset * scale, "units": units}
        self._cancelled.clear()
        self.progress.max, self.progress.value = 1, 0
        self.worker = GeneratorWorker(self._stepped, steps)
        self.worker.yielded.connect(self._show_progress)
        self.worker.returned.connect(self._show_result)
        self.worker.errored.connect(self._fail)
        self.worker.finished.connect(self._finished)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = "segmenting…"
        self.worker.start()
        return self.worker

    def _stepped(self, steps):
        """The run as the worker thread sees it: stops (closing the run, so its files go) when cancelled."""
        try:
            while not self._cancelled.is_set():
                try:
                    progress = next(steps)
                except StopIteration as finished:
                    return finished.value
                except Exception as error:
                    raise SegmentationFailed(_last_line(error)) from error
                yield progress
            return None
        finally:
            steps.close()

    def cancel(self) -> None:
        """Stops the run after the block in progress."""
        self._cancelled.set()
        self.status.value = "cancelling…"

    def _show_progress(self, progress: tuple[int, int]) -> None:
        done, total = progress
        self.progress.max, self.progress.value = total, done

    def _fail(self, error: BaseException) -> None:
        line = _last_line(error)
        self.status.value = line
        show_error(line)

    def _finished(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = True, False

    def _show_result(self, result) -> None:
        if result is None or self._cancelled.is_set():  # cancelled, or cancelled while the outputs were written
            self.status.value = "cancelled"
            return
        place = self._placement
        image = place["image"]
        common = {
            "scale": place["scale"], "translate": place["translate"], "units": place["units"],
            "metadata": {PIXEL_SIZE_KEY: result.pixel_size},
        }  # fmt: skip
        probability = self.viewer.add_image(
            result.probability, name=f"{image.name} membrane probability", colormap="magma", blending="additive",
            visible=False, **common,
        )  # fmt: skip
        cells = self.viewer.add_labels(result.cells, name=f"{image.name} cells", features=result.table, **common)
        self.status.value = f"{len(result.table)} cells in {result.cells.shape[0]} section(s)"
        show_info(self.status.value)
        widget = self.cells_widget()
        widget.image.value, widget.relief.value = image, probability
        widget.show_cells(cells)

    def cells_widget(self) -> CellsWidget:
        """The viewer's cells dock (Plugins > emseg > Cells and table), opened if needed."""
        for widget in self.viewer.window.dock_widgets.values():
            if isinstance(widget, CellsWidget):
                return widget
        _, widget = self.viewer.window.add_plugin_dock_widget("emseg", "Cells and table")
        return widget


class FeatureTableModel(QAbstractTableModel):
    """A layer's features as a read-only Qt table, drawn row by row as shown (a volume has 10^5 cells)."""

    def __init__(self, table=None) -> None:
        super().__init__()
        self.set_table(table)

    def set_table(self, table) -> None:
        self.beginResetModel()
        self.columns = [column for column in table.columns if column != "index"] if table is not None else []
        self.values = [table[column].to_numpy() for column in self.columns] if table is not None else []
        self.rows = len(table) if table is not None else 0
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: B008 (Qt's signature)
        return 0 if parent.isValid() else self.rows

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if role != Qt.ItemDataRole.DisplayRole or not index.isValid():
            return None
        value = self.values[index.column()][index.row()]
        return f"{value:.6g}" if isinstance(value, float | np.floating) else str(value)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        return self.columns[section] if orientation == Qt.Orientation.Horizontal else str(section + 1)


class CellsWidget(Container):
    """The cell table of a Labels layer beside the viewer, and its corrections.

    Clicking a row selects its cell (and goes to its section); clicking a cell (pan/zoom mode; Shift adds to the
    selection) selects its row. Merge joins the selected cells of one section; Split cuts the selected cell at the
    points of a Points layer, along the membranes of the relief layer (the membrane probability); both recompute
    the rows they change. Export writes the label stack and the table, complete or not at all.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = viewer = napari_viewer
        self.cells = create_widget(annotation=Labels, label="cells")
        self.image = create_widget(annotation=Image, label="image")
        self.relief = create_widget(annotation=Image | None, label="relief")
        self.seeds = create_widget(annotation=Points | None, label="seeds")
        self.merge_button = PushButton(text="Merge selected")
        self.split_button = PushButton(text="Split selected at seeds")
        self.export_dir = FileEdit(mode="d", label="export to", nullable=True, value=None)
        self.export_name = LineEdit(label="name", value="corrected")
        self.follow = CheckBox(text="go to the selected cell", value=True)
        self.export_button = PushButton(text="Export cells and table")
        self.status = Label(value="")
        self.model = FeatureTableModel()
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setMinimumHeight(320)
        self.extend([
            self.cells, self.image, self.relief, self.seeds, self.follow, self.merge_button, self.split_button,
            self.export_dir, self.export_name, self.export_button, self.status,
        ])  # fmt: skip
        self.native.layout().addWidget(self.table)
        self.table.selectionModel().selectionChanged.connect(self._rows_selected)
        self.cells.changed.connect(self.show_cells)
        self.merge_button.changed.connect(self.merge)
        self.split_button.changed.connect(self.split)
        self.export_button.changed.connect(self.export)
        self._layer: Labels | None = None
        self._syncing = False
        self.native.destroyed.connect(lambda *_: self._release())
        _follow_layers(self, viewer)
        if self.cells.value is not None:
            self.show_cells(self.cells.value)

    # the table
    def show_cells(self, layer: Labels | None) -> None:
        """Shows ``layer``'s table and follows its selection."""
        if layer is not None and self.cells.value is not layer:
            self.cells.value = layer  # its change event shows it
            return
        self._release()
        self._layer = layer
        if layer is not None:
            layer.events.selected_label.connect(self._label_selected)
            layer.mouse_drag_callbacks.append(self._on_click)
        self.refresh_table()

    def _release(self) -> None:
        """Stops following the layer (another is shown, or the widget is closed: Qt may then call this while Python
        already tears the widget down, so nothing here may assume its attributes)."""
        layer = getattr(self, "_layer", None)
        if layer is not None:
            layer.events.selected_label.disconnect(self._label_selected)
            if self._on_click in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.remove(self._on_click)
        self._layer = None

    def _has_table(self) -> bool:
        return self._layer is not None and "id" in self._layer.features.columns

    def refresh_table(self) -> None:
        self._syncing = True
        self.model.set_table(self._layer.features if self._has_table() else None)
        self._syncing = False
        if self._layer is None:
            self.status.value = ""
        elif self._has_table():
            self.status.value = f"{self.model.rowCount()} cells"
        else:
            self.status.value = f"{self._layer.name}: has no cell table (segment, or open a <name>_cells.csv)"

    def selected_ids(self) -> list[int]:
        if not self._has_table():
            return []
        ids = self._layer.features["id"].to_numpy()
        return [int(ids[index.row()]) for index in self.table.selectionModel().selectedRows()]

    def select_ids(self, ids: list[int], extend: bool = False) -> None:
        """Selects the rows of ``ids`` (added to the selection with ``extend``)."""
        if not self._has_table():
            return
        rows = np.flatnonzero(np.isin(self._layer.features["id"].to_numpy(), ids))
        model, flags = self.table.selectionModel(), self.table.selectionModel().SelectionFlag
        self._syncing = True
        if not extend:
            self.table.clearSelection()
        for row in rows:
            model.select(self.model.index(int(row), 0), flags.Select | flags.Rows)
        if len(rows):
            self.table.scrollTo(self.model.index(int(rows[-1]), 0))
        self._syncing = False

    def _rows_selected(self, *_) -> None:
        if self._syncing or not self._has_table():
            return
        ids = self.selected_ids()
        if not ids:
            return
        self._syncing = True
        self._layer.selected_label = ids[-1]
        self._syncing = False
        if self.follow.value:
            self._go_to(ids[-1])

    def _go_to(self, cell: int) -> None:
        row = self._layer.features.loc[self._layer.features["id"] == cell].iloc[0]
        position = (row["section"], row["centroid_y_px"], row["centroid_x_px"])
        world = self._layer.data_to_world(np.asarray(position, dtype=float))
        self.viewer.dims.set_point(range(len(world) - 2), world[:-2])
        self.viewer.scene.camera.center = tuple(world[-2:])

    def _label_selected(self, _event=None) -> None:
        if not self._syncing and self._has_table() and self._layer.selected_label:
            self.select_ids([int(self._layer.selected_label)])

    def _on_click(self, layer: Labels, event) -> None:
        if layer.mode != "pan_zoom" or not self._has_table():
            return
        value = layer.get_value(event.position, world=True)
        if value:
            self.select_ids([int(value)], extend="Shift" in event.modifiers)
            self._syncing = True
            layer.selected_label = int(value)
            self._syncing = False

    # corrections
    def _editable(self) -> np.ndarray:
        if not isinstance(self._layer.data, np.ndarray):  # lazily read: corrections need it in memory
            self._layer.data = np.asarray(self._layer.data)
        return self._layer.data

    def _in_cells_frame(self, image: Image | None, role: str):
        """``image``'s pixels under the cells layer (a region's cells lie inside their image), unread until indexed."""
        layer = self._layer
        if image is None:
            raise proofreading.ProofreadingError(f"choose the {role} layer")
        (scale, translate, _), (cells_translate) = _frame(image), _frame(layer)[1]
        offset = np.round((cells_translate - translate) / scale).astype(int)
        data = image.data if image.ndim >= 3 else image.data[None]
        region = tuple(slice(start, start + size) for start, size in zip(offset, layer.data.shape, strict=True))
        if (offset < 0).any() or data[region].shape != layer.data.shape:
            raise proofreading.ProofreadingError(f"{image.name}: does not cover the cells of {layer.name}")
        return data[region]

    def _checked_table(self) -> None:
        if not self._has_table():
            raise proofreading.ProofreadingError("choose a cells layer with its table (segment, or open its CSV)")

    def _remeasure(self, intensities, ids: list[int], z: int, removed: list[int]) -> None:
        layer = self._layer
        rows = proofreading.measure_cells(layer.data, intensities, ids, z, layer.metadata.get(PIXEL_SIZE_KEY))
        layer.features = proofreading.updated_table(layer.features, rows, removed)
        layer.refresh()
        self.refresh_table()
        self.select_ids(ids)

    def merge(self) -> None:
        """Merges the selected cells (rows) into the one with the smallest id."""
        try:
            self._checked_table()
            ids = self.selected_ids()
            intensities = self._in_cells_frame(self.image.value, "image")  # checked before anything changes
            kept, z = proofreading.merge_cells(self._editable(), ids)
            self._remeasure(intensities, [kept], z, [cell for cell in ids if cell != kept])
            self.status.value = f"merged {', '.join(map(str, sorted(ids)))} into {kept}"
        except Exception as error:
            self._fail(error)

    def split(self) -> None:
        """Splits the selected cell at the seed points, along the relief layer (the membrane probability; without
        one, the dark membranes of the image)."""
        try:
            self._checked_table()
            ids = self.selected_ids()
            if len(ids) != 1:
                raise proofreading.ProofreadingError(f"split: select one cell, got {len(ids)}")
            if self.seeds.value is None:
                raise proofreading.ProofreadingError("split: choose a Points layer with a point in each part")
            seeds_layer = self.seeds.value
            seeds = np.array([self._layer.world_to_data(seeds_layer.data_to_world(p)) for p in seeds_layer.data])
            intensities = self._in_cells_frame(self.image.value, "image")
            z = int(self._layer.features.loc[self._layer.features["id"] == ids[0], "section"].iloc[0])
            if self.relief.value is not None:
                relief = np.asarray(self._in_cells_frame(self.relief.value, "relief")[z], dtype=float)
            else:  # membranes are dark
                relief = -np.asarray(intensities[z], dtype=float)
            parts = proofreading.split_cell(self._editable(), ids[0], seeds, relief, z)
            self._remeasure(intensities, parts, z, [])
            self.status.value = f"split {ids[0]} into {', '.join(map(str, parts))}"
        except Exception as error:
            self._fail(error)

    def export(self) -> list[Path] | None:
        """Writes the cells and their table to the chosen folder; returns the files (None when refused)."""
        try:
            self._checked_table()
            folder = self.export_dir.value
            if folder is None:
                raise ValueError("export: choose a folder to export to")
            layer = self._layer
            from .writer import write_cells

            files = write_cells(
                folder, self.export_name.value, layer.data, layer.features, layer.metadata.get(PIXEL_SIZE_KEY)
            )
            self.status.value = f"wrote {', '.join(str(path) for path in files)}"
            return files
        except Exception as error:
            self._fail(error)
            return None

    def _fail(self, error: BaseException) -> None:
        line = _last_line(error)
        self.status.value = line
        show_error(line)
