"""Triton's ``config.pbtxt``: the ``ModelConfig`` of a served model and its protobuf text format.

Field names are those of Triton's ``model_config.proto``: ``backend: "onnxruntime"``; ``max_batch_size`` (> 0, so
``dims`` exclude the batch axis, which must be dynamic in the graph); inputs and outputs with the graph's names,
element types (``TYPE_FP32`` for float32, ``TYPE_FP16`` for float16, ...) and per-slice dims, a per-slice scalar such
as ``scale`` ``(B,)`` as ``dims: [1]`` with ``reshape: { shape: [] }`` (Triton's convention for a tensor whose batch
axis is its whole shape); ``instance_group`` ``KIND_CPU`` or ``KIND_GPU``; ``dynamic_batching`` with a queue delay and
no preferred sizes (the batcher then forms the largest batch it can); the ONNX Runtime backend's
``intra_op_thread_count`` / ``inter_op_thread_count`` parameters; ``model_warmup`` with one random batch of one
slice. The text is rendered here from a nested description (:func:`to_text_format`), so exporting needs no Triton
package; the tests parse it with ``tritonclient``'s ``ModelConfig``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from compressor.errors import InputError

BACKEND = "onnxruntime"
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
"""``--triton-instance`` choices and the ``instance_group`` kind each writes."""
TRITON_TYPES = {
    TensorProto.FLOAT: "TYPE_FP32", TensorProto.FLOAT16: "TYPE_FP16", TensorProto.BFLOAT16: "TYPE_BF16",
    TensorProto.DOUBLE: "TYPE_FP64", TensorProto.INT8: "TYPE_INT8", TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.INT32: "TYPE_INT32", TensorProto.INT64: "TYPE_INT64", TensorProto.BOOL: "TYPE_BOOL",
}
"""ONNX element type -> Triton ``DataType`` (the table in Triton's model configuration docs)."""
WARMUP_NAME = "random_slice"


@dataclass(frozen=True)
class TritonOptions:
    """How the repository's models are served.

    Attributes:
        max_batch_size: the largest batch Triton forms (``max_batch_size``; dims exclude the batch axis).
        instance_kind: a key of :data:`INSTANCE_KINDS`: ``cpu`` (``KIND_CPU``) or ``gpu`` (``KIND_GPU``, every GPU).
        instance_count: model instances per device.
        intra_op_threads: ONNX Runtime intra-op threads per instance (``0``: ONNX Runtime's default, one per core).
        max_queue_delay_microseconds: how long the dynamic batcher may hold a request to fill a batch.
    """

    max_batch_size: int = 8
    instance_kind: str = "cpu"
    instance_count: int = 1
    intra_op_threads: int = 0
    max_queue_delay_microseconds: int = 500

    def __post_init__(self) -> None:
        if self.instance_kind not in INSTANCE_KINDS:
            raise InputError(f"unknown Triton instance kind {self.instance_kind!r}; valid: {', '.join(INSTANCE_KINDS)}")
        if self.max_batch_size < 1 or self.instance_count < 1 or self.intra_op_threads < 0:
            raise InputError(f"Triton options need max_batch_size >= 1, instance_count >= 1 and intra_op_threads >= 0, "
                             f"got {self.max_batch_size}, {self.instance_count}, {self.intra_op_threads}")


@dataclass(frozen=True)
class TensorConfig:
    """One input or output as ``config.pbtxt`` declares it.

    Attributes:
        name: the graph's tensor name.
        data_type: Triton's type name, e.g. ``TYPE_FP32``.
        dims: the per-slice shape (batch axis excluded; ``-1`` for a dynamic axis); ``(1,)`` for a tensor whose only
            axis is the batch axis, which ``reshape_to_scalar`` then marks.
        reshape_to_scalar: the graph's tensor is ``(B,)``: ``dims: [1]`` with ``reshape: { shape: [] }``.
    """

    name: str
    data_type: str
    dims: tuple[int, ...]
    reshape_to_scalar: bool = False

    def fields(self) -> dict[str, Any]:
        """The ``ModelInput``/``ModelOutput`` fields."""
        fields: dict[str, Any] = {"name": self.name, "data_type": Keyword(self.data_type), "dims": list(self.dims)}
        if self.reshape_to_scalar:
            fields["reshape"] = {"shape": []}
        return fields


class Keyword(str):
    """A protobuf enum value (e.g. ``KIND_CPU``): written bare in text format, not quoted."""


def _scalar_text(value: Any) -> str:
    if isinstance(value, Keyword):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # ASCII with \" and \\ escapes: the same string in protobuf text format
    raise TypeError(f"no text format for {type(value).__name__} {value!r}")


def to_text_format(fields: Mapping[str, Any], indent: int = 0) -> str:
    """Protobuf text format of a message described as nested values.

    A mapping is a message (``key { ... }``), a list of mappings a repeated message (one block each), a list of
    scalars a repeated scalar (``key: [1, 2]``), a :class:`Keyword` an enum value; strings are quoted, booleans
    ``true``/``false``. A protobuf map is a repeated message of ``key`` and ``value``.
    """
    pad = "  " * indent
    lines = []
    for key, value in fields.items():
        messages = [value] if isinstance(value, Mapping) else value if _is_message_list(value) else None
        if messages is not None:
            for message in messages:
                lines += [f"{pad}{key} {{", to_text_format(message, indent + 1), f"{pad}}}"]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [{', '.join(_scalar_text(item) for item in value)}]")
        else:
            lines.append(f"{pad}{key}: {_scalar_text(value)}")
    return "\n".join(line for line in lines if line)


def _is_message_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, Mapping) for item in value)


def tensor_configs(values: Sequence[onnx.ValueInfoProto], source: Path) -> list[TensorConfig]:
    """The ``config.pbtxt`` declarations of graph inputs or outputs: batch axis (first, must be dynamic) excluded.

    Raises :class:`InputError` naming ``source`` for a fixed batch axis, a scalar or an element type Triton lacks.
    """
    configs = []
    for value in values:
        tensor = value.type.tensor_type
        axes = list(tensor.shape.dim)
        if not axes or axes[0].HasField("dim_value"):
            fixed = f"fixed at {axes[0].dim_value}" if axes else "missing"
            raise InputError(f"{value.name}: its batch axis is {fixed}; Triton's batching needs a dynamic first "
                             "axis", source)
        if tensor.elem_type not in TRITON_TYPES:
            raise InputError(f"{value.name}: element type {TensorProto.DataType.Name(tensor.elem_type)} has no "
                             "Triton data type", source)
        dims = tuple(axis.dim_value if axis.HasField("dim_value") else -1 for axis in axes[1:])
        configs.append(TensorConfig(value.name, TRITON_TYPES[tensor.elem_type], dims or (1,), not dims))
    return configs


def model_config(name: str, inputs: Sequence[TensorConfig], outputs: Sequence[TensorConfig],
                 options: TritonOptions) -> dict[str, Any]:
    """The ``ModelConfig`` of model ``name`` as nested values for :func:`to_text_format` (module docstring)."""
    threads = {"intra_op_thread_count": options.intra_op_threads, "inter_op_thread_count": 1}
    warmup_inputs = [{"key": tensor.name, "value": {"data_type": Keyword(tensor.data_type), "dims": list(tensor.dims),
                                                    "random_data": True}} for tensor in inputs]
    return {
        "name": name,
        "backend": BACKEND,
        "max_batch_size": options.max_batch_size,
        "input": [tensor.fields() for tensor in inputs],
        "output": [tensor.fields() for tensor in outputs],
        "instance_group": [{"kind": Keyword(INSTANCE_KINDS[options.instance_kind]), "count": options.instance_count}],
        "dynamic_batching": {"max_queue_delay_microseconds": options.max_queue_delay_microseconds},
        # inter-op 1: the graph is one chain of nodes, executed sequentially (ONNX Runtime's default mode)
        "parameters": [{"key": key, "value": {"string_value": str(count)}} for key, count in threads.items()],
        "model_warmup": [{"name": WARMUP_NAME, "batch_size": 1, "inputs": warmup_inputs}],
    }


def config_text(name: str, model: onnx.ModelProto, options: TritonOptions, source: Path) -> str:
    """``config.pbtxt`` of the model ``name`` serving the graph ``model`` (``source`` names it in errors)."""
    config = model_config(name, tensor_configs(model.graph.input, source), tensor_configs(model.graph.output, source),
                          options)
    return to_text_format(config) + "\n"
