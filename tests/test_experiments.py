"""The paper's further experiments through the same stage graph (smoke preset): super-resolution (Appendix B), the
feature-domain SFT ablation (Tables 2 and 4) and the teacher warm start (Fig. 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from compressor.config import apply_overrides, load_config
from compressor.data import build_splits
from compressor.errors import InputError
from compressor.evaluate.metrics import slice_metrics
from compressor.io import load_json
from compressor.models import build_model
from compressor.physics.degradation import degrade
from compressor.training.checkpoint import load_weights
from compressor.training.objectives import SFTWeights, StudentFriendlyTeacher, Supervised
from compressor.training.pipeline import Pipeline, conv_layers

from .test_pipeline import _cache, run  # noqa: F401  (the module-wide data cache fixture)


def smoke(**overrides):
    return apply_overrides(load_config("smoke"), overrides)


def validation(results: dict) -> dict[tuple[str, str | None, str], dict]:
    return {(m["role"], m["method"], m.get("setup", "image")): m for m in results["models"]
            if m["split"] == "validation"}


# -- super-resolution ----------------------------------------------------------------------------------------------

def test_sr_samples_are_the_degraded_target_normalised_by_the_input_alone():
    splits = build_splits(smoke(**{"data.task": "sr"}).data, 4.0, log=lambda message: None)
    sample = splits.validation[0]
    # Undo the normalisation with the target: the input must be exactly the degraded target.
    expected = degrade(sample.target[0] * sample.scale, 4, "bicubic") / sample.scale
    torch.testing.assert_close(sample.zero_filled[0], expected, atol=1e-6, rtol=0)
    assert sample.zero_filled.abs().max().item() == pytest.approx(1.0)
    # Nothing is measured on the HR grid: a DF layer would be the identity.
    assert not sample.kspace.any() and not sample.mask.any()


@pytest.mark.parametrize(("override", "message"), [({"data.acceleration": [5.0]}, "does not divide"),
                                                   ({"data.acceleration": [2.5]}, "must be an integer"),
                                                   ({"data.sr_interpolation": "nearest"}, "interpolation"),
                                                   ({"data.task": "denoise"}, "unknown task")])
def test_bad_sr_settings_are_input_errors(override, message):
    with pytest.raises(InputError, match=message):  # a bad choice is refused when the config is loaded
        config = smoke(**{"data.task": "sr", **override})
        build_splits(config.data, config.data.acceleration[0], log=lambda m: None)


def test_sr_run_trains_vdsr_teacher_and_student_with_64_channel_kd_losses(tmp_path):
    results = run(tmp_path, **{"data.task": "sr", "model.teacher": "vdsr12", "model.student": ["vdsr4"],
                               "kd.method": ["fitnets", "ft", "pkt"]})
    models = validation(results)
    assert results["task"] == "sr" and results["sr_interpolation"] == "bicubic"
    assert models[("teacher", None, "image")]["parameters"] == 370_497
    assert models[("student", None, "image")]["parameters"] == 75_073
    assert {(role, method) for role, method, _ in models if method} == {
        (role, method) for role in ("std_kd", "sft_kd") for method in ("fitnets", "ft", "pkt")}
    # FitNets' regressors are sized by the models' own widths (VDSR: 64), not the DC-CNN default of 32.
    fitnets = load_json(tmp_path / models[("sft_kd", "fitnets", "image")]["stage_dir"] / "stage.json")
    assert fitnets["config"]["sr_scale"] == 4.0
    regressor = load_file(tmp_path / models[("sft_kd", "fitnets", "image")]["stage_dir"] / "best_kd_loss.safetensors")
    assert {tuple(t.shape[:2]) for name, t in regressor.items() if name.endswith("weight")} == {(64, 64)}


def test_sr_scale_is_part_of_the_stage_key(tmp_path):
    log: list[str] = []
    sr = {"data.task": "sr", "model.teacher": "vdsr4", "model.student": ["vdsr4"], "data.image_size": 48}
    run(tmp_path, **sr)
    run(tmp_path, log, **sr, **{"data.acceleration": [2.0]})
    assert not [line for line in log if line.startswith("reusing")]


# -- feature-domain SFT ablation -----------------------------------------------------------------------------------

def test_feature_ablation_networks_have_the_conv_counts_of_teacher_and_student():
    assert conv_layers(build_model("d5c5")) == 25 and conv_layers(build_model("rcnn25")) == 25
    assert conv_layers(build_model("d3c5")) == 15 and conv_layers(build_model("rcnn15")) == 15


def test_mse_objectives_compute_the_mean_squared_error():
    torch.manual_seed(0)
    model = build_model("rcnn5")
    batch = _batch()
    output = model(batch.zero_filled, batch.kspace, batch.mask)
    expected = ((output - batch.target) ** 2).mean()
    torch.testing.assert_close(Supervised(model, "mse").loss(batch).total, expected)
    teacher, student = build_model("rcnn10"), build_model("rcnn5")
    sft = StudentFriendlyTeacher(teacher, student, SFTWeights(), "mse")
    teacher_image, branches = sft.branch_outputs(batch)
    by_hand = (((teacher_image - batch.target) ** 2).mean().item()
               + np.mean([((b - batch.target) ** 2).mean().item() for b in branches])
               + np.mean([((b - teacher_image) ** 2).mean().item() for b in branches]))
    assert sft.loss(batch).total.item() == pytest.approx(by_hand, rel=1e-5)


def _batch():
    splits = build_splits(smoke().data, 4.0, log=lambda m: None)
    from torch.utils.data import default_collate

    return type(splits.train[0])(*default_collate([splits.train[i] for i in range(2)]))


def test_feature_ablation_adds_rcnn_stages_and_reuses_every_image_domain_stage(tmp_path):
    run(tmp_path)
    log: list[str] = []
    results = run(tmp_path, log, **{"sft.feature_ablation": True})
    reused = {line.split()[1] for line in log if line.startswith("reusing")}
    assert reused == {"teacher/d5c5@4x", "student/d3c5@4x", "sft_teacher/d5c5@4x", "std_kd/at/d3c5@4x",
                      "sft_kd/at/d3c5@4x"}
    models = validation(results)
    feature = {role: m for (role, _, setup), m in models.items() if setup == "feature"}
    assert set(feature) == {"teacher", "student", "sft_teacher", "std_kd", "sft_kd"}
    assert feature["teacher"]["arch"] == "rcnn25" and feature["sft_kd"]["arch"] == "rcnn15"
    assert feature["sft_teacher"]["name"] == "sft_teacher/rcnn25+rcnn15@4x"
    assert feature["std_kd"]["compression"] == pytest.approx(1 - 120_833 / 213_313)
    info = load_json(tmp_path / feature["sft_teacher"]["stage_dir"] / "stage.json")
    assert info["loss"] == "mse" and info["setup"] == "feature"
    history = load_json(tmp_path / feature["sft_kd"]["stage_dir"] / "history.json")
    assert "mse" in history[0]["terms"] and "l1" not in history[0]["terms"]


# -- teacher warm start --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def donor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A finished smoke run whose teacher warm-starts the others: its directory and validation records."""
    directory = tmp_path_factory.mktemp("donor")
    return directory, validation(run(directory))


def test_warm_start_initialises_teacher_and_sft_teacher_and_keeps_the_scratch_reference(tmp_path, donor):
    donor_dir, donor_models = donor
    donor_teacher = donor_dir / donor_models[("teacher", None, "image")]["stage_dir"]
    weights = donor_teacher / "best.safetensors"
    # A learning rate of 0 keeps the starting weights: the warm-started stages must hold the donor's.
    models = validation(run(tmp_path, **{"model.init_teacher": str(donor_teacher), "train.lr": 0.0}))
    assert models[("teacher", None, "image")]["init_teacher"] == str(weights)
    assert models[("sft_teacher", None, "image")]["init_teacher"] == str(weights)
    assert models[("sft_teacher_scratch", None, "image")]["init_teacher"] is None
    donor_model = load_weights(weights, build_model("d5c5"))
    for role in ("teacher", "sft_teacher"):
        stage = tmp_path / models[(role, None, "image")]["stage_dir"]
        _assert_same_weights(load_weights(stage / "best.safetensors", build_model("d5c5")), donor_model)
    scratch = tmp_path / models[("sft_teacher_scratch", None, "image")]["stage_dir"]
    with pytest.raises(AssertionError):
        _assert_same_weights(load_weights(scratch / "best.safetensors", build_model("d5c5")), donor_model)


def _assert_same_weights(first: torch.nn.Module, second: torch.nn.Module) -> None:
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_warm_start_from_weights_of_another_architecture_fails_before_training(tmp_path, donor):
    donor_dir, donor_models = donor
    student_weights = donor_dir / donor_models[("student", None, "image")]["stage_dir"] / "best.safetensors"
    with pytest.raises(InputError, match="weights do not fit") as error:
        Pipeline(smoke(**{"model.init_teacher": str(student_weights)}), tmp_path / "out", score=slice_metrics,
                 log=lambda m: None, progress=False)
    assert str(student_weights) in str(error.value)
    with pytest.raises(InputError, match="no such weights file"):
        Pipeline(smoke(**{"model.init_teacher": str(tmp_path / "missing")}), tmp_path / "out",
                 score=slice_metrics, log=lambda m: None, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_warm_started_teacher_gets_its_own_stage_key_and_the_reference_keeps_the_plain_one(tmp_path, donor):
    donor_dir, donor_models = donor
    donor_teacher = donor_dir / donor_models[("teacher", None, "image")]["stage_dir"]
    warm = validation(run(tmp_path, **{"model.init_teacher": str(donor_teacher)}))

    def stage_name(models: dict, role: str) -> str:
        return Path(models[(role, None, "image")]["stage_dir"]).name

    assert stage_name(warm, "sft_teacher_scratch") == stage_name(donor_models, "sft_teacher")
    assert stage_name(warm, "sft_teacher") != stage_name(donor_models, "sft_teacher")
    assert stage_name(warm, "teacher") != stage_name(donor_models, "teacher")
