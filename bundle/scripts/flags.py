"""Flags of the configs, parsed in one place.

``python -m monai.bundle run`` hands ``--resume true`` to the config as the bool ``True``, ``--resume 1`` as
the int ``1`` and ``--resume yes`` as the string ``"yes"``. :func:`flag` accepts each of these spellings and
stops with one line naming the flag for anything else, instead of quietly reading it as false.
:func:`number` does the same for numeric flags (``--membrane_threshold abc``, ``--dask_workers 0``): the
object that takes the value parses it and checks its range, and the error names the flag. :func:`pixel_size_flag`
checks ``--pixel_size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import InputError

__all__ = ["TRUE_SPELLINGS", "FALSE_SPELLINGS", "flag", "number", "pixel_size_flag"]

TRUE_SPELLINGS = ("true", "1", "yes")
FALSE_SPELLINGS = ("false", "0", "no")


def flag(value: object, name: str) -> bool:
    """``value`` of the flag ``name`` as a bool: true/false, 1/0, yes/no (any case), or a bool.

    Raises:
        InputError: naming the flag and the value, for anything else (``"maybe"``, ``2``, ``None``).
    """
    if isinstance(value, bool):
        return value
    spelling = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if spelling in TRUE_SPELLINGS:
        return True
    if spelling in FALSE_SPELLINGS:
        return False
    raise InputError(
        f"--{name}: {value!r} is not a boolean flag value; use one of {'/'.join(TRUE_SPELLINGS + FALSE_SPELLINGS)}"
    )


def number(
    value: object, name: str, low: float | None = None, high: float | None = None, integer: bool = False
) -> float | int:
    """``value`` of the numeric flag ``name`` as a float (an int when ``integer``), checked to lie in [low, high].

    Numbers and their spellings as strings (``"0.4"``, ``"64"``) are accepted; an integer flag takes whole
    numbers only (``64`` or ``64.0``, not ``64.5``).

    Raises:
        InputError: naming the flag and the value, for anything that is not such a number (``"abc"``, ``True``,
            ``None``, NaN) or lies outside the range.
    """
    kind = "a whole number" if integer else "a number"
    parsed = None
    if not isinstance(value, bool):
        try:
            parsed = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            parsed = None
    if parsed is None or parsed != parsed or parsed in (float("inf"), float("-inf")):
        raise InputError(f"--{name}: {value!r} is not {kind}")
    if integer and not parsed.is_integer():
        raise InputError(f"--{name}: {value!r} is not {kind}")
    if (low is not None and parsed < low) or (high is not None and parsed > high):
        bounds = (
            f"in [{low:g}, {high:g}]"
            if low is not None and high is not None
            else (f"at least {low:g}" if low is not None else f"at most {high:g}")
        )
        raise InputError(f"--{name}: {value!r} is out of range; it must be {bounds}")
    return int(parsed) if integer else parsed


def pixel_size_flag(pixel_size: Sequence[float] | None) -> tuple[float, float] | None:
    """``--pixel_size`` as a (y, x) pixel size in nm, or None when none is known.

    Raises:
        InputError: naming the value, unless it is two finite positive numbers.
    """
    if pixel_size is None:
        return None
    try:
        sizes = tuple(float(size) for size in pixel_size)
    except (TypeError, ValueError):
        sizes = ()
    if len(sizes) != 2 or not all(math.isfinite(size) and size > 0 for size in sizes):
        raise InputError(f"--pixel_size: {pixel_size!r} is not a (y, x) pixel size in nm, e.g. '[4, 4]'")
    return sizes
