"""An uncaught error raised from an InputError ends the output with that error's line."""

import subprocess
import sys

from conftest import BUNDLE

from scripts.errors import InputError, input_error_in_chain, last_line


def test_the_input_error_is_found_through_causes_and_contexts():
    cause = InputError("stack.tif: truncated")
    try:
        try:
            raise cause
        except InputError as error:
            raise RuntimeError("Failed to evaluate ConfigExpression") from error
    except RuntimeError as wrapped:
        assert input_error_in_chain(wrapped) is cause
    assert input_error_in_chain(RuntimeError("other")) is None
    assert input_error_in_chain(None) is None


def test_the_last_line_names_the_input_error_or_else_the_error_itself():
    try:
        try:
            raise InputError("stack.tif: truncated")
        except InputError as error:
            raise RuntimeError("Failed to evaluate ConfigExpression") from error
    except RuntimeError as wrapped:
        assert last_line(wrapped) == "scripts.errors.InputError: stack.tif: truncated"
    assert last_line(ValueError("bad value")) == "ValueError: bad value"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=BUNDLE, capture_output=True, text=True, timeout=60, check=False
    )


def test_importing_scripts_makes_the_input_error_the_last_line():
    result = _run(
        "import scripts\n"
        "from scripts.errors import InputError\n"
        "print('logged before the error')\n"  # buffered stdout is flushed before the last line
        "try:\n    raise InputError('/data/stack.tif: corrupt or truncated TIFF')\n"
        "except InputError as e:\n    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n"
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "scripts.errors.InputError: /data/stack.tif: corrupt or truncated TIFF"
    assert any(line.startswith("RuntimeError: Failed to evaluate") for line in lines)  # the traceback is kept


def test_other_errors_print_as_python_prints_them():
    result = _run("import scripts\nraise KeyError('network_def')")
    assert result.stderr.strip().splitlines()[-1] == "KeyError: 'network_def'"
