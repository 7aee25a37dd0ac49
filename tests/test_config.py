"""Typed configs: presets load, unknown keys are rejected, every value can be overridden."""

from __future__ import annotations

import pytest

from compressor.config import RunConfig, apply_overrides, config_from_dict, list_presets, load_config
from compressor.errors import InputError


@pytest.mark.parametrize("preset", ["smoke", "quick", "paper"])
def test_presets_load_and_round_trip(preset):
    config = load_config(preset)
    assert config.preset == preset
    assert config_from_dict(config.to_dict()) == config


def test_paper_preset_is_section_4_2():
    config = load_config("paper")
    assert (config.train.epochs_teacher, config.train.batch_size, config.train.lr) == (150, 4, 1e-3)
    assert (config.train.lr_step, config.train.lr_gamma) == (40, 0.1)
    assert config.model.block_form == "plain" and config.data.image_size == 240
    assert config.data.acceleration == [4.0, 5.0]


def test_unknown_keys_and_sections_are_rejected_naming_them(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepochs = 3\n")
    with pytest.raises(InputError, match=r"bad.toml.*\[train\] got unknown key 'epochs'"):
        load_config(str(path))
    with pytest.raises(InputError, match="unknown section 'optim'"):
        config_from_dict({"optim": {}})


def test_wrong_types_are_rejected():
    with pytest.raises(InputError, match="batch_size must be int"):
        config_from_dict({"train": {"batch_size": "four"}})
    with pytest.raises(InputError, match="must be true or false"):
        config_from_dict({"kd": {"random_init": "yes"}})


def test_overrides_apply_and_skip_none():
    config = apply_overrides(RunConfig(), {"data.acceleration": [4, 5], "train.epochs_kd": 3, "model.teacher": None})
    assert config.data.acceleration == [4.0, 5.0]
    assert config.train.epochs_kd == 3 and config.model.teacher == "d5c5"
    with pytest.raises(InputError, match="unknown config key"):
        apply_overrides(config, {"train.nope": 1})


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(InputError, match="smoke"):
        load_config("nonexistent")
    assert {"smoke", "quick", "paper"} <= set(list_presets())


@pytest.mark.parametrize("overrides, expected", [
    ({"kd.schedule": "twophase"}, r"\[kd\] schedule: unknown KD schedule 'twophase'; valid: joint, two-phase"),
    ({"kd.mode": "code"}, r"\[kd\] mode: unknown KD mode 'code'; valid: paper, authors"),
    ({"data.task": "SR"}, r"\[data\] task: unknown task 'SR'; valid: reconstruction, sr"),
    ({"model.block_form": "dense"}, r"\[model\] block_form: unknown block form 'dense'; valid: plain, residual"),
    ({"train.device": "tpu"}, r"\[train\] device: unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N"),
])
def test_an_unknown_choice_names_the_key_the_value_and_the_valid_ones(overrides, expected):
    with pytest.raises(InputError, match=expected):
        apply_overrides(RunConfig(), overrides)


@pytest.mark.parametrize("overrides, expected", [
    ({"data.image_size": 0}, r"\[data\] image_size must be >= 8, got 0"),
    ({"train.batch_size": 0}, r"\[train\] batch_size must be >= 1, got 0"),
    ({"train.epochs_kd": 0}, r"\[train\] epochs_kd must be >= 1, got 0"),
    ({"data.acceleration": [4, 1]}, r"\[data\] acceleration must be > 1, got 1.0"),
    ({"train.lr": -0.1}, r"\[train\] lr must be >= 0, got -0.1"),
    ({"train.lr_gamma": 0}, r"\[train\] lr_gamma must be > 0, got 0.0"),
    ({"train.lr": float("inf")}, r"\[train\] lr must be a finite number, got inf"),
    ({"data.center_fraction": 0.0}, r"\[data\] center_fraction must be > 0 and <= 1, got 0.0"),
    ({"model.student": []}, r"\[model\] student must name at least one value"),
])
def test_a_value_out_of_range_is_refused(overrides, expected):
    with pytest.raises(InputError, match=expected):
        apply_overrides(RunConfig(), overrides)


def test_registry_backed_names_come_from_the_registries(tmp_path):
    from compressor.data import MNI_SOURCE, VOLUME_SOURCES
    from compressor.kd import KD_LOSSES
    from compressor.masks import MASKS

    with pytest.raises(InputError, match=f"unknown KD method 'kd'; valid: {', '.join([*KD_LOSSES.names(), 'all'])}"):
        config_from_dict({"kd": {"method": ["kd"]}})
    with pytest.raises(InputError, match=f"unknown mask type 'poisson'; valid: {', '.join(MASKS.names())}"):
        config_from_dict({"data": {"mask_type": "poisson"}})
    sources = ", ".join([MNI_SOURCE, *VOLUME_SOURCES.names()])
    with pytest.raises(InputError, match=f"unknown data source 'dicom'; valid: {sources}"):
        config_from_dict({"data": {"source": "dicom"}})
    with pytest.raises(InputError, match=r"\[model\] teacher: invalid architecture 'd1c5'"):
        config_from_dict({"model": {"teacher": "d1c5"}})
    path = tmp_path / "bad.toml"
    path.write_text('[kd]\nschedule = "twophase"\n')
    with pytest.raises(InputError, match="unknown KD schedule 'twophase'; valid: joint, two-phase"):
        load_config(str(path))
    names = config_from_dict({"kd": {"method": ["ALL", "AT"]}, "data": {"source": "Project"}})
    assert names.kd.method == ["ALL", "AT"] and names.data.source == "Project"  # registries ignore case


def test_checked_values_stay_plain_strings_so_config_json_is_unchanged():
    config = apply_overrides(load_config("quick"), {"kd.schedule": "two-phase", "model.block_form": "plain"})
    assert type(config.kd.schedule) is str and type(config.model.block_form) is str
    assert config.kd.schedule == "two-phase" and config.to_dict()["kd"]["schedule"] == "two-phase"


def test_a_method_weight_table_sets_a_weight_per_mode_and_method_and_kd_weight_overrides_it():
    from compressor.kd import KD_LOSSES
    from compressor.training.stages import kd_weight

    config = apply_overrides(load_config("smoke"), {"kd.method_weights": {"paper": {"CC": 200, "sp": 30.0}}})
    assert config.kd.method_weights == {"paper": {"cc": 200.0, "sp": 30.0}}  # names ignore case, stored lower-case
    assert kd_weight(config, "cc") == 200.0 and kd_weight(config, "sp") == 30.0
    assert kd_weight(config, "at") == KD_LOSSES.get("at").default_weight_for("paper")
    authors = apply_overrides(config, {"kd.mode": "authors"})  # the table was tuned for paper mode only
    assert kd_weight(authors, "cc") == KD_LOSSES.get("cc").default_weight_for("authors")
    assert kd_weight(apply_overrides(config, {"kd.weight": 5.0}), "cc") == 5.0


@pytest.mark.parametrize(("table", "message"), [
    ({"paper": {"xx": 1.0}}, "unknown KD method 'xx'"), ({"paper": {"all": 1.0}}, "unknown KD method 'all'"),
    ({"paper": {"cc": -1.0}}, "method_weights.paper.cc must be >= 0"), ({"cc": {"at": 1.0}}, "unknown KD mode 'cc'"),
    ({"paper": {"cc": 1.0, "CC": 2.0}}, "names 'cc' twice"), (3, "must be a table"), ({"paper": 3}, "must be a table")])
def test_a_bad_method_weight_table_is_refused_when_loaded(table, message):
    with pytest.raises(InputError, match=message):
        config_from_dict({"kd": {"method_weights": table}})


def test_a_stage_key_holds_the_resolved_weight_however_it_was_given():
    from compressor.training.stages import plan_run

    def kd_keys(**overrides):
        plan = plan_run(apply_overrides(load_config("quick"), {"kd.method": ["cc"], **overrides}))
        return {stage.spec.folder for stage in plan.all_stages() if stage.spec.method}

    assert kd_keys() == kd_keys(**{"kd.weight": 200.0, "kd.method_weights": {}})  # quick sets CC 200
    assert kd_keys() != kd_keys(**{"kd.method_weights": {}})


@pytest.mark.parametrize("text, expected", [
    ('extends = "smoke"\ndata = 5\n', "[data] must be a table of keys (a [data] section), got 5"),
    ("data = 5\n", "[data] must be a table of keys (a [data] section), got 5"),
    ('[data]\nimage_size = "48"\n', "[data] image_size must be int, got '48'"),
    ('extends = "smoke"\n[train]\nbatch_size = 0\n', "[train] batch_size must be >= 1, got 0"),
])
def test_a_bad_preset_file_is_one_line_naming_the_file(tmp_path, text, expected):
    from click.testing import CliRunner

    from compressor.cli import main

    path = tmp_path / "f.toml"
    path.write_text(text)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["--preset", str(path), "--out", str(out), "--no-progress", "--no-deploy"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"Error: {path}: {expected}"]
    assert not out.exists()
