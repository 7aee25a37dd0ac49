"""Shared CLI plumbing: user errors exit with code 2 and one line, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from compressor.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])


class UserError(click.ClickException):
    """A problem with what the user gave us: printed as ``Error: <message>``, exit code 2."""

    exit_code = 2


def handles_input_errors(command: F) -> F:
    """Turn :class:`compressor.errors.InputError` raised inside a command into :class:`UserError`."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except InputError as error:
            raise UserError(str(error)) from None

    return wrapper  # type: ignore[return-value]
