"""Shared CLI plumbing: user errors exit with code 2 and one line, never a traceback."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from compressor.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])


class UserError(click.ClickException):
    """A problem with what the user gave us: printed as ``Error: <message>``, exit code 2."""

    exit_code = 2


class OneLineUsage:
    """Mixin for click commands: a usage error of the command's own options (an invalid ``click.Choice``, a
    non-integer ``--epochs``) is one ``Error:`` line naming the option, the value and the valid ones, exit code 2,
    like every other bad input (click would print the usage first)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc]
        except click.UsageError as error:
            raise UserError(error.format_message()) from None


class OneLineCommand(OneLineUsage, click.Command):
    """A command with one-line usage errors (``@click.command(cls=OneLineCommand)``)."""


class OneLineErrors(OneLineUsage, click.Group):
    """A group with one-line usage errors, whose ``@group.command`` subcommands have them too."""

    command_class = OneLineCommand


def handles_input_errors(command: F) -> F:
    """Turn :class:`compressor.errors.InputError` (and a ``click.BadParameter`` raised while the command works
    through its options) raised inside a command into :class:`UserError`: one line, exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except InputError as error:
            raise UserError(str(error)) from None
        except click.BadParameter as error:
            raise UserError(error.format_message()) from None

    return wrapper  # type: ignore[return-value]


def require_writable(path: Path) -> None:
    """Refuse an output ``path`` (file or folder, existing or not) whose folder cannot be written, before any work.

    The nearest existing folder on the way to ``path`` is probed with a temporary file that is removed at once, so
    read-only file systems and missing permissions are both found; nothing else is created.
    """
    path = Path(path).expanduser().absolute()
    folder = path
    while not folder.exists():
        folder = folder.parent
    if folder.is_file() and folder == path:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"cannot write {path}: the folder {folder} is not writable ({error.strerror})") from None


def comma_separated(text: str | None, lower: bool = False) -> list[str] | None:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (lower-cased with ``lower``, for names the registries hold in lower case);
    ``None`` stays ``None`` (the option was not given)."""
    if text is None:
        return None
    return [name.strip().lower() if lower else name.strip() for name in text.split(",") if name.strip()]
