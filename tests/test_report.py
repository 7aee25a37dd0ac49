"""Tables, figures and the report command on a small synthetic run directory written by the test.

The run follows docs/run-directory.md: 8 validation slices of 48×48 in two volumes, teacher d5c5, students d3c5
and d2c5, methods AT and FitNets, accelerations 4x and 5x. Each model is the target plus Gaussian noise of a
known level, so its ranking (and the significance of every comparison) is known in advance. Some stages are
deliberately absent (FitNets SFT-KD-Recon, every SFT stage at 5x) and must show as "—".
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import pytest
from skimage.data import shepp_logan_phantom
from skimage.transform import resize

from compressor.errors import InputError
from compressor.evaluate.figures import TradeOffPoint, pareto_front
from compressor.evaluate.metrics import hfn, slice_metrics, ssim
from compressor.evaluate.report import build_report
from compressor.evaluate.run_data import load_run
from compressor.evaluate.table_text import FORMATS, MISSING, render
from compressor.evaluate.tables import TABLE_BUILDERS, table1, table3, table5, table8

SIZE = 48
VOLUMES = ("vol_a",) * 4 + ("vol_b",) * 4
SLICE_INDEX = (0, 1, 2, 3) * 2
TEACHER_PARAMETERS = 141765
PARAMETERS = {"d5c5": TEACHER_PARAMETERS, "d3c5": 49285, "d2c5": 3045}
LATENCY_MS = {"d5c5": 17.415, "d3c5": 6.628, "d2c5": 3.686}


class ModelSpec(NamedTuple):
    """One model of the synthetic run: its identity and the noise level (× target max) of its output."""

    role: str
    arch: str | None
    method: str | None
    acceleration: float
    noise: float


FULL_RUN = (
    ModelSpec("zero_filled", None, None, 4.0, 0.15),
    ModelSpec("teacher", "d5c5", None, 4.0, 0.02),
    ModelSpec("sft_teacher", "d5c5", None, 4.0, 0.018),
    ModelSpec("student", "d3c5", None, 4.0, 0.06),
    ModelSpec("std_kd", "d3c5", "at", 4.0, 0.04),
    ModelSpec("sft_kd", "d3c5", "at", 4.0, 0.025),
    ModelSpec("sft_kd_random", "d3c5", "at", 4.0, 0.03),
    ModelSpec("std_kd", "d3c5", "fitnets", 4.0, 0.05),
    ModelSpec("student", "d2c5", None, 4.0, 0.08),
    ModelSpec("std_kd", "d2c5", "at", 4.0, 0.07),
    ModelSpec("sft_kd", "d2c5", "at", 4.0, 0.065),
    ModelSpec("zero_filled", None, None, 5.0, 0.2),
    ModelSpec("teacher", "d5c5", None, 5.0, 0.03),
    ModelSpec("student", "d3c5", None, 5.0, 0.07),
    ModelSpec("std_kd", "d3c5", "at", 5.0, 0.05),
)
SMALL_RUN = (
    ModelSpec("zero_filled", None, None, 4.0, 0.15),
    ModelSpec("teacher", "d5c5", None, 4.0, 0.02),
    ModelSpec("student", "d3c5", None, 4.0, 0.06),
    ModelSpec("std_kd", "d3c5", "at", 4.0, 0.04),
    ModelSpec("sft_kd", "d3c5", "at", 4.0, 0.025),
)
# Metrics files that leave out HFN and VIF, so the report has to compute them from the reconstructions.
WITHOUT_DETAIL_METRICS = ModelSpec("std_kd", "d3c5", "fitnets", 4.0, 0.05)
# A metrics file written in reversed slice order: comparisons must pair slices by identity, not position.
REVERSED_ORDER = ModelSpec("std_kd", "d3c5", "at", 5.0, 0.05)


def synthetic_targets() -> np.ndarray:
    """Eight MR-like 48×48 slices: a Shepp-Logan phantom at varying contrast with a mild smooth texture."""
    phantom = resize(shepp_logan_phantom(), (SIZE, SIZE), anti_aliasing=True)
    ramp = np.linspace(0.0, 1.0, SIZE)
    return np.stack([phantom * (0.8 + 0.05 * i) + 0.05 * np.outer(ramp, ramp[::-1]) for i in range(8)])


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_reconstructions(path: Path, reconstruction: np.ndarray, target: np.ndarray, zero_filled: np.ndarray) -> None:
    """A stage's ``reconstructions_validation.h5`` (docs/run-directory.md) for the synthetic slices."""
    with h5py.File(path, "w") as handle:
        handle["reconstruction"] = reconstruction.astype(np.float32)
        handle["target"] = target.astype(np.float32)
        handle["zero_filled"] = zero_filled.astype(np.float32)
        handle["scale"] = np.ones(len(VOLUMES), np.float32)
        handle["volume"] = np.array(VOLUMES, dtype="S")
        handle["slice_index"] = np.array(SLICE_INDEX)


def write_stage(run_dir: Path, spec: ModelSpec, index: int, target: np.ndarray, zero_filled: np.ndarray) -> dict:
    """Write one model's files; return its results.json record."""
    noise = np.random.default_rng(100 + index).standard_normal(target.shape)
    images = (target + spec.noise * target.max() * noise).astype(np.float32)
    acceleration = f"{spec.acceleration:g}x"
    method = f"/{spec.method}" if spec.method else ""
    record = {
        "name": f"{spec.role}{method}/{spec.arch or 'zf'}@{acceleration}", "role": spec.role, "arch": spec.arch,
        "method": spec.method, "acceleration": spec.acceleration, "split": "validation",
        "parameters": PARAMETERS.get(spec.arch), "compression": None, "stage_dir": None,
        "reconstructions_file": None, "best_epoch": 4, "train_seconds": 1.0,
    }
    if spec.arch is not None:
        record["compression"] = 1 - PARAMETERS[spec.arch] / TEACHER_PARAMETERS
    metrics = slice_metrics(images, target.astype(np.float32))
    record["psnr"] = {"mean": float(metrics["psnr"].mean()), "std": float(metrics["psnr"].std())}
    record["ssim"] = {"mean": float(metrics["ssim"].mean()), "std": float(metrics["ssim"].std())}
    if spec == WITHOUT_DETAIL_METRICS:
        metrics = {name: metrics[name] for name in ("psnr", "ssim", "nmse")}
    order = slice(None, None, -1) if spec == REVERSED_ORDER else slice(None)
    per_slice = {"split": "validation", "volume": list(VOLUMES[order]), "slice_index": list(SLICE_INDEX[order]),
                 **{name: values[order].tolist() for name, values in metrics.items()}}
    if spec.role == "zero_filled":
        record["metrics_file"] = f"zero_filled_{acceleration}_validation.json"
        write_json(run_dir / record["metrics_file"], per_slice)
        return record
    stage = f"stages/{spec.role}{'-' + spec.method if spec.method else ''}-{spec.arch}-{index:012x}"
    record.update(stage_dir=stage, metrics_file=f"{stage}/metrics_validation.json",
                  reconstructions_file=f"{stage}/reconstructions_validation.h5")
    write_json(run_dir / record["metrics_file"], per_slice)
    write_reconstructions(run_dir / record["reconstructions_file"], images, target, zero_filled)
    epochs = np.arange(1, 6)
    write_json(run_dir / stage / "history.json", [
        {"epoch": int(e), "train_loss": 0.1 / e, "val_loss": spec.noise + 0.05 / e, "lr": 1e-3, "seconds": 0.1,
         "terms": {}} for e in epochs
    ])
    return record


def write_run(run_dir: Path, specs: tuple[ModelSpec, ...], benchmark: bool) -> Path:
    target = synthetic_targets()
    zero_filled = target + 0.15 * np.random.default_rng(7).standard_normal(target.shape)
    records = [write_stage(run_dir, spec, index, target, zero_filled) for index, spec in enumerate(specs)]
    write_json(run_dir / "results.json", {"schema": 1, "tool_version": "0.1.0", "split": "validation",
                                          "teacher": "d5c5", "models": records})
    if benchmark:
        write_json(run_dir / "benchmark.json", {
            "provider": "CPUExecutionProvider", "threads": 2, "image_size": [SIZE, SIZE],
            "models": [{"arch": arch, "role": "teacher" if arch == "d5c5" else "student",
                        "parameters": PARAMETERS[arch], "compression": 1 - PARAMETERS[arch] / TEACHER_PARAMETERS,
                        "ort_ms_median": latency, "ort_ms_p90": latency * 1.2, "torch_ms_median": latency * 2,
                        "torch_ms_p90": latency * 2.5, "ort_throughput_b16": 1000 / latency, "psnr": None,
                        "ssim": None} for arch, latency in LATENCY_MS.items()],
        })
    return run_dir


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("full_run"), FULL_RUN, benchmark=True)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("small_run"), SMALL_RUN, benchmark=False)


def column(table, header: str) -> list[str]:
    index = table.headers.index(header)
    return [row[index] for row in table.rows]


def row(table, first_cell: str) -> list[str]:
    return next(r for r in table.rows if r[0] == first_cell)


def stored_metric(run_dir: Path, name: str, metric: str) -> np.ndarray:
    """A model's per-slice values as its metrics file stores them, found through results.json."""
    records = json.loads((run_dir / "results.json").read_text())["models"]
    (path,) = [run_dir / r["metrics_file"] for r in records if r["name"] == name]
    return np.array(json.loads(path.read_text())[metric])


def test_a_directory_without_results_json_is_not_a_run_directory(tmp_path: Path):
    with pytest.raises(InputError, match=r"not a run directory: no results\.json") as error:
        load_run(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_an_unknown_role_is_rejected_naming_the_file_and_key(tmp_path: Path):
    write_json(tmp_path / "results.json", {"schema": 1, "split": "validation", "models": [
        {"name": "x", "role": "ensemble", "acceleration": 4.0}]})
    with pytest.raises(InputError, match=r"results.json \[models\[0\].role\]: unknown role 'ensemble'"):
        load_run(tmp_path)


def test_table1_has_the_papers_rows_and_std_kd_sft_kd_columns_per_acceleration(full_run: Path):
    table = table1(load_run(full_run))
    assert [r[0] for r in table.rows] == ["ZF", "Teacher (d5c5)", "Student (d3c5)", "AT", "FitNets"]
    for acceleration in ("4x", "5x"):
        assert table.headers[table.headers.index(f"{acceleration} Std-KD PSNR/SSIM"):][:4] == [
            f"{acceleration} Std-KD PSNR/SSIM", f"{acceleration} SFT-KD-Recon PSNR/SSIM",
            f"{acceleration} p SFT vs Std", f"{acceleration} p Std-KD vs student"]
    psnr = stored_metric(full_run, "teacher/d5c5@4x", "psnr")
    ssim_values = stored_metric(full_run, "teacher/d5c5@4x", "ssim")
    assert row(table, "Teacher (d5c5)")[1] == (
        f"{psnr.mean():.2f} ± {psnr.std():.2f} / {ssim_values.mean():.4f} ± {ssim_values.std():.4f}")


def test_table1_marks_significant_cells_and_lists_p_values(full_run: Path):
    table = table1(load_run(full_run))
    at = row(table, "AT")
    # SFT-KD (noise 0.025) beats Std-KD (0.04) on all 8 slices: exact two-sided p = 2 / 2^8.
    assert at[2].count("*") == 2
    assert at[3] == "0.008 / 0.008"
    assert at[1].count("†") == 2  # Std-KD beats the student on every slice too
    assert row(table, "Teacher (d5c5)")[2].count("*") == 2


def test_missing_stages_are_shown_as_missing_not_zero(full_run: Path):
    table = table1(load_run(full_run))
    fitnets, at, teacher = row(table, "FitNets"), row(table, "AT"), row(table, "Teacher (d5c5)")
    assert fitnets[2] == fitnets[3] == MISSING  # no FitNets SFT-KD stage
    fivefold = table.headers.index("5x SFT-KD-Recon PSNR/SSIM")
    assert at[fivefold] == teacher[fivefold] == fitnets[fivefold - 1] == MISSING
    assert row(table, "ZF")[2] == row(table, "Student (d3c5)")[2] == MISSING
    assert all(not cell.startswith("0.00 ") for r in table.rows for cell in r)


def test_table1_works_for_one_method_at_one_acceleration(small_run: Path):
    table = table1(load_run(small_run))
    assert len(table.headers) == 5 and [r[0] for r in table.rows] == ["ZF", "Teacher (d5c5)", "Student (d3c5)", "AT"]
    assert table.rows[1][2] == MISSING  # no SFT teacher in this run


def test_table3_computes_hfn_and_vif_from_reconstructions_when_the_metrics_file_lacks_them(full_run: Path):
    table = table3(load_run(full_run))
    (path,) = full_run.glob("stages/std_kd-fitnets-d3c5-*/reconstructions_validation.h5")
    with h5py.File(path) as handle:
        values = hfn(handle["reconstruction"][()].astype(np.float64), handle["target"][()].astype(np.float64))
    assert row(table, "FitNets")[1].startswith(f"{values.mean():.4f} ± {values.std():.4f}† / ")
    assert row(table, "ZF")[1] != MISSING


def test_comparisons_pair_slices_by_identity_not_file_order(full_run: Path):
    run = load_run(full_run)
    student, std_kd = run.find("student", 5.0, arch="d3c5"), run.find("std_kd", 5.0, method="at")
    # The Std-KD file is stored in reversed slice order; paired by (volume, slice), every slice improves.
    assert run.compare(student, std_kd, "psnr").p_value == pytest.approx(2 / 2**8)


def test_authors_ssim_convention_is_computed_from_the_reconstructions(full_run: Path):
    run = load_run(full_run, ssim_convention="authors")
    teacher = run.find("teacher", 4.0)
    images = run.reconstructions(teacher)
    expected = ssim(images.reconstruction, images.target, convention="authors")
    assert run.summary(teacher, "ssim").mean == pytest.approx(expected.mean())
    assert run.summary(teacher, "ssim").mean < load_run(full_run).summary(teacher, "ssim").mean


def test_table5_sets_sft_initialisation_against_random_initialisation(full_run: Path, small_run: Path):
    table = table5(load_run(full_run))
    at_psnr = next(r for r in table.rows if r[:3] == ["4x", "AT", "PSNR"])
    assert at_psnr[6] != MISSING and at_psnr[7].endswith("*") and at_psnr[8] == "0.008"
    fitnets_psnr = next(r for r in table.rows if r[:3] == ["4x", "FitNets", "PSNR"])
    assert fitnets_psnr[6] == fitnets_psnr[7] == fitnets_psnr[8] == MISSING
    assert [r[2] for r in table.rows[:5]] == ["HFN", "NMSE", "PSNR", "SSIM", "VIF"]
    assert any("random_init" in note for note in table5(load_run(small_run)).notes)


def test_table8_lists_sizes_compression_and_latency_per_student(full_run: Path, small_run: Path):
    table = table8(load_run(full_run))
    fourfold = [r for r in table.rows if r[0] == "4x"]
    assert [r[1:3] for r in fourfold] == [["Teacher (d5c5)", MISSING], ["Student (d3c5)", "AT"],
                                           ["Student (d3c5)", "FitNets"], ["Student (d2c5)", "AT"],
                                           ["Student (d2c5)", "FitNets"]]
    assert {r[3] for r in fourfold} == {"fp32"}  # a benchmark.json without precisions holds fp32 timings
    assert fourfold[1][4:7] == ["49285", "65.2%", "6.628"]
    assert fourfold[3][4:7] == ["3045", "97.9%", "3.686"]
    assert fourfold[0][6] == "17.415"
    assert fourfold[4][9] == fourfold[4][11] == MISSING  # no d2c5 FitNets stages
    assert column(table8(load_run(small_run)), "Latency (ms)") == [MISSING, MISSING]


def test_headline_gives_the_teacher_minus_student_psnr_gap(full_run: Path):
    run = load_run(full_run)
    table = TABLE_BUILDERS["headline"](run)
    teacher = stored_metric(full_run, "teacher/d5c5@4x", "psnr").mean()
    student = run.summary(run.find("student", 4.0, arch="d3c5"), "psnr").mean
    first = table.rows[0]
    assert first[:3] == ["4x", "d3c5", "AT"]
    assert first[4] == f"{teacher - student:+.2f}"
    assert float(first[4]) > float(first[5]) > float(first[6])  # KD narrows the gap, SFT-KD narrows it more


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_table_renders_in_every_format(full_run: Path, fmt: str):
    run = load_run(full_run)
    for name, build in TABLE_BUILDERS.items():
        table = build(run)
        text = render(table, fmt)
        if fmt == "csv":
            assert list(csv.reader(io.StringIO(text))) == [table.headers, *table.rows], name
        elif fmt == "github":
            assert text.startswith(f"### {table.title}") and "|" in text, name
        else:
            assert "\\begin{tabular}" in text and "\\caption{" in text, name


def test_an_unknown_format_is_an_input_error(full_run: Path):
    with pytest.raises(InputError, match="unknown table format 'html'"):
        build_report(full_run, fmt="html", figures=False)


def test_report_writes_every_table_and_a_non_empty_png_per_figure(full_run: Path, tmp_path: Path):
    report = build_report(full_run, fmt="latex", out_dir=tmp_path)
    names = sorted(path.name for path in report.files)
    assert names == sorted([f"{name}.tex" for name in TABLE_BUILDERS] + [
        "fig3_qualitative.png", "psnr_vs_latency.png", "fig4b_loss_curves.png", "fig4a_box_plots.png"])
    for path in report.files:
        content = path.read_bytes()
        assert len(content) > 1000 if path.suffix == ".png" else content.decode() == report.tables[path.stem]
        if path.suffix == ".png":
            assert content.startswith(b"\x89PNG")
    # The synthetic run has no trained stages, so only the attention-residue figure (it needs the models) is skipped.
    assert [note.split(":")[0] for note in report.notes] == ["fig6_attention_residue"] and report.seconds > 0
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_report_defaults_to_the_run_report_folder_and_notes_skipped_figures(small_run: Path):
    report = build_report(small_run, fmt="csv")
    assert {path.parent for path in report.files} == {small_run / "report"}
    assert report.notes[0] == ("psnr_vs_latency: no benchmark.json: PSNR-vs-latency figure skipped "
                               "(run `compress benchmark`)")
    assert [note.split(":")[0] for note in report.notes[1:]] == ["fig6_attention_residue"]
    assert (small_run / "report" / "table1.csv").read_text() == report.tables["table1"]


def test_pareto_front_keeps_only_points_nothing_faster_beats():
    points = [TradeOffPoint("teacher", "teacher", 17.0, 40.0), TradeOffPoint("student", "student", 6.0, 39.5),
              TradeOffPoint("kd", "std_kd", 6.0, 39.8), TradeOffPoint("tiny", "student", 3.0, 38.0),
              TradeOffPoint("slow and worse", "student", 9.0, 39.0)]
    assert [p.label for p in pareto_front(points)] == ["tiny", "kd", "teacher"]
