"""Bad input, reported in one clear last line.

Every check of what a user hands the bundle (stacks, weights, flags, folds) raises :class:`InputError` with a
message that names the file or flag and the problem. ``python -m monai.bundle run`` evaluates the configs'
expressions inside MONAI, which re-raises every error as ``RuntimeError: Failed to evaluate ConfigExpression``,
so the line naming the file would end up in the middle of the traceback. :func:`install_last_line_hook` (run
when ``scripts`` is imported, i.e. by every config's ``imports``) keeps the traceback and prints the
:class:`InputError` once more as the last line.
"""

from __future__ import annotations

import sys
import traceback
from types import TracebackType

__all__ = ["InputError", "input_error_in_chain", "last_line", "install_last_line_hook"]


class InputError(ValueError):
    """An input the bundle cannot use (file, weights, flag value); the message names it and says what is wrong."""


def input_error_in_chain(error: BaseException | None) -> InputError | None:
    """The first :class:`InputError` among ``error`` and the exceptions it was raised from, or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, InputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def last_line(error: BaseException) -> str:
    """The line a failed command ends with: the first :class:`InputError` in ``error``'s chain, else ``error``
    itself, as ``Type: message``."""
    cause = input_error_in_chain(error) or error
    return traceback.format_exception_only(type(cause), cause)[-1].strip()


def _print_with_last_line(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    sys.__excepthook__(kind, error, trace)
    cause = input_error_in_chain(error)
    if cause is not None and cause is not error:
        sys.stdout.flush()  # logged lines must not land after the last line when stdout and stderr share a pipe
        print(last_line(cause), file=sys.stderr, flush=True)


def install_last_line_hook() -> None:
    """Make an uncaught error raised from an :class:`InputError` end the output with that error's line.

    Other errors print exactly as before. It replaces only Python's default hook, never one another tool set.
    """
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _print_with_last_line
