"""Whether INT8 pays on this CPU: a quick interleaved timing of the INT8 and fp32 files (:func:`int8_speed`), not a
benchmark (that is ``compress benchmark --precision``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import onnx

from compressor.export.exported_file import SpeedRecord
from compressor.export.runtimes.cpu import cpu_features
from compressor.export.runtimes.registry import RUNTIMES, onnxruntime_cpu
from compressor.export.runtimes.session import graph_feed
from compressor.export.runtimes.timing import interleaved_timings

TIMING_RUNS = 24
"""Interleaved batch-1 runs of the INT8 and fp32 files that decide whether INT8 pays here (after 3 warm-up runs)."""
PAYS_SPEEDUP = 1.05
"""The INT8 file's speed-up over fp32 from which ``compress export`` says INT8 pays on this CPU: a median of a few
dozen runs on a shared machine moves by a few percent, so a smaller gain is not one this check can tell from noise."""


@dataclass(frozen=True)
class SpeedCheck:
    """Interleaved batch-1 latency on this CPU (median ms) of the INT8 and fp32 files on ONNX Runtime and, where
    OpenVINO is installed, of the INT8 file on OpenVINO's CPU runtime."""

    int8_ms: float
    fp32_ms: float
    runs: int
    cpu: str
    openvino_int8_ms: float | None = None

    def record(self) -> SpeedRecord:
        """What the INT8 file records (its ``int8_speed`` key): speed-ups over ONNX Runtime's fp32 time and whether
        each reaches :data:`PAYS_SPEEDUP`."""
        speedup = self.fp32_ms / self.int8_ms
        openvino = None if self.openvino_int8_ms is None else self.fp32_ms / self.openvino_int8_ms
        return SpeedRecord(self.int8_ms, self.fp32_ms, speedup, self.runs, 1, speedup >= PAYS_SPEEDUP, self.cpu,
                           self.openvino_int8_ms, openvino, None if openvino is None else openvino >= PAYS_SPEEDUP)


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
    return SpeedCheck(timings["int8"].median, timings["fp32"].median, runs, cpu_features().describe(),
                      measured.median if measured else None)
