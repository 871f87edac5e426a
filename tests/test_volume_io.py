"""Lazy volumes of every input kind, their pixel sizes and checks, and the OME-Zarr output layout."""

import numpy as np
import pytest
import tifffile
import zarr
from conftest import DATA
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.writer import write_image
from PIL import Image

from scripts.stack_io import StackError
from scripts.volume_io import (
    create_ome_zarr,
    default_output_format,
    open_volume,
    read_pixel_size,
    write_ome_zarr_metadata,
)

STACK = tifffile.imread(DATA / "test-volume.tif")[:4, :64, :80]


def write_ome_zarr(path, image, fmt, pixel_size_um=(0.004, 0.004)):
    root = zarr.open_group(str(path), mode="w", zarr_format=2 if fmt is FormatV04 else 3)
    scale = {"z": 0.05, "y": pixel_size_um[0], "x": pixel_size_um[1]}
    units = dict.fromkeys("zyx", "micrometer")
    write_image(image, root, axes="zyx", fmt=fmt(), scale_factors=(), scale=scale, axes_units=units)
    return path


def save_zarr(path, data, chunks):
    array = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    array[:] = data
    return path


def test_a_multipage_tiff_is_read_page_by_page(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, STACK, photometric="minisblack", resolution=(1e7 / 4, 1e7 / 4), resolutionunit="CENTIMETER")
    volume = open_volume(path)
    assert (volume.kind, volume.shape, volume.array.chunks[0]) == ("tif", STACK.shape, (1, 1, 1, 1))
    assert volume.pixel_size == pytest.approx((4.0, 4.0))
    np.testing.assert_array_equal(volume.read(2, slice(10, 20), slice(5, 50)), STACK[2, 10:20, 5:50])


def test_a_tiff_written_page_by_page_is_one_volume(tmp_path):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as writer:  # one image series per section
        for section in STACK:
            writer.write(section, photometric="minisblack")
    volume = open_volume(path)
    assert volume.shape == STACK.shape
    np.testing.assert_array_equal(volume.read(3, slice(10, 20), slice(5, 50)), STACK[3, 10:20, 5:50])


def test_a_folder_a_single_image_and_a_zarr_array(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    for z, section in enumerate(STACK):
        Image.fromarray(section).save(folder / f"slice_{z}.png")
    Image.fromarray(STACK[0]).save(tmp_path / "one.png")
    save_zarr(tmp_path / "array.zarr", STACK, (1, 32, 32))
    for path, kind, expected in ((folder, "folder", STACK), (tmp_path / "one.png", "image", STACK[:1]),
                                 (tmp_path / "array.zarr", "zarr", STACK)):  # fmt: skip
        volume = open_volume(path)
        assert (volume.kind, volume.shape, volume.pixel_size) == (kind, expected.shape, None)
        np.testing.assert_array_equal(volume.read(len(expected) - 1), expected[-1])
    assert default_output_format(tmp_path / "array.zarr") == "ome-zarr" and default_output_format(folder) == "tif"


@pytest.mark.parametrize("fmt", [FormatV04, FormatV05], ids=["ngff-0.4", "ngff-0.5"])
def test_an_ome_zarr_image_gives_level_0_and_its_pixel_size(tmp_path, fmt):
    path = write_ome_zarr(tmp_path / "image.ome.zarr", STACK, fmt, pixel_size_um=(0.004, 0.005))
    volume = open_volume(path)
    assert (volume.kind, volume.shape) == ("ome-zarr", STACK.shape)
    assert volume.pixel_size == pytest.approx((4.0, 5.0)) and read_pixel_size(path) == pytest.approx((4.0, 5.0))
    np.testing.assert_array_equal(volume.read(1, slice(3, 9)), STACK[1, 3:9])


def test_an_ome_zarr_with_channels_is_refused(tmp_path):
    root = zarr.open_group(str(tmp_path / "rgb.ome.zarr"), mode="w")
    write_image(np.zeros((3, 2, 16, 16), np.uint8), root, axes="czyx", scale_factors=())
    with pytest.raises(StackError, match=r"rgb.ome.zarr: OME-Zarr image has axes \['c', 'z', 'y', 'x'\]"):
        open_volume(tmp_path / "rgb.ome.zarr")


def test_bad_blocks_name_the_file_and_the_section(tmp_path):
    image = np.random.default_rng(0).random((3, 16, 16), dtype=np.float32)
    image[2, 4, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", image)
    volume = open_volume(tmp_path / "nan.tif")
    volume.read(1)  # the sections before are fine: nothing is read until asked
    with pytest.raises(StackError, match=r"nan.tif: contains NaN or infinite values \(section 2\)"):
        volume.read(2)
    save_zarr(tmp_path / "broken.zarr", STACK, (1, 64, 80))
    chunk = tmp_path / "broken.zarr" / "c" / "1" / "0" / "0"  # zarr v3's chunk key of section 1
    chunk.write_bytes(b"not a compressed chunk")
    with pytest.raises(StackError, match=r"broken.zarr: cannot read section 1 .*corrupt or truncated"):
        open_volume(tmp_path / "broken.zarr").read(1)
    with pytest.raises(StackError, match="no such file or folder"):
        open_volume(tmp_path / "missing.tif")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(StackError, match="notes.txt: is not a TIFF, PNG, folder of slices, Zarr array or OME-Zarr"):
        open_volume(tmp_path / "notes.txt")


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_the_ome_zarr_output_opens_with_ome_zarr_py_and_its_labels_are_found(tmp_path, version):
    path = tmp_path / "out.ome.zarr"
    root, image, labels = create_ome_zarr(path, (2, 32, 48), (1, 32, 48), np.float32, version=version)
    assert root.metadata.zarr_format == {"0.5": FormatV05, "0.4": FormatV04}[version]().zarr_format
    image[:] = 0.25
    labels[:] = 7
    write_ome_zarr_metadata(root, (4.0, 4.0), "stack", version)
    assert (tmp_path / "out.ome.zarr" / ("zarr.json" if version == "0.5" else ".zattrs")).is_file()
    nodes = list(Reader(parse_url(str(tmp_path / "out.ome.zarr")))())
    kinds = [[spec.__class__.__name__ for spec in node.specs] for node in nodes]
    assert kinds == [["Multiscales"], ["Labels"], ["Label", "Multiscales"]]
    for node, value in ((nodes[0], 0.25), (nodes[2], 7)):
        assert node.data[0].shape == (2, 32, 48) and float(node.data[0][1, 5, 5].compute()) == value
        assert node.metadata["coordinateTransformations"][0][0]["scale"] == [1.0, 4.0, 4.0]
        assert [axis.get("unit") for axis in node.metadata["axes"]] == [None, "nanometer", "nanometer"]
    assert open_volume(tmp_path / "out.ome.zarr").pixel_size == pytest.approx((4.0, 4.0))
