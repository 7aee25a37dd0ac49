"""The text of the report's tables: :class:`Table`, its cells (``mean ± std``, p-values, significance markers),
labels and notes shared by every table, and :func:`render` to Markdown, LaTeX or CSV.

Every cell is text: ``mean ± std`` (Table 8 and the headline: means), ``—`` (:data:`MISSING`) for a model the run does
not have or a cell that does not apply (never 0). Significance is the paired Wilcoxon signed-rank test on per-slice
values at α = 0.05; p-values have their own columns so the CSV keeps them, and significant cells carry a marker.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import NamedTuple

from tabulate import tabulate

from compressor.errors import InputError
from compressor.evaluate.metrics import METRICS
from compressor.evaluate.run_data import ModelRecord, RunData
from compressor.evaluate.stats import ALPHA, Comparison

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


def acceleration_text(acceleration: float) -> str:
    return f"{acceleration:g}x"


def zero_filled_label(run: RunData) -> str:
    """What the ``zero_filled`` role is in this run: ``ZF``, or for super-resolution the interpolated input
    (e.g. ``Bicubic (input)``)."""
    if run.task != "sr":
        return "ZF"
    return f"{(run.sr_interpolation or 'interpolated').capitalize()} (input)"


def method_label(method: str) -> str:
    """How the paper writes a KD method's name (``at`` → ``AT``); unknown names are shown as given."""
    return METHOD_LABELS.get(method, method)


def p_text(comparison: Comparison | None) -> str:
    if comparison is None:
        return MISSING
    return f"{comparison.p_value:.3f}" if comparison.p_value >= 1e-3 else f"{comparison.p_value:.1e}"


def metric_text(
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


def cell(
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
    return " / ".join(metric_text(run, record, metric, with_std, marker, against) for metric in metrics)


def p_cell(run: RunData, first: ModelRecord | None, second: ModelRecord | None, metrics: Sequence[str]) -> str:
    """p-values of ``second`` against ``first`` for each metric, ``—`` when either is missing."""
    if first is None or second is None:
        return MISSING
    return " / ".join(p_text(run.compare(first, second, metric)) for metric in metrics)


def common_notes(run: RunData) -> list[str]:
    convention = (
        "standard 2-D SSIM (7×7 window)" if run.ssim_convention == "standard"
        else "SSIM in the authors' per-column convention (comparable with the paper's numbers)"
    )
    notes = [
        f"Split: {run.split}; teacher {run.teacher_arch or MISSING}; {convention}; data range = target slice max.",
        f"{MISSING}: not in this run (or not applicable).",
        *run.data_notes,
    ]
    if run.task == "sr":
        notes.append(f"Super-resolution (Appendix B): the {zero_filled_label(run)} row is the low-resolution image "
                     "interpolated to the high-resolution grid; the acceleration is the scale factor.")
    return notes


def significance_note(what: str) -> str:
    return f"{SIGNIFICANT}: {what}, Wilcoxon signed-rank on per-slice values, p < {ALPHA}."


def pair_label(metrics: Sequence[str]) -> str:
    """``PSNR/SSIM`` for ``("psnr", "ssim")``."""
    return "/".join(METRICS.get(metric).label for metric in metrics)


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
    if not table.rows:
        # tabulate derives the column spec from the rows: without rows it would write an empty (invalid) one.
        body = body.replace("\\begin{tabular}{}", f"\\begin{{tabular}}{{{'l' * len(table.headers)}}}", 1)
    notes = "".join(f"\\par {_latex_escape(note)}\n" for note in table.notes)
    return (f"\\begin{{table}}[ht]\n\\centering\n\\caption{{{_latex_escape(table.title)}}}\n{body}\n"
            f"{{\\footnotesize\n{notes}}}\n\\end{{table}}\n")
