"""Runtimes: what runs an exported file on the scanner side, with ``numpy`` and the runtime's own package only (no
PyTorch).

Modules: :mod:`~compressor.export.runtimes.base` (the :class:`Runtime` and :class:`Session` contracts),
:mod:`~compressor.export.runtimes.onnxruntime_provider` (ONNX Runtime's execution providers, CPU and CUDA),
:mod:`~compressor.export.runtimes.openvino_runtime` (OpenVINO's CPU runtime),
:mod:`~compressor.export.runtimes.registry` (:data:`RUNTIMES`, the ``--provider`` choices, :func:`choose_runtime`),
:mod:`~compressor.export.runtimes.session` (an exported file opened for inference: :func:`open_exported`),
:mod:`~compressor.export.runtimes.timing` (interleaved timing) and :mod:`~compressor.export.runtimes.cpu` (the CPU
and its instruction sets, which every INT8 and latency figure names).

Every runtime runs the same ONNX file behind the same ``run(output_names, feed)`` call and is validated the same way
(every node run by it, outputs against PyTorch); results and logs name it by :attr:`Runtime.name` and reports by
:attr:`Runtime.label`.

Adding a runtime: a :class:`Runtime` subclass (``name``, ``label``, ``title``, ``on_cpu``, ``usable``, ``session``,
``open``, ``node_providers``) and one ``register(...)`` line in :mod:`~compressor.export.runtimes.registry`.
"""

from compressor.export.runtimes.base import Runtime, Session
from compressor.export.runtimes.registry import AUTO, RUNTIMES, choose_runtime, require_onnxruntime, runtime_choices
from compressor.export.runtimes.session import ExportedModel, graph_feed, open_exported

__all__ = ["AUTO", "RUNTIMES", "ExportedModel", "Runtime", "Session", "choose_runtime", "graph_feed",
           "open_exported", "require_onnxruntime", "runtime_choices"]
