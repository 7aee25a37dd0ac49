"""User-facing error types.

Every problem caused by what the user gave us (a file, a key, a name, a shape) is raised as
:class:`InputError` with a one-line message that names the offending file (and key) and what is wrong.
The CLI turns it into ``Error: ...`` and exit code 2, without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input: a missing or corrupt file, a wrong key or shape, NaN data, an unknown name."""

    def __init__(self, message: str, path: str | Path | None = None, key: str | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if key is not None:
                where += f" [{key}]"
            where += ": "
        super().__init__(f"{where}{message}")
        self.path = None if path is None else Path(path)
        self.key = key


class ConventionError(InputError):
    """Centred and uncentred k-space (or masks) were about to be mixed."""


def first_line(error: BaseException) -> str:
    """An exception raised by a library (a decoder, a checker, a runtime) as one line for an :class:`InputError`
    message: its text's first line, else its type's name (some raise with an empty message)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
