"""Whether INT8 pays on this CPU: a quick interleaved timing of the INT8 and fp32 files (:func:`int8_speed`), not a
benchmark (that is ``compress benchmark --precision``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import onnx

from compressor.export.exported_file import SpeedRecord
from compressor.export.runtimes.cpu import CpuFeatures, cpu_features
from compressor.export.runtimes.registry import RUNTIMES, onnxruntime_cpu
from compressor.export.runtimes.session import graph_feed
from compressor.export.runtimes.timing import interleaved_timings

TIMING_RUNS = 24
"""Interleaved batch-1 runs of the INT8 and fp32 files that decide whether INT8 pays here (after 3 warm-up runs)."""
PAYS_SPEEDUP = 1.05
"""The INT8 file's speed-up over fp32 from which ``compress export`` says INT8 pays on this CPU: a median of a few
dozen runs on a shared machine moves by a few percent, so a smaller gain is not one this check can tell from noise."""


NO_DOT_PRODUCT_WHY = ("it has no int8 dot product (VNNI/AMX): ONNX Runtime's x86 INT8 convolutions multiply with "
                      "VPMADDUBSW (U8S8, 7-bit weights against its saturation), no faster than its fp32 kernels, and "
                      "each INT8 block adds the int8/fp32 conversions around it")
"""Why INT8 does not pay on an x86-64 CPU without an int8 dot-product instruction."""
OVERHEAD_WHY = ("the int8/fp32 conversions (QuantizeLinear, DequantizeLinear, NHWC <-> NCHWc reorders) around its INT8 "
                "blocks cost more than the int8 arithmetic saves")
"""Why INT8 does not pay on a CPU that has an int8 dot product (or is not x86-64)."""


def int8_verdict(architecture: str, cpu: CpuFeatures, speedup: float) -> str:
    """One line: whether INT8 pays for ``architecture`` on ``cpu`` at the measured ``speedup`` (INT8 over fp32;
    pays from :data:`PAYS_SPEEDUP`) and, when it does not, why (:data:`NO_DOT_PRODUCT_WHY` on x86-64 without an
    int8 dot product, else :data:`OVERHEAD_WHY`)."""
    if speedup >= PAYS_SPEEDUP:
        return f"INT8 pays for {architecture} on this CPU ({cpu.describe()}): {speedup:.2f}x the fp32 speed"
    why = NO_DOT_PRODUCT_WHY if cpu.x86 and not cpu.int8_dot_product else OVERHEAD_WHY
    return (f"INT8 does not pay for {architecture} on this CPU ({cpu.describe()}, {speedup:.2f}x the fp32 speed): "
            f"{why}; deploy the fp32 file here")


@dataclass(frozen=True)
class SpeedCheck:
    """Interleaved batch-1 latency on this CPU (median ms) of the INT8 and fp32 files on ONNX Runtime and, where
    OpenVINO is installed, of the INT8 file on OpenVINO's CPU runtime."""

    int8_ms: float
    fp32_ms: float
    runs: int
    cpu: CpuFeatures
    openvino_int8_ms: float | None = None

    def record(self, architecture: str) -> SpeedRecord:
        """What the INT8 file of ``architecture`` records (its ``int8_speed`` key): speed-ups over ONNX Runtime's
        fp32 time, whether each reaches :data:`PAYS_SPEEDUP`, and the :func:`int8_verdict`."""
        speedup = self.fp32_ms / self.int8_ms
        openvino = None if self.openvino_int8_ms is None else self.fp32_ms / self.openvino_int8_ms
        return SpeedRecord(self.int8_ms, self.fp32_ms, speedup, self.runs, 1, speedup >= PAYS_SPEEDUP,
                           self.cpu.describe(), self.openvino_int8_ms, openvino,
                           None if openvino is None else openvino >= PAYS_SPEEDUP,
                           int8_verdict(architecture, self.cpu, speedup))


def int8_speed(int8_graph: onnx.ModelProto, fp32_graph: onnx.ModelProto, kspace: np.ndarray, mask: np.ndarray,
               runs: int = TIMING_RUNS) -> SpeedCheck:
    """A quick interleaved timing (``runs`` runs each after 3 warm-up runs, batch 1, CPU, the runtimes' default
    threads) of both graphs on ONNX Runtime and, where OpenVINO is installed, of the INT8 graph on OpenVINO, on the
    first slice of ``kspace``: enough to say whether INT8 pays here, not a benchmark."""
    feed = graph_feed(kspace[:1], mask)
    cpu = onnxruntime_cpu()
    sessions = {name: cpu.session(graph.SerializeToString()) for name, graph in (("int8", int8_graph),
                                                                                 ("fp32", fp32_graph))}
    openvino = RUNTIMES.get("openvino")
    if openvino.usable():
        with contextlib.suppress(RuntimeError):  # an OpenVINO that cannot compile the file only loses its figure
            sessions["openvino int8"] = openvino.session(int8_graph.SerializeToString())
    timings = interleaved_timings({name: (lambda s=session: s.run(None, feed)) for name, session in sessions.items()},
                                  runs, 3)
    measured = timings.get("openvino int8")
    return SpeedCheck(timings["int8"].median, timings["fp32"].median, runs, cpu_features(),
                      measured.median if measured else None)
