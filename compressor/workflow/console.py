"""Where a flow writes for its reader, injected by the command: the flows print through a :class:`Console` and
never import click."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Echo = Callable[[str], None]
"""Writes one message (a line or a block of lines, without the final newline)."""


def _nothing(message: str) -> None:
    """An :data:`Echo` that writes nothing."""


@dataclass(frozen=True)
class Console:
    """Where a flow writes for its reader: ``echo`` results, summaries and tables (standard output), ``log``
    progress, warnings and notes (standard error)."""

    echo: Echo
    log: Echo


SILENT = Console(_nothing, _nothing)
"""A console that writes nothing (the ranks other than 0 of a multi-process run)."""
