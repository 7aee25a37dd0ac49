"""The files a benchmark times besides the fp32 graph: a model's file of each precision and what its metadata says.

A trained model's files are its exports (``compress export --precision``, read by :func:`read_precision_file`); a
random-weight architecture's are made for timing (:func:`timing_file`, no quality figures). Every file timed against
one fp32 graph must record one DF formulation (:func:`shared_formulation`), so that their speeds compare precisions,
not formulations. Files written before precisions existed read as fp32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from compressor.errors import InputError
from compressor.export.exported_file import Precision, read_exported_metadata
from compressor.export.precision.options import PrecisionOptions
from compressor.export.targets.export import export_model, phantom_kspace
from compressor.masks import SamplingMask
from compressor.models.base import CascadeModel


@dataclass(frozen=True)
class PrecisionFile:
    """One precision's ONNX file of a model and its image quality against the model's fp32 export.

    Attributes:
        precision: ``"fp32"``, ``"int8"`` or ``"fp16"`` (:func:`~compressor.export.targets.registry.precision_choices`).
        path: the file.
        delta_psnr: mean PSNR of this file minus mean PSNR of the fp32 export, dB, on the export's quality slices
            (a run's whole validation split; negative: a loss), as its metadata records it; ``None`` for fp32 (the
            reference) and where unknown or meaningless (files made from random weights for timing).
        delta_ssim: the same for SSIM.
    """

    precision: str
    path: Path
    delta_psnr: float | None = None
    delta_ssim: float | None = None


def parse_precisions(text: str) -> list[str]:
    """``"fp32,int8"`` -> ``["fp32", "int8"]``, validated as ``compress export --precision`` is
    (:meth:`~compressor.export.exported_file.Precision.parse`: an unknown name is an :class:`InputError`)."""
    return [precision.value for precision in Precision.parse(text)]


def file_formulation(path: Path) -> str:
    """The DF formulation (``"lines"``, ``"dft"``) an exported file's metadata records."""
    return read_exported_metadata(path).formulation


def shared_formulation(files: Sequence[PrecisionFile]) -> str:
    """The one DF formulation of ``files`` (``"auto"`` without any): the fp32 graph they are timed and profiled
    against is traced with it. Files of different formulations are an :class:`InputError`: their speeds against
    one fp32 graph would compare formulations, not precisions."""
    formulations = {file.path: file_formulation(file.path) for file in files}
    first = next(iter(formulations.items()), None)
    for path, formulation in formulations.items():
        if formulation != first[1]:
            raise InputError(f"exported with the {formulation!r} DF formulation but {first[0].name} with "
                             f"{first[1]!r}: benchmark files of one formulation (compress export --formulation)", path)
    return first[1] if first else "auto"


def read_precision_file(path: Path) -> PrecisionFile:
    """The precision and the quality against fp32 that an exported file's metadata records (files written before
    precisions existed: fp32)."""
    metadata = read_exported_metadata(path)
    quality = None if metadata.precision is Precision.FP32 else metadata.quality
    return PrecisionFile(metadata.precision.value, Path(path), quality.delta_psnr_db if quality else None,
                         quality.delta_ssim if quality else None)


PHANTOM_SLICES = 8
"""Phantom slices that calibrate, choose and validate a precision file made for timing (:func:`timing_file`)."""


def timing_file(model: CascadeModel, mask: SamplingMask, precision: str, folder: Path,
                formulation: str = "auto") -> PrecisionFile:
    """A ``precision`` file of ``model`` for timing, written by the export driver through the precision's target
    (:func:`~compressor.export.targets.export.export_model`) on Shepp-Logan phantoms: INT8 calibrated on them with
    **every** convolution quantized (no PSNR bound, no quantization-aware fine-tuning: for random weights a
    sensitivity analysis would pick an arbitrary set; this is the fastest INT8 file, a trained model's own selection
    is timed from its export). Its quality figures are not kept: on phantoms, and for random weights, they mean
    nothing (a trained model's are read from its export, :func:`read_precision_file`). Made and validated on the
    CPU, as ``compress export`` makes INT8; DF in ``formulation``."""
    path = folder / f"{getattr(model, 'arch', 'model')}_{model.image_channels}ch.{precision}.onnx"
    kspace = phantom_kspace(mask, count=PHANTOM_SLICES, image_channels=model.image_channels)
    export_model(model, path, mask=mask, validation_kspace=kspace, formulation=formulation, provider="cpu",
                 target=Precision(precision).target,
                 precision_options=PrecisionOptions(max_psnr_loss=math.inf, qat_steps=0))
    return PrecisionFile(precision, path)

