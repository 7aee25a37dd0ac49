"""Output paths, checked before any work starts: a command refuses an output it could not write in one line
(:class:`~compressor.errors.InputError`), instead of failing after the work. Nothing here writes, except a
temporary probe file that is removed at once."""

from __future__ import annotations

import tempfile
from pathlib import Path

from compressor.errors import InputError


def require_writable(path: Path) -> None:
    """Refuse an output ``path`` (file or folder, existing or not) whose folder cannot be written, before any work.

    The nearest existing folder on the way to ``path`` is probed with a temporary file that is removed at once, so
    read-only file systems and missing permissions are both found; nothing else is created.

    Raises:
        InputError: ``cannot write PATH: ...``, naming the folder that is a file or is not writable.
    """
    path = Path(path).expanduser().absolute()
    folder = path
    while not folder.exists():
        folder = folder.parent
    if folder.is_file() and folder == path:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InputError(f"cannot write {path}: the folder {folder} is not writable ({error.strerror})") from None


def require_folder(path: Path, role: str) -> None:
    """Refuse a folder output ``path`` that exists as a file, or whose folder cannot be written
    (:func:`require_writable`). ``role`` completes the message: ``PATH: is a file; ROLE``."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a file; {role}")
    require_writable(path)


def require_file(path: Path, role: str) -> None:
    """Refuse a file output ``path`` that exists as a folder, or whose folder cannot be written
    (:func:`require_writable`). ``role`` completes the message: ``PATH: is a folder; ROLE``."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder; {role}")
    require_writable(path)
