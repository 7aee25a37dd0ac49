"""The code's shape as a contract: imports point one way (no cycles, counting imports inside functions), files and
functions stay small, and every package is installed.

Modules are named as they are installed: ``export/`` is ``compressor.export`` and ``evaluate/`` is
``compressor.evaluate`` (``package-dir`` in ``pyproject.toml``). An import under ``if TYPE_CHECKING:`` does not run and
does not count; an import inside a function does. Importing ``a.b.c`` runs ``a`` and ``a.b`` first, so it counts as an
import of those packages too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = {"compressor": REPOSITORY / "compressor", "compressor.export": REPOSITORY / "export",
                   "compressor.evaluate": REPOSITORY / "evaluate"}
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def library_modules() -> dict[str, Path]:
    """``{installed module name: file}`` of every library module."""
    modules = {}
    for package, folder in PACKAGE_FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if package == "compressor" and parts[0] in ("export", "evaluate"):
                continue
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node`` that runs, at any depth (functions included)."""
    for child in ast.iter_child_nodes(node):
        if _type_checking_block(child):
            for statement in child.orelse:
                yield from _import_nodes(ast.Module(body=[statement], type_ignores=[]))
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _import_nodes(child)


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if path.name != "__init__.py":
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: the library modules it imports}``, parent packages of each imported module included."""
    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = _absolute(module, path, node)
                names = [f"{base}.{alias.name}" for alias in node.names]
            for name in names:
                target = known(name)
                while target:
                    if target != module and not module.startswith(target + "."):
                        targets.add(target)
                    target = known(target.rpartition(".")[0])
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle_hidden_inside_a_function(tmp_path):
    package = tmp_path / "compressor"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from compressor import b\n")
    (package / "b.py").write_text("def f():\n    from compressor.a import x\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from compressor import a\n")
    modules = {"compressor": package / "__init__.py", **{f"compressor.{n}": package / f"{n}.py" for n in "abc"}}
    assert cycles(import_graph(modules)) == [["compressor.a", "compressor.b"]]


def test_library_imports_have_no_cycles():
    assert cycles(import_graph(library_modules())) == []


def test_evaluation_never_imports_deployment():
    graph = import_graph(library_modules())
    offending = {module: sorted(t for t in targets if t.startswith("compressor.export"))
                 for module, targets in graph.items() if module.startswith("compressor.evaluate")}
    assert {module: targets for module, targets in offending.items() if targets} == {}


@pytest.mark.parametrize("layer", ["compressor.physics", "compressor.models", "compressor.kd", "compressor.data"])
def test_lower_layers_never_import_config_training_or_deployment(layer):
    above = ("compressor.config", "compressor.training", "compressor.export", "compressor.evaluate", "compressor.cli")
    graph = import_graph(library_modules())
    offending = {module: sorted(t for t in targets if t.startswith(above))
                 for module, targets in graph.items() if module == layer or module.startswith(layer + ".")}
    assert {module: targets for module, targets in offending.items() if targets} == {}


def test_no_library_file_is_over_the_size_limit():
    sizes = {str(path.relative_to(REPOSITORY)): len(path.read_text().splitlines())
             for path in library_modules().values()}
    assert {name: lines for name, lines in sizes.items() if lines > MAX_FILE_LINES} == {}


def test_no_library_function_is_over_the_length_limit():
    long = {}
    for path in library_modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # from ``def`` (signature included, decorators not)
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPOSITORY)}:{node.name}"] = lines
    assert long == {}


def test_every_library_package_is_installed():
    configured = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {module for module, path in library_modules().items() if path.name == "__init__.py"}
    assert set(configured["packages"]) == packages
    for package, folder in PACKAGE_FOLDERS.items():
        assert REPOSITORY / configured["package-dir"][package] == folder
