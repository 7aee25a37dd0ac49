"""The teacher → SFT → KD stage graph end to end on the ``smoke`` preset: outputs, cache reuse, resume."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from compressor import rundir
from compressor.config import apply_overrides, load_config
from compressor.evaluate.metrics import slice_metrics
from compressor.io import load_json
from compressor.training import loop
from compressor.training.pipeline import Pipeline

ROLES = set(rundir.ROLES) - {"sft_kd_random", "sft_teacher_scratch"}


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFT_KD_RECON_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def run(out: Path, log: list[str] | None = None, **overrides) -> dict:
    config = apply_overrides(load_config("smoke"), overrides)
    messages = [] if log is None else log
    Pipeline(config, out, score=slice_metrics, log=messages.append, progress=False).run()
    return load_json(out / "results.json")


def psnr_by_name(results: dict) -> dict[str, float]:
    return {(m["name"], m["split"]): m["psnr"]["mean"] for m in results["models"]}


def test_smoke_run_writes_every_stage_and_results(tmp_path):
    results = run(tmp_path)
    assert {m["role"] for m in results["models"]} == ROLES
    assert {m["split"] for m in results["models"]} == {"validation", "test"}
    by_role = {m["role"]: m for m in results["models"] if m["split"] == "validation"}
    assert by_role["teacher"]["parameters"] == 141_765 and by_role["student"]["parameters"] == 49_285
    assert by_role["std_kd"]["compression"] == pytest.approx(1 - 49_285 / 141_765)
    assert by_role["sft_teacher"]["name"] == "sft_teacher/d5c5+d3c5@4x"
    stage = tmp_path / by_role["sft_kd"]["stage_dir"]
    for name in ("stage.json", "history.json", "best.safetensors", "last.safetensors", "checkpoint.pt",
                 "metrics_validation.json", "reconstructions_validation.h5", "metrics_test.json"):
        assert (stage / name).is_file(), name
    assert (tmp_path / by_role["sft_teacher"]["stage_dir"] / "best_student_branches.safetensors").is_file()
    info = load_json(stage / "stage.json")
    assert info["complete"] and info["model_options"]["block_form"] == "plain"
    with h5py.File(tmp_path / by_role["teacher"]["reconstructions_file"]) as f:
        assert f["reconstruction"].shape == f["target"].shape == (4, 48, 48)
    assert json.loads((tmp_path / "config.json").read_text())["preset"] == "smoke"
    assert not list(tmp_path.rglob("*.tmp"))


def test_another_method_reuses_teacher_student_and_sft_teacher(tmp_path):
    run(tmp_path)
    log: list[str] = []
    results = run(tmp_path, log, **{"kd.method": ["fitnets"]})
    reused = {line.split()[1] for line in log if line.startswith("reusing")}
    assert reused == {"teacher/d5c5@4x", "student/d3c5@4x", "sft_teacher/d5c5@4x"}
    # results.json keeps the earlier run's AT records (same config but the method): the two runs merge.
    # In the order of a single run with --method at,fitnets: earlier records keep their place, new ones follow.
    assert [m["method"] for m in results["models"] if m["role"] == "sft_kd" and m["split"] == "validation"] == [
        "at", "fitnets"]
    # Changing what the student depends on retrains the student but not the teacher.
    log.clear()
    results = run(tmp_path, log, **{"kd.method": ["fitnets"], "train.epochs_student": 2})
    reused = {line.split()[1] for line in log if line.startswith("reusing")}
    assert "teacher/d5c5@4x" in reused and "student/d3c5@4x" not in reused
    # Another training setting: the earlier records are replaced, not merged, and the log says so.
    assert {m["method"] for m in results["models"] if m["role"] == "sft_kd"} == {"fitnets"}
    assert any("replaced, not merged" in line and "train.epochs_student" in line for line in log)


class KilledError(Exception):
    """Stands in for kill -9: raised right after a checkpoint, so nothing after it runs."""


def test_resume_after_interruption_gives_the_same_result(tmp_path, monkeypatch):
    two_epochs = {f"train.epochs_{s}": 2 for s in ("teacher", "student", "sft", "kd")}
    reference = run(tmp_path / "uninterrupted", **two_epochs)

    calls = {"n": 0}
    original = loop.save_state

    def save_then_die(path, state):
        original(path, state)
        calls["n"] += 1
        if calls["n"] in (1, 5):  # after teacher epoch 1; after SFT teacher epoch 1 (teacher 2, student 1-2 between)
            raise KilledError

    monkeypatch.setattr(loop, "save_state", save_then_die)
    out = tmp_path / "interrupted"
    log: list[str] = []
    for _ in range(2):
        with pytest.raises(KilledError):
            run(out, log, **two_epochs)
    resumed = run(out, log, **two_epochs)
    assert [line.split(":")[0] for line in log if "resuming after epoch 1 of 2" in line] == [
        "teacher/d5c5@4x", "sft_teacher/d5c5@4x"]
    assert psnr_by_name(resumed) == psnr_by_name(reference)


def test_stage_keys_use_the_resolved_kd_weight(tmp_path):
    """Naming the default weight explicitly is the same stage; another weight is a new one."""
    run(tmp_path)
    log: list[str] = []
    run(tmp_path, log, **{"kd.weight": 1000.0})  # AT's documented default
    assert len([line for line in log if line.startswith("reusing")]) == 5
    log.clear()
    run(tmp_path, log, **{"kd.weight": 10.0})
    reused = {line.split()[1] for line in log if line.startswith("reusing")}
    assert reused == {"teacher/d5c5@4x", "student/d3c5@4x", "sft_teacher/d5c5@4x"}
