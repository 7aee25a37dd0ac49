"""The trained models of a run directory, with what export and benchmark need: weights, training mask and real
validation slices (layout: ``docs/run-directory.md``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compressor import rundir
from compressor.errors import InputError
from compressor.masks import SamplingMask
from compressor.models.base import CascadeModel
from compressor.physics import apply_mask, fft2
from compressor.rundir import EXPORTS_FOLDER, ModelResult, StageRecord

__all__ = ["EXPORTS_FOLDER", "RunModel", "load_run_models", "load_stage", "run_records", "run_training_kspace",
           "run_validation_images", "run_validation_kspace", "simulated_kspace"]
VALIDATION_SLICES = 8


def simulated_kspace(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``y = M ⊙ F(x)`` (uncentred, orthonormal) for images ``(S, H, W)``, real or complex: complex64 ``(S, H, W)``."""
    pairs = torch.view_as_real(torch.from_numpy(np.asarray(images, dtype=np.complex64)))
    kspace = apply_mask(fft2(pairs), torch.from_numpy(np.asarray(mask, dtype=np.float32)))
    return torch.view_as_complex(kspace.contiguous()).numpy()


@dataclass
class RunModel:
    """A trained model of a run directory with what export and benchmark need.

    Attributes:
        name: the ``results.json`` name, e.g. ``"sft_kd/at/d3c5@4x"`` (the stage folder name for ``--stage``).
        role: ``teacher``, ``student``, ``std_kd``, ``sft_teacher``, ``sft_kd`` or ``sft_kd_random``.
        model: the model with its best weights, CPU, eval mode.
        stage: the stage's ``stage.json`` record.
        mask: the training mask: the one the run saved (``masks/``), or for a format-1 run rebuilt from its
            ``config.json``; either way checked against the stage's digest.
        stage_dir: the stage folder.
        psnr: mean validation PSNR from ``results.json`` (``None`` when not known).
        ssim: mean validation SSIM from ``results.json``.
    """

    name: str
    role: str
    model: CascadeModel
    stage: StageRecord
    mask: SamplingMask
    stage_dir: Path
    psnr: float | None = None
    ssim: float | None = None

    @property
    def file_name(self) -> str:
        """The ONNX file name for this model: the name with ``/`` turned into ``_``."""
        return self.name.replace("/", "_") + ".onnx"


def _run_mask(run_dir: Path, stage: StageRecord, stage_dir: Path) -> SamplingMask:
    """The stage's training mask: the one the run saved (the stage's ``mask_file``, or for a stage reused from a
    format-1 run the run's mask of that acceleration), else (format 1) rebuilt from the run's ``config.json``; its
    digest must match the stage's."""
    saved = stage.mask_file
    if saved is None and (run_dir / rundir.RESULTS_FILE).is_file():
        record = rundir.read_results(run_dir).masks.get(rundir.acceleration_label(stage.acceleration))
        saved = record.file if record is not None and record.digest == stage.mask_digest else None
    if saved is not None:
        values = rundir.load_mask_values(run_dir, saved)
        mask, source = SamplingMask(values, acceleration=stage.acceleration), run_dir / saved
    else:
        from compressor.data import build_mask

        mask, source = build_mask(rundir.read_config(run_dir).data, stage.acceleration), run_dir / rundir.CONFIG_FILE
    if stage.mask_digest and mask.digest() != stage.mask_digest:
        raise InputError(f"the mask from {source} (digest {mask.digest()}) is not the stage's training mask "
                         f"(digest {stage.mask_digest})", stage_dir)
    return mask


def _summary_mean(record: ModelResult | None, metric: str) -> float | None:
    summary = record.metrics.get(metric) if record else None
    return summary.mean if summary else None


def load_stage(stage_dir: str | Path, record: ModelResult | None = None) -> RunModel:
    """The trained model of ``stage_dir`` (``<run>/stages/<stage>``); ``record`` is its ``results.json`` entry."""
    from compressor.training.checkpoint import load_stage_model

    stage_dir = Path(stage_dir)
    loaded = load_stage_model(stage_dir)
    stage = loaded.record
    return RunModel(name=record.name if record else stage.name, role=stage.role.value, model=loaded.model,
                    stage=stage, mask=_run_mask(rundir.RunLayout.of_stage(stage_dir).root, stage, stage_dir),
                    stage_dir=stage_dir,
                    psnr=_summary_mean(record, "psnr"), ssim=_summary_mean(record, "ssim"))


def run_records(run_dir: str | Path) -> list[ModelResult]:
    """The ``results.json`` records of trained models (one per name, on the split that picked the weights)."""
    results = rundir.read_results(Path(run_dir))
    records = {r.name: r for r in results.models if r.stage_dir and r.split == results.split}
    return list(records.values())


def load_run_models(run_dir: str | Path, names: list[str] | None = None) -> list[RunModel]:
    """The trained models of ``run_dir`` named ``names`` (default: all), in ``results.json`` order."""
    run_dir = Path(run_dir)
    records = run_records(run_dir)
    by_name = {r.name: r for r in records}
    unknown = [n for n in names or [] if n not in by_name]
    if unknown:
        raise InputError(f"no model {unknown[0]!r} in results.json; known: {', '.join(by_name) or 'none'}", run_dir)
    chosen = [by_name[n] for n in names] if names else records
    return [load_stage(run_dir / r.stage_dir, r) for r in chosen]


def evenly_spaced_indices(total: int, count: int | None) -> np.ndarray:
    """At most ``count`` indices of ``0..total-1``, evenly spaced, first and last included (``None``: all)."""
    count = total if count is None else min(count, total)
    return np.unique(np.round(np.linspace(0, total - 1, count)).astype(int))


def run_validation_images(run_model: RunModel, count: int | None = VALIDATION_SLICES) -> np.ndarray | None:
    """Real validation slices of the run, ``(S <= count, H, W)`` (``count=None``: every one): the targets the stage
    wrote in
    ``reconstructions_validation.h5`` (normalised units), evenly spaced: the complex targets
    (:data:`~compressor.rundir.COMPLEX_TARGET_KEY`) when the stage wrote them (2-channel runs), else the real
    ``target``. ``None`` when the stage has no such file."""
    import h5py

    path = run_model.stage_dir / rundir.reconstructions_file("validation")
    if not path.is_file():
        return None
    with h5py.File(path, "r") as file:
        dataset = file[rundir.COMPLEX_TARGET_KEY] if rundir.COMPLEX_TARGET_KEY in file else file["target"]
        return dataset[evenly_spaced_indices(dataset.shape[0], count)]


def run_validation_kspace(run_model: RunModel, count: int = VALIDATION_SLICES) -> np.ndarray | None:
    """:func:`run_validation_images` undersampled with the training mask (:func:`simulated_kspace`), ``(S, H, W)``
    complex; ``None`` when the stage has no validation reconstructions."""
    targets = run_validation_images(run_model, count)
    return None if targets is None else simulated_kspace(targets, run_model.mask.values)


def run_training_kspace(run_model: RunModel, count: int) -> np.ndarray | None:
    """Up to ``count`` evenly spaced slices of the run's training split, ``(S, H, W)`` complex, uncentred, as the
    model was trained on them (the stage's mask; normalised units: the graph normalises anyway). Read through the
    run's ``config.json`` data section (only those slices, :func:`compressor.data.build_splits` with
    ``max_train_slices = count``); ``None`` when the run's data cannot be read here (moved, not downloaded)."""
    from dataclasses import replace

    from compressor.data import build_splits

    try:
        config = rundir.read_config(rundir.RunLayout.of_stage(run_model.stage_dir).root)
        data = replace(config.data, max_train_slices=min(count, config.data.max_train_slices or count),
                       max_eval_slices=1)
        splits = build_splits(data, run_model.stage.acceleration, log=lambda _: None,
                              image_channels=run_model.model.image_channels)
    except (InputError, OSError):
        return None
    if splits.mask.digest() != run_model.mask.digest():
        return None
    pairs = [splits.train[index].kspace for index in range(len(splits.train))]  # (1, [1,] H, W, 2) each
    shape = (*run_model.mask.shape, 2)
    if any(pair.shape[-3:] != shape for pair in pairs):  # measured on another grid than the model's
        return None
    return np.stack([torch.view_as_complex(pair.reshape(shape).contiguous()).numpy() for pair in pairs])
