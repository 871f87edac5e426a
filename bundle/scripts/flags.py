"""Boolean flags of the configs, parsed in one place.

``python -m monai.bundle run`` hands ``--resume true`` to the config as the bool ``True``, ``--resume 1`` as
the int ``1`` and ``--resume yes`` as the string ``"yes"``. :func:`flag` accepts each of these spellings and
stops with one line naming the flag for anything else, instead of quietly reading it as false.
"""

from __future__ import annotations

from .errors import InputError

__all__ = ["TRUE_SPELLINGS", "FALSE_SPELLINGS", "flag"]

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
