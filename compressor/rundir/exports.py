"""``exports/exports.json`` (``compress export --run``; ``compress`` writes it after training): one
:class:`ExportEntry` per exported file, with the figures of its validation. Written by
:mod:`compressor.export.targets`; the JSON is a list of entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.errors import InputError
from compressor.io import load_json, save_json
from compressor.json_record import JsonRecord
from compressor.rundir.layout import RunLayout


@dataclass(frozen=True)
class PrecisionCheckEntry(JsonRecord):
    """A non-fp32 file's validation in image terms, against the fp32 export of the same model.

    Attributes:
        delta_psnr_db, delta_ssim: the file's PSNR (dB) and SSIM minus the fp32 export's, on ``slices`` slices.
        psnr_fp32_db: the fp32 export's PSNR (dB).
        slices: how many slices were compared.
        max_psnr_loss_db: the largest PSNR loss the export allowed (dB).
        line_deviation, line_deviation_fp32: the file's and the fp32 export's deviation from the sampled k-space lines.
        reference_parity: max |onnx.reference − the runtime| of the file on one slice relative to max |output|
            (``None`` where ``onnx.reference`` cannot run the file's operators; ``reference_note`` says why).
    """

    delta_psnr_db: float
    delta_ssim: float
    psnr_fp32_db: float
    slices: int
    max_psnr_loss_db: float
    line_deviation: float
    line_deviation_fp32: float
    reference_parity: float | None
    reference_note: str = ""

    WRITES_NULL = True


@dataclass(frozen=True, kw_only=True)
class ExportEntry(JsonRecord):
    """One exported file and its validation.

    Attributes:
        file: the ONNX file, as the export named it.
        architecture, parameters, image_channels, formulation: the model and the DF formulation in its graph
            (``image_channels``: 1 in files written before 2-channel models).
        provider: the runtime that ran the validation.
        max_abs_error: max |runtime − PyTorch| of the reconstruction over the validation slices.
        relative_error: that error over max |PyTorch reconstruction|.
        tolerance: the absolute tolerance it passed (``None`` for a non-fp32 file, held to its PSNR bound instead).
        reference_evaluator_error: max |onnx.reference − PyTorch| on one slice (``None`` where it cannot run).
        validation_slices: how many slices were compared.
        seconds: wall time of export and validation.
        precision: ``fp32``, ``int8`` or ``fp16``.
        precision_check: a non-fp32 file's check against the fp32 export (the key is absent for fp32 files).
    """

    file: str
    architecture: str
    parameters: int
    image_channels: int = 1
    formulation: str
    provider: str
    max_abs_error: float
    relative_error: float
    tolerance: float | None
    reference_evaluator_error: float | None
    validation_slices: int
    seconds: float
    precision: str = "fp32"
    precision_check: PrecisionCheckEntry | None = None

    WRITES_NULL = True

    def to_json(self) -> dict[str, Any]:
        values = super().to_json()
        if self.precision_check is None:  # the key is written only for a non-fp32 file
            del values["precision_check"]
        return values


@dataclass(frozen=True)
class ExportsRecord:
    """``exports/exports.json``: the files one ``compress export --run`` wrote, in the order it wrote them."""

    entries: tuple[ExportEntry, ...] = ()

    def to_json(self) -> list[dict[str, Any]]:
        return [entry.to_json() for entry in self.entries]

    @classmethod
    def from_json(cls, raw: Any, path: Path) -> ExportsRecord:
        if not isinstance(raw, list):
            raise InputError("expected a list of exported files", path)
        return cls(tuple(ExportEntry.from_json(entry, path, f"[{index}]") for index, entry in enumerate(raw)))


def read_exports(run_dir: Path) -> ExportsRecord | None:
    """``exports/exports.json`` of ``run_dir``, or ``None`` when the run has none; a malformed one is one-line
    :class:`InputError` naming the file and key."""
    path = RunLayout(Path(run_dir)).exports_file
    return ExportsRecord.from_json(load_json(path), path) if path.is_file() else None


def write_exports(run_dir: Path, record: ExportsRecord) -> Path:
    """Write ``record`` as ``run_dir``'s ``exports/exports.json`` (atomically) and return its path."""
    return save_json(RunLayout(Path(run_dir)).exports_file, record.to_json())
