"""The writers: TIFF stacks written from a work group's arrays, under temporary names until committed."""

import numpy as np
import pytest
import tifffile

from scripts.blockwise import Block
from scripts.errors import InputError
from scripts.outputs import OmeZarrOutputs, TiffOutputs, stitched_cells, volume_outputs
from scripts.stack_io import read_pixel_size


def work_arrays():
    """A work group as plain arrays: two sections of two tiles, with block-local cell ids 1 and 2 in each tile."""
    probability = np.random.default_rng(0).random((2, 6, 10)).astype(np.float32)
    local = np.zeros((2, 6, 10), np.uint32)
    local[:, :, 0:2], local[:, :, 3:5], local[:, :, 5:7], local[:, :, 8:10] = 1, 2, 1, 2
    blocks = [[Block(z, 0, 6, 0, 5, 0, 0), Block(z, 0, 6, 5, 10, 0, 1)] for z in range(2)]
    lookups = [[np.array([0, 1, 2], np.uint32), np.array([0, 3, 2], np.uint32)],  # section 0: tile 2's id 2 is id 2
               [np.array([0, 4, 5], np.uint32), np.array([0, 6, 7], np.uint32)]]  # fmt: skip
    return {"0": probability, "cells_local": local}, blocks, lookups


def test_the_cells_are_the_block_ids_through_each_blocks_lookup():
    work, blocks, lookups = work_arrays()
    cells = stitched_cells(work, blocks[0], lookups[0], 0, slice(0, 6), slice(0, 10))
    assert cells[0].tolist() == [1, 1, 0, 2, 2, 3, 3, 0, 2, 2]
    assert stitched_cells(work, blocks[1], lookups[1], 1, slice(2, 4), slice(4, 7))[0].tolist() == [5, 6, 6]


def test_tiff_outputs_appear_only_when_committed_with_the_pixel_size(tmp_path):
    work, blocks, lookups = work_arrays()
    writer = TiffOutputs(tmp_path, "stack", membrane_threshold=0.5, challenge_submission="yes", pixel_size=[4, 5])
    writer.write(work, (2, 6, 10), ((z, blocks[z], lookups[z]) for z in range(2)))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        f".{path.name}.partial" for path in writer.files().values()
    )  # nothing that looks complete before the commit
    (tmp_path / ".work").mkdir()
    assert writer.commit(tmp_path / ".work") == list(writer.files().values()) and not (tmp_path / ".work").exists()
    stacks = {kind: tifffile.imread(path) for kind, path in writer.files().items()}
    np.testing.assert_array_equal(stacks["membrane_probability"], work["0"])
    np.testing.assert_array_equal(stacks["segmentation"], np.where(work["0"] >= 0.5, 0, 255))
    np.testing.assert_array_equal(stacks["isbi2012_submission"], 1 - work["0"])
    assert stacks["cells"].dtype == np.uint32 and stacks["cells"][1, 0].tolist() == [4, 4, 0, 5, 5, 6, 6, 0, 7, 7]
    assert stacks["segmentation"].dtype == np.uint8
    for path in writer.files().values():
        assert read_pixel_size(path) == pytest.approx((4.0, 5.0))


def test_a_writer_that_fails_leaves_nothing_after_its_discard(tmp_path):
    work, blocks, lookups = work_arrays()
    writer = TiffOutputs(tmp_path, "stack")
    with pytest.raises(KeyError):
        writer.write({"cells_local": work["cells_local"]}, (2, 6, 10), ((z, blocks[z], lookups[z]) for z in range(2)))
    assert writer.writing == writer.files()["membrane_probability"]  # the file to name in the error
    writer.discard()
    assert not any(tmp_path.iterdir())


def test_the_writer_follows_the_format_and_refuses_what_it_cannot_write(tmp_path):
    assert isinstance(volume_outputs("tif", tmp_path, "stack"), TiffOutputs)
    ome_zarr = volume_outputs("ome-zarr", tmp_path, "stack", ome_zarr_version="0.4")
    assert isinstance(ome_zarr, OmeZarrOutputs) and ome_zarr.files() == {"ome-zarr": tmp_path / "stack.ome.zarr"}
    with pytest.raises(InputError, match="--output_format png: must be one of tif, ome-zarr"):
        volume_outputs("png", tmp_path, "stack")
    for output_format in ("tif", "ome-zarr"):  # a bad flag is refused whether the format uses it or not
        with pytest.raises(InputError, match="--ome_zarr_version 0.3"):
            volume_outputs(output_format, tmp_path, "stack", ome_zarr_version="0.3")
    with pytest.raises(InputError, match="--challenge_submission true: the submission stack is a TIFF"):
        volume_outputs("ome-zarr", tmp_path, "stack", challenge_submission=True)
