"""Reading a run directory written by ``compress`` for the report (layout and schema: :mod:`compressor.rundir`).

:func:`load_run` reads ``results.json`` and ``benchmark.json`` eagerly; per-slice metrics, training histories and
reconstructions are read on first use and cached. A metric missing from a stage's ``metrics_<split>.json`` (or
SSIM in the authors' convention, which the pipeline does not store) is computed from its
``reconstructions_<split>.h5``; a model with neither is *missing* (``None``), never zero.

A run may hold two training setups (``setup`` of each record): ``image`` (SFT-KD-Recon, DC-CNNs; what every table
and figure reports) and ``feature`` (the feature-domain SFT ablation of Tables 2 and 4, residual CNNs), which only
:meth:`RunData.for_setup` exposes. The zero-filled records belong to no setup and are shared by both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from compressor.data.coil_simulation import CoilSimulation
from compressor.errors import InputError
from compressor.evaluate.metrics import METRICS, SSIM_CONVENTIONS, slice_metrics
from compressor.evaluate.stats import ALPHA, Comparison, Summary, summarise, wilcoxon_test
from compressor.io import load_json
from compressor.json_record import number
from compressor.rundir import (
    HISTORY_FILE,
    KD_ROLES,
    SETUPS,
    STUDENT_ROLES,
    BenchmarkRecord,
    CoilCompressionRecord,
    ModelResult,
    RunLayout,
    read_benchmark,
    read_results,
)

RECONSTRUCTION_DATASETS = ("reconstruction", "target", "zero_filled", "volume", "slice_index")
CONVERGENCE_TOLERANCE = 0.02  # converged: validation loss within 2 % of the curve's minimum


@dataclass(frozen=True)
class ModelRecord:
    """One entry of ``results.json``'s ``models`` list; paths are absolute (resolved against the run directory).

    ``reported`` holds the mean ± std that ``results.json`` states (PSNR, SSIM), used only when the per-slice
    values cannot be read. ``setup`` is ``image`` or ``feature`` (see the module docstring); ``init_teacher`` is the
    weights file a warm-started stage began from (``compress --init-teacher``), ``None`` for random initialisation.
    """

    name: str
    role: str
    arch: str | None
    method: str | None
    acceleration: float
    split: str
    parameters: int | None
    compression: float | None
    reported: dict[str, Summary]
    stage_dir: Path | None
    metrics_file: Path | None
    reconstructions_file: Path | None
    setup: str = "image"
    init_teacher: str | None = None


class RecordKey(NamedTuple):
    """Identifies a record in caches: display names alone can repeat (e.g. one SFT teacher per student)."""

    name: str
    stage_dir: Path | None


def record_key(record: ModelRecord) -> RecordKey:
    return RecordKey(record.name, record.stage_dir)


class SliceValues(NamedTuple):
    """One metric for every slice of a split; slices are identified by ``(volume, slice_index)``."""

    volume: tuple[str, ...]
    slice_index: tuple[int, ...]
    values: np.ndarray


class Reconstructions(NamedTuple):
    """A model's images for a split, ``(S, H, W)`` float64 in normalised units, and the slice identities."""

    reconstruction: np.ndarray
    target: np.ndarray
    volume: tuple[str, ...]
    slice_index: tuple[int, ...]


class HistoryEntry(NamedTuple):
    """One epoch of ``history.json`` (epochs count from 1); a loss or time that was not recorded is NaN.

    ``seconds`` is the wall time of that epoch alone (training and validation).
    """

    epoch: int
    train_loss: float
    val_loss: float
    seconds: float


class Convergence(NamedTuple):
    """How fast a validation curve settled (Fig. 7).

    Attributes:
        epochs: epochs in the history.
        best_val_loss: the smallest validation loss, at epoch ``best_epoch``.
        epoch: the first epoch whose validation loss is at most ``(1 + tolerance) × best_val_loss``.
        seconds: wall seconds of the epochs up to and including ``epoch``.
        total_seconds: wall seconds of every epoch.
    """

    epochs: int
    best_val_loss: float
    best_epoch: int
    epoch: int
    seconds: float
    total_seconds: float


def convergence(history: list[HistoryEntry], tolerance: float = CONVERGENCE_TOLERANCE) -> Convergence | None:
    """When a validation curve first comes within ``tolerance`` (relative) of its own minimum; ``None`` when no
    epoch has a validation loss. Epochs without a loss (NaN) never count as converged."""
    losses = np.array([entry.val_loss for entry in history], dtype=np.float64)
    if not np.any(np.isfinite(losses)):
        return None
    best = int(np.nanargmin(losses))
    first = int(np.argmax(losses <= (1 + tolerance) * losses[best]))
    seconds = np.array([entry.seconds for entry in history], dtype=np.float64)
    return Convergence(epochs=len(history), best_val_loss=float(losses[best]), best_epoch=history[best].epoch,
                       epoch=history[first].epoch, seconds=float(seconds[:first + 1].sum()),
                       total_seconds=float(seconds.sum()))


def _reported_summaries(result: ModelResult) -> dict[str, Summary]:
    reported = {}
    for metric in ("psnr", "ssim"):
        stated = result.metrics.get(metric)
        if stated is not None and stated.mean is not None:
            reported[metric] = Summary(mean=stated.mean, std=float("nan") if stated.std is None else stated.std, n=0)
    return reported


def _model_record(run_dir: Path, result: ModelResult) -> ModelRecord:
    """The report's view of a ``results.json`` record: paths resolved against the run directory."""
    def resolved(value: str | None) -> Path | None:
        return None if value is None else run_dir / value

    return ModelRecord(
        name=result.name, role=result.role.value, arch=result.arch, method=result.method,
        acceleration=result.acceleration, split=result.split, parameters=result.parameters,
        compression=result.compression, reported=_reported_summaries(result), stage_dir=resolved(result.stage_dir),
        metrics_file=resolved(result.metrics_file), reconstructions_file=resolved(result.reconstructions_file),
        setup=result.setup, init_teacher=result.init_teacher,
    )


def _read_reconstructions(path: Path, image_key: str) -> Reconstructions:
    """Read ``image_key`` (``reconstruction`` or ``zero_filled``), the target and the slice identities."""
    try:
        with h5py.File(path, "r") as handle:
            for key in RECONSTRUCTION_DATASETS:
                if key not in handle:
                    raise InputError("missing dataset", path, key)
            images = np.asarray(handle[image_key], dtype=np.float64)
            target = np.asarray(handle["target"], dtype=np.float64)
            volume = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in handle["volume"][()])
            slice_index = tuple(int(i) for i in handle["slice_index"][()])
    except OSError as error:
        raise InputError(f"not a readable HDF5 file ({error})", path) from None
    if images.ndim != 3 or images.shape != target.shape or len(volume) != images.shape[0]:
        raise InputError(f"expected (S, H, W) images with S volume names, got {images.shape}", path, image_key)
    return Reconstructions(reconstruction=images, target=target, volume=volume, slice_index=slice_index)


def _paired(first: SliceValues, second: SliceValues) -> tuple[np.ndarray, np.ndarray]:
    """The values of the slices present in both, in ``second``'s order."""
    position = {key: index for index, key in enumerate(zip(first.volume, first.slice_index))}
    common = [(position[key], index) for index, key in enumerate(zip(second.volume, second.slice_index))
              if key in position]
    first_index = np.array([pair[0] for pair in common], dtype=int)
    second_index = np.array([pair[1] for pair in common], dtype=int)
    return first.values[first_index], second.values[second_index]


@dataclass
class RunData:
    """A run directory's results for one split, with lazily read per-slice data.

    Attributes:
        run_dir: the run directory.
        split: the split every query answers for (default: ``results.json``'s ``split``).
        teacher_arch: the teacher architecture of this setup (``results.json``'s ``teacher`` for the image setup).
        records: the models of ``split`` in one setup (``image`` unless from :meth:`for_setup`) and the shared
            zero-filled ones, in ``results.json`` order; every query below answers from these.
        all_records: every model of ``split``, all setups.
        benchmark: ``benchmark.json`` or ``None``.
        ssim_convention: ``standard`` or ``authors``; what :meth:`slice_values` returns for ``ssim``.
        task: ``reconstruction`` or ``sr`` (super-resolution: ``zero_filled`` is the interpolated input and the
            acceleration is the scale factor).
        sr_interpolation: ``bicubic`` or ``sinc`` for ``sr`` runs that state it, else ``None``.
        data_notes: what the data was, for the tables' notes: simulated coils and the coil compression's cost
            (:func:`data_notes`).
    """

    run_dir: Path
    split: str
    teacher_arch: str | None
    records: tuple[ModelRecord, ...]
    all_records: tuple[ModelRecord, ...]
    benchmark: BenchmarkRecord | None
    ssim_convention: str = "standard"
    task: str = "reconstruction"
    sr_interpolation: str | None = None
    data_notes: tuple[str, ...] = ()
    _slice_values: dict[tuple[RecordKey, str], SliceValues | None] = field(default_factory=dict, repr=False)
    _metric_files: dict[Path, dict[str, Any]] = field(default_factory=dict, repr=False)
    _reconstructions: dict[RecordKey, Reconstructions | None] = field(default_factory=dict, repr=False)

    def for_setup(self, setup: str) -> RunData | None:
        """The same run seen through one setup's models (with the shared zero-filled ones and fresh caches), or
        ``None`` when the run has no model of that setup."""
        if setup not in SETUPS:
            raise InputError(f"unknown setup {setup!r}; valid setups: {', '.join(SETUPS)}")
        records = _setup_records(self.all_records, setup)
        if not any(record.role != "zero_filled" for record in records):
            return None
        teacher = next((record.arch for record in records if record.role == "teacher"), None)
        return replace(self, teacher_arch=teacher or (self.teacher_arch if setup == "image" else None),
                       records=records, _slice_values={}, _metric_files={}, _reconstructions={})

    def has_warm_start(self) -> bool:
        """Whether the run warm-started its SFT teacher (``compress --init-teacher``) or trained the from-scratch
        reference for it."""
        return any(record.role == "sft_teacher_scratch" or (record.role == "sft_teacher" and record.init_teacher)
                   for record in self.records)

    def find_warm_started(self, role: str, acceleration: float) -> ModelRecord | None:
        """The first record with this role and acceleration that started from a weights file, or ``None``."""
        return next((record for record in self.records if record.role == role
                     and record.acceleration == acceleration and record.init_teacher is not None), None)

    def accelerations(self) -> list[float]:
        """The accelerations present, ascending."""
        return sorted({record.acceleration for record in self.records})

    def methods(self) -> list[str]:
        """KD methods in order of first appearance."""
        return list(dict.fromkeys(r.method for r in self.records if r.role in KD_ROLES and r.method))

    def student_archs(self) -> list[str]:
        """Student architectures in order of first appearance."""
        return list(dict.fromkeys(r.arch for r in self.records if r.role in STUDENT_ROLES and r.arch))

    @property
    def primary_student(self) -> str | None:
        """The student of Tables 1, 3, 5 and the figures: the first one in ``results.json``."""
        archs = self.student_archs()
        return archs[0] if archs else None

    def find(
        self, role: str, acceleration: float, method: str | None = None, arch: str | None = None
    ) -> ModelRecord | None:
        """The first record with this role and acceleration (and method/arch when given), or ``None``."""
        for record in self.records:
            if (record.role == role and record.acceleration == acceleration
                    and (method is None or record.method == method) and (arch is None or record.arch == arch)):
                return record
        return None

    def reconstructions(self, record: ModelRecord) -> Reconstructions | None:
        """The record's images (for ``zero_filled``: the zero-filled images stored beside any stage's output)."""
        key = record_key(record)
        if key not in self._reconstructions:
            self._reconstructions[key] = self._load_reconstructions(record)
        return self._reconstructions[key]

    def _load_reconstructions(self, record: ModelRecord) -> Reconstructions | None:
        if record.role != "zero_filled":
            path = record.reconstructions_file
            return _read_reconstructions(path, "reconstruction") if path and path.is_file() else None
        for other in self.records:
            path = other.reconstructions_file
            if other.acceleration == record.acceleration and path is not None and path.is_file():
                return _read_reconstructions(path, "zero_filled")
        return None

    def slice_values(self, record: ModelRecord | None, metric: str) -> SliceValues | None:
        """Per-slice values of ``metric`` for ``record``: from its metrics file, else computed from its images."""
        if record is None:
            return None
        key = (record_key(record), metric)
        if key not in self._slice_values:
            self._slice_values[key] = self._load_slice_values(record, METRICS.get(metric).name)
        return self._slice_values[key]

    def _load_slice_values(self, record: ModelRecord, metric: str) -> SliceValues | None:
        stored = not (metric == "ssim" and self.ssim_convention == "authors")
        path = record.metrics_file
        if stored and path is not None and path.is_file():
            table = self._metrics_table(path)
            if metric in table:
                values = np.asarray(table[metric], dtype=np.float64)
                if values.shape != (len(table["volume"]),) or np.any(np.isnan(values)):
                    raise InputError("expected one non-NaN value per slice", path, metric)
                return SliceValues(tuple(map(str, table["volume"])), tuple(map(int, table["slice_index"])), values)
        images = self.reconstructions(record)
        if images is None:
            return None
        source = record.reconstructions_file or self.run_dir
        try:
            values = slice_metrics(images.reconstruction, images.target, (metric,), self.ssim_convention)[metric]
        except InputError as error:
            raise InputError(str(error), source) from None
        return SliceValues(images.volume, images.slice_index, values)

    def _metrics_table(self, path: Path) -> dict[str, Any]:
        if path not in self._metric_files:
            table = load_json(path)
            if not isinstance(table, dict):
                raise InputError("expected an object of per-slice lists", path)
            for key in ("volume", "slice_index"):
                if not isinstance(table.get(key), list):
                    raise InputError("missing per-slice list", path, key)
            if len(table["volume"]) != len(table["slice_index"]):
                raise InputError("'volume' and 'slice_index' differ in length", path, "slice_index")
            self._metric_files[path] = table
        return self._metric_files[path]

    def summary(self, record: ModelRecord | None, metric: str) -> Summary | None:
        """Mean ± std of ``metric`` over the split's slices, or ``None`` when the model or its values are missing."""
        values = self.slice_values(record, metric)
        if values is not None:
            return summarise(values.values)
        if record is None or (metric == "ssim" and self.ssim_convention == "authors"):
            return None
        return record.reported.get(metric)

    def compare(
        self, first: ModelRecord | None, second: ModelRecord | None, metric: str, alpha: float = ALPHA
    ) -> Comparison | None:
        """Wilcoxon signed-rank test of ``second`` against ``first`` on the slices both have, or ``None``."""
        first_values, second_values = self.slice_values(first, metric), self.slice_values(second, metric)
        if first_values is None or second_values is None:
            return None
        a, b = _paired(first_values, second_values)
        return wilcoxon_test(a, b, alpha) if a.size else None

    def history(self, record: ModelRecord | None) -> list[HistoryEntry] | None:
        """The stage's per-epoch losses from ``history.json``, or ``None`` when absent."""
        if record is None or record.stage_dir is None or not (record.stage_dir / HISTORY_FILE).is_file():
            return None
        path = record.stage_dir / HISTORY_FILE
        raw = load_json(path)
        if not isinstance(raw, list):
            raise InputError("expected a list of epochs", path)
        entries = []
        for index, epoch in enumerate(raw):
            if not isinstance(epoch, dict) or "epoch" not in epoch:
                raise InputError("expected an object with 'epoch'", path, f"[{index}]")
            values = [number(epoch.get(key), path, f"[{index}].{key}")
                      for key in ("train_loss", "val_loss", "seconds")]
            train_loss, val_loss, seconds = (math.nan if value is None else value for value in values)
            entries.append(HistoryEntry(epoch=int(epoch["epoch"]), train_loss=train_loss, val_loss=val_loss,
                                        seconds=seconds))
        return entries


def _setup_records(records: tuple[ModelRecord, ...], setup: str) -> tuple[ModelRecord, ...]:
    """The records of one setup and the zero-filled ones (shared by every setup), in the given order."""
    return tuple(record for record in records if record.role == "zero_filled" or record.setup == setup)


def load_run(run_dir: Path, split: str | None = None, ssim_convention: str = "standard") -> RunData:
    """Read a run directory's ``results.json`` (and ``benchmark.json`` when present).

    Args:
        run_dir: the directory ``compress --out`` wrote.
        split: the split to report (default: the one ``results.json`` names, i.e. validation).
        ssim_convention: ``standard`` or ``authors`` (see :func:`compressor.evaluate.metrics.ssim`).

    Raises:
        InputError: the directory has no ``results.json``, or it does not follow the schema.
    """
    run_dir = Path(run_dir)
    run = read_results(run_dir)
    if ssim_convention not in SSIM_CONVENTIONS:
        raise InputError(f"unknown SSIM convention {ssim_convention!r}; valid: {', '.join(SSIM_CONVENTIONS)}")
    default_split = run.split
    records = [_model_record(run_dir, result) for result in run.models]
    chosen = split or default_split
    selected = tuple(record for record in records if record.split == chosen)
    if records and not selected:
        present = ", ".join(sorted({record.split for record in records}))
        raise InputError(f"no models for split {chosen!r}; splits present: {present}", RunLayout(run_dir).results)
    return RunData(
        run_dir=run_dir,
        split=chosen,
        teacher_arch=run.teacher,
        records=_setup_records(selected, "image"),
        all_records=selected,
        benchmark=read_benchmark(run_dir),
        ssim_convention=ssim_convention,
        task=run.task,
        sr_interpolation=run.sr_interpolation,
        data_notes=data_notes(run.config, run.coil_compression),
    )


def data_notes(config: dict[str, Any] | None, coil_compression: CoilCompressionRecord | None) -> tuple[str, ...]:
    """Notes saying what the data was: simulated coils (``config``'s ``[data] coils``: the zero-filled row is then
    the virtual coil's zero-filled image and the target the noise-free virtual-coil image), and what compressing
    the coils to one virtual coil costs against their root-sum-of-squares image (``results.json``'s
    ``coil_compression``, multi-coil data only)."""
    notes = []
    data = (config or {}).get("data") or {}
    if data.get("coils"):
        defaults = CoilSimulation()
        simulation = CoilSimulation(
            coils=int(data["coils"]), snr_db=float(data.get("snr") or defaults.snr_db),
            seed=int(data.get("coil_seed") or 0), ring_radius=float(data.get("coil_ring_radius", defaults.ring_radius)),
            noise_correlation=float(data.get("noise_correlation", defaults.noise_correlation)),
            oversampling=int(data.get("readout_oversampling", defaults.oversampling)))
        notes.append(f"Data: {simulation.describe()}; the zero-filled row is the virtual coil's zero-filled image, "
                     "the target the noise-free virtual-coil image combined with the same vector.")
    if coil_compression is not None:
        scores = ", ".join(f"{name.upper()} {coil_compression.metrics[name].mean:.4g}"
                           for name in ("psnr", "ssim") if name in coil_compression.metrics)
        notes.append(f"Coil compression (one SVD virtual coil) against the root-sum-of-squares image, "
                     f"{coil_compression.slices} {coil_compression.split} slices: {scores}.")
    return tuple(notes)
