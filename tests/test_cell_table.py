"""The cell table: scikit-image's regionprops definitions, measured for all cells at once."""

import numpy as np
import pytest
from conftest import DATA
from skimage.measure import label, regionprops_table
from test_cells import grid_section

from scripts.cell_table import CELL_COLUMNS, CellTable, cell_table, section_table
from scripts.cells import label_cell_stack
from scripts.errors import InputError
from scripts.stack_io import read_stack

#: regionprops_table's name of each column measured in pixels
REGIONPROPS = {
    "area_px": "area", "perimeter_px": "perimeter", "centroid_y_px": "centroid-0", "centroid_x_px": "centroid-1",
    "bbox_min_y_px": "bbox-0", "bbox_min_x_px": "bbox-1", "bbox_max_y_px": "bbox-2", "bbox_max_x_px": "bbox-3",
    "equivalent_diameter_px": "equivalent_diameter_area", "major_axis_px": "axis_major_length",
    "minor_axis_px": "axis_minor_length", "eccentricity": "eccentricity", "solidity": "solidity",
    "orientation_rad": "orientation", "intensity_mean": "intensity_mean", "intensity_min": "intensity_min",
    "intensity_max": "intensity_max", "intensity_std": "intensity_std",
}  # fmt: skip
PHYSICAL = {
    "area_nm2": "area", "centroid_y_nm": "centroid-0", "centroid_x_nm": "centroid-1",
    "equivalent_diameter_nm": "equivalent_diameter_area", "major_axis_nm": "axis_major_length",
    "minor_axis_nm": "axis_minor_length",
}  # fmt: skip


def regionprops_columns(labels, image, spacing=None, names=REGIONPROPS):
    properties = ["label", *dict.fromkeys(name.split("-")[0] for name in names.values())]
    if spacing is not None:
        properties = [p for p in properties if not p.startswith(("intensity", "perimeter", "solidity", "bbox"))]
    measured = regionprops_table(labels, intensity_image=image, properties=properties, spacing=spacing or (1, 1))
    return {column: measured[name] for column, name in names.items() if name in measured}, measured["label"]


@pytest.mark.parametrize("pixel_size", [(4.0, 4.0), (5.0, 3.0)])
def test_every_column_is_regionprops_on_real_cells(pixel_size):
    """The ISBI labels' cells (irregular, touching the edges, some with holes) with their raw intensities."""
    image = read_stack(DATA / "train-volume.tif")[0]
    cells = label(read_stack(DATA / "train-labels.tif")[0] > 0, connectivity=1)
    table = section_table(cells, image, pixel_size, solidity=True)
    expected, ids = regionprops_columns(cells, image)
    assert table["id"].tolist() == ids.tolist() and len(ids) > 100
    for column, values in expected.items():
        np.testing.assert_allclose(table[column], values, rtol=1e-9, atol=1e-9, err_msg=column)
    physical, _ = regionprops_columns(cells, None, pixel_size, PHYSICAL)
    for column, values in physical.items():
        np.testing.assert_allclose(table[column], values, rtol=1e-9, atol=1e-9, err_msg=column)


def test_solidity_is_asked_for_and_the_columns_follow_the_options():
    cells = np.zeros((1, 9, 9), np.uint32)
    cells[0, 1:8, 1:8] = 1
    assert "solidity" not in cell_table(cells, cells)
    assert cell_table(cells, cells, solidity=True)["solidity"].tolist() == [1.0]
    measure = CellTable(pixel_size=[4, 4], solidity="yes")
    assert list(measure(cells[0], cells[0])) == [c for c in measure.columns if c != "section"]
    assert CellTable().columns == [c for c in CELL_COLUMNS if "_nm" not in c and c != "solidity"]
    with pytest.raises(InputError, match="--pixel_size"):
        CellTable(pixel_size=[4, 0])


def test_the_table_has_one_row_per_cell_and_its_areas_sum_to_the_labelled_pixels():
    membrane, _ = grid_section()
    cells = label_cell_stack(np.stack([membrane, membrane]), membrane_threshold=0.5)
    image = np.random.default_rng(0).integers(0, 255, cells.shape).astype(np.uint8)
    table = cell_table(cells, image)
    assert tuple(table) == tuple(c for c in CELL_COLUMNS if not c.endswith(("_nm", "_nm2")) and c != "solidity")
    assert table["id"].tolist() == list(range(1, 19)) and table["section"].tolist() == [0] * 9 + [1] * 9
    assert table["area_px"].sum() == (cells > 0).sum() and set(table["area_px"]) == {36.0}
    first = cells[0] == 1
    assert table["intensity_mean"][0] == pytest.approx(image[0][first].mean())
    assert table["intensity_max"][0] == image[0][first].max()
    assert table["centroid_y_px"][0] == pytest.approx(2.5) and table["eccentricity"][0] == pytest.approx(0.0)


def test_the_table_gives_physical_units_for_anisotropic_pixels():
    membrane, _ = grid_section()
    cells = label_cell_stack(membrane[None], membrane_threshold=0.5)
    table = cell_table(cells, np.zeros(cells.shape), pixel_size=(5.0, 4.0))
    np.testing.assert_allclose(table["area_nm2"], table["area_px"] * 20.0)
    np.testing.assert_allclose(table["centroid_y_nm"], table["centroid_y_px"] * 5.0)
    np.testing.assert_allclose(table["centroid_x_nm"], table["centroid_x_px"] * 4.0)
    assert table["major_axis_px"][0] == pytest.approx(table["minor_axis_px"][0])  # a square in pixels
    assert table["major_axis_nm"][0] == pytest.approx(table["minor_axis_nm"][0] * 5 / 4)  # 6 x 6 px = 30 x 24 nm
    assert np.isnan(table["perimeter_nm"]).all()  # regionprops measures perimeters with square pixels only
    square = cell_table(cells, np.zeros(cells.shape), pixel_size=(4.0, 4.0))
    np.testing.assert_allclose(square["perimeter_nm"], square["perimeter_px"] * 4.0)


def test_a_stack_without_cells_gives_an_empty_but_complete_table():
    table = cell_table(np.zeros((2, 5, 5), np.uint32), np.zeros((2, 5, 5)), pixel_size=(4.0, 4.0), solidity=True)
    assert tuple(table) == CELL_COLUMNS and all(len(values) == 0 for values in table.values())
