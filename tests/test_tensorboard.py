"""Training you can watch: each stage's TensorBoard events, read back with TensorBoard's own reader and checked
against ``history.json`` and ``results.json``; each epoch once after a resume; ``--no-tensorboard`` writes none and
changes nothing else. The smoke preset at 2 epochs per stage; seconds each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from compressor import rundir
from compressor.config import apply_overrides, load_config
from compressor.data.sample import Sample
from compressor.evaluate.metrics import slice_metrics
from compressor.io import load_json
from compressor.training import loop
from compressor.training.distributed import SINGLE_PROCESS
from compressor.training.pipeline import Pipeline
from compressor.training.watch import (
    EVENT_FILE_PATTERN,
    IMAGE_TAG,
    TEXT_TAG,
    ValidationScores,
    ValidationSlice,
    flat_hparams,
)

EPOCHS = {f"train.epochs_{stage}": 2 for stage in ("teacher", "student", "sft", "kd")}
SCALARS = {"train/loss", "validation/l1", "validation/psnr", "validation/ssim", "lr", "epoch_seconds"}
TERMS = {"teacher": {"train/l1"}, "student": {"train/l1"}, "std_kd": {"train/l1", "train/kd", "train/kd_to_l1"},
         "sft_kd": {"train/l1", "train/kd", "train/kd_to_l1"},
         "sft_teacher": {"train/teacher_rec", "train/student_rec", "train/imitation"}}
FLOAT32 = 1e-6  # event files hold scalars as float32


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFT_KD_RECON_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def run(out: Path, **overrides) -> dict:
    config = apply_overrides(load_config("smoke"), {**EPOCHS, **overrides})
    torch.set_num_threads(1)  # as conftest's fixture, which a module-scoped fixture runs before
    Pipeline(config, out, score=slice_metrics, log=lambda message: None, progress=False).run()
    return load_json(out / rundir.RESULTS_FILE)


def events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def stage_dirs(run_dir: Path) -> dict[str, Path]:
    return {path.name.split("-")[0]: path for path in (run_dir / rundir.STAGES_FOLDER).iterdir()}


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("watched") / "run"
    return out, run(out)


def test_events_hold_the_history_of_every_stage(watched):
    out, _ = watched
    for role, stage in stage_dirs(out).items():
        history = load_json(stage / rundir.HISTORY_FILE)
        accumulator = events(stage / rundir.TENSORBOARD_FOLDER)
        logged = scalars(accumulator)
        assert set(logged) == SCALARS | TERMS[role], role
        for tag, values in logged.items():
            assert [step for step, _ in values] == [1, 2], (role, tag)
        values = {tag: [value for _, value in entries] for tag, entries in logged.items()}
        assert values["validation/l1"] == pytest.approx([h["val_loss"] for h in history], rel=FLOAT32)
        assert values["train/loss"] == pytest.approx([h["train_loss"] for h in history], rel=FLOAT32)
        assert values["epoch_seconds"] == pytest.approx([h["seconds"] for h in history], rel=FLOAT32)
        for term in history[0]["terms"]:
            tag = "train/kd" if term == "at" else f"train/{term}"
            assert values[tag] == pytest.approx([h["terms"][term] for h in history], rel=FLOAT32), (role, term)
        # the rate each epoch's steps used: the configured one, then history's (the rate after each scheduler step)
        assert values["lr"] == pytest.approx([1e-3, history[0]["lr"]], rel=FLOAT32)
        assert [(image.step, image.width, image.height) for image in accumulator.Images(IMAGE_TAG)] == [
            (2, 4 * 48, 48)]
        (text,) = accumulator.Tensors(f"{TEXT_TAG}/text_summary")
        assert text.step == 1 and json.loads(text.tensor_proto.string_val[0].decode())["key"] == stage.name[-12:]
        start = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
        assert hparams["stage"].string_value == stage.name and hparams["determinants.epochs"].number_value == 2


def test_validation_psnr_and_ssim_are_the_reports_at_the_best_epoch(watched):
    """``results.json``'s validation PSNR/SSIM means are those of the best-validation-L1 weights on the validation
    slices, scored as the report scores them: the same quantity as the events' value at ``best_epoch``."""
    out, results = watched
    records = [m for m in results["models"] if m["split"] == "validation" and m["stage_dir"]]
    assert len(records) == 5
    for record in records:
        logged = scalars(events(out / record["stage_dir"] / rundir.TENSORBOARD_FOLDER))
        for metric in ("psnr", "ssim"):
            at_best = dict(logged[f"validation/{metric}"])[record["best_epoch"]]
            assert at_best == pytest.approx(record[metric]["mean"], rel=FLOAT32), (record["name"], metric)


def test_no_tensorboard_writes_no_events_and_changes_nothing_else(watched, tmp_path):
    out, results = watched
    quiet = tmp_path / "run"
    from compressor.cli import main

    result = CliRunner().invoke(main, ["--preset", "smoke", "--epochs", "2", "--no-deploy", "--no-progress",
                                       "--no-tensorboard", "--out", str(quiet)])
    assert result.exit_code == 0, result.output
    assert not list(quiet.rglob(EVENT_FILE_PATTERN)) and not list(quiet.rglob(rundir.TENSORBOARD_FOLDER))
    assert sorted(p.name for p in stage_dirs(quiet).values()) == sorted(p.name for p in stage_dirs(out).values())
    for name, stage in stage_dirs(out).items():  # the same keys, weights and history (timings aside)
        other = stage_dirs(quiet)[name]
        assert (stage / rundir.BEST_WEIGHTS_FILE).read_bytes() == (other / rundir.BEST_WEIGHTS_FILE).read_bytes()
        strip = [{k: v for k, v in h.items() if k != "seconds"} for h in load_json(stage / rundir.HISTORY_FILE)]
        assert strip == [{k: v for k, v in h.items() if k != "seconds"}
                         for h in load_json(other / rundir.HISTORY_FILE)]
    metrics = {(m["name"], m["split"]): (m["psnr"], m["ssim"]) for m in results["models"]}
    assert metrics == {(m["name"], m["split"]): (m["psnr"], m["ssim"])
                       for m in load_json(quiet / rundir.RESULTS_FILE)["models"]}
    assert load_json(quiet / rundir.CONFIG_FILE)["train"]["tensorboard"] is False


class KilledError(Exception):
    """Stands in for kill -9."""


def test_a_resumed_stage_logs_each_epoch_once(watched, tmp_path, monkeypatch):
    """Killed after epoch 2's events but before its checkpoint (the epoch is trained again), then killed right
    after a checkpoint: each stage still has every epoch once, with the uninterrupted run's values."""
    reference, _ = watched
    calls = {"n": 0}
    original = loop.save_state

    def die(path, state):
        calls["n"] += 1
        if calls["n"] == 2:  # teacher epoch 2: its events are written, its checkpoint is not
            raise KilledError
        original(path, state)
        if calls["n"] == 4:  # the second run's student epoch 1, committed
            raise KilledError

    monkeypatch.setattr(loop, "save_state", die)
    out = tmp_path / "run"
    for _ in range(2):
        with pytest.raises(KilledError):
            run(out)
    run(out)
    stages = stage_dirs(out)
    assert len(list((stages["teacher"] / rundir.TENSORBOARD_FOLDER).glob(EVENT_FILE_PATTERN))) == 2
    for role, stage in stages.items():
        accumulator = events(stage / rundir.TENSORBOARD_FOLDER)
        logged = scalars(accumulator)
        expected = scalars(events(stage_dirs(reference)[role] / rundir.TENSORBOARD_FOLDER))
        assert set(logged) == set(expected)
        for tag in ("validation/l1", "validation/psnr", "train/loss", "lr"):
            assert [step for step, _ in logged[tag]] == [1, 2], (role, tag)
            assert [v for _, v in logged[tag]] == pytest.approx([v for _, v in expected[tag]], rel=FLOAT32)
        assert [image.step for image in accumulator.Images(IMAGE_TAG)] == [2]
        assert len(accumulator.Tensors(f"{TEXT_TAG}/text_summary")) == 1


# -- the parts ------------------------------------------------------------------------------------------------------
def test_the_panel_is_zero_filled_reconstruction_target_and_error_scaled_to_the_target():
    target = np.full((2, 3), 2.0)
    panel = ValidationSlice(np.ones((2, 3)), np.full((2, 3), np.nan), target).panel()
    assert panel.shape == (2, 12) and panel.dtype == np.float32
    assert np.array_equal(panel[0], [0.5] * 3 + [0.0] * 3 + [1.0] * 3 + [0.0] * 3)


def test_metrics_of_a_diverged_output_are_nan_and_training_goes_on():
    target = torch.rand(2, 1, 16, 16) + 0.1
    batch = Sample(target, torch.zeros(2, 1, 16, 16, 2), torch.ones(2, 1, 16, 16), target, torch.ones(2), "v", 0)
    scores = ValidationScores(slice_metrics, None, keep_example=True)
    scores.add(batch, torch.full_like(target, math.inf))
    assert all(math.isnan(value) for value in scores.means(2, SINGLE_PROCESS).values())
    assert scores.example is not None and scores.example.target.shape == (16, 16)
    good = ValidationScores(slice_metrics, (8, 8), keep_example=False)
    good.add(batch, target)
    assert good.means(2, SINGLE_PROCESS) == {"psnr": math.inf, "ssim": pytest.approx(1.0)} and good.example is None


def test_hyperparameters_are_flat_scalars():
    assert flat_hparams({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}, "f": "x", "g": True}) == {
        "a.b": 1, "a.c": "[1, 2]", "d": "null", "e": "{}", "f": "x", "g": True}
