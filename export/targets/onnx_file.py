"""The fp32 ONNX file, the default export target (``onnx-fp32``)."""

from __future__ import annotations

from pathlib import Path

import onnx

from compressor.export.exported_file import Precision, write_exported
from compressor.export.targets.registry import EXPORT_TARGETS, ExportRequest, ExportTarget


@EXPORT_TARGETS.register(Precision.FP32.target)
class OnnxFp32(ExportTarget):
    """The fp32 ONNX file: the traced graph as it is, with the metadata, in one self-contained ``<stem>.onnx``."""

    def write(self, graph: onnx.ModelProto, request: ExportRequest, staged: Path) -> Path:
        write_exported(graph, staged, request.metadata)
        return staged
