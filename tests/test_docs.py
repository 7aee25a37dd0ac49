"""The documentation: README.md and the MkDocs site built from docs/ (mkdocs.yml).

* The site builds with ``mkdocs build --strict``: a warning, a page missing from the navigation's files, a broken link
  or a missing anchor fails it (``validation`` in mkdocs.yml). The CLI and configuration references are generated
  while it builds (docs/_hooks/site.py).
* Every fenced shell block of README.md and docs/**/*.md is either marked illustrative (its first line starts with
  ``# illustrative``) or made only of commands run here or by CI: ``compress`` commands at smoke scale (a training
  command with ``--preset smoke --no-deploy`` added, in a fresh folder; then every subcommand as written, in that
  folder, against the smoke run it made) and the steps of CI's own command line (``.ci/run``), which CI runs.
* Every option the documentation names exists: in a command (illustrative ones too), an option of that command
  (``compress``, a subcommand, ``python -m compressor`` under torchrun, a benchmark script); in prose, an option of
  one of them (or of the few other programs named in :data:`OTHER_PROGRAMS_OPTIONS`).
* The README stays within 16,384 bytes, keeps its two commands, and its relative links resolve.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from markdown.extensions.toc import slugify

from benchmarks import mrd_server, onnx_latency, phase_cost, precision, training_throughput
from compressor.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_LIMIT = 16_384
MARKDOWN_FILES = (README, *sorted((ROOT / "docs").rglob("*.md")))
ILLUSTRATIVE = "# illustrative"
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
SMOKE_OPTIONS = ("--preset", "smoke", "--no-deploy")
RUN_COMMAND = ("python3 -m venv .venv && . .venv/bin/activate && { command -v nvidia-smi >/dev/null 2>&1 || "
               "pip install -q torch==2.13.0; } && pip install -q -e '.[test]' && "
               "compress --teacher d5c5 --student d3c5 --method at")
"""The README's first command, unchanged since issue 14 (its install steps are CI's)."""
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<language>[^`\s]*)")
OPTION = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")
OTHER_PROGRAMS_OPTIONS = {
    "--logdir",  # tensorboard
    "--standalone", "--nnodes", "--node-rank", "--nproc-per-node", "--rdzv-backend", "--rdzv-endpoint",  # torchrun
    "--strict",  # mkdocs build
}
BENCHMARKS = {module.__name__: module.main for module in (mrd_server, onnx_latency, phase_cost, precision,
                                                          training_throughput)}
"""The benchmark scripts' commands, by the module ``python -m`` runs."""
"""Options of programs other than ``compress`` and the benchmark scripts that the documentation names in prose."""


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file: where it starts, its language and its text (indent removed)."""

    path: Path
    line: int
    language: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def illustrative(self) -> bool:
        return self.text.lstrip().startswith(ILLUSTRATIVE)

    def commands(self) -> list[str]:
        """The block's commands: continuation lines (``\\``) joined, blank and comment lines dropped."""
        joined = re.sub(r"[ \t]*\\\n[ \t]*", " ", self.text)
        return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced code block of ``path``, indented ones (in lists and admonitions) included."""
    blocks, lines, index = [], path.read_text().splitlines(), 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        index += 1
        if opening is None:
            continue
        fence, indent, start, body = opening["fence"], len(opening["indent"]), index, []
        while index < len(lines) and not re.match(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$",
                                                   lines[index]):
            body.append(lines[index][indent:] if lines[index][:indent].isspace() else lines[index].lstrip())
            index += 1
        index += 1
        blocks.append(Block(path, start, opening["language"].lower(), "\n".join(body)))
    return blocks


def shell_blocks() -> list[Block]:
    return [block for path in MARKDOWN_FILES for block in fenced_blocks(path) if block.language in SHELL_LANGUAGES]


def ci_command() -> str:
    """The command line CI runs (the last line of ``.ci/run``, which runs the README's test command)."""
    return [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()][-1].strip()


def ci_steps() -> set[str]:
    return {step.strip() for step in ci_command().split(" && ")}


def compress_arguments(step: str) -> list[str] | None:
    """The arguments of a ``compress`` step, or ``None`` for another program."""
    words = shlex.split(step)
    return words[1:] if words and words[0] == "compress" else None


def is_training(arguments: list[str]) -> bool:
    """Whether ``compress ARGUMENTS`` trains (no subcommand) rather than running a subcommand."""
    return not (arguments and arguments[0] in main.commands)


def documented_commands() -> dict[str, str]:
    """Every ``compress`` step of a block not marked illustrative, once each, in document order: ``{step: where}``."""
    steps: dict[str, str] = {}
    for block in shell_blocks():
        if not block.illustrative:
            for command in block.commands():
                for step in command.split(" && "):
                    if compress_arguments(step.strip()) is not None:
                        steps.setdefault(step.strip(), block.where)
    return steps


DOCUMENTED = documented_commands()
TRAINING = [step for step in DOCUMENTED if is_training(compress_arguments(step))]
SUBCOMMANDS = [step for step in DOCUMENTED if step not in TRAINING]


def option_names(command: click.Command) -> set[str]:
    """Every option spelling ``command`` accepts (``--help`` included)."""
    names = {"--help"}
    for parameter in command.params:
        names.update(name for name in (*parameter.opts, *parameter.secondary_opts) if name.startswith("--"))
    return names


def every_option_name() -> set[str]:
    commands = [main, *main.commands.values(), *BENCHMARKS.values()]
    return set().union(*map(option_names, commands)) | OTHER_PROGRAMS_OPTIONS


def command_and_arguments(step: str) -> tuple[click.Command, list[str]] | None:
    """The click command a documented step runs (``compress``, ``python -m compressor`` under ``torchrun``, a
    benchmark script) and its arguments, or ``None`` for another program."""
    words = shlex.split(step.split(" < ")[0].split(" > ")[0])
    arguments = compress_arguments(step)
    if arguments is None and "-m" in words and words.index("-m") + 1 < len(words):
        module = words[words.index("-m") + 1]
        if module == "compressor":
            arguments = words[words.index("-m") + 2:]
        elif module in BENCHMARKS:
            return BENCHMARKS[module], words[words.index("-m") + 2:]
    if arguments is None:
        return None
    if arguments and arguments[0] in main.commands:
        return main.commands[arguments[0]], arguments[1:]
    return main, arguments


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def run_compress(arguments: list[str], where: str) -> None:
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, (f"{where}: compress {shlex.join(arguments)} exited {result.exit_code}:\n"
                                   f"{result.output[-3000:]}\n{result.exception!r}")


@pytest.fixture(scope="module")
def smoke_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder in which every documented training command ran at smoke scale (so ``runs/default`` exists)."""
    folder = tmp_path_factory.mktemp("documented-commands")
    with working_directory(folder):
        for step in TRAINING:
            run_compress([*compress_arguments(step), *SMOKE_OPTIONS], DOCUMENTED[step])
    return folder


def test_the_site_builds_strict_with_no_warning(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(site)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "WARNING" not in log, log[-4000:]
    # the generated references and the files served from outside docs/ are in the site
    assert "--triton-repo" in (site / "cli.html").read_text()
    assert "teacher_cache_mib" in (site / "configuration.html").read_text()
    assert (site / "benchmarks" / "results" / "precision.html").is_file()
    assert (site / "results" / "quick-all" / "fig3_qualitative.png").is_file()
    # the site loads nothing from the internet (no web fonts, no CDN scripts): it reads on a network without one
    loading = re.compile(r'<(?:script|img|link|iframe)\b[^>]*\b(?:src|href)="(?:https?:)?//')
    assert not [page for page in site.rglob("*.html") if loading.search(page.read_text())]


def test_every_shell_command_is_run_or_marked_illustrative() -> None:
    allowed, unrun = ci_steps(), []
    for block in shell_blocks():
        if block.illustrative:
            continue
        for command in block.commands():
            unrun += [f"{block.where}: {step.strip()}" for step in command.split(" && ")
                      if step.strip() not in allowed and compress_arguments(step.strip()) is None]
    assert not unrun, ("commands neither run by tests/test_docs.py nor marked '# illustrative' (first line of the "
                       "block):\n" + "\n".join(unrun))
    assert TRAINING, "no documented training command: the smoke run the other commands use would not exist"


def test_every_fenced_block_names_its_language() -> None:
    unnamed = [block.where for path in MARKDOWN_FILES for block in fenced_blocks(path) if not block.language]
    assert not unnamed, "fenced blocks without a language (bash, text, python, ...): " + ", ".join(unnamed)


@pytest.mark.parametrize("step", SUBCOMMANDS)
def test_documented_subcommand_runs_on_the_smoke_run(step: str, smoke_folder: Path) -> None:
    with working_directory(smoke_folder):
        run_compress(compress_arguments(step), DOCUMENTED[step])


def test_every_option_the_documentation_names_exists() -> None:
    """Options in commands (illustrative ones too) belong to their command; options in prose to some command."""
    unknown, known = [], every_option_name()
    for block in shell_blocks():
        for command in block.commands():
            for step in command.split(" && "):
                found = command_and_arguments(step.strip())
                if found is not None:
                    valid = option_names(found[0])
                    unknown += [f"{block.where}: {name}" for word in found[1]
                                if (name := word.split("=")[0]).startswith("--") and name not in valid]
    for path in MARKDOWN_FILES:
        prose = re.sub(r"^[ \t]*(`{3,}|~{3,}).*?^[ \t]*\1[ \t]*$", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
        unknown += [f"{path.relative_to(ROOT)}: {name}" for span in re.findall(r"`([^`\n]+)`", prose)
                    for name in OPTION.findall(span) if name not in known]
    assert not unknown, "options that no command has:\n" + "\n".join(unknown)


def test_readme_is_short_and_keeps_its_two_commands() -> None:
    text = README.read_text()
    assert len(README.read_bytes()) <= README_LIMIT
    lines = text.splitlines()
    assert RUN_COMMAND in lines
    assert ci_command() in lines, "the README's test command is CI's (.ci/run)"
    assert RUN_COMMAND.split(" && compress ")[0] in ci_command(), "the run command's install steps are CI's"


def test_readme_links_resolve() -> None:
    broken = [target for target in re.findall(r"\]\(([^)\s]+)\)", README.read_text())
              if not re.match(r"[a-z]+://", target) and not link_resolves(*target.partition("#")[::2])]
    assert not broken, f"README links to missing files or anchors: {broken}"


def link_resolves(path: str, anchor: str) -> bool:
    """Whether the repository file ``path`` exists and, for an anchor, has a heading of that slug."""
    file = ROOT / path
    if not file.exists() or not anchor:
        return file.exists()
    headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.MULTILINE)
    return anchor in {slugify(re.sub(r"[`*]", "", heading), "-") for heading in headings}
