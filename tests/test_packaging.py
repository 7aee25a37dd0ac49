"""Installed import names are this tool's own: PyPI distributions called ``export`` or ``evaluate`` (Hugging
Face's) install beside it, and both it and they import and work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

FOREIGN = {
    "evaluate": "def load(name):\n    return f'foreign metric {name}'\n",
    "export": "def run():\n    return 'foreign export'\n",
}


def _foreign_site(root: Path) -> Path:
    """A throwaway site folder holding top-level packages ``evaluate`` and ``export`` with dist-info records."""
    site = root / "site"
    for name, body in FOREIGN.items():
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(body)
        info = site / f"{name}-9.9.9.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 9.9.9\n")
        (info / "RECORD").write_text(f"{name}/__init__.py,,\n")
    return site


def _run(code: str, cwd: Path, site: Path) -> subprocess.CompletedProcess:
    # The foreign packages come FIRST on the path: nothing of ours may be shadowed by them.
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_foreign_evaluate_and_export_packages_import_beside_the_tool(tmp_path: Path) -> None:
    site = _foreign_site(tmp_path)
    result = _run("""
        import evaluate, export
        import compressor.evaluate.metrics as metrics
        import compressor.export.run_models as graph
        import numpy as np
        print(evaluate.load("psnr"), export.run(), sep="|")
        print(evaluate.__file__, export.__file__, metrics.__file__, graph.__file__, sep="|")
        image = np.ones((1, 8, 8))
        print(metrics.slice_metrics(image, image, ("nmse",))["nmse"][0])
    """, tmp_path, site)
    assert result.returncode == 0, result.stderr
    said, files, nmse = result.stdout.strip().splitlines()
    assert said == "foreign metric psnr|foreign export"
    foreign_evaluate, foreign_export, ours_evaluate, ours_export = files.split("|")
    assert Path(foreign_evaluate).parent.parent == site and Path(foreign_export).parent.parent == site
    repository = Path(__file__).resolve().parents[1]
    assert Path(ours_evaluate).resolve().parent == repository / "evaluate"
    assert Path(ours_export).resolve().parent == repository / "export"
    assert float(nmse) == 0.0


def test_cli_runs_with_foreign_packages_on_the_path(tmp_path: Path) -> None:
    site = _foreign_site(tmp_path)
    result = _run("""
        import sys
        from click.testing import CliRunner
        from compressor.cli import main
        outcome = CliRunner().invoke(main, ["models", "d5c5", "d3c5"])
        print(outcome.exit_code)
        print(outcome.output)
        print(sorted(name for name in sys.modules if name in ("evaluate", "export")))
    """, tmp_path, site)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "0" and "141765" in result.stdout and "49285" in result.stdout
    assert lines[-1] == "[]"  # the tool never imported a top-level export/evaluate, foreign or not


def test_the_wheel_installs_every_library_module(tmp_path: Path) -> None:
    """A wheel built from the checkout holds every module of the editable install: each imports from the installed
    copy (not the checkout), so a subpackage missing from ``pyproject.toml`` fails here."""
    from tests.test_architecture import library_modules

    repository = Path(__file__).resolve().parents[1]
    source, wheels, target = tmp_path / "source", tmp_path / "wheels", tmp_path / "installed"
    # Built from a copy of the checkout's files: setuptools' build/ folder of an earlier build may hold modules that
    # no longer exist, which a wheel built in place would carry.
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repository, check=True,
                            capture_output=True, text=True).stdout.splitlines()
    for name in listed:
        if (repository / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repository / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("sft_kd_recon-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    names = sorted(library_modules())
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import importlib
        for name in {names!r}:
            print(name, importlib.import_module(name).__file__)
    """)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    files = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert sorted(files) == names
    assert all(Path(file).resolve().is_relative_to(target.resolve()) for file in files.values())
