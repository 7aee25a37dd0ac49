"""Export targets: what ``compress export --target``/``--precision`` writes, each one class registered in one line.

A target turns the traced fp32 scanner graph (:func:`compressor.export.graph.trace.trace_graph`), or the model it
came from, into files. The driver, :func:`compressor.export.targets.export.export_model`, does everything else once
for every target:

1. resolves the DF formulation, checks the model and the validation data, builds the metadata and traces the
   graph (the :class:`ExportRequest` a target receives);
2. opens the target's :meth:`~ExportTarget.staging` path (a temporary name beside the destination) and calls
   :meth:`~ExportTarget.write`, which returns the ONNX file there that runs the reconstruction;
3. validates that file with the target's :meth:`~ExportTarget.validate`: by default the shared validation
   (:func:`compressor.export.graph.validate.validate_export`: checker, declared I/O, the chosen runtime and
   ``onnx.reference`` against the PyTorch model, every failure collected) at the target's
   :attr:`~ExportTarget.relative_tolerance`; a precision target (int8, fp16) in image terms against the fp32 export
   (:func:`compressor.export.graph.validate.validate_precision`);
4. renames the staged path onto the destination only if validation passed: a target that raises, or whose files
   fail validation, leaves nothing behind.

A target whose output is a folder overrides :meth:`~ExportTarget.staging` with an atomic folder and returns the ONNX
file inside it. ``compress export --target`` takes its choices from :data:`EXPORT_TARGETS`. The precisions are the
targets ``onnx-<precision>`` (:attr:`compressor.export.exported_file.Precision.target`); ``--precision fp32,int8``
is the list of such targets (:func:`precision_targets`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import onnx

from compressor.export.exported_file import ExportMetadata, Precision
from compressor.export.graph.validate import RELATIVE_TOLERANCE, QualitySlices, ValidationReport, validate_export
from compressor.export.precision.options import CalibrationSlices, PrecisionOptions
from compressor.export.runtimes.base import Runtime
from compressor.export.runtimes.registry import onnxruntime_cpu
from compressor.io import atomic_path
from compressor.registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from compressor.export.runtimes.session import ExportedModel
    from compressor.masks import SamplingMask
    from compressor.models.base import CascadeModel

DEFAULT_TARGET = Precision.FP32.target


@dataclass(frozen=True)
class ExportRequest:
    """What every target is given besides the traced graph.

    Attributes:
        model: the trained model, a CPU copy in eval mode (a target may trace or quantize it again).
        mask: the training mask; its shape is the graph's fixed image size.
        formulation: the DF formulation in the graph (a name of
            :data:`compressor.export.graph.scanner_graph.FORMULATIONS`).
        line_axis: for ``"lines"``, the mask's line axis (``-1`` or ``-2``), else ``None``.
        metadata: what the exported file records (its precision the target's).
        validation_kspace: ``(S, H, W)`` complex, uncentred, undersampled with ``mask``.
        quality_slices: slices with fully sampled images on which a precision target measures its image quality
            against the fp32 export (``None``: the validation slices have no known images; the driver then gives
            phantoms to precision targets).
        calibration: the slices that calibrate INT8 (a run's training-split slices; else the validation data).
        precision_options: calibration and the PSNR-loss bound.
        runtime: the runtime that validates the file; a precision target measures image quality on it.
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
    runtime: Runtime = field(default_factory=onnxruntime_cpu)


class ExportTarget(ABC):
    """Base of the export targets: subclass, implement :meth:`write`, register with ``@EXPORT_TARGETS.register``.

    Attributes:
        relative_tolerance: the shared validation's tolerance for this target: an output fails when its max
            absolute error exceeds this times max |PyTorch output| (for a precision target: the ``onnx.reference``
            parity of its own file).
        precision: the arithmetic precision of the file's convolutions, recorded in its metadata.
    """

    relative_tolerance: ClassVar[float] = RELATIVE_TOLERANCE
    precision: ClassVar[Precision] = Precision.FP32

    def output_name(self, stem: str) -> str:
        """The file (or folder) name of a model called ``stem`` (e.g. ``sft_kd_at_d3c5@4x``): its precision's
        (:meth:`~compressor.export.exported_file.Precision.file_name`)."""
        return self.precision.file_name(stem)

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
            onnx_file: what :meth:`write` returned; ``exported``: it opened on the validation runtime.
            graph: the traced fp32 graph as the driver traced it.
            request: as given to :meth:`write`.
            relative_tolerance: this target's tolerance or the caller's.
        """
        return validate_export(onnx_file, exported, request.model, request.validation_kspace, request.mask.values,
                               relative_tolerance)


EXPORT_TARGETS: Registry[type[ExportTarget]] = Registry("export target")


def precision_choices() -> list[str]:
    """The precisions ``--precision`` takes: every precision whose target is registered, sorted: ``fp16``,
    ``fp32``, ``int8``."""
    return [precision.value for precision in sorted(Precision) if precision.target in EXPORT_TARGETS]


def precision_targets(text: str) -> list[str]:
    """``"fp32,int8"`` -> ``["onnx-fp32", "onnx-int8"]`` (order kept, duplicates dropped); an unknown or empty list
    is an :class:`~compressor.errors.InputError` naming the valid precisions (:meth:`Precision.parse`)."""
    return [precision.target for precision in Precision.parse(text)]
