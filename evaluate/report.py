"""Rebuild every table and figure of a run directory without retraining (``compress report``; ``compress`` runs
it at its end).

Tables go to ``<out_dir>/<name>.md|.tex|.csv`` (by format), figures to ``<out_dir>/<name>.png``; ``out_dir``
defaults to ``<run>/report`` (:data:`~compressor.rundir.REPORT_FOLDER`). Every file is written under a temporary
name and renamed when complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from compressor.errors import InputError
from compressor.evaluate.attention import attention_residue_panel
from compressor.evaluate.figures import (
    FigureOutcome,
    box_plots,
    loss_curves,
    psnr_vs_latency,
    qualitative_panel,
    warm_start_curves,
)
from compressor.evaluate.run_data import RunData, load_run
from compressor.evaluate.table_text import FORMATS, render
from compressor.evaluate.tables import TABLE_BUILDERS
from compressor.io import atomic_path
from compressor.rundir import RunLayout

FIGURE_BUILDERS: dict[str, Callable[[RunData, Path], FigureOutcome]] = {
    "fig3_qualitative": qualitative_panel,
    "psnr_vs_latency": psnr_vs_latency,
    "fig4b_loss_curves": loss_curves,
    "fig4a_box_plots": box_plots,
    "fig6_attention_residue": attention_residue_panel,
    "fig7_warm_start": warm_start_curves,
}


class Report(NamedTuple):
    """What :func:`build_report` produced.

    Attributes:
        tables: rendered text of each table by name (``summary``, ``table1``, ``table2``, ``table3``, ``table5``,
            ``table8``, ``warm_start``, ``headline``).
        files: every file written, tables first.
        notes: why a figure was skipped although the run did its experiment (e.g. no ``benchmark.json``).
        not_run: figures of experiments the run did not do (e.g. no ``--init-teacher``), with how to get them.
        seconds: wall time of the whole report.
        warnings: one line each about what the run directory lacks that the tables and figures would use (stage
            folders that ``results.json`` lists but that are gone); the CLI prints them.
    """

    tables: dict[str, str]
    files: list[Path]
    notes: list[str]
    not_run: list[str]
    seconds: float
    warnings: tuple[str, ...] = ()


def missing_stage_folders(run: RunData) -> str | None:
    """One line naming the stage folders ``results.json`` lists that are not in the run directory, or ``None``.

    Without them the tables fall back to the means ``results.json`` states, and the p-values and figures that need
    per-slice values are left out."""
    missing = list(dict.fromkeys(record.stage_dir for record in run.all_records
                                 if record.stage_dir is not None and not record.stage_dir.is_dir()))
    if not missing:
        return None
    named = ", ".join(str(path.relative_to(run.run_dir)) for path in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return (f"{run.run_dir}: {len(missing)} stage folder(s) listed in results.json are missing ({named}{more}): "
            "their rows use the means results.json states; p-values and figures that need their per-slice values "
            "are left out")


def build_report(
    run_dir: Path,
    fmt: str = "github",
    out_dir: Path | None = None,
    figures: bool = True,
    ssim_convention: str = "standard",
    split: str | None = None,
) -> Report:
    """Render every table (and figure) of ``run_dir`` into ``out_dir``.

    Args:
        run_dir: a run directory (it must contain ``results.json``).
        fmt: table format, ``github``, ``latex`` or ``csv``.
        out_dir: where to write (default ``<run_dir>/report``).
        figures: also draw the figures.
        ssim_convention: ``standard`` or ``authors`` (SSIM as the paper's code computed it).
        split: the split to report (default: the one that selected the best weights).

    Raises:
        InputError: not a run directory, a malformed file in it, an unknown format, or an ``out_dir`` that exists
            and is not a folder (checked before anything is read or written).
    """
    started = time.perf_counter()
    if fmt not in FORMATS:
        raise InputError(f"unknown table format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    out_dir = Path(out_dir) if out_dir is not None else RunLayout(Path(run_dir)).report
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("is a file, but the report is written into a folder of this name; move the file away",
                         out_dir)
    run = load_run(Path(run_dir), split=split, ssim_convention=ssim_convention)
    tables, files, notes, not_run = {}, [], [], []
    for name, build in TABLE_BUILDERS.items():
        tables[name] = render(build(run), fmt)
        path = out_dir / f"{name}.{FORMATS[fmt]}"
        with atomic_path(path) as temporary:
            temporary.write_text(tables[name])
        files.append(path)
    if figures:
        for name, draw in FIGURE_BUILDERS.items():
            outcome = draw(run, out_dir / f"{name}.png")
            if outcome.path is not None:
                files.append(outcome.path)
            elif outcome.not_run:
                not_run.append(f"{name}: {outcome.note}")
            else:
                notes.append(f"{name}: {outcome.note}")
    warning = missing_stage_folders(run)
    return Report(tables=tables, files=files, notes=notes, not_run=not_run, seconds=time.perf_counter() - started,
                  warnings=(warning,) if warning else ())
