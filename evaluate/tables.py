"""The paper's tables, rebuilt from a run directory: Table 1 (PSNR/SSIM), Table 3 (HFN/VIF), Table 5 (SFT student
initialisation against random), Table 8 (student sizes, latency) and the headline student–teacher PSNR gap.

Every cell is text: ``mean ± std`` (Table 8 and the headline: means), ``—`` for a model the run does not have or
a cell that does not apply (never 0). Significance is the paired Wilcoxon signed-rank test on per-slice values at
α = 0.05; p-values have their own columns so the CSV keeps them, and significant cells carry a marker.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from typing import NamedTuple

from tabulate import tabulate

from compressor.errors import InputError
from evaluate.metrics import METRICS
from evaluate.rundir import ModelRecord, RunData
from evaluate.stats import ALPHA, Comparison

MISSING = "—"
SIGNIFICANT = "*"  # SFT-KD-Recon vs Std-KD (or SFT teacher vs teacher, SFT init vs random init)
SIGNIFICANT_VS_STUDENT = "†"  # Std-KD vs the student trained without KD
FORMATS = {"github": "md", "latex": "tex", "csv": "csv"}
METHOD_LABELS = {"at": "AT", "fitnets": "FitNets", "sp": "SP", "fsp": "FSP", "cc": "CC"}
ABLATION_METRICS = ("hfn", "nmse", "psnr", "ssim", "vif")


class Table(NamedTuple):
    """A rendered-agnostic table: ``headers`` and ``rows`` of text cells, with a title and notes."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str]


def _acceleration_label(acceleration: float) -> str:
    return f"{acceleration:g}x"


def method_label(method: str) -> str:
    """How the paper writes a KD method's name (``at`` → ``AT``); unknown names are shown as given."""
    return METHOD_LABELS.get(method, method)


def _p_text(comparison: Comparison | None) -> str:
    if comparison is None:
        return MISSING
    return f"{comparison.p_value:.3f}" if comparison.p_value >= 1e-3 else f"{comparison.p_value:.1e}"


def _metric_text(
    run: RunData, record: ModelRecord | None, metric: str, with_std: bool, marker: str, against: ModelRecord | None
) -> str:
    """``mean ± std`` of one metric, followed by ``marker`` when ``record`` differs significantly from ``against``."""
    summary = run.summary(record, metric)
    if summary is None:
        return MISSING
    number_format = METRICS.get(metric).number_format
    text = format(summary.mean, number_format)
    if with_std:
        text += f" ± {format(summary.std, number_format)}"
    comparison = run.compare(against, record, metric) if against is not None else None
    return text + (marker if comparison is not None and comparison.significant else "")


def _cell(
    run: RunData,
    record: ModelRecord | None,
    metrics: Sequence[str],
    with_std: bool = True,
    marker: str = "",
    against: ModelRecord | None = None,
) -> str:
    """``metric1/metric2`` for one model, ``—`` when the model is missing."""
    if record is None:
        return MISSING
    return " / ".join(_metric_text(run, record, metric, with_std, marker, against) for metric in metrics)


def _p_cell(run: RunData, first: ModelRecord | None, second: ModelRecord | None, metrics: Sequence[str]) -> str:
    """p-values of ``second`` against ``first`` for each metric, ``—`` when either is missing."""
    if first is None or second is None:
        return MISSING
    return " / ".join(_p_text(run.compare(first, second, metric)) for metric in metrics)


def _common_notes(run: RunData) -> list[str]:
    convention = (
        "standard 2-D SSIM (7×7 window)" if run.ssim_convention == "standard"
        else "SSIM in the authors' per-column convention (comparable with the paper's numbers)"
    )
    return [
        f"Split: {run.split}; teacher {run.teacher_arch or MISSING}; {convention}; data range = target slice max.",
        f"{MISSING}: not in this run (or not applicable).",
    ]


def _significance_note(what: str) -> str:
    return f"{SIGNIFICANT}: {what}, Wilcoxon signed-rank on per-slice values, p < {ALPHA}."


def _metric_pair_table(run: RunData, metrics: Sequence[str], title: str) -> Table:
    """Rows ZF, teacher, student, one per KD method; per acceleration Std-KD and SFT-KD-Recon plus p-values."""
    pair = "/".join(METRICS.get(metric).label for metric in metrics)
    student_arch = run.primary_student
    headers = ["Model"]
    for acceleration in run.accelerations():
        label = _acceleration_label(acceleration)
        headers += [f"{label} Std-KD {pair}", f"{label} SFT-KD-Recon {pair}",
                    f"{label} p SFT vs Std", f"{label} p Std-KD vs student"]
    rows = [
        ["ZF"], [f"Teacher ({run.teacher_arch or MISSING})"], [f"Student ({student_arch or MISSING})"],
        *[[method_label(method)] for method in run.methods()],
    ]
    for acceleration in run.accelerations():
        teacher = run.find("teacher", acceleration)
        sft_teacher = run.find("sft_teacher", acceleration)
        student = run.find("student", acceleration, arch=student_arch)
        rows[0] += [_cell(run, run.find("zero_filled", acceleration), metrics), MISSING, MISSING, MISSING]
        rows[1] += [_cell(run, teacher, metrics),
                    _cell(run, sft_teacher, metrics, marker=SIGNIFICANT, against=teacher),
                    _p_cell(run, teacher, sft_teacher, metrics), MISSING]
        rows[2] += [_cell(run, student, metrics), MISSING, MISSING, MISSING]
        for row, method in zip(rows[3:], run.methods()):
            std_kd = run.find("std_kd", acceleration, method=method, arch=student_arch)
            sft_kd = run.find("sft_kd", acceleration, method=method, arch=student_arch)
            row += [_cell(run, std_kd, metrics, marker=SIGNIFICANT_VS_STUDENT, against=student),
                    _cell(run, sft_kd, metrics, marker=SIGNIFICANT, against=std_kd),
                    _p_cell(run, std_kd, sft_kd, metrics), _p_cell(run, student, std_kd, metrics)]
    notes = [
        *_common_notes(run),
        f"Student {student_arch or MISSING}; the Teacher row's SFT-KD-Recon column is the student-friendly teacher.",
        _significance_note("SFT-KD-Recon differs from Std-KD (SFT teacher from teacher)"),
        f"{SIGNIFICANT_VS_STUDENT}: Std-KD differs from the student trained without KD, same test.",
    ]
    return Table(title=title, headers=headers, rows=rows, notes=notes)


def table1(run: RunData) -> Table:
    """Table 1: PSNR/SSIM (mean ± std) of ZF, teacher, student and each KD method, Std-KD against SFT-KD-Recon."""
    return _metric_pair_table(run, ("psnr", "ssim"), "Table 1: PSNR (dB) / SSIM, Std-KD against SFT-KD-Recon")


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
                    _acceleration_label(acceleration), method_label(method), METRICS.get(metric).label,
                    _cell(run, teacher, (metric,)), _cell(run, student, (metric,)), _cell(run, std_kd, (metric,)),
                    _cell(run, random_init, (metric,)),
                    _cell(run, sft_kd, (metric,), marker=SIGNIFICANT, against=random_init),
                    _p_cell(run, random_init, sft_kd, (metric,)),
                ])
    notes = [*_common_notes(run), f"Student {student_arch or MISSING}.",
             _significance_note("the SFT-initialised student differs from the randomly initialised one")]
    if not any(record.role == "sft_kd_random" for record in run.records):
        notes.append("This run has no SFT-KD-Recon (random) stages: run `compress` with the random-initialisation "
                     "ablation (kd.random_init = true).")
    return Table(title="Table 5: SFT-KD-Recon with SFT student initialisation against random initialisation",
                 headers=headers, rows=rows, notes=notes)


def _size_columns(run: RunData, record: ModelRecord | None, arch: str | None) -> list[str]:
    """Parameters, compression and latency of an architecture."""
    parameters = MISSING if record is None or record.parameters is None else str(record.parameters)
    compression = MISSING if record is None or record.compression is None else f"{100 * record.compression:.1f}%"
    latency = run.benchmark.latency_ms(arch) if run.benchmark is not None else None
    return [parameters, compression, MISSING if latency is None else f"{latency:.3f}"]


def table8(run: RunData) -> Table:
    """Table 8: per student size, parameters, compression, latency and PSNR/SSIM, HFN/VIF without KD, with Std-KD
    and with SFT-KD-Recon (means)."""
    quality, detail = ("psnr", "ssim"), ("hfn", "vif")
    headers = ["Acceleration", "Model", "Method", "Parameters", "Compression", "Latency (ms)",
               "Original PSNR/SSIM", "Original HFN/VIF", "Std-KD PSNR/SSIM", "Std-KD HFN/VIF",
               "SFT-KD-Recon PSNR/SSIM", "SFT-KD-Recon HFN/VIF"]
    rows = []
    for acceleration in run.accelerations():
        label = _acceleration_label(acceleration)
        teacher = run.find("teacher", acceleration)
        rows.append([label, f"Teacher ({run.teacher_arch or MISSING})", MISSING,
                     *_size_columns(run, teacher, run.teacher_arch),
                     _cell(run, teacher, quality, with_std=False), _cell(run, teacher, detail, with_std=False),
                     MISSING, MISSING, MISSING, MISSING])
        for arch in run.student_archs():
            student = run.find("student", acceleration, arch=arch)
            sized = student or next((r for r in run.records if r.arch == arch and r.parameters is not None), None)
            for method in run.methods() or [None]:
                std_kd = run.find("std_kd", acceleration, method=method, arch=arch) if method else None
                sft_kd = run.find("sft_kd", acceleration, method=method, arch=arch) if method else None
                rows.append([
                    label, f"Student ({arch})", method_label(method) if method else MISSING,
                    *_size_columns(run, sized, arch),
                    _cell(run, student, quality, with_std=False), _cell(run, student, detail, with_std=False),
                    _cell(run, std_kd, quality, with_std=False), _cell(run, std_kd, detail, with_std=False),
                    _cell(run, sft_kd, quality, with_std=False, marker=SIGNIFICANT, against=std_kd),
                    _cell(run, sft_kd, detail, with_std=False, marker=SIGNIFICANT, against=std_kd),
                ])
    notes = [*_common_notes(run), "Compression = 1 - parameters / teacher parameters.",
             _significance_note("SFT-KD-Recon differs from Std-KD")]
    if run.benchmark is None:
        notes.append("Latency: no benchmark.json in the run directory (run `compress benchmark`).")
    else:
        threads = MISSING if run.benchmark.threads is None else run.benchmark.threads
        notes.append(f"Latency: median ms per slice, ONNX Runtime {run.benchmark.provider}, {threads} threads.")
    return Table(title="Table 8: student sizes (original, Std-KD and SFT-KD-Recon students)",
                 headers=headers, rows=rows, notes=notes)


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
                    _acceleration_label(acceleration), arch, method_label(method) if method else MISSING,
                    MISSING if teacher_psnr is None else f"{teacher_psnr:.2f}",
                    _gap_text(teacher_psnr, run, student), _gap_text(teacher_psnr, run, std_kd),
                    _gap_text(teacher_psnr, run, sft_kd),
                ])
    notes = [f"Gap = teacher PSNR - student PSNR (mean over {run.split} slices); smaller is better.",
             f"{MISSING}: not in this run."]
    return Table(title="Headline: student–teacher PSNR gap", headers=headers, rows=rows, notes=notes)


ROLE_LABELS = {"zero_filled": "ZF", "teacher": "Teacher", "sft_teacher": "SFT teacher", "student": "Student",
               "std_kd": "Std-KD", "sft_kd": "SFT-KD-Recon", "sft_kd_random": "SFT-KD-Recon (random init)"}


def run_summary(run: RunData) -> Table:
    """Every model of the run, one row each: role, architecture, parameters, compression, PSNR and SSIM.

    The compact table ``compress`` prints at the end (the paper's Table 1 rows for this run, with sizes).
    """
    headers = ["Acceleration", "Model", "Arch", "Parameters", "Compression", "PSNR (dB)", "SSIM"]
    order = list(ROLE_LABELS)
    rows = []
    for acceleration in run.accelerations():
        records = sorted((r for r in run.records if r.acceleration == acceleration),
                         key=lambda r: (order.index(r.role), r.arch or "", r.method or ""))
        for record in records:
            label = ROLE_LABELS[record.role] + (f" {method_label(record.method)}" if record.method else "")
            compression = MISSING if record.compression is None else f"{record.compression:.1%}"
            rows.append([_acceleration_label(acceleration), label, record.arch or MISSING,
                         MISSING if not record.arch else f"{record.parameters:,}", compression,
                         _cell(run, record, ["psnr"]), _cell(run, record, ["ssim"])])
    return Table(title="Run summary: every model", headers=headers, rows=rows, notes=_common_notes(run))


TABLE_BUILDERS: dict[str, Callable[[RunData], Table]] = {
    "summary": run_summary,
    "table1": table1,
    "table3": table3,
    "table5": table5,
    "table8": table8,
    "headline": headline,
}

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(character, character) for character in text)


def render(table: Table, fmt: str) -> str:
    """Render as ``github`` (Markdown), ``latex`` (a ``table`` float with caption) or ``csv`` (headers and rows)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown table format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(table.headers)
        writer.writerows(table.rows)
        return buffer.getvalue()
    # Cells are preformatted text: numeric parsing would reformat p-values and strip trailing zeros.
    body = tabulate(table.rows, headers=table.headers, tablefmt=fmt, disable_numparse=True)
    if fmt == "github":
        notes = "".join(f"- {note}\n" for note in table.notes)
        return f"### {table.title}\n\n{body}\n\n{notes}"
    notes = "".join(f"\\par {_latex_escape(note)}\n" for note in table.notes)
    return (f"\\begin{{table}}[ht]\n\\centering\n\\caption{{{_latex_escape(table.title)}}}\n{body}\n"
            f"{{\\footnotesize\n{notes}}}\n\\end{{table}}\n")
