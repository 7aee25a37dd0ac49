"""The trained models of a run directory, with what export and benchmark need: weights, training mask and real
validation slices (layout: ``docs/run-directory.md``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.errors import InputError
from compressor.io import load_json
from compressor.masks import SamplingMask
from compressor.models.base import CascadeModel
from compressor.physics import undersample

EXPORTS_FOLDER = "exports"
VALIDATION_SLICES = 8


def simulated_kspace(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``y = M ⊙ F(x)`` (uncentred, orthonormal) for real images ``(S, H, W)``: complex64 ``(S, H, W)``."""
    kspace = undersample(torch.from_numpy(np.asarray(images, dtype=np.float32)),
                         torch.from_numpy(np.asarray(mask, dtype=np.float32)))
    return torch.view_as_complex(kspace.contiguous()).numpy()


@dataclass
class RunModel:
    """A trained model of a run directory with what export and benchmark need.

    Attributes:
        name: the ``results.json`` name, e.g. ``"sft_kd/at/d3c5@4x"`` (the stage folder name for ``--stage``).
        role: ``teacher``, ``student``, ``std_kd``, ``sft_teacher``, ``sft_kd`` or ``sft_kd_random``.
        model: the model with its best weights, CPU, eval mode.
        info: the stage's ``stage.json``.
        mask: the training mask, rebuilt from the run's ``config.json`` and checked against the stage's digest.
        stage_dir: the stage folder.
        psnr: mean validation PSNR from ``results.json`` (``None`` when not known).
        ssim: mean validation SSIM from ``results.json``.
    """

    name: str
    role: str
    model: CascadeModel
    info: dict[str, Any]
    mask: SamplingMask
    stage_dir: Path
    psnr: float | None = None
    ssim: float | None = None

    @property
    def file_name(self) -> str:
        """The ONNX file name for this model: the name with ``/`` turned into ``_``."""
        return self.name.replace("/", "_") + ".onnx"


def _run_mask(run_dir: Path, info: dict[str, Any], stage_dir: Path) -> SamplingMask:
    """The stage's training mask from the run's ``config.json``; its digest must match ``stage.json``'s."""
    from compressor.config import config_from_dict
    from compressor.data import build_mask

    config_path = run_dir / "config.json"
    config = config_from_dict(load_json(config_path), str(config_path))
    mask = build_mask(config.data, float(info["acceleration"]))
    if info.get("mask_digest") and mask.digest() != info["mask_digest"]:
        raise InputError(f"the mask rebuilt from {config_path} (digest {mask.digest()}) is not the stage's training "
                         f"mask (digest {info['mask_digest']})", stage_dir)
    return mask


def _summary_mean(record: dict[str, Any], metric: str) -> float | None:
    value = record.get(metric)
    return float(value["mean"]) if isinstance(value, dict) and value.get("mean") is not None else None


def load_stage(stage_dir: str | Path, record: dict[str, Any] | None = None) -> RunModel:
    """The trained model of ``stage_dir`` (``<run>/stages/<stage>``); ``record`` is its ``results.json`` entry."""
    from compressor.training.checkpoint import load_stage_model

    stage_dir = Path(stage_dir)
    loaded = load_stage_model(stage_dir)
    record = record or {}
    return RunModel(name=record.get("name") or loaded.info.get("name") or stage_dir.name,
                    role=loaded.info.get("role", "model"), model=loaded.model, info=loaded.info,
                    mask=_run_mask(stage_dir.parent.parent, loaded.info, stage_dir), stage_dir=stage_dir,
                    psnr=_summary_mean(record, "psnr"), ssim=_summary_mean(record, "ssim"))


def run_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``results.json`` records of trained models (one per name, on the split that picked the weights)."""

    results_path = Path(run_dir) / "results.json"
    results = load_json(results_path)
    split = results.get("split", "validation")
    records = {r["name"]: r for r in results.get("models", []) if r.get("stage_dir") and r.get("split") == split}
    return list(records.values())


def load_run_models(run_dir: str | Path, names: list[str] | None = None) -> list[RunModel]:
    """The trained models of ``run_dir`` named ``names`` (default: all), in ``results.json`` order."""
    run_dir = Path(run_dir)
    records = run_records(run_dir)
    by_name = {r["name"]: r for r in records}
    unknown = [n for n in names or [] if n not in by_name]
    if unknown:
        raise InputError(f"no model {unknown[0]!r} in results.json; known: {', '.join(by_name) or 'none'}", run_dir)
    chosen = [by_name[n] for n in names] if names else records
    return [load_stage(run_dir / r["stage_dir"], r) for r in chosen]


def evenly_spaced_indices(total: int, count: int) -> np.ndarray:
    """At most ``count`` indices of ``0..total-1``, evenly spaced, first and last included."""
    return np.unique(np.round(np.linspace(0, total - 1, min(count, total))).astype(int))


def run_validation_kspace(run_model: RunModel, count: int = VALIDATION_SLICES) -> np.ndarray | None:
    """Real validation slices of the run, ``(S <= count, H, W)`` complex: the targets the stage wrote in
    ``reconstructions_validation.h5`` (normalised units), evenly spaced, undersampled with the training mask.
    ``None`` when the stage has no such file."""
    import h5py

    path = run_model.stage_dir / "reconstructions_validation.h5"
    if not path.is_file():
        return None
    with h5py.File(path, "r") as file:
        targets = file["target"][evenly_spaced_indices(file["target"].shape[0], count)]
    return simulated_kspace(targets, run_model.mask.values)
