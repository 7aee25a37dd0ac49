"""The paper's figures from a run directory, as PNG files written atomically.

- :func:`qualitative_panel`: Fig. 3, target, zoomed inset, ZF, teacher, student, Std-KD, SFT-KD-Recon and residue
  maps, one row per acceleration, one colour scale per row.
- :func:`psnr_vs_latency`: mean PSNR against ONNX Runtime latency per architecture and method, Pareto front marked.
- :func:`loss_curves`: validation loss per epoch of each stage (Fig. 4b).
- :func:`box_plots`: per-slice PSNR and SSIM per model (Figs. 4a and 8).
- :func:`warm_start_curves`: validation loss of the warm-started SFT teacher against the one trained from scratch
  (Fig. 7).

Fig. 6 (attention-map residues) reruns trained models, so it lives in :mod:`compressor.evaluate.attention` (the one
figure that needs torch); it shows the slice :func:`panel_slice` picks for Fig. 3.

Matplotlib's object-oriented API with the Agg canvas is used (no pyplot), so no global backend state changes.
Each function returns a :class:`FigureOutcome`: the file written, or why the figure was skipped (and whether
that is because the run did not do the experiment the figure shows).
KD figures show one method (default: the run's first) and the first student architecture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from compressor.evaluate.metrics import psnr
from compressor.evaluate.run_data import (
    CONVERGENCE_TOLERANCE,
    Convergence,
    HistoryEntry,
    ModelRecord,
    Reconstructions,
    RunData,
    convergence,
)
from compressor.evaluate.table_text import method_label, zero_filled_label
from compressor.evaluate.tables import WARM_START_HINT, WarmStartCurve, sft_teacher_curves
from compressor.io import atomic_path
from compressor.rundir import ROLE_LABELS

DPI = 120
ROLE_COLOURS = {
    "zero_filled": "tab:gray",
    "teacher": "tab:blue",
    "sft_teacher": "tab:purple",
    "sft_teacher_scratch": "tab:brown",
    "student": "tab:orange",
    "std_kd": "tab:red",
    "sft_kd": "tab:green",
    "sft_kd_random": "tab:olive",
}
PANEL_ROLES = ("zero_filled", "teacher", "student", "std_kd", "sft_kd")
RESIDUE_ROLES = ("student", "std_kd", "sft_kd")
ZOOM_FRACTION = 3  # the inset is the central 1/3 × 1/3 of the slice
WARM_START_COLOURS = {"sft_teacher": "tab:green", "sft_teacher_scratch": "tab:red", "teacher": "tab:blue"}  # Fig. 7


class FigureOutcome(NamedTuple):
    """``path`` of the PNG written, or ``None`` and a ``note`` saying why the figure was skipped.

    ``not_run`` is true when the figure was skipped because the run did not do its experiment (the note then says
    how to run it), false when data the run should have is missing.
    """

    path: Path | None
    note: str | None
    not_run: bool = False


class TradeOffPoint(NamedTuple):
    """One model file in the deployment trade-off: latency per slice (ms), mean PSNR (dB) and its precision."""

    label: str
    role: str
    latency_ms: float
    psnr: float
    precision: str = "fp32"


PRECISION_MARKERS = {"fp32": "o", "int8": "s", "fp16": "^"}
"""Scatter marker of each precision in the PSNR-latency figure (others: ``"D"``)."""


def pareto_front(points: Sequence[TradeOffPoint]) -> list[TradeOffPoint]:
    """The points no other point beats on both axes (at most as slow and higher PSNR), fastest first."""
    front: list[TradeOffPoint] = []
    for point in sorted(points, key=lambda p: (p.latency_ms, -p.psnr)):
        if not front or point.psnr > front[-1].psnr:
            front.append(point)
    return front


def default_method(run: RunData, method: str | None) -> str | None:
    """``method``, or the run's first KD method when it is ``None`` (``None`` when the run has none)."""
    methods = run.methods()
    return method if method is not None else (methods[0] if methods else None)


def _stage_models(run: RunData, acceleration: float, method: str | None, roles: Sequence[str]) -> list[ModelRecord]:
    """The records of ``roles`` at one acceleration, for the first student architecture and ``method``."""
    arch = run.primary_student
    found = []
    for role in roles:
        if role in ("zero_filled", "teacher", "sft_teacher"):
            record = run.find(role, acceleration)
        elif role == "student":
            record = run.find(role, acceleration, arch=arch)
        else:
            record = run.find(role, acceleration, method=method, arch=arch) if method else None
        if record is not None:
            found.append(record)
    return found


def save_figure(figure: Figure, out_path: Path) -> FigureOutcome:
    """Render ``figure`` with the Agg canvas to ``out_path`` (PNG, written under a temporary name)."""
    FigureCanvasAgg(figure)
    out_path = Path(out_path)
    with atomic_path(out_path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)
    return FigureOutcome(out_path, None)


class ReferenceSlice(NamedTuple):
    """The slice a panel shows: ``images.target[index]`` of the first model with reconstructions."""

    images: Reconstructions
    index: int


def _panel_images(run: RunData, acceleration: float, method: str | None) -> dict[str, Reconstructions | None]:
    """The reconstructions of the Fig. 3 models at one acceleration, by role (``None`` where a file is missing)."""
    records = _stage_models(run, acceleration, method, PANEL_ROLES)
    return {record.role: run.reconstructions(record) for record in records}


def _brightest_slice(images: dict[str, Reconstructions | None]) -> ReferenceSlice | None:
    """The slice with the most signal (largest target sum) in the first reconstructions present, or ``None``."""
    reference = next((value for value in images.values() if value is not None), None)
    if reference is None:
        return None
    return ReferenceSlice(reference, int(np.argmax(reference.target.sum(axis=(-2, -1)))))


def panel_slice(run: RunData, acceleration: float, method: str | None = None) -> tuple[str, int] | None:
    """``(volume, slice_index)`` of the slice Fig. 3 shows at ``acceleration``, or ``None`` without reconstructions.

    Other figures that show one slice (Fig. 6) use it too, so all the report's single-slice figures agree.
    """
    reference = _brightest_slice(_panel_images(run, acceleration, default_method(run, method)))
    if reference is None:
        return None
    return reference.images.volume[reference.index], reference.images.slice_index[reference.index]


def _slice_of(images: Reconstructions | None, key: tuple[str, int]) -> np.ndarray | None:
    if images is None:
        return None
    for index, identity in enumerate(zip(images.volume, images.slice_index)):
        if identity == key:
            return images.reconstruction[index]
    return None


def _show(axes: Axes, image: np.ndarray | None, title: str, scale: tuple[float, float], cmap: str) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title, fontsize=8)
    if image is None:
        axes.text(0.5, 0.5, "missing", ha="center", va="center", transform=axes.transAxes, fontsize=8)
        return
    axes.imshow(image, cmap=cmap, vmin=scale[0], vmax=scale[1], interpolation="nearest")


def qualitative_panel(run: RunData, out_path: Path, method: str | None = None) -> FigureOutcome:
    """Fig. 3: one validation slice per acceleration (the one with the most signal), all models side by side.

    Columns: target, zoomed central inset, ZF, teacher, student, Std-KD, SFT-KD-Recon, then |model − target| for
    student, Std-KD and SFT-KD-Recon. Images share one grey scale per row (0 to the target max), residues one
    colour scale per row. Each reconstruction is captioned with its PSNR on that slice.
    """
    method = default_method(run, method)
    rows = []
    for acceleration in run.accelerations():
        images = _panel_images(run, acceleration, method)
        reference = _brightest_slice(images)
        if reference is None:
            continue
        key = (reference.images.volume[reference.index], reference.images.slice_index[reference.index])
        slices = {role: _slice_of(images.get(role), key) for role in PANEL_ROLES}
        rows.append((acceleration, reference.images.target[reference.index], slices))
    if not rows:
        return FigureOutcome(None, f"no reconstructions_{run.split}.h5 files: qualitative panel skipped")

    columns = 2 + len(PANEL_ROLES) + len(RESIDUE_ROLES)
    figure = Figure(figsize=(1.9 * columns, 2.2 * len(rows)), layout="constrained")
    grid = figure.subplots(len(rows), columns, squeeze=False)
    for axes_row, (acceleration, target, slices) in zip(grid, rows):
        scale = (min(0.0, float(target.min())), float(target.max()))
        residues = {role: np.abs(slices[role] - target) for role in RESIDUE_ROLES if slices[role] is not None}
        residue_scale = (0.0, max((float(r.max()) for r in residues.values()), default=0.0) or 1.0)
        height, width = target.shape
        zoom_h, zoom_w = max(height // ZOOM_FRACTION, 1), max(width // ZOOM_FRACTION, 1)
        top, left = (height - zoom_h) // 2, (width - zoom_w) // 2

        _show(axes_row[0], target, "Target", scale, "gray")
        axes_row[0].add_patch(Rectangle((left - 0.5, top - 0.5), zoom_w, zoom_h, fill=False, edgecolor="yellow"))
        axes_row[0].set_ylabel(f"{acceleration:g}x", fontsize=10)
        _show(axes_row[1], target[top:top + zoom_h, left:left + zoom_w], "Target (zoom)", scale, "gray")
        for axes, role in zip(axes_row[2:], PANEL_ROLES):
            _show(axes, slices[role], zero_filled_label(run) if role == "zero_filled" else ROLE_LABELS[role], scale,
                  "gray")
            if slices[role] is not None and target.max() > 0:
                axes.set_xlabel(f"{psnr(slices[role], target):.2f} dB", fontsize=8)
        for axes, role in zip(axes_row[2 + len(PANEL_ROLES):], RESIDUE_ROLES):
            _show(axes, residues.get(role), f"{ROLE_LABELS[role]} residue", residue_scale, "inferno")
    return save_figure(figure, out_path)


def trade_off_points(run: RunData, acceleration: float) -> list[TradeOffPoint]:
    """The PSNR-latency points of the models of ``acceleration`` (``run.benchmark`` is set): per benchmarked
    precision, fp32 at its architecture's latency (shared by its models) and the model's mean PSNR on ``run.split``;
    another precision at **its own file's** latency and that mean plus the file's ΔPSNR against the fp32 export (a
    precision whose ΔPSNR is not known is left out)."""
    points = []
    for record in run.records:
        if record.acceleration != acceleration or record.role == "zero_filled":
            continue
        summary = run.summary(record, "psnr")
        for precision in run.benchmark.precisions():
            entry = run.benchmark.timing(record.name, precision)
            if precision == "fp32":
                latency, delta = run.benchmark.latency_ms(record.arch), 0.0
            else:
                latency, delta = (entry.ort_ms_median, entry.delta_psnr) if entry is not None else (None, None)
            if latency is not None and summary is not None and delta is not None:
                method = f" {method_label(record.method)}" if record.method else ""
                suffix = "" if precision == "fp32" else f" {precision}"
                points.append(TradeOffPoint(f"{ROLE_LABELS[record.role]}{method} ({record.arch}){suffix}",
                                            record.role, latency, summary.mean + delta, precision))
    return points


PRECISION_POINT_NOTE = ("{precisions} points: the file's own latency; PSNR = the model's mean PSNR on {split} + the "
                        "file's ΔPSNR against the fp32 export, measured by `compress export` on the run's whole "
                        "validation split")


def psnr_vs_latency(run: RunData, out_path: Path) -> FigureOutcome:
    """Mean PSNR against median ONNX Runtime latency for every model whose architecture was benchmarked, one
    panel per acceleration; the Pareto front (nothing faster is better) is drawn as a dashed step line. Each
    benchmarked precision is a point with its own marker (:func:`trade_off_points`); a note under the panels says
    what a point of another precision than fp32 is."""
    if run.benchmark is None:
        return FigureOutcome(None, "no benchmark.json: PSNR-vs-latency figure skipped (run `compress benchmark`)")
    panels = [(acceleration, points) for acceleration in run.accelerations()
              if (points := trade_off_points(run, acceleration))]
    if not panels:
        return FigureOutcome(None, "benchmark.json has no latency for this run's architectures: figure skipped")

    figure = Figure(figsize=(6.5 * len(panels), 4.5), layout="constrained")
    for axes, (acceleration, points) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for role in dict.fromkeys(point.role for point in points):
            for precision in dict.fromkeys(point.precision for point in points):
                mine = [point for point in points if point.role == role and point.precision == precision]
                if mine:
                    axes.scatter([p.latency_ms for p in mine], [p.psnr for p in mine], color=ROLE_COLOURS[role],
                                 marker=PRECISION_MARKERS.get(precision, "D"), zorder=3,
                                 label=ROLE_LABELS[role] + ("" if precision == "fp32" else f" ({precision})"))
        for point in points:
            axes.annotate(point.label, (point.latency_ms, point.psnr), fontsize=6, xytext=(3, 3),
                          textcoords="offset points")
        front = pareto_front(points)
        axes.plot([p.latency_ms for p in front], [p.psnr for p in front], "k--", drawstyle="steps-post",
                  linewidth=1, marker="o", markersize=11, markerfacecolor="none", label="Pareto front", zorder=2)
        axes.set_title(f"{acceleration:g}x")
        axes.set_xlabel(f"latency per slice (ms, {run.benchmark.provider})")
        axes.set_ylabel(f"mean PSNR on {run.split} (dB)")
        axes.legend(fontsize=7)
    others = list(dict.fromkeys(p.precision for _, points in panels for p in points if p.precision != "fp32"))
    if others:
        figure.supxlabel(PRECISION_POINT_NOTE.format(precisions="/".join(others), split=run.split), fontsize=7)
    return save_figure(figure, out_path)


def loss_curves(run: RunData, out_path: Path, method: str | None = None) -> FigureOutcome:
    """Fig. 4b: validation loss per epoch of teacher, SFT teacher, student, Std-KD and SFT-KD-Recon."""
    method = default_method(run, method)
    roles = ("teacher", "sft_teacher", "student", "std_kd", "sft_kd")
    accelerations = run.accelerations()
    figure = Figure(figsize=(5.5 * max(len(accelerations), 1), 4.0), layout="constrained")
    drawn = False
    for axes, acceleration in zip(figure.subplots(1, max(len(accelerations), 1), squeeze=False)[0], accelerations):
        for record in _stage_models(run, acceleration, method, roles):
            history = run.history(record)
            if not history or all(np.isnan(entry.val_loss) for entry in history):
                continue
            axes.plot([entry.epoch for entry in history], [entry.val_loss for entry in history],
                      color=ROLE_COLOURS[record.role], label=ROLE_LABELS[record.role])
            drawn = True
        axes.set_title(f"{acceleration:g}x" + (f", {method_label(method)}" if method else ""))
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(f"{run.split} loss")
        if axes.lines:
            axes.legend(fontsize=7)
    if not drawn:
        return FigureOutcome(None, "no history.json with validation losses: loss curves skipped")
    return save_figure(figure, out_path)


def box_plots(run: RunData, out_path: Path) -> FigureOutcome:
    """Figs. 4a/8: per-slice PSNR and SSIM per model (teacher, SFT teacher, student, Std-KD and SFT-KD-Recon for
    every method), one row per acceleration; SFT-KD-Recon boxes are green as in the paper."""
    metrics = ("psnr", "ssim")
    accelerations = run.accelerations()
    figure = Figure(figsize=(12, 3.8 * max(len(accelerations), 1)), layout="constrained")
    grid = figure.subplots(max(len(accelerations), 1), len(metrics), squeeze=False)
    drawn = False
    for axes_row, acceleration in zip(grid, accelerations):
        records = _stage_models(run, acceleration, None, ("teacher", "sft_teacher", "student"))
        arch = run.primary_student
        for method in run.methods():
            records += [record for role in ("std_kd", "sft_kd")
                        if (record := run.find(role, acceleration, method=method, arch=arch)) is not None]
        for axes, metric in zip(axes_row, metrics):
            boxes = [(record, values.values) for record in records
                     if (values := run.slice_values(record, metric)) is not None]
            axes.set_title(f"{acceleration:g}x {metric.upper()}")
            if not boxes:
                continue
            labels = [ROLE_LABELS[r.role] + (f"\n{method_label(r.method)}" if r.method else "") for r, _ in boxes]
            artists = axes.boxplot([values for _, values in boxes], patch_artist=True)
            axes.set_xticks(range(1, len(boxes) + 1), labels)
            for patch, (record, _) in zip(artists["boxes"], boxes):
                patch.set_facecolor(ROLE_COLOURS[record.role])
                patch.set_alpha(0.6)
            axes.tick_params(axis="x", labelsize=7)
            drawn = True
    if not drawn:
        return FigureOutcome(None, f"no per-slice metrics for {run.split}: box plots skipped")
    return save_figure(figure, out_path)


class ValidationCurve(NamedTuple):
    """A Fig. 7 curve ready to draw: the stage, its history and when it converged."""

    curve: WarmStartCurve
    history: list[HistoryEntry]
    settled: Convergence


def _validation_curves(run: RunData, acceleration: float) -> list[ValidationCurve]:
    """The warm-start comparison's curves at one acceleration that have validation losses."""
    curves = sft_teacher_curves(run, acceleration)
    teacher = run.find_warm_started("teacher", acceleration)
    if teacher is not None:
        curves.append(WarmStartCurve("Teacher, warm-started", teacher))
    drawable = []
    for curve in curves:
        history = run.history(curve.record)
        settled = convergence(history) if history else None
        if settled is not None:
            drawable.append(ValidationCurve(curve, history, settled))
    return drawable


def warm_start_curves(run: RunData, out_path: Path) -> FigureOutcome:
    """Fig. 7: validation L1 (log scale) per epoch of the warm-started SFT teacher (green) and the one trained from
    scratch (red), with the warm-started teacher dashed when the run has it; one panel per acceleration.

    A dotted vertical line marks each curve's epochs to converge (first epoch within
    :data:`~compressor.evaluate.run_data.CONVERGENCE_TOLERANCE` of its minimum), as in the warm-start table.
    """
    if not run.has_warm_start():
        return FigureOutcome(None, f"warm-start curves skipped. {WARM_START_HINT}", not_run=True)
    panels = [(acceleration, drawable) for acceleration in run.accelerations()
              if (drawable := _validation_curves(run, acceleration))]
    if not panels:
        return FigureOutcome(None, "no history.json with validation losses for the SFT teachers: warm-start curves "
                                   "skipped")

    figure = Figure(figsize=(5.5 * len(panels), 4.0), layout="constrained")
    for axes, (acceleration, drawable) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for curve, history, settled in drawable:
            colour = WARM_START_COLOURS[curve.record.role]
            axes.plot([entry.epoch for entry in history], [entry.val_loss for entry in history], color=colour,
                      linestyle="--" if curve.record.role == "teacher" else "-",
                      label=f"{curve.label} (converged at epoch {settled.epoch}, {settled.seconds:.1f} s)")
            axes.axvline(settled.epoch, color=colour, linestyle=":", linewidth=1)
        axes.set_yscale("log")
        axes.set_title(f"{acceleration:g}x")
        axes.set_xlabel(f"epoch (dotted: within {CONVERGENCE_TOLERANCE:.0%} of the curve's minimum)")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(f"{run.split} L1")
        axes.legend(fontsize=7)
    return save_figure(figure, out_path)
