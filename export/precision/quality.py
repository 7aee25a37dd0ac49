"""The image quality of candidate graphs against the fp32 graph, measured on the runtime that validates the file
(:class:`QualityProbe`).

The measure is :func:`compressor.export.graph.validate.image_quality`: PSNR/SSIM of the fp32 export and of the
candidate, both against the fully sampled images of the quality slices; the cost is the difference.
"""

from __future__ import annotations

import numpy as np
import onnx

from compressor.errors import InputError, first_line
from compressor.export.graph.validate import (
    ImageQuality,
    QualitySlices,
    batched_outputs,
    image_quality,
    magnitudes,
    session_outputs,
)
from compressor.export.runtimes.base import Runtime
from compressor.export.runtimes.onnxruntime_provider import LOAD_ERRORS


class QualityProbe:
    """The image quality of candidate graphs relative to the fp32 graph on :class:`QualitySlices`, run on
    ``runtime``: the runtime that will validate and run the file, whose int8 kernels round as the file will be
    run."""

    def __init__(self, fp32_graph: onnx.ModelProto, slices: QualitySlices, mask: np.ndarray, image_channels: int,
                 runtime: Runtime):
        self.slices, self._mask, self._channels, self._runtime = slices, mask, image_channels, runtime
        self._fp32 = self._magnitudes(fp32_graph, runtime)

    def _magnitudes(self, graph: onnx.ModelProto, runtime: Runtime) -> np.ndarray:
        try:
            session = runtime.session(graph.SerializeToString())
        except (RuntimeError, *LOAD_ERRORS) as error:
            raise InputError(f"{runtime.label} cannot run a candidate graph ({first_line(error)}); "
                             "export with --provider cpu") from None
        run = session_outputs(session, self._channels)
        return magnitudes(batched_outputs(run, self.slices.kspace, self._mask), self._channels)

    def quality(self, graph: onnx.ModelProto, runtime: Runtime | None = None) -> ImageQuality:
        """``graph``'s quality against the fp32 graph's (both on the probe's runtime); ``runtime``: run ``graph`` on
        another one instead (e.g. the fp32 graph compiled at another inference precision), same reference."""
        return image_quality(self._magnitudes(graph, runtime or self._runtime), self._fp32, self.slices.images)
