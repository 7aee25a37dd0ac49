"""The user's choices for the INT8 and fp16 files (:class:`PrecisionOptions`) and the slices that calibrate INT8."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compressor.errors import InputError
from compressor.export.exported_file import Precision

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
"""``--calibration-method`` choices: ONNX Runtime's ``CalibrationMethod`` MinMax, Percentile, Entropy."""
DEFAULT_CALIBRATION_METHOD = "minmax"
DEFAULT_CALIBRATION_SLICES = 32
DEFAULT_MAX_PSNR_LOSS = {Precision.INT8: 0.1, Precision.FP16: 0.05}
"""The default bound on a precision's PSNR loss against the fp32 export, dB. fp16 rounding (~5e-4 relative) costs
~0.01 dB; a loss of 0.05 dB means something other than rounding went wrong."""
QAT_THRESHOLD = 0.1
"""PSNR loss (dB) of post-training INT8 of every convolution above which a quantization-aware fine-tuning is tried."""
QAT_STEPS = 100


@dataclass(frozen=True)
class PrecisionOptions:
    """The user's choices for precision exports.

    Attributes:
        calibration_slices: training-split slices that calibrate INT8 activations.
        calibration_method: one of :data:`CALIBRATION_METHODS`.
        max_psnr_loss: the largest PSNR loss against the fp32 export (dB) a precision file may have; ``None``: the
            precision's default (:data:`DEFAULT_MAX_PSNR_LOSS`).
        qat_threshold: INT8 of every convolution losing more than this (dB) after post-training quantization starts
            a quantization-aware fine-tuning (:mod:`compressor.export.precision.qat`).
        qat_steps: its optimizer steps (0: never).
    """

    calibration_slices: int = DEFAULT_CALIBRATION_SLICES
    calibration_method: str = DEFAULT_CALIBRATION_METHOD
    max_psnr_loss: float | None = None
    qat_threshold: float = QAT_THRESHOLD
    qat_steps: int = QAT_STEPS

    def __post_init__(self) -> None:
        if self.calibration_method not in CALIBRATION_METHODS:
            raise InputError(f"unknown calibration method {self.calibration_method!r}; valid: "
                             f"{', '.join(CALIBRATION_METHODS)}")
        if self.calibration_slices < 1:
            raise InputError(f"calibration slices must be >= 1, got {self.calibration_slices}")
        if self.qat_steps < 0:
            raise InputError(f"QAT steps must be >= 0, got {self.qat_steps}")

    def bound(self, precision: Precision) -> float:
        """The PSNR-loss bound (dB) of ``precision`` (int8 or fp16)."""
        return DEFAULT_MAX_PSNR_LOSS[precision] if self.max_psnr_loss is None else self.max_psnr_loss


@dataclass(frozen=True)
class CalibrationSlices:
    """Slices that calibrate INT8 activation ranges: ``kspace`` ``(S, H, W)`` complex, uncentred, undersampled with
    the export's mask (any units: the graph normalises), and where they come from (recorded in the metadata)."""

    kspace: np.ndarray
    source: str
