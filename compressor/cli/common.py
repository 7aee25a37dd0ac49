"""Shared CLI plumbing: user errors exit with code 2 and one line, never a traceback."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import click

from compressor.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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


def import_own(name: str) -> ModuleType:
    """Import this project's top-level package ``name`` (``export`` or ``evaluate``) and check it is ours.

    Both names are generic (Hugging Face ships a package called ``evaluate``): if another installed package
    shadows ours, fail loudly naming the file that was imported instead of running someone else's code.
    """
    module = importlib.import_module(name)
    if not getattr(module, "__sft_kd_recon__", False):
        raise UserError(
            f"the module {name!r} imported from {getattr(module, '__file__', '?')} is not this tool's {name!r} "
            f"package (another installed package shadows it); uninstall it or run from the project checkout"
        )
    return module
