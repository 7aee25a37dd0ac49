"""ONNX Runtime's execution providers as runtimes (:class:`OnnxRuntimeProvider`).

``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` as available even where CUDA cannot run (no GPU, missing CUDA
libraries); ONNX Runtime then quietly builds a CPU session. A provider registered with ``probed=True`` is therefore
probed by building a session on a one-node model and checking that it is really the active provider
(:func:`provider_usable`). A provider registered with ``cpu_fallback=False`` (CUDA) creates its sessions with
``session.disable_cpu_ep_fallback = 1``, so a node without a kernel there is an error at session creation instead of
a silent CPU fallback, and :meth:`OnnxRuntimeProvider.node_providers` reads from a profile which provider ran each
node.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from compressor.errors import InputError, first_line
from compressor.export.exported_file import ExportMetadata, metadata_of
from compressor.export.runtimes.base import Runtime, Session

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
ORT_DEFAULT_SEVERITY = 2
ORT_SILENT_SEVERITY = 4

LOAD_ERRORS = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented",
                 "RuntimeException")
)
"""What ONNX Runtime raises for a file it cannot turn into a session."""


@contextlib.contextmanager
def silent_onnxruntime() -> Iterator[None]:
    """ONNX Runtime's log silenced for the block (its warnings about files it repairs, providers it cannot load)."""
    ort.set_default_logger_severity(ORT_SILENT_SEVERITY)
    try:
        yield
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_SEVERITY)


def _probe_model() -> bytes:
    """A one-node ONNX model (``y = x + x``), serialised, for provider probes."""
    from onnx import TensorProto, helper

    tensor = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe",
                              [tensor("x", TensorProto.FLOAT, [1])], [tensor("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@functools.cache
def provider_usable(ort_name: str, probed: bool = True) -> bool:
    """Whether ONNX Runtime can really run ``ort_name`` here: listed as available and, when ``probed``, a one-node
    session built on it alone runs on it (probed once per process, load errors silenced)."""
    if ort_name not in ort.get_available_providers():
        return False
    if not probed:
        return True
    with silent_onnxruntime():
        try:
            session = ort.InferenceSession(_probe_model(), providers=[ort_name])
            return session.get_providers()[0] == ort_name
        except Exception:  # any failure to build a session means "not usable"
            return False


@dataclass(frozen=True)
class OnnxRuntimeProvider(Runtime):
    """An ONNX Runtime execution provider the tool can validate, reconstruct and benchmark on.

    Attributes:
        key: its ``--provider`` choice.
        ort_name: ONNX Runtime's name, e.g. ``"CPUExecutionProvider"`` (the runtime's :attr:`name`).
        preference: ``auto`` picks the usable runtime of highest preference.
        probed: whether availability must be proven by a session (providers that list themselves where they
            cannot run, as CUDA does).
        cpu_fallback: whether ONNX Runtime may run a node it has no kernel for here on the CPU (``False``: an error).
        unusable: why it may not run, for the error message when it was asked for and cannot.
    """

    key: str
    ort_name: str
    preference: int
    probed: bool = False
    cpu_fallback: bool = True
    unusable: str = ""

    @property
    def name(self) -> str:
        return self.ort_name

    @property
    def label(self) -> str:
        return f"ONNX Runtime ({self.ort_name})"

    @property
    def title(self) -> str:
        return f"the {self.ort_name.removesuffix('ExecutionProvider')} execution provider"

    @property
    def is_onnxruntime(self) -> bool:
        return True

    @property
    def on_cpu(self) -> bool:
        return self.ort_name == CPU

    def usable(self) -> bool:
        return provider_usable(self.ort_name, self.probed)

    def options(self, threads: int | None = None, spinning: bool = False,
                profile_prefix: str | None = None) -> ort.SessionOptions:
        """Session options: ``threads`` intra-op threads (``None``: ONNX Runtime's default), thread spinning off
        unless asked (fair timing, no busy CPU between calls), no CPU fallback unless allowed, a profile written
        under ``profile_prefix`` when given."""
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if not self.cpu_fallback:
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        return options

    def session(self, model: str | Path | bytes, threads: int | None = None,
                spinning: bool = False) -> ort.InferenceSession:
        """A session that runs on exactly this provider (an error otherwise, never a silent fallback)."""
        source = model if isinstance(model, bytes) else str(model)
        session = ort.InferenceSession(source, self.options(threads, spinning), providers=[self.ort_name])
        active = session.get_providers()[0]
        if active != self.ort_name:
            raise RuntimeError(f"ONNX Runtime built a {active} session where {self.ort_name} was asked for")
        return session

    def open(self, path: Path, threads: int | None) -> tuple[Session, ExportMetadata]:
        try:
            session = self.session(path, threads)
        except LOAD_ERRORS as error:
            raise InputError(f"not a loadable ONNX model ({first_line(error)})", path) from None
        return session, metadata_of(session, path)

    def profile(self, model: str | Path, feed: Mapping[str, np.ndarray], runs: int = 1,
                threads: int | None = None) -> list[dict[str, Any]]:
        """Run ``model`` ``runs`` times on ``feed`` in a profiling session; its profile's events (ONNX Runtime's
        JSON list: per node ``{"cat": "Node", "name": "<node>_kernel_time", "dur": µs, "args": {"provider",
        "op_name"}}``, per run ``{"cat": "Session", "name": "model_run"}``)."""
        with tempfile.TemporaryDirectory() as folder:
            options = self.options(threads, profile_prefix=str(Path(folder) / "profile"))
            session = ort.InferenceSession(str(model), options, providers=[self.ort_name])
            for _ in range(runs):
                session.run(None, dict(feed))
            return json.loads(Path(session.end_profiling()).read_text())

    def node_providers(self, model: Path, feed: Mapping[str, np.ndarray]) -> dict[str, str]:
        return {
            event["name"].removesuffix("_kernel_time"): event["args"]["provider"]
            for event in self.profile(model, feed)
            if event.get("cat") == "Node" and "provider" in event.get("args", {})
        }
