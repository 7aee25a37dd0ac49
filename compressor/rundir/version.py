"""The run directory's format version (``results.json`` ``schema``, ``stage.json`` ``format``). The JSON values of
its files are read with :mod:`compressor.json_record`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.json_record import check_version

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


def check_format(version: Any, path: Path, key: str) -> int:
    """``version`` when this tool reads it (:data:`READABLE_FORMATS`), else one line naming it and the readable ones."""
    return check_version(version, READABLE_FORMATS, "run-directory format", "use the tool version that wrote it", path,
                         key)
