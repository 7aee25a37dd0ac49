"""Reading JSON values of a run directory's files: each helper returns the typed value or raises a one-line
:class:`~compressor.errors.InputError` naming the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.errors import InputError

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


def check_format(version: Any, path: Path, key: str) -> int:
    """``version`` when this tool reads it (:data:`READABLE_FORMATS`), else one line naming it and the readable ones."""
    if version not in READABLE_FORMATS:
        raise InputError(f"run-directory format {version!r} is not one this tool reads "
                         f"({', '.join(map(str, READABLE_FORMATS))}); use the tool version that wrote it", path, key)
    return int(version)


def number(value: Any, path: Path, key: str, optional: bool = True) -> float | None:
    """A JSON number as a float (``None`` for ``null`` when ``optional``); booleans are not numbers."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"expected a number{' or null' if optional else ''}, got {value!r}", path, key)
    return float(value)


def integer(value: Any, path: Path, key: str) -> int | None:
    """:func:`number`, truncated to an int (``None`` for ``null``)."""
    found = number(value, path, key)
    return None if found is None else int(found)


def text(value: Any, path: Path, key: str, optional: bool = True, what: str = "a string") -> str | None:
    """A JSON string (``None`` for ``null`` when ``optional``); ``what`` names it in the message."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InputError(f"expected {what}{' or null' if optional else ''}, got {value!r}", path, key)
    return value


def choice(value: Any, valid: tuple[str, ...], path: Path, key: str) -> str:
    """``value`` when it is one of ``valid``, else one line listing them."""
    if value not in valid:
        raise InputError(f"unknown {key.rsplit('.', 1)[-1]} {value!r}; valid: {', '.join(valid)}", path, key)
    return value


def json_object(raw: Any, path: Path, key: str | None = None, what: str = "an object") -> dict[str, Any]:
    """``raw`` when it is a JSON object."""
    if not isinstance(raw, dict):
        raise InputError(f"expected {what}", path, key)
    return raw
