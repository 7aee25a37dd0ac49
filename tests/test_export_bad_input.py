"""Bad input on ``compress export`` (issue 23, item 7): each case is refused before any export work starts, with exit
code 2 and one ``Error:`` line naming the file (or option) and the problem, no traceback, nothing written.

No case exports: the export driver is replaced by one that fails the test if it is reached.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from compressor.cli import main
from compressor.export.targets import export as export_driver
from compressor.training.checkpoint import save_weights
from compressor.workflow import export_job
from tests.test_bad_input_matrix import files_under, one_line_error
from tests.test_export import tiny_model, write_run
from tests.test_run_directory import another_process_holding_the_lock


@pytest.fixture(autouse=True)
def no_export(monkeypatch):
    """Every export entry point fails the test: the refusals must come before any of them."""
    def reached(*args, **kwargs):
        raise AssertionError("the export started")

    for name in ("export_model", "export_run_model"):
        monkeypatch.setattr(export_driver, name, reached)
        monkeypatch.setattr(export_job, name, reached)  # the names the export job calls


@pytest.fixture
def run(tmp_path: Path) -> Path:
    write_run(tmp_path / "run", tiny_model(seed=11))
    return tmp_path / "run"


def refused(tmp_path: Path, args: list[str]) -> str:
    """Run ``compress export args``; its one error line, after checking that nothing under ``tmp_path`` changed."""
    before = {path: path.stat().st_mtime_ns for path in files_under(tmp_path)}
    line = one_line_error(CliRunner().invoke(main, ["export", *args]))
    assert {path: path.stat().st_mtime_ns for path in files_under(tmp_path)} == before
    return line


def test_out_naming_an_existing_file_with_run_is_refused(tmp_path, run):
    existing = tmp_path / "exports.onnx"
    existing.write_text("not a folder")
    line = refused(tmp_path, ["--run", str(run), "--model", "sft_kd/at/d2c2@4x", "--out", str(existing)])
    assert line == f"Error: {existing}: is a file; with --run, --out is the folder the exports are written to"


def test_out_naming_an_existing_folder_with_stage_is_refused(tmp_path, run):
    (stage,) = (run / "stages").iterdir()
    existing = tmp_path / "somewhere"
    existing.mkdir()
    line = refused(tmp_path, ["--stage", str(stage), "--out", str(existing)])
    assert line == f"Error: {existing}: is a folder; with --stage or --weights, --out is the .onnx file to write"


def test_a_folder_where_another_precision_would_go_is_refused(tmp_path):
    weights = save_weights(tmp_path / "w.safetensors", tiny_model(seed=7))
    (tmp_path / "m.int8.onnx").mkdir()
    line = refused(tmp_path, ["--arch", "d2c2", "--weights", str(weights), "--width", "8", "--image-size", "16",
                              "--precision", "fp32,int8", "--out", str(tmp_path / "m.onnx")])
    assert line == f"Error: {tmp_path / 'm.int8.onnx'}: is a folder, where the export would write its file"


@pytest.mark.parametrize("option, value, expected", [
    ("--image-size", "0", "Invalid value for '--image-size': 0 is smaller than the smallest image size, 8"),
    ("--mask-seed", "-1", "Invalid value for '--mask-seed': -1 is not in the range x>=0"),
])
def test_a_bare_weights_mask_that_cannot_be_made_is_refused(tmp_path, option, value, expected):
    weights = save_weights(tmp_path / "w.safetensors", tiny_model(seed=7))
    line = refused(tmp_path, ["--arch", "d2c5", "--weights", str(weights), option, value,
                              "--out", str(tmp_path / "x.onnx")])
    assert expected in line


@pytest.mark.parametrize("source", ["--run", "--stage"])
def test_a_run_another_process_is_training_in_is_refused(tmp_path, run, source):
    (stage,) = (run / "stages").iterdir()
    with another_process_holding_the_lock(run) as holder:
        line = refused(tmp_path, [source, str(run if source == "--run" else stage)])
    assert str(run) in line and f"PID {holder.pid}" in line and "still changing" in line
