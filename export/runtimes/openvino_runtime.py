"""OpenVINO's CPU runtime (``pip install openvino``) behind the same calls as ONNX Runtime's providers.

It is not an ONNX Runtime provider: it compiles the ONNX file with its own ONNX front end and runs a QDQ INT8 file
with int8 kernels. How it compares with ONNX Runtime: ``benchmarks/results/precision.md`` (``auto`` never picks it).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import queue
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import InputError
from compressor.export.exported_file import ExportMetadata, load_exported, metadata_of
from compressor.export.runtimes.base import Runtime, Session

OPENVINO = "OpenVINO-CPU"


@functools.cache
def openvino_cpu_usable() -> bool:
    """Whether OpenVINO is installed, imports and lists its CPU device (checked once per process)."""
    if importlib.util.find_spec("openvino") is None:
        return False
    try:
        import openvino

        return "CPU" in openvino.Core().available_devices
    except Exception:  # a broken installation (missing shared libraries, ...) means "not usable"
        return False


def openvino_error(error: BaseException) -> str:
    """The informative line of an OpenVINO exception: its last non-empty line (the first ones name source files)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


class OpenVINOSession:
    """An OpenVINO compiled model behind ONNX Runtime's ``run(output_names, feed)`` call.

    One infer request must not run two inferences at once, so each call takes an idle request from a pool (or makes
    one): calls from several threads, as the streaming server makes, are safe. Outputs are copies
    (``share_outputs=False``), so a later call cannot overwrite what an earlier one returned.
    """

    def __init__(self, compiled: Any):
        self._compiled = compiled
        # every name of every output: get_any_name() may return a tensor name the graph does not declare as output
        self._outputs = {name: output for output in compiled.outputs for name in output.get_names()}
        self._output_order = [output.get_any_name() for output in compiled.outputs]
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            results = request.infer(dict(input_feed), share_outputs=False)
            return [np.asarray(results[self._outputs[name]]) for name in (output_names or self._output_order)]
        finally:
            self._idle.put(request)


@dataclass(frozen=True)
class OpenVINORuntime(Runtime):
    """OpenVINO's CPU device. Inference precision is pinned to f32: on a CPU with bf16 units OpenVINO would
    otherwise compute an fp32 file's convolutions in bf16, and the validation against PyTorch would not hold for what
    runs."""

    key: str = "openvino"
    preference: int = -1
    unusable: str = "OpenVINO is not installed (pip install openvino) or has no CPU device"

    @property
    def name(self) -> str:
        return OPENVINO

    @property
    def label(self) -> str:
        import openvino

        return f"OpenVINO {openvino.get_version().split('-')[0]} (CPU)"

    @property
    def title(self) -> str:
        return "OpenVINO"

    @property
    def on_cpu(self) -> bool:
        return True

    def usable(self) -> bool:
        return openvino_cpu_usable()

    def session(self, model: str | Path | bytes, threads: int | None = None, spinning: bool = False) -> Session:
        """A compiled model on OpenVINO's CPU device. ``threads`` per inference, as ONNX Runtime's intra-op threads:
        ``None`` is the latency hint (one stream, the whole CPU on one inference, calls from several threads take
        turns); a number gives ``cores // threads`` streams of that many threads, so that as many calls run at once
        as the streaming server runs (:class:`OpenVINOSession` gives each its own request). ``spinning`` has no
        OpenVINO counterpart and is ignored."""
        import openvino

        core = openvino.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads is None:
            config["PERFORMANCE_HINT"] = "LATENCY"
        else:
            streams = max(1, (os.cpu_count() or 1) // int(threads))
            config.update({"NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": streams * int(threads)})
        return OpenVINOSession(core.compile_model(core.read_model(model if isinstance(model, bytes) else str(model)),
                                                  "CPU", config))

    def open(self, path: Path, threads: int | None) -> tuple[Session, ExportMetadata]:
        """The file is parsed as ONNX and its metadata read first: OpenVINO would try its other front ends on a
        corrupt file and report theirs, and a foreign file is refused as such before it is compiled."""
        proto = load_exported(path)
        metadata = metadata_of(proto, path)
        try:
            session = self.session(proto.SerializeToString(), threads)
        except RuntimeError as error:
            raise InputError(f"OpenVINO cannot compile it ({openvino_error(error)})", path) from None
        return session, metadata

    def node_providers(self, model: Path, feed: Mapping[str, np.ndarray]) -> dict[str, str]:
        """Every node on OpenVINO's CPU device: it compiles the whole graph for one device or refuses it, so there is
        no per-node fallback to find, and :meth:`open` has compiled the file already (``feed`` is not needed)."""
        return {node.name: OPENVINO for node in load_exported(model).graph.node}
