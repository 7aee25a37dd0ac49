"""Research comparisons behind the export's design choices (used by ``benchmarks/onnx_latency.py``):

* :func:`compare_formulations`: one architecture exported with each DF formulation of
  :data:`compressor.export.graph.scanner_graph.FORMULATIONS` (``fft`` is the naive dynamo ``torch.fft`` -> ONNX
  ``DFT`` export),
  timed in ONNX Runtime interleaved with PyTorch eager;
* :func:`dft_accuracy`: ONNX Runtime's ``DFT`` operator against the matrix-product DFT that
  :class:`~compressor.physics.fft.MatmulDFT` exports to, on hand-built one-transform graphs, against NumPy float64.

Not part of the tool: ``compress benchmark`` (:mod:`compressor.export.benchmark`) times the exported models only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.export.benchmark.run import MIN_ITERATIONS
from compressor.export.benchmark.timing import TorchEager, export_for_timing
from compressor.export.runtimes.registry import onnxruntime_cpu
from compressor.export.runtimes.session import graph_feed
from compressor.export.runtimes.timing import interleaved_timings
from compressor.export.targets.export import phantom_kspace
from compressor.masks import SamplingMask
from compressor.models import build_model
from compressor.physics import dft_matrix
from compressor.process import keep_freed_memory


@dataclass
class FormulationTiming:
    """One DF formulation of one model in ORT, timed interleaved with the others and PyTorch eager."""

    formulation: str
    ort_ms_median: float
    ort_ms_p90: float
    torch_ms_median: float
    speedup: float
    max_abs_error: float


def compare_formulations(arch: str, mask: SamplingMask, formulations: Sequence[str] = ("lines", "dft", "fft"),
                         threads: int | None = None, iterations: int = MIN_ITERATIONS,
                         warmup: int = 5) -> list[FormulationTiming]:
    """Time ``arch`` exported with each DF formulation (``fft`` = naive dynamo ``torch.fft`` -> ONNX ``DFT``),
    interleaved with PyTorch eager; ``max_abs_error`` is ORT vs PyTorch on the same slice."""
    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    torch.set_num_threads(threads)
    keep_freed_memory()
    try:
        model = build_model(arch).eval()
        kspace = phantom_kspace(mask, count=1)
        feed = graph_feed(kspace, mask.values)
        eager = TorchEager(model, kspace, mask.values)
        reference = eager()[:, 0].numpy()
        with tempfile.TemporaryDirectory() as folder:
            sessions = {name: onnxruntime_cpu().session(export_for_timing(model, mask, name, Path(folder)), threads)
                        for name in formulations}
            errors = {name: float(np.max(np.abs(session.run(["image"], feed)[0] - reference)))
                      for name, session in sessions.items()}
            calls: dict[str, Callable[[], Any]] = {name: (lambda s=session: s.run(None, feed))
                                                   for name, session in sessions.items()}
            timings = interleaved_timings({**calls, "torch": eager}, iterations, warmup)
    finally:
        torch.set_num_threads(previous_threads)
    return [FormulationTiming(name, timings[name].median, timings[name].p90, timings["torch"].median,
                              timings["torch"].median / timings[name].median, errors[name]) for name in formulations]


@dataclass
class DftAccuracy:
    """Orthonormal 2-D DFT of random real data in ORT fp32, against NumPy float64, relative to max |X|."""

    size: int
    dft_op_relative_error: float
    matmul_relative_error: float
    dft_op_ms: float
    matmul_ms: float


def _dft_op_model(size: int) -> bytes:
    """ONNX graph: ``x (1, N, N, 2) -> DFT along axes 1 and 2 (opset 17), scaled by 1/N (orthonormal)``."""
    from onnx import TensorProto, helper, numpy_helper

    tensor = helper.make_tensor_value_info
    nodes = [helper.make_node("DFT", ["x"], ["rows"], axis=1), helper.make_node("DFT", ["rows"], ["both"], axis=2),
             helper.make_node("Mul", ["both", "norm"], ["y"])]
    norm = numpy_helper.from_array(np.array(1.0 / size, dtype=np.float32), "norm")
    graph = helper.make_graph(nodes, "dft_op", [tensor("x", TensorProto.FLOAT, [1, size, size, 2])],
                              [tensor("y", TensorProto.FLOAT, [1, size, size, 2])], [norm])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _matmul_dft_model(size: int) -> bytes:
    """ONNX graph: ``(xr, xi) (N, N) -> F x F`` with precomputed fp32 DFT matrices, as :class:`MatmulDFT` does."""
    from onnx import TensorProto, helper, numpy_helper

    real, imag = (m.numpy() for m in dft_matrix(size))
    tensor = helper.make_tensor_value_info
    mm, node = "MatMul", helper.make_node
    nodes = [node(mm, ["Fr", "xr"], ["a"]), node(mm, ["Fi", "xi"], ["b"]), node("Sub", ["a", "b"], ["yr"]),
             node(mm, ["Fr", "xi"], ["c"]), node(mm, ["Fi", "xr"], ["d"]), node("Add", ["c", "d"], ["yi"]),
             node(mm, ["yr", "Fr"], ["e"]), node(mm, ["yi", "Fi"], ["f"]), node("Sub", ["e", "f"], ["zr"]),
             node(mm, ["yr", "Fi"], ["g"]), node(mm, ["yi", "Fr"], ["h"]), node("Add", ["g", "h"], ["zi"])]
    shape = [size, size]
    graph = helper.make_graph(nodes, "matmul_dft", [tensor("xr", TensorProto.FLOAT, shape),
                                                     tensor("xi", TensorProto.FLOAT, shape)],
                              [tensor("zr", TensorProto.FLOAT, shape), tensor("zi", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(real, "Fr"), numpy_helper.from_array(imag, "Fi")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def dft_accuracy(size: int, threads: int = 1, repeats: int = 20) -> DftAccuracy:
    """ORT's ``DFT`` operator against the matrix-product DFT at ``size x size`` (accuracy and median time)."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((size, size))
    expected = np.fft.fft2(image, norm="ortho")
    scale = np.max(np.abs(expected))
    dft_session = onnxruntime_cpu().session(_dft_op_model(size), threads)
    matmul_session = onnxruntime_cpu().session(_matmul_dft_model(size), threads)
    dft_feed = {"x": np.stack([image, np.zeros_like(image)], axis=-1)[None].astype(np.float32)}
    matmul_feed = {"xr": image.astype(np.float32), "xi": np.zeros((size, size), np.float32)}
    dft_out = dft_session.run(None, dft_feed)[0][0]
    zr, zi = matmul_session.run(None, matmul_feed)
    timings = interleaved_timings({"dft": lambda: dft_session.run(None, dft_feed),
                                   "matmul": lambda: matmul_session.run(None, matmul_feed)}, repeats, 2)
    return DftAccuracy(size, float(np.max(np.abs(dft_out[..., 0] + 1j * dft_out[..., 1] - expected)) / scale),
                       float(np.max(np.abs(zr + 1j * zi - expected)) / scale), timings["dft"].median,
                       timings["matmul"].median)
