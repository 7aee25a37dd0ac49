"""MkDocs hooks of the documentation site (``hooks`` in ``mkdocs.yml``): the pages that are generated from the code
at build time, so that they cannot drift from it, and the committed files outside ``docs/`` that the site serves.

* ``<!-- generated: cli-reference -->`` in a page becomes the ``--help`` text of ``compress`` and of every
  subcommand, as click renders it (option groups included), each under its own heading;
* ``<!-- generated: configuration-reference -->`` becomes one table per configuration section
  (:data:`compressor.config.SECTION_TYPES`): every key with its type, its default, what it accepts (the field's
  checks, :mod:`compressor.field_checks`) and its value in every preset of ``configs/``;
* :data:`EXTRA_FOLDERS` (the committed benchmark results, the presets) join the site under the same paths as in the
  repository, so pages link to ``benchmarks/results/precision.md`` or ``configs/quick.toml`` and a missing file
  fails ``mkdocs build --strict``.

Nothing here downloads anything; it imports the installed ``compressor`` package.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

EXTRA_FOLDERS = ("benchmarks/results", "configs")
CLI_MARKER = "<!-- generated: cli-reference -->"
CONFIG_MARKER = "<!-- generated: configuration-reference -->"
HELP_WIDTH = 110
"""Columns of the generated ``--help`` text (the commands' ``max_content_width``), fixed so that the page does not
depend on the terminal that builds it."""


def on_files(files: Any, config: Any) -> Any:
    """Add every file under :data:`EXTRA_FOLDERS` of the repository to the site, at its repository path."""
    from mkdocs.structure.files import File

    root = Path(config["config_file_path"]).resolve().parent
    for folder in EXTRA_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                files.append(File(path.relative_to(root).as_posix(), str(root), config["site_dir"],
                                  config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the generated-content markers of a page by their content."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, configuration_reference())
    return markdown


def cli_reference() -> str:
    """Markdown of ``compress --help`` and of each subcommand's ``--help``, in the order ``compress --help`` lists
    them."""
    from compressor.cli import main

    context = main.make_context("compress", [], resilient_parsing=True, terminal_width=HELP_WIDTH)
    parts = [_help_section("compress", main.get_help(context))]
    for name in main.list_commands(context):
        command = main.get_command(context, name)
        sub = command.make_context(name, [], parent=context, resilient_parsing=True, terminal_width=HELP_WIDTH)
        parts.append(_help_section(f"compress {name}", command.get_help(sub)))
    return "\n".join(parts)


def _help_section(title: str, text: str) -> str:
    return f"## `{title}`\n\n```text\n{text.rstrip()}\n```\n"


def configuration_reference() -> str:
    """Markdown tables of every configuration section: key, type, default, accepted values, value per preset."""
    from compressor.config import SECTION_TYPES, list_presets, load_config

    presets = {name: load_config(name).to_dict() for name in list_presets()}
    parts = []
    for section, cls in SECTION_TYPES.items():
        header = ["key", "type", "default", "accepts", *(f"`{name}`" for name in presets)]
        rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        hints = typing.get_type_hints(cls, include_extras=True)
        for field in fields(cls):
            default = field.default if field.default is not MISSING else field.default_factory()
            cells = [f"`{field.name}`", _type_name(hints[field.name]), _value(default),
                     _accepts(hints[field.name]),
                     *(_value(values[section][field.name]) for values in presets.values())]
            rows.append("| " + " | ".join(cells) + " |")
        parts.append(f"### `[{section}]`\n\n{_docstring_text(cls.__doc__ or '')}\n\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def _type_name(annotation: Any) -> str:
    """``int``, ``float | None``, ``list[float]``: the annotation without its checks."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if not args:
        return getattr(annotation, "__name__", str(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(arg) for arg in args)
    return f"{typing.get_origin(annotation).__name__}[{', '.join(_type_name(arg) for arg in args)}]"


def _accepts(annotation: Any) -> str:
    """What the field's checks accept, in words (its choices, its range), for every check nested in the type."""
    from compressor.field_checks import Between, OneOf, Valid

    words = []
    if typing.get_origin(annotation) is typing.Annotated:
        for check in annotation.__metadata__:
            if isinstance(check, OneOf):
                words.append(", ".join(f"`{name}`" for name in (*check.names(), *check.extra)))
            elif isinstance(check, Between):
                bounds = [f"{'>' if check.strict else '≥'} {check.low:g}"] if check.low is not None else []
                words.append(" and ".join(bounds + ([f"≤ {check.high:g}"] if check.high is not None else [])))
            elif isinstance(check, Valid):
                words.append(f"checked by `{check.check_value.__name__.lstrip('_')}`")
    words += [text for arg in typing.get_args(annotation) if (text := _accepts(arg))]
    return "; ".join(dict.fromkeys(words))


def _value(value: Any) -> str:
    """A TOML-like spelling of a configuration value for a table cell."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, dict):
        return "`{" + ", ".join(f"{key} = {_value(item).strip('`')}" for key, item in value.items()) + "}`" \
            if value else "`{}`"
    if isinstance(value, list):
        return "`[" + ", ".join(_value(item).strip("`") for item in value) + "]`"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _docstring_text(text: str) -> str:
    """A class docstring as Markdown: paragraphs kept, ``code`` and Sphinx roles (``:mod:`~a.b```) as code spans."""
    lines = [line.strip() for line in text.strip().splitlines()]
    markdown = "\n".join(lines).replace("``", "`")
    return re.sub(r":[a-z]+:`~?([\w.]+)`", lambda match: f"`{match.group(1)}`", markdown)
