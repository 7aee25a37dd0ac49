"""The registered runtimes (:data:`RUNTIMES`, one line each) and the choice among them (:func:`choose_runtime`).

The CLI's ``--provider`` choices are ``auto`` plus the registered keys (:func:`runtime_choices`).
"""

from __future__ import annotations

from compressor.errors import InputError
from compressor.export.runtimes.base import Runtime
from compressor.export.runtimes.onnxruntime_provider import CPU, CUDA, OnnxRuntimeProvider
from compressor.export.runtimes.openvino_runtime import OpenVINORuntime
from compressor.registry import Registry

AUTO = "auto"

RUNTIMES: Registry[Runtime] = Registry("runtime")


def register(runtime: Runtime) -> Runtime:
    """Register ``runtime`` under its :attr:`~Runtime.key`."""
    return RUNTIMES.register(runtime.key)(runtime)


register(OnnxRuntimeProvider("cpu", CPU, preference=0))
register(OnnxRuntimeProvider("cuda", CUDA, preference=1, probed=True, cpu_fallback=False,
                             unusable="no GPU or CUDA libraries missing"))
register(OpenVINORuntime())


def runtime_choices() -> list[str]:
    """``auto`` and every registered runtime's key: the CLI's ``--provider`` choices."""
    return [AUTO, *RUNTIMES.names()]


def choose_runtime(requested: str = AUTO) -> Runtime:
    """The runtime to use: for ``"auto"`` the usable registered runtime of highest preference (CUDA when really
    usable, else ONNX Runtime's CPU provider); for a registered key, that runtime, which must be usable (else an
    :class:`InputError` saying why)."""
    if requested not in runtime_choices():
        raise InputError(f"unknown provider {requested!r}; valid: {', '.join(runtime_choices())}")
    if requested == AUTO:
        ranked = sorted((RUNTIMES.get(key) for key in RUNTIMES), key=lambda runtime: -runtime.preference)
        return next(runtime for runtime in ranked if runtime.usable())
    runtime = RUNTIMES.get(requested)
    if not runtime.usable():
        reason = f" ({runtime.unusable})" if runtime.unusable else ""
        raise InputError(f"{runtime.title} was asked for but cannot run here{reason}; use --provider cpu")
    return runtime


def require_onnxruntime(runtime: Runtime, what: str) -> OnnxRuntimeProvider:
    """``runtime`` if it is an ONNX Runtime provider, else an :class:`InputError` saying that ``what`` needs ONNX
    Runtime (its profiler, or a comparison against it)."""
    if not isinstance(runtime, OnnxRuntimeProvider):
        raise InputError(f"{what} runs on ONNX Runtime only, not on {runtime.title}; choose --provider cpu or cuda")
    return runtime


def onnxruntime_cpu() -> OnnxRuntimeProvider:
    """ONNX Runtime's CPU provider (the runtime of the INT8 speed check and Triton's fold check)."""
    return require_onnxruntime(RUNTIMES.get("cpu"), "ONNX Runtime's CPU provider")
