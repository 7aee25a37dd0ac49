"""Shared CLI plumbing: user errors exit with code 2 and one line, never a traceback; options grouped in ``--help``.

Option groups (click has none): declare a command's sections in order with ``option_groups=`` and give each option
its section with an :func:`option_group` decorator::

    data = option_group("Data")

    @click.command("demo", cls=OneLineCommand, option_groups=("Data", "Output"))
    @data("--validation", help="...")
    @option_group("Output")("--out", help="...")
    def demo(validation, out): ...

``--help`` then writes one section per group in the declared order, and the options without a group (``--help``
itself) last, under :data:`OTHER_OPTIONS`. A command without groups prints click's usual ``Options:`` section.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from compressor.errors import InputError
from compressor.workflow.console import Console
from compressor.workflow.outputs import require_writable as require_writable  # the commands' output check

CONSOLE = Console(echo=click.echo, log=lambda message: click.echo(message, err=True))
"""The console of the commands: results to standard output, progress and warnings to standard error."""

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


OTHER_OPTIONS = "Other options"
"""The ``--help`` section of the options without a group, after the declared groups."""


class GroupedOption(click.Option):
    """A :class:`click.Option` shown in the ``--help`` section ``group`` of a :class:`GroupedHelp` command (made by
    :func:`option_group`)."""

    def __init__(self, *args: Any, group: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.group = group


def option_group(group: str) -> Callable[..., Callable[[F], F]]:
    """``click.option`` for the options of the ``--help`` section ``group``: ``option_group("Data")("--train", ...)``
    takes exactly ``click.option``'s arguments and makes a :class:`GroupedOption`."""

    def option(*param_decls: str, **attrs: Any) -> Callable[[F], F]:
        return click.option(*param_decls, cls=GroupedOption, group=group, **attrs)

    return option


class GroupedHelp(click.Command):
    """A command whose ``--help`` writes its options in sections: one per name of ``option_groups`` (in that
    order, each with its :class:`GroupedOption` options in declaration order), then :data:`OTHER_OPTIONS`.

    Every :class:`GroupedOption` must name a declared group (a typo fails when the command is built, not in the
    help); without ``option_groups`` the help is click's single ``Options:`` section.
    """

    def __init__(self, *args: Any, option_groups: Sequence[str] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.option_groups = tuple(option_groups)
        undeclared = sorted({param.group for param in self.params if isinstance(param, GroupedOption)}
                            - set(self.option_groups))
        if undeclared:
            raise ValueError(f"command {self.name!r}: option group(s) {', '.join(undeclared)} not in option_groups")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if not self.option_groups:
            super().format_options(ctx, formatter)
            return
        sections: dict[str, list[tuple[str, str]]] = {name: [] for name in (*self.option_groups, OTHER_OPTIONS)}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and isinstance(param, click.Option):
                sections[param.group if isinstance(param, GroupedOption) else OTHER_OPTIONS].append(record)
        for name, records in sections.items():
            if records:
                with formatter.section(name):
                    formatter.write_dl(records)


class OneLineCommand(OneLineUsage, GroupedHelp):
    """A command with one-line usage errors and optional option groups (``@click.command(cls=OneLineCommand)``,
    ``option_groups=`` as :class:`GroupedHelp`)."""


class OneLineErrors(OneLineUsage, click.Group, GroupedHelp):
    """A group with one-line usage errors and optional option groups (:class:`GroupedHelp`; its subcommands
    follow the options), whose ``@group.command`` subcommands have them too."""

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


def comma_separated(text: str | None, lower: bool = False) -> list[str] | None:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (lower-cased with ``lower``, for names the registries hold in lower case);
    ``None`` stays ``None`` (the option was not given)."""
    if text is None:
        return None
    return [name.strip().lower() if lower else name.strip() for name in text.split(",") if name.strip()]
