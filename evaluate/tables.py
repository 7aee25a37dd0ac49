"""The paper's tables, rebuilt from a run directory: Table 1 (PSNR/SSIM; Table 9 for a super-resolution run),
Tables 2/4 (feature-domain SFT against SFT-KD-Recon), Table 3 (HFN/VIF), Table 5 (SFT student initialisation against
random), Table 8 (student sizes, latency), the warm-started SFT teacher's convergence (Fig. 7's numbers), the
headline student–teacher PSNR gap and the run summary; :data:`TABLE_BUILDERS` names them all. Cells, notes and
rendering: :mod:`compressor.evaluate.table_text`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from compressor.evaluate.metrics import METRICS
from compressor.evaluate.run_data import CONVERGENCE_TOLERANCE, ModelRecord, RunData, convergence
from compressor.evaluate.table_text import (
    ABLATION_METRICS,
    MISSING,
    SIGNIFICANT,
    SIGNIFICANT_VS_STUDENT,
    Table,
    acceleration_text,
    cell,
    common_notes,
    method_label,
    p_cell,
    pair_label,
    significance_note,
    zero_filled_label,
)
from compressor.rundir import ROLE_LABELS


def _metric_pair_table(run: RunData, metrics: Sequence[str], title: str) -> Table:
    """Rows ZF, teacher, student, one per KD method; per acceleration Std-KD and SFT-KD-Recon plus p-values."""
    pair = pair_label(metrics)
    student_arch = run.primary_student
    headers = ["Model"]
    for acceleration in run.accelerations():
        label = acceleration_text(acceleration)
        headers += [f"{label} Std-KD {pair}", f"{label} SFT-KD-Recon {pair}",
                    f"{label} p SFT vs Std", f"{label} p Std-KD vs student"]
    rows = [
        [zero_filled_label(run)], [f"Teacher ({run.teacher_arch or MISSING})"],
        [f"Student ({student_arch or MISSING})"],
        *[[method_label(method)] for method in run.methods()],
    ]
    for acceleration in run.accelerations():
        teacher = run.find("teacher", acceleration)
        sft_teacher = run.find("sft_teacher", acceleration)
        student = run.find("student", acceleration, arch=student_arch)
        rows[0] += [cell(run, run.find("zero_filled", acceleration), metrics), MISSING, MISSING, MISSING]
        rows[1] += [cell(run, teacher, metrics),
                    cell(run, sft_teacher, metrics, marker=SIGNIFICANT, against=teacher),
                    p_cell(run, teacher, sft_teacher, metrics), MISSING]
        rows[2] += [cell(run, student, metrics), MISSING, MISSING, MISSING]
        for row, method in zip(rows[3:], run.methods()):
            std_kd = run.find("std_kd", acceleration, method=method, arch=student_arch)
            sft_kd = run.find("sft_kd", acceleration, method=method, arch=student_arch)
            row += [cell(run, std_kd, metrics, marker=SIGNIFICANT_VS_STUDENT, against=student),
                    cell(run, sft_kd, metrics, marker=SIGNIFICANT, against=std_kd),
                    p_cell(run, std_kd, sft_kd, metrics), p_cell(run, student, std_kd, metrics)]
    notes = [
        *common_notes(run),
        f"Student {student_arch or MISSING}; the Teacher row's SFT-KD-Recon column is the student-friendly teacher.",
        significance_note("SFT-KD-Recon differs from Std-KD (SFT teacher from teacher)"),
        f"{SIGNIFICANT_VS_STUDENT}: Std-KD differs from the student trained without KD, same test.",
    ]
    return Table(title=title, headers=headers, rows=rows, notes=notes)


def table1(run: RunData) -> Table:
    """Table 1: PSNR/SSIM (mean ± std) of ZF, teacher, student and each KD method, Std-KD against SFT-KD-Recon.

    For a super-resolution run this is Table 9, and the ZF row is the interpolated input.
    """
    if run.task == "sr":
        title = "Table 9: super-resolution PSNR (dB) / SSIM, Std-KD against SFT-KD-Recon"
    else:
        title = "Table 1: PSNR (dB) / SSIM, Std-KD against SFT-KD-Recon"
    return _metric_pair_table(run, ("psnr", "ssim"), title)


SETUP_NAMES = {"feature": "Feature SFT", "image": "SFT-KD-Recon"}
SETUP_METRICS = (("psnr", "ssim"), ("hfn", "vif"))
SETUP_REFERENCES = {"sft_teacher": "teacher", "sft_kd": "std_kd"}  # what each row's p-value is against
FEATURE_SFT_HINT = ("This run has no feature-domain SFT setup: run `compress` with --feature-sft to train it "
                    "(rcnn25 teacher, rcnn15 student).")


def _setup_record(run: RunData, role: str, acceleration: float, method: str | None) -> ModelRecord | None:
    """The model of one Table 2 row in one setup: KD rows for ``method`` and the setup's first student."""
    if role in ("teacher", "sft_teacher"):
        return run.find(role, acceleration)
    if role == "student":
        return run.find(role, acceleration, arch=run.primary_student)
    return run.find(role, acceleration, method=method, arch=run.primary_student)


class SetupCells(NamedTuple):
    """One setup's part of a Table 2 row: architecture, PSNR/SSIM and HFN/VIF ``cells``; ``p_values`` of the row's
    model against its reference (``—`` for rows without one)."""

    cells: list[str]
    p_values: str


def _setup_cells(run: RunData | None, role: str, acceleration: float, method: str | None) -> SetupCells:
    """One setup's cells of a Table 2 row (all ``—`` when the run lacks the setup)."""
    if run is None:
        return SetupCells([MISSING] * (1 + len(SETUP_METRICS)), MISSING)
    record = _setup_record(run, role, acceleration, method)
    reference_role = SETUP_REFERENCES.get(role)
    reference = _setup_record(run, reference_role, acceleration, method) if reference_role else None
    cells = [MISSING if record is None else record.arch or MISSING]
    cells += [cell(run, record, metrics, marker=SIGNIFICANT, against=reference) for metrics in SETUP_METRICS]
    all_metrics = [metric for metrics in SETUP_METRICS for metric in metrics]
    return SetupCells(cells, p_cell(run, reference, record, all_metrics) if reference_role else MISSING)


def table2(run: RunData) -> Table:
    """Tables 2 and 4: the feature-domain SFT setup (residual CNNs) against SFT-KD-Recon (image-domain DC-CNNs).

    Per acceleration, rows Teacher, SF Teacher, Student, then KD (Std-KD) and SFT-KD for each KD method both setups
    have (every method of either when they share none); per setup the architecture, PSNR/SSIM and HFN/VIF
    (mean ± std), and p-values of SFT-KD against KD (SF Teacher against Teacher) within the setup.
    """
    setups = {setup: run.for_setup(setup) for setup in ("feature", "image")}
    method_lists = [setup_run.methods() for setup_run in setups.values() if setup_run is not None]
    shared = [method for method in run.methods() if all(method in methods for methods in method_lists)]
    methods = shared or list(dict.fromkeys(method for methods in method_lists for method in methods))
    accelerations = sorted({a for setup_run in setups.values() if setup_run for a in setup_run.accelerations()})
    headers = ["Acceleration", "Method", "Model"]
    for setup in setups:
        headers += [f"{SETUP_NAMES[setup]} arch",
                    *(f"{SETUP_NAMES[setup]} {pair_label(metrics)}" for metrics in SETUP_METRICS)]
    all_metrics = tuple(metric for metrics in SETUP_METRICS for metric in metrics)
    headers += [f"{SETUP_NAMES[setup]} p {pair_label(all_metrics)}" for setup in setups]
    row_specs = [("Teacher", "teacher", None), ("SF Teacher", "sft_teacher", None), ("Student", "student", None)]
    for method in methods:
        row_specs += [("KD", "std_kd", method), ("SFT-KD", "sft_kd", method)]
    rows = []
    for acceleration in accelerations:
        for label, role, method in row_specs:
            row = [acceleration_text(acceleration), method_label(method) if method else MISSING, label]
            p_values = []
            for setup_run in setups.values():
                setup_cells = _setup_cells(setup_run, role, acceleration, method)
                row += setup_cells.cells
                p_values.append(setup_cells.p_values)
            rows.append(row + p_values)
    feature, image = setups["feature"], setups["image"]
    notes = [
        *common_notes(run),
        f"{SETUP_NAMES['feature']}: SFT in the feature domain (the paper's SFT column), residual CNNs "
        f"(teacher {feature.teacher_arch if feature else 'rcnn25'}, student "
        f"{feature.primary_student if feature else 'rcnn15'}; rcnnL = L convolutions) without intermediate "
        "data-fidelity layers or image outputs, every loss MSE in place of CE/KL.",
        f"{SETUP_NAMES['image']}: DC-CNNs trained in the image domain with a DF layer after each block (teacher "
        f"{image.teacher_arch if image else MISSING}, student {image.primary_student if image else MISSING}), "
        "L1 losses as in Table 1 (the paper's Table 2 header says 'image domain with MSE loss', but its numbers "
        "are Table 1's).",
        significance_note("SFT-KD differs from KD (SF Teacher from Teacher) within the setup") + " The p columns "
        "give those p-values per metric.",
    ]
    if feature is None:
        notes.append(FEATURE_SFT_HINT)
    return Table(title="Tables 2 and 4: SFT in the feature domain against SFT-KD-Recon in the image domain",
                 headers=headers, rows=rows, notes=notes)


def table3(run: RunData) -> Table:
    """Table 3: HFN/VIF (mean ± std) for the rows of Table 1 (HFN lower is better, VIF higher is better)."""
    return _metric_pair_table(
        run, ("hfn", "vif"), "Table 3: HFN (lower is better) / VIF (higher is better), Std-KD against SFT-KD-Recon"
    )


def table5(run: RunData) -> Table:
    """Table 5: SFT-KD-Recon with the SFT student initialisation against random initialisation, per metric."""
    student_arch = run.primary_student
    headers = ["Acceleration", "Method", "Metric", "Teacher", "Student", "Std-KD", "SFT-KD-Recon (random)",
               "SFT-KD-Recon", "p SFT-KD-Recon vs random"]
    rows = []
    for acceleration in run.accelerations():
        teacher = run.find("teacher", acceleration)
        student = run.find("student", acceleration, arch=student_arch)
        for method in run.methods():
            std_kd = run.find("std_kd", acceleration, method=method, arch=student_arch)
            random_init = run.find("sft_kd_random", acceleration, method=method, arch=student_arch)
            sft_kd = run.find("sft_kd", acceleration, method=method, arch=student_arch)
            for metric in ABLATION_METRICS:
                rows.append([
                    acceleration_text(acceleration), method_label(method), METRICS.get(metric).label,
                    cell(run, teacher, (metric,)), cell(run, student, (metric,)), cell(run, std_kd, (metric,)),
                    cell(run, random_init, (metric,)),
                    cell(run, sft_kd, (metric,), marker=SIGNIFICANT, against=random_init),
                    p_cell(run, random_init, sft_kd, (metric,)),
                ])
    notes = [*common_notes(run), f"Student {student_arch or MISSING}.",
             significance_note("the SFT-initialised student differs from the randomly initialised one")]
    if not any(record.role == "sft_kd_random" for record in run.records):
        notes.append("This run has no SFT-KD-Recon (random) stages: run `compress` with the random-initialisation "
                     "ablation (kd.random_init = true).")
    return Table(title="Table 5: SFT-KD-Recon with SFT student initialisation against random initialisation",
                 headers=headers, rows=rows, notes=notes)


def _size_columns(run: RunData, record: ModelRecord | None, arch: str | None, precision: str = "fp32") -> list[str]:
    """Parameters, compression and the fp32 latency of an architecture (shared by its models, whatever their
    weights); a precision row's latency is each model's own file's, in its cell (:func:`_delta_cell`)."""
    parameters = MISSING if record is None or record.parameters is None else str(record.parameters)
    compression = MISSING if record is None or record.compression is None else f"{100 * record.compression:.1f}%"
    latency = run.benchmark.latency_ms(arch) if run.benchmark is not None and precision == "fp32" else None
    return [parameters, compression, MISSING if latency is None else f"{latency:.3f}"]


def _precisions(run: RunData) -> tuple[str, ...]:
    """The precisions of the run's ``benchmark.json`` (fp32 first); fp32 alone without one."""
    return run.benchmark.precisions() if run.benchmark is not None else ("fp32",)


def _delta_cell(run: RunData, record: ModelRecord | None, precision: str) -> str:
    """A precision file's PSNR/SSIM change against the fp32 export and that same file's latency
    (``Δ -0.031 dB / -0.0004, 4.210 ms``), from ``benchmark.json``; ``MISSING`` where not benchmarked or not
    known."""
    entry = run.benchmark.timing(record.name, precision) if run.benchmark is not None and record is not None else None
    if entry is None or entry.delta_psnr is None:
        return MISSING
    ssim = MISSING if entry.delta_ssim is None else f"{entry.delta_ssim:+.4f}"
    latency = "" if entry.ort_ms_median is None else f", {entry.ort_ms_median:.3f} ms"
    return f"Δ {entry.delta_psnr:+.3f} dB / {ssim}{latency}"


def table8(run: RunData) -> Table:
    """Table 8: per student size, parameters, compression, latency and PSNR/SSIM, HFN/VIF without KD, with Std-KD
    and with SFT-KD-Recon (means)."""
    quality, detail = ("psnr", "ssim"), ("hfn", "vif")
    headers = ["Acceleration", "Model", "Method", "Precision", "Parameters", "Compression", "Latency (ms)",
               "Original PSNR/SSIM", "Original HFN/VIF", "Std-KD PSNR/SSIM", "Std-KD HFN/VIF",
               "SFT-KD-Recon PSNR/SSIM", "SFT-KD-Recon HFN/VIF"]
    rows = []
    for acceleration in run.accelerations():
        label = acceleration_text(acceleration)
        teacher = run.find("teacher", acceleration)
        for precision in _precisions(run):
            fp32 = precision == "fp32"
            rows.append([label, f"Teacher ({run.teacher_arch or MISSING})", MISSING, precision,
                         *_size_columns(run, teacher, run.teacher_arch, precision),
                         cell(run, teacher, quality, with_std=False) if fp32 else _delta_cell(run, teacher, precision),
                         cell(run, teacher, detail, with_std=False) if fp32 else MISSING,
                         MISSING, MISSING, MISSING, MISSING])
        for arch in run.student_archs():
            student = run.find("student", acceleration, arch=arch)
            sized = student or next((r for r in run.records if r.arch == arch and r.parameters is not None), None)
            for method in run.methods() or [None]:
                std_kd = run.find("std_kd", acceleration, method=method, arch=arch) if method else None
                sft_kd = run.find("sft_kd", acceleration, method=method, arch=arch) if method else None
                for precision in _precisions(run):
                    cells = ([cell(run, student, quality, with_std=False),
                              cell(run, student, detail, with_std=False),
                              cell(run, std_kd, quality, with_std=False), cell(run, std_kd, detail, with_std=False),
                              cell(run, sft_kd, quality, with_std=False, marker=SIGNIFICANT, against=std_kd),
                              cell(run, sft_kd, detail, with_std=False, marker=SIGNIFICANT, against=std_kd)]
                             if precision == "fp32" else
                             [_delta_cell(run, student, precision), MISSING, _delta_cell(run, std_kd, precision),
                              MISSING, _delta_cell(run, sft_kd, precision), MISSING])
                    rows.append([label, f"Student ({arch})", method_label(method) if method else MISSING, precision,
                                 *_size_columns(run, sized, arch, precision), *cells])
    notes = [*common_notes(run), "Compression = 1 - parameters / teacher parameters.",
             significance_note("SFT-KD-Recon differs from Std-KD")]
    if run.benchmark is None:
        notes.append("Latency: no benchmark.json in the run directory (run `compress benchmark`).")
    else:
        threads = MISSING if run.benchmark.threads is None else run.benchmark.threads
        notes.append(f"Latency: median ms per slice, ONNX Runtime {run.benchmark.provider}, {threads} threads.")
        if len(run.benchmark.precisions()) > 1:
            notes.append("Rows of a precision other than fp32 give, in the PSNR/SSIM columns, each model's own "
                         "file: its change against the fp32 export (ΔPSNR dB / ΔSSIM, measured by `compress export "
                         "--precision` on the run's whole validation split) and its latency (ms), timed in the same "
                         "loop as the fp32 graph; the Latency column holds the fp32 latency only, which every model "
                         "of an architecture shares.")
    return Table(title="Table 8: student sizes (original, Std-KD and SFT-KD-Recon students)",
                 headers=headers, rows=rows, notes=notes)


WARM_START_HINT = ("This run has no warm-started SFT teacher: run `compress --init-teacher PATH` (teacher weights "
                   "pre-trained on another dataset) to fine-tune the teacher and SFT teacher from them; the SFT "
                   "teacher is then also trained from scratch as the reference (Fig. 7).")


class WarmStartCurve(NamedTuple):
    """One validation curve of Fig. 7: its legend ``label`` and the stage's record."""

    label: str
    record: ModelRecord


def sft_teacher_curves(run: RunData, acceleration: float) -> list[WarmStartCurve]:
    """The SFT teachers Fig. 7 compares at one acceleration, those the run has: warm-started, then from scratch."""
    candidates = [WarmStartCurve("SFT teacher, warm-started", run.find_warm_started("sft_teacher", acceleration)),
                  WarmStartCurve("SFT teacher, from scratch", run.find("sft_teacher_scratch", acceleration))]
    return [curve for curve in candidates if curve.record is not None]


def warm_start(run: RunData) -> Table:
    """Fig. 7's numbers: per acceleration, the warm-started SFT teacher against the one trained from scratch.

    Columns: initialisation (weights file or ``random``), epochs run, best validation L1 and its epoch, epochs to
    converge (first epoch within :data:`~compressor.evaluate.run_data.CONVERGENCE_TOLERANCE` of the curve's
    minimum), wall seconds to that epoch and in all, PSNR/SSIM. A run without a warm start gets no rows and a note
    on how to get one.
    """
    headers = ["Acceleration", "Curve", "Initialisation", "Epochs", "Best val L1", "Best epoch",
               "Epochs to converge", "Seconds to converge", "Total seconds", "PSNR/SSIM"]
    if not run.has_warm_start():
        return Table(title="Fig. 7: warm-started against from-scratch SFT teacher", headers=headers, rows=[],
                     notes=[WARM_START_HINT])
    rows = []
    for acceleration in run.accelerations():
        for curve in sft_teacher_curves(run, acceleration):
            history = run.history(curve.record)
            settled = convergence(history) if history else None
            if settled is None:
                timing = [MISSING] * 6
            else:
                timing = [str(settled.epochs), f"{settled.best_val_loss:.5g}", str(settled.best_epoch),
                          str(settled.epoch), f"{settled.seconds:.1f}", f"{settled.total_seconds:.1f}"]
            rows.append([acceleration_text(acceleration), curve.label, curve.record.init_teacher or "random",
                         *timing, cell(run, curve.record, ("psnr", "ssim"))])
    notes = [
        *common_notes(run),
        f"Epochs to converge: the first epoch whose validation L1 is at most (1 + {CONVERGENCE_TOLERANCE:g}) × "
        "that curve's minimum; seconds: the epochs' wall seconds from history.json, summed up to that epoch "
        "(total: all epochs).",
        "Initialisation: the weights file the stage was warm-started from (compress --init-teacher), or random.",
    ]
    return Table(title="Fig. 7: warm-started against from-scratch SFT teacher", headers=headers, rows=rows,
                 notes=notes)


def _gap_text(teacher_psnr: float | None, run: RunData, record: ModelRecord | None) -> str:
    summary = run.summary(record, "psnr")
    if teacher_psnr is None or summary is None:
        return MISSING
    return f"{teacher_psnr - summary.mean:+.2f}"


def headline(run: RunData) -> Table:
    """The paper's headline: teacher PSNR minus student PSNR without KD, with Std-KD and with SFT-KD-Recon."""
    headers = ["Acceleration", "Student", "Method", "Teacher PSNR", "Gap without KD (dB)",
               "Gap with Std-KD (dB)", "Gap with SFT-KD-Recon (dB)"]
    rows = []
    for acceleration in run.accelerations():
        teacher_summary = run.summary(run.find("teacher", acceleration), "psnr")
        teacher_psnr = None if teacher_summary is None else teacher_summary.mean
        for arch in run.student_archs():
            student = run.find("student", acceleration, arch=arch)
            for method in run.methods() or [None]:
                std_kd = run.find("std_kd", acceleration, method=method, arch=arch) if method else None
                sft_kd = run.find("sft_kd", acceleration, method=method, arch=arch) if method else None
                rows.append([
                    acceleration_text(acceleration), arch, method_label(method) if method else MISSING,
                    MISSING if teacher_psnr is None else f"{teacher_psnr:.2f}",
                    _gap_text(teacher_psnr, run, student), _gap_text(teacher_psnr, run, std_kd),
                    _gap_text(teacher_psnr, run, sft_kd),
                ])
    notes = [f"Gap = teacher PSNR - student PSNR (mean over {run.split} slices); smaller is better.",
             f"{MISSING}: not in this run."]
    return Table(title="Headline: student–teacher PSNR gap", headers=headers, rows=rows, notes=notes)


SUMMARY_ORDER = ("zero_filled", "teacher", "sft_teacher", "sft_teacher_scratch", "student", "std_kd", "sft_kd",
                 "sft_kd_random")  # the run summary's row order


def run_summary(run: RunData) -> Table:
    """Every model of the run's image setup, one row each: role, architecture, parameters, compression, PSNR and
    SSIM (the feature-domain SFT models are in :func:`table2`).

    The compact table ``compress`` prints at the end (the paper's Table 1 rows for this run, with sizes).
    """
    headers = ["Acceleration", "Model", "Arch", "Parameters", "Compression", "PSNR (dB)", "SSIM"]
    order = list(SUMMARY_ORDER)
    rows = []
    for acceleration in run.accelerations():
        records = sorted((r for r in run.records if r.acceleration == acceleration),
                         key=lambda r: (order.index(r.role), r.arch or "", r.method or ""))
        for record in records:
            role = zero_filled_label(run) if record.role == "zero_filled" else ROLE_LABELS[record.role]
            label = role + (f" {method_label(record.method)}" if record.method else "")
            compression = MISSING if record.compression is None else f"{record.compression:.1%}"
            parameters = MISSING if not record.arch or record.parameters is None else f"{record.parameters:,}"
            rows.append([acceleration_text(acceleration), label, record.arch or MISSING, parameters, compression,
                         cell(run, record, ["psnr"]), cell(run, record, ["ssim"])])
    return Table(title="Run summary: every model", headers=headers, rows=rows, notes=common_notes(run))


TABLE_BUILDERS: dict[str, Callable[[RunData], Table]] = {
    "summary": run_summary,
    "table1": table1,
    "table2": table2,
    "table3": table3,
    "table5": table5,
    "table8": table8,
    "warm_start": warm_start,
    "headline": headline,
}
