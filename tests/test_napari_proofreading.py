"""Merging and splitting cells, and the table rows they change, against the bundle's own table of the whole stack."""

import numpy as np
import pandas as pd
import pytest

from emseg_napari.proofreading import ProofreadingError, measure_cells, merge_cells, split_cell, updated_table
from scripts.cell_table import cell_table

PIXEL_SIZE = (4.0, 5.0)


def stack() -> tuple[np.ndarray, np.ndarray]:
    """Two sections: 1 | 2 side by side over 3 in section 0, and 4 in section 1; intensities that vary."""
    cells = np.zeros((2, 20, 30), np.uint32)
    cells[0, 2:10, 2:14], cells[0, 2:10, 15:28], cells[0, 12:18, 2:28] = 1, 2, 3
    cells[1, 3:17, 5:25] = 4
    image = np.random.default_rng(0).integers(0, 255, cells.shape).astype(np.uint8)
    return cells, image


def table_of(cells, image) -> pd.DataFrame:
    return pd.DataFrame(cell_table(cells, image, PIXEL_SIZE))


def test_the_rows_of_some_cells_are_the_rows_of_the_whole_table():
    cells, image = stack()
    rows = pd.DataFrame(measure_cells(cells, image, [2, 3], 0, PIXEL_SIZE))
    whole = table_of(cells, image)
    pd.testing.assert_frame_equal(rows, whole[whole["id"].isin([2, 3])].reset_index(drop=True)[rows.columns])


def test_merging_two_cells_keeps_the_smaller_id_and_its_row_is_remeasured():
    cells, image = stack()
    table = table_of(cells, image)
    kept, z = merge_cells(cells, [2, 1])
    assert (kept, z) == (1, 0)
    assert not (cells == 2).any() and (cells[0, 2:10, 15:28] == 1).all()
    table = updated_table(table, measure_cells(cells, image, [kept], z, PIXEL_SIZE), removed=[2])
    expected = table_of(cells, image)
    assert table["id"].tolist() == [1, 3, 4]
    pd.testing.assert_frame_equal(table, expected[table.columns])


def test_cells_of_different_sections_are_not_merged():
    cells, _ = stack()
    before = cells.copy()
    with pytest.raises(ProofreadingError, match="different sections .*3 in section 0, 4 in section 1"):
        merge_cells(cells, [3, 4])
    with pytest.raises(ProofreadingError, match="at least two cells"):
        merge_cells(cells, [3])
    np.testing.assert_array_equal(cells, before)


def test_a_split_follows_the_relief_between_the_seeds_and_gives_new_ids():
    cells, image = stack()
    relief = np.zeros(cells.shape[1:])
    relief[:, 15] = 1.0  # a membrane across cell 3 at column 15
    table = table_of(cells, image)
    parts = split_cell(cells, 3, np.array([[0, 14, 5], [0, 15, 25]]), relief)
    assert parts == [3, 5]
    assert (cells[0, 12:18, 2:15] == 3).all() and (cells[0, 12:18, 16:28] == 5).all()
    table = updated_table(table, measure_cells(cells, image, parts, 0, PIXEL_SIZE))
    expected = table_of(cells, image)
    assert table["id"].tolist() == [1, 2, 3, 5, 4]  # ordered by section, then id, as run inferring writes it
    pd.testing.assert_frame_equal(table, expected[table.columns])


def test_a_split_needs_two_seeds_inside_the_cell():
    cells, _ = stack()
    before = cells.copy()
    with pytest.raises(
        ProofreadingError, match="cell 3 \\(section 0\\) needs at least two seed points inside it, got 1"
    ):
        split_cell(cells, 3, np.array([[0, 14, 5], [1, 14, 20], [0, 5, 5]]), np.zeros(cells.shape[1:]))
    with pytest.raises(ProofreadingError, match="cell 9: no pixel has this id"):
        split_cell(cells, 9, np.array([[0, 14, 5], [0, 14, 20]]), np.zeros(cells.shape[1:]))
    np.testing.assert_array_equal(cells, before)


def test_a_part_of_the_cell_no_seed_reaches_keeps_its_id():
    cells, _ = stack()
    merge_cells(cells, [1, 3])  # two pieces that do not touch
    parts = split_cell(cells, 1, np.array([[0, 14, 5], [0, 15, 25]]), np.zeros(cells.shape[1:]))
    assert parts == [1, 5]
    assert (cells[0, 2:10, 2:14] == 1).all()  # the piece without a seed is not erased
    assert set(np.unique(cells[0, 12:18, 2:28])) == {1, 5}
