"""The run-directory contract (compressor.rundir): committed stage keys, the key rule, formats, the lock, the
results merge, masks, hostile checkpoints and a report on a run with a stage folder missing."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from compressor import rundir
from compressor.config import apply_overrides, load_config
from compressor.errors import InputError
from compressor.training import stages
from compressor.training.stages import StageSpec, plan_run

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def quick(**overrides):
    return apply_overrides(load_config("quick"), overrides)


SR = {"data.task": "sr", "model.teacher": "vdsr12", "model.student": ["vdsr4"], "kd.method": ["pkt"],
      "train.lr_step": 15, **{f"train.epochs_{stage}": 20 for stage in ("teacher", "student", "sft", "kd")}}
# The quick preset's budget under TRAINING_CODE_VERSION 1 (40 epochs per stage, LR step after 30).
QUICK_V1 = {"train.lr_step": 30, **{f"train.epochs_{stage}": 40 for stage in ("teacher", "student", "sft", "kd")}}

# The committed runs: the TRAINING_CODE_VERSION that made them and their invocations (quick preset + the options in
# their compress*.log).
COMMITTED_RUNS = {
    "quick-all": (2, [{}, {"kd.method": ["all"]}]),  # compress --method at; then --method all in the same directory
    "quick-at": (1, [QUICK_V1, {**QUICK_V1, "sft.feature_ablation": True}]),  # --method at; then --feature-sft
    "quick-sweep": (1, [{**QUICK_V1, "model.student": ["d3c5", "d2c5"]}]),
    "quick-sr": (1, [SR, {**SR, "kd.weight": 1000.0}]),  # PKT at its default weight, then --kd-weight 1000
    "quick-sr-pkt-weight-3e4": (1, [SR]),
}
# Run before commit dbbe920 made KD keys use the resolved weight (AT's default was then 1e4): its two KD stages
# carry the retired keys; the teacher, student and SFT teacher are today's.
OLD_WEIGHT_RUN = ("quick-at-weight-1e4", {"std_kd", "sft_kd"})
# The warm-started stages' keys hold the donor weights' digest, which no committed file records; the rest is checked.
WARM_RUN = ("quick-warm", {"teacher-d5c5-10db66f0a048", "sft_teacher-d5c5-f9ffbe2e3bef", "std_kd-at-d3c5-fa3d86838ef2",
                           "sft_kd-at-d3c5-65f2c4a71c39"})


def committed_folders(run: str) -> set[str]:
    models = json.loads((RESULTS / run / "results.json").read_text())["models"]
    return {Path(model["stage_dir"]).name for model in models if model["stage_dir"]}


def planned_folders(version: int, *overrides: dict) -> set[str]:
    """The stage folders the planner gives the quick preset with ``overrides``, keyed as ``TRAINING_CODE_VERSION``
    ``version`` keyed them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stages, "TRAINING_CODE_VERSION", version)
        return {stage.spec.folder for config in overrides for stage in plan_run(quick(**config)).all_stages()}


@pytest.mark.parametrize("run", sorted(COMMITTED_RUNS))
def test_planner_gives_every_committed_stage_folder(run):
    version, invocations = COMMITTED_RUNS[run]
    assert planned_folders(version, *invocations) >= committed_folders(run)
    if run != "quick-sr":  # quick-sr's results.json holds the weight-1000 KD stages only
        assert planned_folders(version, *invocations) == committed_folders(run)


def test_the_committed_quick_multicoil_run_is_what_its_preset_plans():
    """docs/results/quick-multicoil was trained by ``compress --preset quick-multicoil`` (learned λ, 8 coils)."""
    planned = {stage.spec.folder for stage in plan_run(load_config("quick-multicoil")).stages[4.0]}
    assert planned == committed_folders("quick-multicoil")


def test_a_new_training_code_version_retires_every_stage_key():
    assert not planned_folders(stages.TRAINING_CODE_VERSION, QUICK_V1) & planned_folders(1, QUICK_V1)


def test_planner_gives_the_older_runs_unretired_stage_folders():
    run, retired = OLD_WEIGHT_RUN
    current = {folder for folder in committed_folders(run) if folder.split("-")[0] not in retired}
    assert len(current) == 3 and current <= planned_folders(1, {**QUICK_V1, "kd.weight": 10000.0})
    warm_run, warm_stages = WARM_RUN
    assert committed_folders(warm_run) - warm_stages <= planned_folders(1, QUICK_V1)


def test_planner_reads_no_data(monkeypatch):
    import compressor.data as data

    def no_reading(*args, **kwargs):
        raise AssertionError("the planner read data")

    monkeypatch.setattr(data, "build_splits", no_reading)
    plan = plan_run(quick())
    assert [stage.spec.name for stage in plan.stages[4.0]] == [
        "teacher/d5c5@4x", "student/d3c5@4x", "sft_teacher/d5c5@4x", "std_kd/at/d3c5@4x", "sft_kd/at/d3c5@4x"]


def test_a_source_that_forms_its_complex_slices_anew_retires_its_two_channel_keys(monkeypatch, tmp_path):
    import h5py

    from compressor.data.fastmri import FastMRIReader

    files = {"data.source": "fastmri"}
    for split in ("train", "validation"):  # multi-coil k-space: the planner reads the grid from the header
        with h5py.File(tmp_path / f"{split}.h5", "w") as file:
            file["kspace"] = np.ones((2, 4, 48, 24), np.complex64)
        files[f"data.{split}"] = str(tmp_path / f"{split}.h5")

    def planned(**overrides):
        return {stage.spec.folder: stage.spec for stage in plan_run(quick(**files, **overrides)).stages[4.0]}

    complex_now, real_now = planned(**{"model.image_channels": 2}), planned()
    assert {spec.determinants["phase_formation"] for spec in complex_now.values()} == {2}
    assert all("phase_formation" not in spec.determinants for spec in real_now.values())
    monkeypatch.setattr(FastMRIReader, "phase_formation", 1)  # the slices before the served virtual coil
    assert not planned(**{"model.image_channels": 2}).keys() & complex_now.keys()
    assert planned().keys() == real_now.keys()  # the 1-channel slices did not change: their stages stay


# -- the key rule -----------------------------------------------------------------------------------------------------
def _key(options: dict, defaults: dict, **stage) -> str:
    config = quick().to_dict()
    determinants = rundir.stage_determinants(config, options, defaults, "0" * 16, 40, stage)
    return StageSpec("student", "d3c5", 4.0, None, determinants).key


def test_a_new_field_at_its_default_leaves_keys_unchanged():
    from compressor.models import ModelOptions

    options = ModelOptions(block_form="residual").to_dict()
    defaults = ModelOptions().to_dict()
    reference = _key(options, defaults)
    assert _key({**options, "precision": "fp32"}, {**defaults, "precision": "fp32"}) == reference
    assert _key({**options, "precision": "fp16"}, {**defaults, "precision": "fp32"}) != reference
    # A format-1 field enters even at its default: removing it would change committed keys.
    assert _key({k: v for k, v in options.items() if k != "channels"}, defaults) != reference
    # The stage's own parts: loss l1 and no warm start are defaults; mse or a digest change the key.
    assert _key(options, defaults, loss="l1", init_teacher=None) == reference
    assert _key(options, defaults, loss="mse") != reference


def test_new_config_fields_follow_the_rule():
    task = "reconstruction"
    data = asdict(quick().data)
    kept = rundir.key_fields("data", data, task)
    assert "task" not in kept and "sr_interpolation" not in kept and "acceleration" not in kept
    assert kept["mask_seed"] == 0  # a format-1 field at its default stays
    assert "image_channels" not in rundir.key_fields("data", {**data, "image_channels": 1}, task,
                                                      {**rundir.section_defaults("data"), "image_channels": 1})
    assert rundir.key_fields("data", {**data, "task": "sr"}, "sr")["sr_interpolation"] == "bicubic"
    train = asdict(quick().train)
    assert set(rundir.key_fields("train", {**train, "precision": "fp32"}, task,
                                 {**rundir.section_defaults("train"), "precision": "fp32"})) == {
        "batch_size", "lr", "lr_step", "lr_gamma", "seed", "amp"}


# -- formats ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("run", ["quick-at", "quick-sr", "quick-warm", "quick-at-weight-1e4"])
def test_committed_format_1_results_are_read(run):
    record = rundir.read_results(RESULTS / run)
    assert record.schema == 1 and record.models
    raw = json.loads((RESULTS / run / "results.json").read_text())
    again = record.to_json()["models"]
    assert [{k: v for k, v in m.items() if v is not None} for m in again] == [
        {k: v for k, v in {"setup": "image", **m}.items() if v is not None} for m in raw["models"]]


def test_a_newer_format_is_refused_in_one_line(tmp_path):
    raw = json.loads((RESULTS / "quick-at" / "results.json").read_text())
    (tmp_path / "results.json").write_text(json.dumps({**raw, "schema": 3}))
    with pytest.raises(InputError) as error:
        rundir.read_results(tmp_path)
    message = str(error.value)
    assert "results.json [schema]" in message and "format 3" in message and "1, 2" in message
    assert "\n" not in message


def test_roles_carry_one_label():
    assert rundir.Role("sft_kd_random").label == "SFT-KD-Recon (random init)"
    assert rundir.ROLES[0] == "zero_filled" and set(rundir.STAGE_ROLES) < set(rundir.ROLES)


# -- the lock ---------------------------------------------------------------------------------------------------------
@contextmanager
def another_process_holding_the_lock(run: Path) -> Iterator[subprocess.Popen]:
    """A second process holding ``run``'s lock while the block runs (killed after it)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from compressor.rundir import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_a_second_process_is_refused_while_a_run_holds_the_directory(tmp_path):
    with another_process_holding_the_lock(tmp_path) as holder:
        with pytest.raises(InputError) as error, rundir.run_lock(tmp_path):
            pass
        assert f"PID {holder.pid}" in str(error.value) and str(tmp_path) in str(error.value)
    with rundir.run_lock(tmp_path), rundir.run_lock(tmp_path):  # free again, and re-entrant
        pass


def test_a_lock_on_a_new_directory_leaves_nothing_when_nothing_was_written(tmp_path):
    with rundir.run_lock(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()


def _lock_refusal(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "hard link", "foreign file"])
def test_the_lock_never_writes_into_a_file_it_did_not_create(tmp_path, kind):
    from click.testing import CliRunner

    from compressor.cli import main

    victim = tmp_path / "victim.txt"
    victim.write_text("x" * 380)
    run = tmp_path / "run"
    run.mkdir()
    lock = run / rundir.LOCK_FILE
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "dangling symlink":
        lock.symlink_to(tmp_path / "created-through-the-link")
    elif kind == "hard link":
        os.link(victim, lock)
    else:
        lock.write_text("these 380 bytes are somebody's data\n")
    foreign = lock.read_bytes() if kind == "foreign file" else None
    result = CliRunner().invoke(main, ["--preset", "smoke", "--teacher", "d3c5", "--student", "d2c5", "--method",
                                       "at", "--no-deploy", "--no-progress", "--out", str(run)])
    line = _lock_refusal(result)
    assert rundir.LOCK_FILE in line and "not a lock file of this tool" in line
    assert victim.read_text() == "x" * 380 and not (tmp_path / "created-through-the-link").exists()
    assert sorted(p.name for p in run.iterdir()) == [rundir.LOCK_FILE]  # nothing trained, nothing written
    if foreign is not None:
        assert lock.read_bytes() == foreign


def test_a_lock_file_left_by_an_earlier_run_is_taken_over(tmp_path):
    (tmp_path / rundir.LOCK_FILE).write_text("12345\n")
    with rundir.run_lock(tmp_path):
        assert (tmp_path / rundir.LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert (tmp_path / rundir.LOCK_FILE).read_text() == ""


def test_report_refuses_a_run_that_is_still_training(tmp_path):
    from click.testing import CliRunner

    from compressor.cli import main

    run = shutil.copytree(RESULTS / "quick-at", tmp_path / "quick-at")
    with another_process_holding_the_lock(run) as holder:
        with pytest.raises(InputError) as error:
            rundir.refuse_if_training(run)
        assert f"PID {holder.pid}" in str(error.value) and "still changing" in str(error.value)
        line = _lock_refusal(CliRunner().invoke(main, ["report", str(run)]))
        assert str(run) in line and f"PID {holder.pid}" in line
        assert not (run / rundir.REPORT_FOLDER).exists()
    rundir.refuse_if_training(run)  # free again
    with rundir.run_lock(run):
        rundir.refuse_if_training(run)  # this process's own run reads its directory


def test_report_refuses_a_report_path_that_is_a_file_before_any_work(tmp_path):
    from click.testing import CliRunner

    from compressor.cli import main

    run = shutil.copytree(RESULTS / "quick-at", tmp_path / "quick-at")
    (run / rundir.REPORT_FOLDER).write_text("not a folder")
    before = sorted(p.name for p in run.iterdir())
    line = _lock_refusal(CliRunner().invoke(main, ["report", str(run)]))
    assert str(run / rundir.REPORT_FOLDER) in line and "is a file" in line
    assert sorted(p.name for p in run.iterdir()) == before
    assert (run / rundir.REPORT_FOLDER).read_text() == "not a folder"


# -- the deployment records -------------------------------------------------------------------------------------------
def test_benchmark_json_round_trips_and_older_files_are_read():
    raw = json.loads((RESULTS / "quick-all" / "benchmark.json").read_text())
    record = rundir.read_benchmark(RESULTS / "quick-all")
    assert json.loads(json.dumps(record.to_json())) == raw  # every key and value as export/benchmark writes them
    assert record.precisions() == ("fp32",) and record.latency_ms("d5c5") == next(
        m["ort_ms_median"] for m in raw["models"] if m["arch"] == "d5c5")
    older = rundir.read_benchmark(RESULTS / "quick-at")  # no precision, image_channels or cpu keys yet
    assert older.cpu is None and {m.precision for m in older.models} == {"fp32"}
    assert {m.image_channels for m in older.models} == {1}
    assert rundir.read_benchmark(RESULTS / "quick-sr") is None


def test_benchmark_json_written_through_the_record(tmp_path):
    record = rundir.BenchmarkRecord(provider="CPUExecutionProvider", threads=2, image_size=(16, 16), iterations=30,
                                    warmup=5, models=(rundir.ModelTiming(name="teacher/d2c2@4x", arch="d2c2",
                                                                         ort_ms_median=1.5, parameters=10),))
    json_path, csv_path = rundir.write_benchmark(tmp_path, record)
    assert (json_path.name, csv_path.name) == (rundir.BENCHMARK_FILE, "benchmark.csv")
    assert rundir.read_benchmark(tmp_path) == record
    assert csv_path.read_text().splitlines()[0].split(",")[:3] == ["name", "arch", "role"]


@pytest.mark.parametrize("change, key", [
    ({"models": [{"arch": 3}]}, "models[0]"),
    ({"models": [{"arch": "d2c5", "ort_ms_median": "fast"}]}, "models[0].ort_ms_median"),
    ({"threads": "two"}, "threads"),
])
def test_a_malformed_benchmark_json_is_one_line_naming_the_key(tmp_path, change, key):
    (tmp_path / rundir.BENCHMARK_FILE).write_text(json.dumps({"provider": "CPUExecutionProvider", "models": [],
                                                              **change}))
    with pytest.raises(InputError) as error:
        rundir.read_benchmark(tmp_path)
    assert f"{rundir.BENCHMARK_FILE} [{key}]" in str(error.value) and "\n" not in str(error.value)


def test_exports_json_round_trips(tmp_path):
    for run in ("quick-all", "quick-at"):
        raw = json.loads((RESULTS / run / "exports.json").read_text())
        record = rundir.ExportsRecord.from_json(raw, RESULTS / run / "exports.json")
        expected = raw if run == "quick-all" else [{"image_channels": 1, "precision": "fp32", **e} for e in raw]
        assert json.loads(json.dumps(record.to_json())) == expected
    check = rundir.PrecisionCheckEntry(delta_psnr_db=-0.02, delta_ssim=-0.001, psnr_fp32_db=31.0, slices=5,
                                       max_psnr_loss_db=0.5, line_deviation=1e-6, line_deviation_fp32=1e-7,
                                       reference_parity=None, reference_note="no QLinearConv in onnx.reference")
    entry = rundir.ExportEntry(file="exports/a.int8.onnx", architecture="d2c5", parameters=3045, image_channels=1,
                               formulation="masked", provider="CPUExecutionProvider", max_abs_error=0.01,
                               relative_error=0.001, tolerance=None, reference_evaluator_error=None,
                               validation_slices=5, seconds=1.0, precision="int8", precision_check=check)
    rundir.write_exports(tmp_path, rundir.ExportsRecord((entry,)))
    assert rundir.read_exports(tmp_path) == rundir.ExportsRecord((entry,))
    assert rundir.read_exports(tmp_path / "elsewhere") is None


def test_a_training_checkpoint_round_trips_and_a_foreign_one_is_one_line(tmp_path):
    checkpoint = rundir.TrainingCheckpoint(phase=1, history=[{"epoch": 1}], best_val=0.5, best_epoch=1,
                                           models={"model": {}}, optimizer={"state": {}}, scheduler={})
    path = tmp_path / rundir.CHECKPOINT_FILE
    assert rundir.TrainingCheckpoint.from_state(checkpoint.to_state(), path) == checkpoint
    assert set(checkpoint.to_state()) == {"phase", "history", "best_val", "best_epoch", "models", "optimizer",
                                          "scheduler"}
    with pytest.raises(InputError) as error:
        rundir.TrainingCheckpoint.from_state({"epoch": 1}, path)
    assert str(path) in str(error.value) and "retrain the stage" in str(error.value)


def test_the_layout_names_every_file():
    layout = rundir.RunLayout.of_stage(Path("/runs/a") / rundir.STAGES_FOLDER / "teacher-d5c5-0123")
    assert layout.root == Path("/runs/a") and layout.exports_file == Path("/runs/a/exports/exports.json")
    assert layout.report == Path("/runs/a/report") and layout.benchmark == Path("/runs/a/benchmark.json")
    assert layout.mask(4.0) == Path("/runs/a/masks/mask_4x.npy")
    assert rundir.best_weights_file() == "best.safetensors" and rundir.weights_file(rundir.LAST_WEIGHTS) == (
        "last.safetensors")
    assert rundir.best_weights_file(rundir.STUDENT_BRANCHES_PART) == "best_student_branches.safetensors"


# -- hostile checkpoints ----------------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_a_hostile_checkpoint_is_refused_without_running_it(tmp_path, writer):
    import torch

    from compressor.training.checkpoint import load_state

    marker = tmp_path / "payload-ran"
    path = tmp_path / "checkpoint.pt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps({"epoch": 1, "x": _Payload(marker)}))
    else:
        torch.save({"epoch": 1, "x": _Payload(marker)}, path)
    with pytest.raises(InputError) as error:
        load_state(path)
    message = str(error.value)
    assert str(path) in message and "not a plain-tensor checkpoint" in message and "will not be loaded" in message
    assert "weights_only=False" not in message and "\n" not in message
    assert not marker.exists()


# -- masks ------------------------------------------------------------------------------------------------------------
def test_masks_round_trip(tmp_path):
    values = (np.random.default_rng(0).random((6, 8)) > 0.5).astype(np.float32)
    record = rundir.save_mask(tmp_path, 4.0, values, "abc")
    assert record.file == "masks/mask_4x.npy"
    np.testing.assert_array_equal(rundir.load_mask_values(tmp_path, record.file), values)


# -- pipeline runs on one directory ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``--method at`` then ``--method fitnets`` into one smoke run directory."""
    from compressor.evaluate.metrics import slice_metrics
    from compressor.training.pipeline import Pipeline

    out = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFT_KD_RECON_CACHE", str(tmp_path_factory.mktemp("cache")))
        for method in ("at", "fitnets"):
            config = apply_overrides(load_config("smoke"), {"kd.method": [method]})
            Pipeline(config, out, score=slice_metrics, log=lambda message: None, progress=False).run()
    return out


def test_results_of_two_methods_merge(smoke_run):
    record = rundir.read_results(smoke_run)
    assert record.schema == rundir.FORMAT_VERSION
    kd = {(m.method, m.split) for m in record.models if m.role in rundir.KD_ROLES}
    assert kd == {(method, split) for method in ("at", "fitnets") for split in ("validation", "test")}
    names = [(m.name, m.split, m.stage_dir) for m in record.models]
    assert len(names) == len(set(names))
    assert record.masks["4"].file == "masks/mask_4x.npy" and (smoke_run / "masks" / "mask_4x.npy").is_file()
    stage = rundir.read_stage(smoke_run / record.models[-1].stage_dir)
    assert stage.format == rundir.FORMAT_VERSION and stage.mask_file == "masks/mask_4x.npy"


def test_export_reads_the_saved_mask(smoke_run):
    from compressor.export.run_models import load_run_models

    model = load_run_models(smoke_run, ["teacher/d5c5@4x"])[0]
    np.testing.assert_array_equal(model.mask.values, np.load(smoke_run / "masks" / "mask_4x.npy"))


def test_report_says_which_stage_folder_is_missing(smoke_run, tmp_path):
    from compressor.evaluate.report import build_report

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    std_kd = next(m for m in rundir.read_results(run).models if m.role == "std_kd" and m.method == "at")
    shutil.rmtree(run / std_kd.stage_dir)
    report = build_report(run, fmt="github", figures=False)
    lines = [line for line in report.warnings if std_kd.stage_dir in line]
    assert len(lines) == 1 and "missing" in lines[0]


class _KilledError(Exception):
    """Stands in for kill -9 right after the first checkpoint."""


def test_a_resumed_stage_with_a_hostile_checkpoint_stops_in_one_line(tmp_path, monkeypatch):
    from compressor.evaluate.metrics import slice_metrics
    from compressor.training import loop
    from compressor.training.pipeline import Pipeline

    monkeypatch.setenv("SFT_KD_RECON_CACHE", str(tmp_path / "cache"))
    config = apply_overrides(load_config("smoke"), {"train.epochs_teacher": 2})
    original = loop.save_state

    def save_then_die(path, state):
        original(path, state)
        raise _KilledError

    monkeypatch.setattr(loop, "save_state", save_then_die)
    out = tmp_path / "run"
    with pytest.raises(_KilledError):
        Pipeline(config, out, score=slice_metrics, log=lambda message: None, progress=False).run()
    monkeypatch.setattr(loop, "save_state", original)
    (checkpoint,) = (out / "stages").glob("teacher-*/checkpoint.pt")
    marker = tmp_path / "payload-ran"
    checkpoint.write_bytes(pickle.dumps({"epoch": 1, "x": _Payload(marker)}))
    with pytest.raises(InputError) as error:
        Pipeline(config, out, score=slice_metrics, log=lambda message: None, progress=False).run()
    assert str(checkpoint) in str(error.value) and "not a plain-tensor checkpoint" in str(error.value)
    assert not marker.exists()
