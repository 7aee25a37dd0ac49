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


# -- option groups in --help (compressor.cli.common) ------------------------------------------------------------------
def _grouped_demo(**attrs):
    import click

    from compressor.cli.common import OneLineCommand, OneLineErrors, option_group

    output = option_group("Output")

    @click.command("demo", cls=OneLineCommand, **attrs)
    @option_group("Data")("--train", help="Training file.")
    @output("--out", help="Output file.")
    @click.option("--verbose", is_flag=True, help="Say more.")
    @option_group("Data")("--validation", help="Validation file.")
    def demo(train, out, verbose, validation):
        click.echo(f"{train} {out} {verbose} {validation}")

    group = OneLineErrors("top", option_groups=("Output",), params=[click.Option(["--flag"], is_flag=True)])
    return demo, group


def _sections(text: str) -> list[str]:
    return [line.rstrip(":") for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]


def test_option_groups_are_help_sections_in_the_declared_order(runner):
    demo, _ = _grouped_demo(option_groups=("Output", "Data"))
    shown = runner.invoke(demo, ["--help"]).output
    assert _sections(shown) == ["Output", "Data", "Other options"]
    data = shown.split("Data:")[1].split("Other options:")[0]
    assert data.index("--train") < data.index("--validation") and "--out" not in data
    assert "--verbose" in shown.split("Other options:")[1] and "--help" in shown.split("Other options:")[1]
    assert runner.invoke(demo, ["--train", "t", "--out", "o", "--verbose"]).output == "t o True None\n"


def test_a_command_without_groups_keeps_clicks_options_section(runner):
    import click

    from compressor.cli.common import OneLineCommand

    @click.command("plain", cls=OneLineCommand)
    @click.option("--x", help="An option.")
    def plain(x):
        pass

    assert _sections(runner.invoke(plain, ["--help"]).output) == ["Options"]


def test_an_option_of_an_undeclared_group_fails_when_the_command_is_built():
    with pytest.raises(ValueError, match=r"option group.*Data.*not in option_groups"):
        _grouped_demo(option_groups=("Output",))


def test_a_grouped_group_lists_its_commands_after_its_options(runner):
    import click

    _, group = _grouped_demo(option_groups=("Output", "Data"))
    group.add_command(click.Command("sub", help="A subcommand."))
    assert _sections(runner.invoke(group, ["--help"]).output) == ["Other options", "Commands"]


@pytest.mark.parametrize("args", [[], ["export"]])
def test_the_commands_with_many_options_group_them(runner, args):
    command = main if not args else main.commands[args[0]]
    shown = runner.invoke(main, [*args, "--help"]).output
    assert _sections(shown)[:len(command.option_groups)] == list(command.option_groups)
    assert len(command.option_groups) >= 4
    for param in command.params:  # every option is shown, exactly once
        assert sum(f"{param.opts[0]} " in line or line.strip().startswith(param.opts[0])
                   for line in shown.splitlines()) >= 1


def test_a_failed_collective_ends_the_rank_in_one_line_exit_2(runner, tmp_path, monkeypatch):
    from compressor.training.distributed import CollectiveError
    from compressor.workflow import run

    def peer_died(request, console):
        raise CollectiveError(1, "gradient all-reduce", RuntimeError("[pair.cc:553] Connection closed by peer. More"))

    monkeypatch.setattr(run, "run_pipeline", peer_died)
    line = one_line_error(runner.invoke(main, ["--preset", "smoke", "--out", str(tmp_path / "run")]))
    assert line == ("Error: rank 1: training stopped because another process of the run failed or did not answer "
                    "(gradient all-reduce: Connection closed by peer)")
