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
