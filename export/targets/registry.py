"""Export targets: what ``compress export --target``/``--precision`` writes, each one class registered in one line.

A target turns the traced fp32 scanner graph (:func:`compressor.export.targets.export.trace_graph`), or the model it
came from, into files. The driver, :func:`compressor.export.targets.export.export_model`, does everything else once
for every target:

1. resolves the DF formulation, checks the model and the validation data, builds the metadata and traces the
   graph (the :class:`ExportRequest` a target receives);
2. opens the target's :meth:`~ExportTarget.staging` path (a temporary name beside the destination) and calls
   :meth:`~ExportTarget.write`, which returns the ONNX file there that runs the reconstruction;
3. validates that file with the target's :meth:`~ExportTarget.validate`: by default the shared validation
   (:func:`compressor.export.graph.validate.validate_export`: checker, declared I/O, ONNX Runtime and ``onnx.reference``
   against the PyTorch model, every failure collected) at the target's :attr:`~ExportTarget.relative_tolerance`; a
   precision target (int8, fp16) in image terms against the fp32 export
   (:func:`compressor.export.graph.validate.validate_precision`);
4. renames the staged path onto the destination only if validation passed: a target that raises, or whose files
   fail validation, leaves nothing behind.

Adding a target is one class and one line::

    @EXPORT_TARGETS.register("onnx-fp16")
    class OnnxFp16(ExportTarget):
        relative_tolerance = 1e-3

        def output_name(self, stem: str) -> str:
            return f"{stem}.fp16.onnx"

        def write(self, graph, request, staged):
            save_with_metadata(convert_to_fp16(graph), staged, request.metadata.to_properties())
            return staged

A target whose output is a folder (a Triton model repository) overrides :meth:`~ExportTarget.staging` with an
atomic folder and returns the ONNX file inside it. ``compress export --target`` takes its choices from
:data:`EXPORT_TARGETS`.

Precisions: the targets ``onnx-fp32``, ``onnx-int8`` and ``onnx-fp16`` are one concept, "the ONNX file of a
precision"; ``--precision fp32,int8`` is the list of such targets (:func:`precision_target`), each written to
``<stem>.onnx`` (fp32) or ``<stem>.<precision>.onnx`` and recording ``precision`` (and how it was made) in its
metadata. How the int8 and fp16 graphs are made: :mod:`compressor.export.precision.quantize`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import onnx

from compressor.errors import InputError
from compressor.export.graph.validate import (
    RELATIVE_TOLERANCE,
    QualitySlices,
    ValidationReport,
    validate_export,
    validate_precision,
)
from compressor.export.precision.quantize import (
    FP16_CPU_NOTE,
    CalibrationSlices,
    PrecisionOptions,
    QualityProbe,
    convert_fp16,
    int8_speed,
    quantize_int8,
)
from compressor.export.runtimes.runtime import CPU, runtime_label
from compressor.io import atomic_path
from compressor.registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from compressor.export.runtimes.runtime import ExportedModel, ExportMetadata
    from compressor.masks import SamplingMask
    from compressor.models.base import CascadeModel

DEFAULT_TARGET = "onnx-fp32"


@dataclass(frozen=True)
class ExportRequest:
    """What every target is given besides the traced graph.

    Attributes:
        model: the trained model, a CPU copy in eval mode (a target may trace or quantize it again).
        mask: the training mask; its shape is the graph's fixed image size.
        formulation: the DF formulation in the graph (a name of
        :data:`compressor.export.graph.scanner_graph.FORMULATIONS`).
        line_axis: for ``"lines"``, the mask's line axis (``-1`` or ``-2``), else ``None``.
        metadata: what the exported file records (:class:`~compressor.export.runtimes.runtime.ExportMetadata`).
        validation_kspace: ``(S, H, W)`` complex, uncentred, undersampled with ``mask``.
        quality_slices: slices with fully sampled images on which a precision target measures its image quality
            against the fp32 export (``None``: the validation slices have no known images; the driver then gives
            phantoms to precision targets).
        calibration: the slices that calibrate INT8 (a run's training-split slices; else the validation data).
        precision_options: calibration and the PSNR-loss bound.
        runtime: the runtime that validates the file (a name :func:`~compressor.export.runtimes.runtime.choose_provider`
            returns); a precision target measures image quality on it.
    """

    model: CascadeModel
    mask: SamplingMask
    formulation: str
    line_axis: int | None
    metadata: ExportMetadata
    validation_kspace: np.ndarray
    quality_slices: QualitySlices | None = None
    calibration: CalibrationSlices | None = None
    precision_options: PrecisionOptions = field(default_factory=PrecisionOptions)
    runtime: str = CPU


def save_with_metadata(proto: onnx.ModelProto, path: Path, metadata: Mapping[str, str]) -> None:
    """Write ``proto`` to ``path`` as one self-contained file with ``metadata`` as ``metadata_props``."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(path), save_as_external_data=False)


class ExportTarget(ABC):
    """Base of the export targets: subclass, implement :meth:`write`, register with ``@EXPORT_TARGETS.register``.

    Attributes:
        relative_tolerance: the shared validation's tolerance for this target: an output fails when its max
            absolute error exceeds this times max |PyTorch output| (for a precision target: the ``onnx.reference``
            parity of its own file).
        precision: the arithmetic precision of the file's convolutions, recorded in its metadata.
    """

    relative_tolerance: ClassVar[float] = RELATIVE_TOLERANCE
    precision: ClassVar[str] = "fp32"

    def output_name(self, stem: str) -> str:
        """The file (or folder) name of a model called ``stem`` (e.g. ``sft_kd_at_d3c5@4x``)."""
        return f"{stem}.onnx"

    def staging(self, path: Path) -> AbstractContextManager[Path]:
        """A temporary path beside ``path`` that becomes ``path`` only if the block completes (default: one file)."""
        return atomic_path(path)

    @abstractmethod
    def write(self, graph: onnx.ModelProto, request: ExportRequest, staged: Path) -> Path:
        """Write the target's files at ``staged``; return the ONNX file there that the shared validation runs.

        Args:
            graph: the traced fp32 scanner graph, without metadata (the target may modify it).
            request: the model, mask, formulation, metadata and validation data.
            staged: the temporary path from :meth:`staging`.
        """

    def validate(self, onnx_file: Path, exported: ExportedModel, graph: onnx.ModelProto, request: ExportRequest,
                 relative_tolerance: float) -> ValidationReport:
        """Validate the written file (default: against the PyTorch model, :func:`validate_export`).

        Args:
            onnx_file: what :meth:`write` returned; ``exported``: it opened on the validation provider.
            graph: the traced fp32 graph as the driver traced it.
            request: as given to :meth:`write`.
            relative_tolerance: this target's tolerance or the caller's.
        """
        return validate_export(onnx_file, exported, request.model, request.validation_kspace, request.mask.values,
                               relative_tolerance)


EXPORT_TARGETS: Registry[type[ExportTarget]] = Registry("export target")


@EXPORT_TARGETS.register(DEFAULT_TARGET)
class OnnxFp32(ExportTarget):
    """The fp32 ONNX file: the traced graph as it is, with the metadata, in one self-contained ``<stem>.onnx``."""

    def write(self, graph: onnx.ModelProto, request: ExportRequest, staged: Path) -> Path:
        save_with_metadata(graph, staged, request.metadata.to_properties())
        return staged


def precision_target(precision: str) -> str:
    """The target that writes ``precision``'s ONNX file: ``onnx-<precision>``."""
    return f"onnx-{precision}"


def precision_choices() -> list[str]:
    """The precisions ``--precision`` takes: every registered ``onnx-<precision>`` target's, in the registry's
    (sorted) order: ``fp16``, ``fp32``, ``int8``."""
    return [name.removeprefix("onnx-") for name in EXPORT_TARGETS.names()
            if name == precision_target(EXPORT_TARGETS.get(name).precision)]


def precision_targets(text: str) -> list[str]:
    """``"fp32,int8"`` -> ``["onnx-fp32", "onnx-int8"]`` (order kept, duplicates dropped); an unknown or empty list
    is an :class:`~compressor.errors.InputError` naming the valid precisions."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    valid = precision_choices()
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        problem = f"unknown precision {unknown[0]!r}" if unknown else "no precision given"
        raise InputError(f"{problem}; valid: {', '.join(valid)} (comma-separated, e.g. fp32,int8)")
    return [precision_target(name) for name in names]


class PrecisionTarget(ExportTarget):
    """Base of the non-fp32 ONNX files: ``<stem>.<precision>.onnx``, validated in image terms against the fp32
    export (:func:`~compressor.export.graph.validate.validate_precision`) with the user's PSNR-loss bound."""

    def output_name(self, stem: str) -> str:
        return f"{stem}.{self.precision}.onnx"

    def validate(self, onnx_file: Path, exported: ExportedModel, graph: onnx.ModelProto, request: ExportRequest,
                 relative_tolerance: float) -> ValidationReport:
        if request.quality_slices is None:
            raise ValueError("a precision target needs quality slices (the driver provides them)")
        return validate_precision(onnx_file, exported, graph, request.validation_kspace, request.mask.values,
                                  request.quality_slices, request.precision_options.bound(self.precision),
                                  relative_tolerance)

    @staticmethod
    def save(proto: onnx.ModelProto, request: ExportRequest, staged: Path, record: dict) -> None:
        """Save ``proto`` with the request's metadata plus ``precision`` and ``record`` (how it was made)."""
        metadata = replace(request.metadata, extras={**request.metadata.extras, **record})
        save_with_metadata(proto, staged, metadata.to_properties())


@EXPORT_TARGETS.register(precision_target("int8"))
class OnnxInt8(PrecisionTarget):
    """INT8 (QDQ, per-channel weights) of the convolutions the sensitivity analysis picks, or of all of them after a
    quantization-aware fine-tuning when that is within the bound; DF, normalisation and outputs fp32
    (:func:`compressor.export.precision.quantize.quantize_int8`). Its metadata records the settings, the calibration,
    every
    convolution's choice and cost, the fine-tuning, the quality and whether INT8 pays on this CPU."""

    precision = "int8"
    # onnx.reference computes float convolutions on dequantized values, ONNX Runtime integer ones: a requantized
    # activation that lands on the other side of a rounding boundary differs by one step, and that propagates
    # through the cascades (1.3e-2 measured on the quick-complex d3c5).
    relative_tolerance = 5e-2

    @staticmethod
    def retrace(model: CascadeModel, request: ExportRequest) -> onnx.ModelProto:
        """The fp32 scanner graph of ``model`` (a fine-tuned copy of the request's), traced like the request's."""
        from compressor.export.graph.scanner_graph import ScannerGraph
        from compressor.export.targets.export import trace_graph

        return trace_graph(ScannerGraph(model, request.mask.shape, request.formulation, request.line_axis))

    def write(self, graph: onnx.ModelProto, request: ExportRequest, staged: Path) -> Path:
        from compressor.export.runtimes.cpu import cpu_features

        fp32 = onnx.ModelProto.FromString(graph.SerializeToString())
        calibration = request.calibration or CalibrationSlices(request.validation_kspace, "the validation slices")
        options = request.precision_options
        calibration = CalibrationSlices(calibration.kspace[:options.calibration_slices], calibration.source)
        choice, settings = quantize_int8(fp32, request.model, request.mask.values, calibration,
                                         request.quality_slices, options, lambda model: self.retrace(model, request),
                                         runtime=request.runtime)
        speed = int8_speed(choice.graph, fp32, request.validation_kspace, request.mask.values)
        self.save(choice.graph, request, staged, {
            "precision": self.precision,
            "precision_method": "ONNX Runtime post-training static quantization (quantize_static after "
                                "quant_pre_process), convolutions chosen by per-layer sensitivity",
            "quantization": {**settings.to_json(),
                             "calibration": {"method": options.calibration_method, "slices": len(calibration.kspace),
                                             "source": calibration.source},
                             "max_psnr_loss_db": choice.bound, "layers": [c.to_json() for c in choice.layers],
                             "int8_nodes": [c.layer.node for c in choice.quantized],
                             "graphs_measured": choice.trials,
                             "qat": {"threshold_db": options.qat_threshold, "max_steps": options.qat_steps,
                                     **(choice.qat.to_json() if choice.qat else {"run": False})}},
            "precision_quality": {**choice.quality.to_json(), "reference": "fp32 export",
                                  "measured_on": runtime_label(request.runtime),
                                  "source": request.quality_slices.source},
            "cpu": cpu_features().to_json(),
            "int8_speed": speed.to_json(),
        })
        return staged


@EXPORT_TARGETS.register(precision_target("fp16"))
class OnnxFp16(PrecisionTarget):
    """fp16 convolutions for GPU deployment, DF/normalisation/inputs/outputs fp32
    (:func:`compressor.export.precision.quantize.convert_fp16`); validated on the chosen provider (on CPU: rounding
    only)."""

    precision = "fp16"
    relative_tolerance = 5e-3  # onnx.reference's fp16 arithmetic vs ONNX Runtime's (casts to fp32 on CPU)

    def write(self, graph: onnx.ModelProto, request: ExportRequest, staged: Path) -> Path:
        conversion = convert_fp16(graph)
        probe = QualityProbe(graph, request.quality_slices, request.mask.values, request.model.image_channels,
                             request.runtime)
        self.save(conversion.graph, request, staged, {
            "precision": self.precision,
            "precision_method": "fp16 convolutions and activations (initializers converted, Casts at the borders), "
                                "normalisation, DF and outputs fp32",
            "fp16": {"fp16_nodes": conversion.fp16_nodes, "max_psnr_loss_db": request.precision_options.bound("fp16"),
                     "cpu_note": FP16_CPU_NOTE},
            "precision_quality": {**probe.quality(conversion.graph).to_json(), "reference": "fp32 export",
                                  "measured_on": runtime_label(request.runtime),
                                  "source": request.quality_slices.source},
        })
        return staged
