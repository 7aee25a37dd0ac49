"""Export targets: what ``compress export --target`` writes, each one class registered in one line.

A target turns the traced fp32 scanner graph (:func:`compressor.export.onnx_export.trace_graph`), or the model it
came from, into files. The driver, :func:`compressor.export.onnx_export.export_model`, does everything else once
for every target:

1. resolves the DF formulation, checks the model and the validation data, builds the metadata and traces the
   graph (the :class:`ExportRequest` a target receives);
2. opens the target's :meth:`~ExportTarget.staging` path (a temporary name beside the destination) and calls
   :meth:`~ExportTarget.write`, which returns the ONNX file there that runs the reconstruction;
3. validates that file with the shared validation (:func:`compressor.export.validate.validate_export`: checker,
   declared I/O, ONNX Runtime and ``onnx.reference`` against the PyTorch model, every failure collected) at the
   target's :attr:`~ExportTarget.relative_tolerance`;
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
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import onnx

from compressor.export.validate import RELATIVE_TOLERANCE
from compressor.io import atomic_path
from compressor.registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from compressor.export.runtime import ExportMetadata
    from compressor.masks import SamplingMask
    from compressor.models.base import CascadeModel

DEFAULT_TARGET = "onnx-fp32"


@dataclass(frozen=True)
class ExportRequest:
    """What every target is given besides the traced graph.

    Attributes:
        model: the trained model, a CPU copy in eval mode (a target may trace or quantize it again).
        mask: the training mask; its shape is the graph's fixed image size.
        formulation: the DF formulation in the graph (a name of :data:`compressor.export.graph.FORMULATIONS`).
        line_axis: for ``"lines"``, the mask's line axis (``-1`` or ``-2``), else ``None``.
        metadata: what the exported file records (:class:`~compressor.export.runtime.ExportMetadata`).
        validation_kspace: ``(S, H, W)`` complex, uncentred, undersampled with ``mask`` (calibration data too).
    """

    model: CascadeModel
    mask: SamplingMask
    formulation: str
    line_axis: int | None
    metadata: ExportMetadata
    validation_kspace: np.ndarray


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
            absolute error exceeds this times max |PyTorch output|.
    """

    relative_tolerance: ClassVar[float] = RELATIVE_TOLERANCE

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


EXPORT_TARGETS: Registry[type[ExportTarget]] = Registry("export target")


@EXPORT_TARGETS.register(DEFAULT_TARGET)
class OnnxFp32(ExportTarget):
    """The fp32 ONNX file: the traced graph as it is, with the metadata, in one self-contained ``<stem>.onnx``."""

    def write(self, graph: onnx.ModelProto, request: ExportRequest, staged: Path) -> Path:
        save_with_metadata(graph, staged, request.metadata.to_properties())
        return staged
