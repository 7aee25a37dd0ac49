"""The report for the optional experiments of a run directory (docs/run-directory.md, optional fields).

- the feature-domain SFT setup (records with ``"setup": "feature"``, rcnn25 teacher / rcnn15 student) beside
  SFT-KD-Recon: Table 1 keeps to the image setup; Table 2 sets the two setups side by side;
- a super-resolution run (``"task": "sr"``): Table 9's title and the interpolated input in place of ZF;
- a warm-started SFT teacher (``init_teacher``) against the one trained from scratch (``sft_teacher_scratch``):
  the warm-start table's convergence numbers are computed by hand from handwritten ``history.json`` curves;
- a run without any of these: each new table says how to get its experiment and the Fig. 7 figure is skipped.

Models are the synthetic targets of tests/test_report.py plus Gaussian noise of a known level (× target max), so
each setup's ranking is known in advance: 8 slices, and a model that is better on every slice gives the exact
two-sided Wilcoxon p = 2 / 2^8 ≈ 0.008.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from compressor.errors import InputError
from compressor.evaluate.figures import warm_start_curves
from compressor.evaluate.metrics import slice_metrics
from compressor.evaluate.report import build_report
from compressor.evaluate.run_data import HistoryEntry, convergence, load_run
from compressor.evaluate.table_text import MISSING, render
from compressor.evaluate.tables import run_summary, table1, table2, warm_start
from tests.test_report import SLICE_INDEX, VOLUMES, synthetic_targets, write_json, write_reconstructions

WEIGHTS = "pretrained/cardiac_d5c5.safetensors"
# Handwritten validation curves (val_loss, seconds) per epoch. Warm-started SFT teacher: minimum 0.0200 at epoch 5,
# threshold 1.02 × 0.0200 = 0.0204, first reached at epoch 4 (0.0201; epoch 3's 0.0205 is above it), after
# 1.0 + 1.5 + 2.0 + 2.5 = 7.0 s of 13.5 s in all.
WARM_CURVE = ((0.050, 1.0), (0.030, 1.5), (0.0205, 2.0), (0.0201, 2.5), (0.0200, 3.0), (0.0202, 3.5))
# From scratch: minimum 0.0200 at epoch 11, first within 0.0204 at epoch 10 (0.0203), 10 × 2.0 = 20.0 s of 24.0 s.
SCRATCH_CURVE = tuple((loss, 2.0) for loss in (0.2, 0.1, 0.06, 0.04, 0.03, 0.025, 0.022, 0.021, 0.0205, 0.0203,
                                               0.0200, 0.0202))
TEACHER_CURVE = ((0.04, 1.0), (0.025, 1.0), (0.0221, 1.0), (0.022, 1.0))


class Stage(NamedTuple):
    """One model of a synthetic run at 4x: identity, noise level, the optional fields, and its validation curve."""

    role: str
    arch: str | None
    method: str | None
    noise: float
    setup: str = "image"
    init_teacher: str | None = None
    curve: tuple[tuple[float, float], ...] | None = None


IMAGE_SETUP = (
    Stage("zero_filled", None, None, 0.15),
    Stage("teacher", "d5c5", None, 0.02),
    Stage("sft_teacher", "d5c5", None, 0.018),
    Stage("student", "d3c5", None, 0.06),
    Stage("std_kd", "d3c5", "at", 0.04),
    Stage("sft_kd", "d3c5", "at", 0.025),
)
FEATURE_SETUP = (
    Stage("teacher", "rcnn25", None, 0.05, setup="feature"),
    Stage("sft_teacher", "rcnn25", None, 0.045, setup="feature"),
    Stage("student", "rcnn15", None, 0.09, setup="feature"),
    Stage("std_kd", "rcnn15", "at", 0.08, setup="feature"),
    Stage("sft_kd", "rcnn15", "at", 0.07, setup="feature"),
    Stage("std_kd", "rcnn15", "fitnets", 0.085, setup="feature"),  # no image FitNets: not in Table 2
)
SR_RUN = (
    Stage("zero_filled", None, None, 0.12),
    Stage("teacher", "vdsr12", None, 0.03),
    Stage("sft_teacher", "vdsr12", None, 0.028),
    Stage("student", "vdsr4", None, 0.05),
    Stage("std_kd", "vdsr4", "at", 0.045),
    Stage("sft_kd", "vdsr4", "at", 0.04),
)
WARM_START_RUN = (
    Stage("zero_filled", None, None, 0.15),
    Stage("teacher", "d5c5", None, 0.02, init_teacher=WEIGHTS, curve=TEACHER_CURVE),
    Stage("sft_teacher", "d5c5", None, 0.018, init_teacher=WEIGHTS, curve=WARM_CURVE),
    Stage("sft_teacher_scratch", "d5c5", None, 0.019, curve=SCRATCH_CURVE),
    Stage("student", "d3c5", None, 0.06),
    Stage("std_kd", "d3c5", "at", 0.04),
    Stage("sft_kd", "d3c5", "at", 0.025),
)


def write_model(run_dir: Path, stage: Stage, index: int, target: np.ndarray) -> dict:
    """Write one model's metrics, reconstructions and history; return its results.json record."""
    noise = np.random.default_rng(200 + index).standard_normal(target.shape)
    images = (target + stage.noise * target.max() * noise).astype(np.float32)
    method = f"/{stage.method}" if stage.method else ""
    record = {"name": f"{stage.role}{method}/{stage.arch or 'zf'}@4x", "role": stage.role, "arch": stage.arch,
              "method": stage.method, "acceleration": 4.0, "split": "validation", "setup": stage.setup,
              "init_teacher": stage.init_teacher}
    per_slice = {"split": "validation", "volume": list(VOLUMES), "slice_index": list(SLICE_INDEX),
                 **{name: values.tolist() for name, values in slice_metrics(images, target).items()}}
    if stage.role == "zero_filled":
        record.update(metrics_file="zero_filled_4x_validation.json", stage_dir=None, reconstructions_file=None)
        del record["setup"], record["init_teacher"]  # zero-filled records carry neither field
        write_json(run_dir / record["metrics_file"], per_slice)
        return record
    stage_dir = f"stages/{stage.setup}-{stage.role}{method.replace('/', '-')}-{index:02d}"
    record.update(stage_dir=stage_dir, metrics_file=f"{stage_dir}/metrics_validation.json",
                  reconstructions_file=f"{stage_dir}/reconstructions_validation.h5")
    write_json(run_dir / record["metrics_file"], per_slice)
    zero_filled = target + 0.15 * target.max() * np.random.default_rng(7).standard_normal(target.shape)
    write_reconstructions(run_dir / record["reconstructions_file"], images, target, zero_filled)
    curve = stage.curve or tuple((stage.noise + 0.05 / epoch, 0.1) for epoch in range(1, 6))
    write_json(run_dir / stage_dir / "history.json", [
        {"epoch": epoch, "train_loss": loss * 1.1, "val_loss": loss, "lr": 1e-3, "seconds": seconds, "terms": {}}
        for epoch, (loss, seconds) in enumerate(curve, start=1)])
    return record


def write_run(run_dir: Path, stages: tuple[Stage, ...], teacher: str, **top_level: str) -> Path:
    target = synthetic_targets().astype(np.float32)
    records = [write_model(run_dir, stage, index, target) for index, stage in enumerate(stages)]
    write_json(run_dir / "results.json", {"schema": 1, "tool_version": "0.1.0", "split": "validation",
                                          "teacher": teacher, **top_level, "models": records})
    return run_dir


@pytest.fixture(scope="module")
def two_setup_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("two_setups"), IMAGE_SETUP + FEATURE_SETUP, "d5c5")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("image_only"), IMAGE_SETUP, "d5c5")


@pytest.fixture(scope="module")
def warm_start_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("warm_start"), WARM_START_RUN, "d5c5")


def column(table, header: str) -> list[str]:
    index = table.headers.index(header)
    return [row[index] for row in table.rows]


def mean_of(cell: str) -> float:
    """The first mean of a ``mean ± std / mean ± std`` cell."""
    return float(cell.split(" ± ")[0])


def stored_psnr(run_dir: Path, arch: str, role: str) -> np.ndarray:
    """A model's per-slice PSNR as its metrics file stores it, found through results.json."""
    records = json.loads((run_dir / "results.json").read_text())["models"]
    (path,) = [run_dir / r["metrics_file"] for r in records if r["arch"] == arch and r["role"] == role]
    return np.array(json.loads(path.read_text())["psnr"])


def test_table1_and_the_summary_keep_to_the_image_setup(two_setup_run: Path):
    run = load_run(two_setup_run)
    assert [r[0] for r in table1(run).rows] == ["ZF", "Teacher (d5c5)", "Student (d3c5)", "AT"]
    assert {record.arch for record in run.records} == {None, "d5c5", "d3c5"}
    assert {record.setup for record in run.all_records} == {"image", "feature"}
    assert not [cell for row in [*table1(run).rows, *run_summary(run).rows] for cell in row if "rcnn" in cell]


def test_for_setup_gives_the_feature_models_with_the_shared_zero_filled_row(two_setup_run: Path, image_run: Path):
    feature = load_run(two_setup_run).for_setup("feature")
    assert (feature.teacher_arch, feature.primary_student, feature.methods()) == ("rcnn25", "rcnn15", ["at", "fitnets"])
    zero_filled = feature.find("zero_filled", 4.0)
    assert zero_filled is not None and zero_filled.setup == "image"
    assert load_run(image_run).for_setup("feature") is None
    with pytest.raises(InputError, match="unknown setup 'kspace'"):
        load_run(image_run).for_setup("kspace")


def test_table2_sets_the_feature_setup_beside_sft_kd_recon(two_setup_run: Path):
    table = table2(load_run(two_setup_run))
    assert [row[2] for row in table.rows] == ["Teacher", "SF Teacher", "Student", "KD", "SFT-KD"]
    assert column(table, "Method") == [MISSING] * 3 + ["AT"] * 2  # FitNets is in the feature setup only
    assert column(table, "Feature SFT arch") == ["rcnn25", "rcnn25", "rcnn15", "rcnn15", "rcnn15"]
    assert column(table, "SFT-KD-Recon arch") == ["d5c5", "d5c5", "d3c5", "d3c5", "d3c5"]
    psnr = stored_psnr(two_setup_run, "rcnn25", "teacher")
    assert table.rows[0][table.headers.index("Feature SFT PSNR/SSIM")].startswith(
        f"{psnr.mean():.2f} ± {psnr.std():.2f} / ")
    assert not any("--feature-sft" in note for note in table.notes)


def test_table2_orders_each_setup_as_its_noise_levels_do_and_tests_sft_kd_against_kd(two_setup_run: Path):
    table = table2(load_run(two_setup_run))
    for setup in ("Feature SFT", "SFT-KD-Recon"):
        psnr = dict(zip(column(table, "Model"), map(mean_of, column(table, f"{setup} PSNR/SSIM"))))
        assert psnr["SF Teacher"] > psnr["Teacher"] > psnr["SFT-KD"] > psnr["KD"] > psnr["Student"], setup
        hfn = dict(zip(column(table, "Model"), map(mean_of, column(table, f"{setup} HFN/VIF"))))
        assert hfn["SFT-KD"] < hfn["KD"], setup  # HFN: lower is better
        p_values = column(table, f"{setup} p PSNR/SSIM/HFN/VIF")
        assert p_values[2] == p_values[3] == MISSING
        assert p_values[4].split(" / ")[0] == "0.008"  # SFT-KD beats KD on all 8 slices
        assert len(p_values[1].split(" / ")) == 4  # SF Teacher against Teacher
    image_psnr = map(mean_of, column(table, "SFT-KD-Recon PSNR/SSIM"))
    assert all(image > feature for image, feature in zip(image_psnr, map(mean_of, column(table, "Feature SFT "
                                                                                                "PSNR/SSIM"))))


@pytest.mark.parametrize(("interpolation", "label"), [("bicubic", "Bicubic (input)"), ("sinc", "Sinc (input)")])
def test_a_super_resolution_run_is_table_9_with_the_interpolated_input_as_zf(
    tmp_path: Path, interpolation: str, label: str
):
    run = load_run(write_run(tmp_path, SR_RUN, "vdsr12", task="sr", sr_interpolation=interpolation))
    table = table1(run)
    assert table.title == "Table 9: super-resolution PSNR (dB) / SSIM, Std-KD against SFT-KD-Recon"
    assert [r[0] for r in table.rows] == [label, "Teacher (vdsr12)", "Student (vdsr4)", "AT"]
    assert table.headers[1] == "4x Std-KD PSNR/SSIM"
    assert run_summary(run).rows[0][1] == label
    assert any("scale factor" in note for note in table.notes)


def test_a_reconstruction_run_keeps_table_1(image_run: Path):
    run = load_run(image_run)
    assert (run.task, run.sr_interpolation) == ("reconstruction", None)
    assert table1(run).title == "Table 1: PSNR (dB) / SSIM, Std-KD against SFT-KD-Recon"
    assert table1(run).rows[0][0] == run_summary(run).rows[0][1] == "ZF"


def test_warm_start_table_gives_hand_computed_convergence(warm_start_run: Path):
    table = warm_start(load_run(warm_start_run))
    assert [row[:9] for row in table.rows] == [
        ["4x", "SFT teacher, warm-started", WEIGHTS, "6", "0.02", "5", "4", "7.0", "13.5"],
        ["4x", "SFT teacher, from scratch", "random", "12", "0.02", "11", "10", "20.0", "24.0"],
    ]
    assert all(mean_of(row[9]) > 0 for row in table.rows)
    assert any("(1 + 0.02) × that curve's minimum" in note for note in table.notes)


def test_convergence_ignores_epochs_without_a_validation_loss():
    history = [HistoryEntry(1, 0.5, float("nan"), 4.0), HistoryEntry(2, 0.4, 0.30, 1.0),
               HistoryEntry(3, 0.3, 0.10, 2.0), HistoryEntry(4, 0.2, 0.101, 3.0)]
    settled = convergence(history, tolerance=0.05)
    assert (settled.best_epoch, settled.epoch, settled.seconds, settled.total_seconds) == (3, 3, 7.0, 10.0)
    assert convergence([HistoryEntry(1, 0.5, float("nan"), 1.0)]) is None


def test_the_warm_start_run_lists_the_from_scratch_teacher_and_draws_fig7(warm_start_run: Path, tmp_path: Path):
    run = load_run(warm_start_run)
    assert "SFT teacher (from scratch)" in column(run_summary(run), "Model")
    assert run.find("teacher", 4.0).init_teacher == WEIGHTS and run.find("student", 4.0).init_teacher is None
    outcome = warm_start_curves(run, tmp_path / "fig7.png")
    content = outcome.path.read_bytes()
    assert content.startswith(b"\x89PNG") and len(content) > 1000
    report = build_report(warm_start_run, out_dir=tmp_path / "report")
    assert tmp_path / "report" / "fig7_warm_start.png" in report.files
    assert not [note for note in report.notes + report.not_run if note.startswith("fig7")]


def test_a_run_without_the_experiments_says_how_to_get_them(image_run: Path, tmp_path: Path):
    run = load_run(image_run)
    second = table2(run)
    assert column(second, "Feature SFT arch") == column(second, "Feature SFT PSNR/SSIM") == [MISSING] * 5
    assert column(second, "SFT-KD-Recon arch") == ["d5c5", "d5c5", "d3c5", "d3c5", "d3c5"]
    assert any("run `compress` with --feature-sft" in note for note in second.notes)
    warm = warm_start(run)
    assert warm.rows == [] and len(warm.notes) == 1 and "`compress --init-teacher PATH`" in warm.notes[0]
    assert "\\begin{tabular}{llllllllll}" in render(warm, "latex")  # a column spec even without rows
    outcome = warm_start_curves(run, tmp_path / "fig7.png")
    assert outcome.path is None and outcome.not_run and "--init-teacher PATH" in outcome.note
    assert not (tmp_path / "fig7.png").exists()
    report = build_report(image_run, out_dir=tmp_path / "report")
    assert [note.split(":")[0] for note in report.not_run] == ["fig7_warm_start"]
    assert {"table2.md", "warm_start.md"} <= {path.name for path in report.files}


@pytest.mark.parametrize(("top_level", "model", "message"), [
    ({}, {"setup": "kspace"}, r"results.json \[models\[0\].setup\]: unknown setup 'kspace'"),
    ({}, {"init_teacher": 3}, r"results.json \[models\[0\].init_teacher\]: expected a weights file path"),
    ({"task": "denoising"}, {}, r"results.json \[task\]: unknown task 'denoising'"),
    ({"task": "sr", "sr_interpolation": "nearest"}, {}, r"results.json \[sr_interpolation\]: unknown sr_interpolation"),
])
def test_unknown_optional_values_are_rejected_naming_results_json(
    tmp_path: Path, top_level: dict, model: dict, message: str
):
    write_json(tmp_path / "results.json", {"schema": 1, "split": "validation", **top_level, "models": [
        {"name": "x", "role": "teacher", "acceleration": 4.0, **model}]})
    with pytest.raises(InputError, match=message):
        load_run(tmp_path)
