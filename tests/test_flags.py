"""Boolean flags: every spelling the command line produces, and one clear error for anything else."""

import pytest

from scripts.errors import InputError
from scripts.flags import flag


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
