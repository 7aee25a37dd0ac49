"""Atomic file output and JSON I/O, shared by every writer (no torch import: evaluation uses it too).

Every output is written to a temporary name in its destination folder and renamed when complete, so an
interrupted run leaves either the previous complete file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from compressor.errors import InputError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)`` and move the result onto ``path`` when it returns."""
    with atomic_path(path) as temporary:
        write(temporary)
    return Path(path)


def save_json(path: Path, data: Any) -> Path:
    return write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True, default=float)))


def load_json(path: Path) -> Any:
    """Parse a JSON file; a missing or malformed file is an :class:`InputError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"not valid JSON ({error})", path) from None


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (16 hex digits): identifies weights a stage was started from in its cache key."""
    sha = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()[:16]
