"""The ``compress`` command line: help everywhere, listing models, and bad input → one line, exit code 2."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from compressor.cli import main

SUBCOMMANDS = ["models", "export", "reconstruct", "serve", "benchmark", "report"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("args", [["--help"], *[[name, "--help"] for name in SUBCOMMANDS]])
def test_every_command_has_help(runner, args):
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_models_lists_the_paper_parameter_counts(runner):
    result = runner.invoke(main, ["models"])
    assert result.exit_code == 0
    for count in ("141765", "95525", "49285", "3045"):
        assert count in result.output


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error:"), result.output
    return lines[-1]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--teacher", "d1c5"], "d1c5"),
        (["--student", "x3c5"], "dNcM"),
        (["--method", "kd"], "at, cc, fitnets, fsp, ft, nst, pkt, sp"),
        (["--preset", "nonexistent"], "valid presets"),
        (["--data", "nifti", "--train", "/nonexistent/train", "--validation", "/nonexistent/val"], "/nonexistent"),
        (["--kd-schedule", "joint", "--sft-weights", "1,1"], "three weights"),
        (["--device", "tpu"], "unknown device"),
        (["--task", "sr", "--acceleration", "5"], "does not divide the image size 48x48"),
        (["--init-teacher", "/nonexistent/teacher.safetensors"], "/nonexistent/teacher.safetensors"),
        (["--feature-sft", "--teacher", "d1c5"], "d1c5"),
    ],
)
def test_bad_pipeline_input_is_one_line_and_exit_2(runner, tmp_path, args, expected):
    result = runner.invoke(main, ["--preset", "smoke", "--out", str(tmp_path / "run"), "--no-progress", *args])
    if expected == "three weights":  # click's own BadParameter: usage error, exit 2
        assert result.exit_code == 2 and expected in result.output
        return
    assert expected in one_line_error(result)


def test_report_on_a_directory_that_is_not_a_run(runner, tmp_path):
    assert "not a run directory" in one_line_error(runner.invoke(main, ["report", str(tmp_path)]))


def test_reconstruct_with_a_corrupt_model_file(runner, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not onnx")
    kspace = tmp_path / "k.npy"
    np.save(kspace, np.zeros((16, 16), np.complex64))
    line = one_line_error(runner.invoke(main, ["reconstruct", str(model), str(kspace), "--out",
                                               str(tmp_path / "out.h5")]))
    assert "model.onnx" in line
    assert not (tmp_path / "out.h5").exists()


def test_set_overrides_any_config_value():
    from compressor.cli import _settings
    from compressor.config import apply_overrides, load_config

    settings = _settings(("train.lr_step=20", "sft.imitation_per_pixel=true", "data.acceleration=[4, 8]",
                          "kd.mode=authors"))
    config = apply_overrides(load_config("smoke"), settings)
    assert config.train.lr_step == 20 and config.sft.imitation_per_pixel is True
    assert config.data.acceleration == [4.0, 8.0] and config.kd.mode == "authors"


def test_set_with_an_unknown_key_is_one_line_exit_2(runner, tmp_path):
    result = runner.invoke(main, ["--preset", "smoke", "--out", str(tmp_path), "--set", "train.nope=1"])
    assert "unknown config key 'train.nope'" in one_line_error(result)


def test_task_sr_defaults_to_the_vdsr_teacher_and_student_of_appendix_b():
    from compressor.cli import _overrides, main

    # every option of `compress` that becomes a config override, unset
    options = {param.name: None for param in main.params
               if param.name not in ("preset", "out", "progress", "deploy", "settings")}
    sr = _overrides({**options, "task": "sr"})
    assert (sr["data.task"], sr["model.teacher"], sr["model.student"]) == ("sr", "vdsr12", ["vdsr4"])
    chosen = _overrides({**options, "task": "sr", "teacher": "vdsr8", "student": "vdsr5"})
    assert (chosen["model.teacher"], chosen["model.student"]) == ("vdsr8", ["vdsr5"])
    assert _overrides({**options, "task": "reconstruction"})["model.teacher"] is None
