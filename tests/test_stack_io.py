"""Reading stacks, single images and folders, and the errors bad inputs give."""

import numpy as np
import pytest
import tifffile
from conftest import DATA, touching_blobs
from PIL import Image

from scripts.errors import InputError
from scripts.stack_io import StackError, read_instance_labels, read_membrane_labels, read_pixel_size, read_stack


def test_reads_the_shipped_stacks():
    images = read_stack(DATA / "train-volume.tif")
    assert images.shape == (30, 512, 512) and images.dtype == np.uint8
    membrane = read_membrane_labels(DATA / "train-labels.tif")
    assert set(np.unique(membrane)) == {0, 1}
    assert 0.15 < membrane.mean() < 0.3  # ~22 % of the pixels are membrane


def test_folder_of_png_slices_is_read_in_natural_order(tmp_path):
    for index in (1, 2, 10):
        Image.fromarray(np.full((8, 6), index, dtype=np.uint8)).save(tmp_path / f"slice_{index}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    stack = read_stack(tmp_path)
    assert stack.shape == (3, 8, 6)
    assert stack[:, 0, 0].tolist() == [1, 2, 10]


def test_single_slice_image_becomes_a_one_slice_stack(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((5, 7), dtype=np.uint16))
    assert read_stack(tmp_path / "one.tif").shape == (1, 5, 7)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.mkdir(), p)[1], "holds no"),
        (lambda p: (p.write_bytes(b"II*\x00 not really a tiff"), p)[1], "cannot be read"),
        (lambda p: (tifffile.imwrite(p, np.zeros((16, 16, 3), np.uint8), photometric="rgb"), p)[1], "colour"),
        (lambda p: (tifffile.imwrite(p, np.full((2, 4, 4), np.nan, np.float32)), p)[1], "NaN"),
        (lambda p: (_truncated_stack(p), p)[1], "cannot be read|corrupt or truncated"),
        (lambda p: (tifffile.imwrite(p, np.zeros((16, 16), np.uint8), colormap=_GREY_MAP), p)[1], "palette"),
        (lambda p: (Image.new("P", (8, 8)).save(p.with_suffix(".png")), p.with_suffix(".png"))[1], "P-mode"),
    ],
    ids=["missing", "empty-folder", "corrupt", "rgb", "nan", "truncated", "palette-tiff", "palette-png"],
)
def test_bad_images_fail_with_the_file_named(tmp_path, make, message):
    path = make(tmp_path / "input.tif")
    with pytest.raises(StackError, match=message) as error:
        read_stack(path)
    assert str(path) in str(error.value)


def _truncated_stack(path):
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (5, 64, 64), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


_GREY_MAP = np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))


def test_a_three_slice_stack_is_not_mistaken_for_colour(tmp_path):
    tifffile.imwrite(tmp_path / "three.tif", np.zeros((3, 32, 32), np.uint8))  # tifffile tags this planar RGB
    assert read_stack(tmp_path / "three.tif").shape == (3, 32, 32)


def test_folder_slices_of_different_sizes_are_rejected(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a1.png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "a2.png")
    with pytest.raises(StackError, match="a2.png.*must match"):
        read_stack(tmp_path)


def write_page_by_page(path, sections):
    """A TIFF written as tifffile's TiffWriter.write in a loop writes it: one image series per section."""
    with tifffile.TiffWriter(path) as writer:
        for section in sections:
            writer.write(section, photometric="minisblack")
    return path


def test_a_tiff_written_page_by_page_is_read_whole(tmp_path):
    sections = tifffile.imread(DATA / "train-volume.tif")[:3, :32, :40]
    path = write_page_by_page(tmp_path / "pages.tif", sections)
    with tifffile.TiffFile(path) as tiff:
        assert len(tiff.series) == 3  # what made readers of series[0] see one section
    np.testing.assert_array_equal(read_stack(path), sections)


def test_a_tiff_of_different_images_is_refused(tmp_path):
    sections = tifffile.imread(DATA / "train-volume.tif")[:2, :32, :40]
    path = write_page_by_page(tmp_path / "mixed.tif", [sections[0], sections[1, :16]])
    with pytest.raises(StackError, match=r"mixed.tif: holds 2 different images \(\(32, 40\) uint8, \(16, 40\) uint8\)"):
        read_stack(path)


def _labels(membrane_fraction_rows: int, interior: int = 255) -> np.ndarray:
    """A (2, 10, 10) label stack whose first ``membrane_fraction_rows`` rows are membrane (0)."""
    labels = np.full((2, 10, 10), interior, np.uint8)
    labels[:, :membrane_fraction_rows] = 0
    return labels


def test_labels_read_in_the_isbi_convention_are_checked_for_inversion(tmp_path):
    tifffile.imwrite(tmp_path / "isbi.tif", _labels(2))
    np.testing.assert_array_equal(read_membrane_labels(tmp_path / "isbi.tif"), _labels(2) == 0)
    inverted = 1 - (_labels(2, interior=1))  # 0/1 labels with 1 = membrane, as MONAI Label saves them
    tifffile.imwrite(tmp_path / "inverted.tif", inverted)
    with pytest.raises(StackError, match=r"inverted.tif: 80% of the pixels would be membrane .* --membrane_label 1"):
        read_membrane_labels(tmp_path / "inverted.tif")
    np.testing.assert_array_equal(read_membrane_labels(tmp_path / "inverted.tif", membrane_value=1), inverted)


@pytest.mark.parametrize("membrane_value", [None, 0])
def test_labels_without_membrane_are_refused(tmp_path, membrane_value):
    tifffile.imwrite(tmp_path / "interior.tif", _labels(0))
    with pytest.raises(StackError, match="interior.tif: holds no membrane pixel"):
        read_membrane_labels(tmp_path / "interior.tif", membrane_value)


@pytest.mark.parametrize(("value", "problem"), [(2, "must be 0, 1 or 255"), ("abc", "is not a whole number")])
def test_a_membrane_label_value_that_cannot_be_is_refused(tmp_path, value, problem):
    tifffile.imwrite(tmp_path / "labels.tif", _labels(2))
    with pytest.raises(InputError, match=f"--membrane_label.*{problem}"):
        read_membrane_labels(tmp_path / "labels.tif", value)


def test_stack_errors_are_input_errors():
    assert issubclass(StackError, InputError)


def test_non_binary_labels_are_rejected_with_the_instance_format_named(tmp_path):
    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, np.arange(16, dtype=np.uint8).reshape(1, 4, 4))
    with pytest.raises(StackError, match="labels must be binary .* take --label_format instances"):
        read_membrane_labels(path)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32])
def test_instance_labels_of_any_whole_number_type_are_read_as_ids(tmp_path, dtype):
    _, ids = touching_blobs()
    tifffile.imwrite(tmp_path / "ids.tif", ids.astype(dtype))
    labels = read_instance_labels(tmp_path / "ids.tif")
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, ids)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (np.array([[0, 1.5], [2, 3]], np.float32), "must be whole numbers >= 0"),
        (np.array([[0, -1], [2, 3]], np.int16), "must be whole numbers >= 0"),
        (np.zeros((2, 2), np.uint16), "holds no object"),
        (np.array([[0, 255], [255, 255]], np.uint8), "a binary mask rather than one id per object"),
    ],
    ids=["fractional", "negative", "empty", "binary"],
)
def test_instance_labels_that_cannot_be_ids_are_refused(tmp_path, values, problem):
    tifffile.imwrite(tmp_path / "ids.tif", values[None])
    with pytest.raises(StackError, match=problem):
        read_instance_labels(tmp_path / "ids.tif")


def _png(path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    return path


def _written(path, **options):
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint8), **options)
    return path


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda p: _written(p, resolution=(1e7 / 4, 1e7 / 5), resolutionunit="CENTIMETER"), (5.0, 4.0)),
        (lambda p: _written(p, resolution=(2.54e7 / 8, 2.54e7 / 8), resolutionunit="INCH"), (8.0, 8.0)),
        (lambda p: _written(p, imagej=True, resolution=(250, 250), metadata={"unit": "um"}), (4.0, 4.0)),
        (
            lambda p: _written(
                p.with_suffix(".ome.tif"), ome=True, metadata={"PhysicalSizeX": 0.004, "PhysicalSizeY": 0.006}
            ),
            (6.0, 4.0),
        ),
        (lambda p: _written(p), None),  # no unit, as the shipped stacks
        (lambda p: _png(p.with_suffix(".png")), None),
    ],
    ids=["tiff-cm", "tiff-inch", "imagej-um", "ome", "no-unit", "png"],
)
def test_pixel_size_is_read_from_the_file_in_nm(tmp_path, write, expected):
    path = write(tmp_path / "stack.tif")
    size = read_pixel_size(path)
    assert size is None if expected is None else size == pytest.approx(expected)


def test_the_shipped_stacks_record_no_pixel_size():
    assert read_pixel_size(DATA / "test-volume.tif") is None  # 4 x 4 nm, given with --pixel_size '[4, 4]'
