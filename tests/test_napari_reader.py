"""The plugin's reader: each format the bundle reads and writes, as layers with their scale and the cell table, and
its manifest."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import DATA

from emseg_napari.reader import PIXEL_SIZE_KEY, get_reader, read_cell_table
from scripts.cell_table import cell_table
from scripts.outputs import write_pages
from scripts.volume_io import create_ome_zarr, write_ome_zarr_metadata
from scripts.writers import csv_bytes

PIXEL_SIZE = (4.0, 5.0)
SECTIONS = tifffile.imread(DATA / "train-volume.tif")[:2, :64, :48]
SECTION_CELLS = np.arange(64 * 48).reshape(64, 48) // 700 + 1
CELLS = np.stack([SECTION_CELLS, SECTION_CELLS + SECTION_CELLS.max()]).astype(np.uint32)  # ids per section


def read(path) -> list[tuple]:
    reader = get_reader(str(path))
    assert reader is not None, path
    return reader(str(path))


def write_table(path):
    path.write_bytes(csv_bytes(cell_table(CELLS, SECTIONS, PIXEL_SIZE)))


def test_a_tiff_stack_is_an_image_scaled_by_its_pixel_size(tmp_path):
    path = tmp_path / "stack.tif"
    write_pages(path, SECTIONS.shape, SECTIONS.dtype, iter(SECTIONS), PIXEL_SIZE)
    [(data, attributes, kind)] = read(path)
    assert kind == "image" and attributes["name"] == "stack"
    np.testing.assert_array_equal(np.asarray(data), SECTIONS)
    assert attributes["scale"] == (4.0, 4.0, 5.0) and attributes["units"] == ("nm", "nm", "nm")
    assert attributes["metadata"][PIXEL_SIZE_KEY] == PIXEL_SIZE


def test_a_folder_of_slices_is_an_image_without_a_scale(tmp_path):
    from PIL import Image

    for z, section in enumerate(SECTIONS):
        Image.fromarray(section).save(tmp_path / f"slice_{z:02d}.png")
    [(data, attributes, kind)] = read(tmp_path)
    assert kind == "image" and "scale" not in attributes
    np.testing.assert_array_equal(np.asarray(data), SECTIONS)


def test_cells_and_their_table_are_labels_with_features(tmp_path):
    write_pages(tmp_path / "stack_cells.tif", CELLS.shape, CELLS.dtype, iter(CELLS), PIXEL_SIZE)
    write_table(tmp_path / "stack_cells.csv")
    for path in (tmp_path / "stack_cells.tif", tmp_path / "stack_cells.csv"):
        [(data, attributes, kind)] = read(path)
        assert kind == "labels" and attributes["name"] == "stack_cells"
        np.testing.assert_array_equal(np.asarray(data), CELLS)
        features = attributes["features"]
        assert features.columns[0] == "index" and (features["index"] == features["id"]).all()
        assert sorted(features["id"]) == sorted(np.unique(CELLS).tolist())


def test_an_ome_zarr_image_comes_with_its_cells_and_their_table(tmp_path):
    path = tmp_path / "stack.ome.zarr"
    root, image, labels = create_ome_zarr(path, CELLS.shape, (1, 64, 48), np.float32)
    image[:], labels[:] = SECTIONS / 255.0, CELLS
    write_ome_zarr_metadata(root, PIXEL_SIZE, "stack")
    write_table(tmp_path / "stack_cells.csv")
    (image_data, image_attributes, image_kind), (cells, cell_attributes, cells_kind) = read(path)
    assert (image_kind, cells_kind) == ("image", "labels")
    np.testing.assert_allclose(np.asarray(image_data), SECTIONS / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(cells), CELLS)
    assert image_attributes["scale"] == cell_attributes["scale"] == (4.0, 4.0, 5.0)
    assert len(cell_attributes["features"]) == len(np.unique(CELLS))
    [(same_cells, _, _)] = read(tmp_path / "stack_cells.csv")
    np.testing.assert_array_equal(np.asarray(same_cells), CELLS)


def test_other_files_are_left_to_other_readers_and_a_lone_table_names_what_is_missing(tmp_path):
    (tmp_path / "notes.txt").write_text("not a stack")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None
    write_table(tmp_path / "lost_cells.csv")
    with pytest.raises(FileNotFoundError, match="lost_cells.csv: no lost_cells.tif or lost.ome.zarr beside it"):
        read_cell_table(tmp_path / "lost_cells.csv")


def test_a_corrupt_stack_gives_the_bundles_one_line(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(Exception, match="broken.tif: cannot be read as an image"):
        read(path)


def test_the_manifest_is_valid(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "emseg"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_napari_opens_the_files_through_the_plugin(viewer, tmp_path):
    write_pages(tmp_path / "stack_cells.tif", CELLS.shape, CELLS.dtype, iter(CELLS), PIXEL_SIZE)
    write_table(tmp_path / "stack_cells.csv")
    [layer] = viewer.open(tmp_path / "stack_cells.csv", plugin="emseg")
    assert type(layer).__name__ == "Labels" and tuple(layer.scale) == (4.0, 4.0, 5.0)
    assert layer.features.shape[0] == len(np.unique(CELLS))
