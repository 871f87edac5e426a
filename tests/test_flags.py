"""Boolean and numeric flags: every spelling the command line produces, and one clear error for anything else."""

import re

import pytest

from scripts.errors import InputError
from scripts.flags import flag, number, pixel_size_flag


@pytest.mark.parametrize("value", [True, "true", "True", " TRUE ", 1, "1", "yes", "Yes"])
def test_true_spellings(value):
    assert flag(value, "resume") is True


@pytest.mark.parametrize("value", [False, "false", "False", 0, "0", "no", "NO"])
def test_false_spellings(value):
    assert flag(value, "resume") is False


@pytest.mark.parametrize("value", ["maybe", "", 2, -1, None, 0.5, "on"])
def test_anything_else_names_the_flag_and_the_value(value):
    with pytest.raises(InputError, match=rf"^--resume: {repr(value).replace('.', '[.]')} is not a boolean flag value"):
        flag(value, "resume")


@pytest.mark.parametrize(("value", "expected"), [(0.4, 0.4), ("0.4", 0.4), (" 1 ", 1.0), (0, 0.0), (1, 1.0)])
def test_numbers_and_their_spellings(value, expected):
    assert number(value, "membrane_threshold", 0, 1) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("abc", "'abc' is not a number"),
        (True, "True is not a number"),
        (None, "None is not a number"),
        (float("nan"), "nan is not a number"),
        ("inf", "'inf' is not a number"),
        (1.5, "1.5 is out of range; it must be in [0, 1]"),
        (-0.1, "-0.1 is out of range; it must be in [0, 1]"),
    ],
)
def test_anything_else_names_the_numeric_flag(value, problem):
    with pytest.raises(InputError, match=rf"^--membrane_threshold: {re.escape(problem)}$"):
        number(value, "membrane_threshold", 0, 1)


def test_whole_numbers_with_a_lower_bound():
    assert number("64", "block_size", 64, integer=True) == 64 and number(64.0, "block_size", integer=True) == 64
    with pytest.raises(InputError, match=r"^--block_size: 64.5 is not a whole number$"):
        number(64.5, "block_size", 64, integer=True)
    with pytest.raises(InputError, match=r"^--dask_workers: 0 is out of range; it must be at least 1$"):
        number(0, "dask_workers", 1, integer=True)


@pytest.mark.parametrize("pixel_size", [[4], [4, -1], "four", [4, float("nan")]])
def test_a_bad_pixel_size_is_rejected(pixel_size):
    with pytest.raises(InputError, match="--pixel_size: .* is not a \\(y, x\\) pixel size in nm"):
        pixel_size_flag(pixel_size)
    assert pixel_size_flag(None) is None and pixel_size_flag(["4", 5]) == (4.0, 5.0)
