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
from compressor.rundir.layout import RunLayout
from compressor.rundir.parsing import json_object, number, text


@dataclass(frozen=True)
class PrecisionCheckEntry:
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

    def to_json(self) -> dict[str, Any]:
        return {"delta_psnr_db": self.delta_psnr_db, "delta_ssim": self.delta_ssim, "psnr_fp32_db": self.psnr_fp32_db,
                "slices": self.slices, "max_psnr_loss_db": self.max_psnr_loss_db,
                "line_deviation": self.line_deviation, "line_deviation_fp32": self.line_deviation_fp32,
                "reference_parity": self.reference_parity, "reference_note": self.reference_note}

    @classmethod
    def from_json(cls, raw: Any, path: Path, key: str) -> PrecisionCheckEntry:
        raw = json_object(raw, path, key)

        def required(name: str) -> float:
            return number(raw.get(name), path, f"{key}.{name}", optional=False)

        return cls(delta_psnr_db=required("delta_psnr_db"), delta_ssim=required("delta_ssim"),
                   psnr_fp32_db=required("psnr_fp32_db"), slices=int(required("slices")),
                   max_psnr_loss_db=required("max_psnr_loss_db"), line_deviation=required("line_deviation"),
                   line_deviation_fp32=required("line_deviation_fp32"),
                   reference_parity=number(raw.get("reference_parity"), path, f"{key}.reference_parity"),
                   reference_note=text(raw.get("reference_note", ""), path, f"{key}.reference_note",
                                       optional=False))


@dataclass(frozen=True)
class ExportEntry:
    """One exported file and its validation.

    Attributes:
        file: the ONNX file, as the export named it.
        architecture, parameters, image_channels, formulation: the model and the DF formulation in its graph.
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
    image_channels: int
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

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "architecture": self.architecture, "parameters": self.parameters,
                "image_channels": self.image_channels, "formulation": self.formulation, "provider": self.provider,
                "max_abs_error": self.max_abs_error, "relative_error": self.relative_error,
                "tolerance": self.tolerance, "reference_evaluator_error": self.reference_evaluator_error,
                "validation_slices": self.validation_slices, "seconds": self.seconds, "precision": self.precision,
                **({"precision_check": self.precision_check.to_json()} if self.precision_check else {})}

    @classmethod
    def from_json(cls, raw: Any, path: Path, key: str) -> ExportEntry:
        raw = json_object(raw, path, key)

        def required_text(name: str) -> str:
            return text(raw.get(name), path, f"{key}.{name}", optional=False)

        def required_number(name: str) -> float:
            return number(raw.get(name), path, f"{key}.{name}", optional=False)

        check = raw.get("precision_check")
        channels = number(raw.get("image_channels", 1), path, f"{key}.image_channels", optional=False)  # older: 1
        return cls(file=required_text("file"), architecture=required_text("architecture"),
                   parameters=int(required_number("parameters")), image_channels=int(channels),
                   formulation=required_text("formulation"), provider=required_text("provider"),
                   max_abs_error=required_number("max_abs_error"), relative_error=required_number("relative_error"),
                   tolerance=number(raw.get("tolerance"), path, f"{key}.tolerance"),
                   reference_evaluator_error=number(raw.get("reference_evaluator_error"), path,
                                                    f"{key}.reference_evaluator_error"),
                   validation_slices=int(required_number("validation_slices")),
                   seconds=required_number("seconds"), precision=text(raw.get("precision", "fp32"), path,
                                                                       f"{key}.precision", optional=False),
                   precision_check=None if check is None else PrecisionCheckEntry.from_json(
                       check, path, f"{key}.precision_check"))


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
