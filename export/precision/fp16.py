"""fp16 of the exported fp32 scanner graph (:func:`convert_fp16`): the convolutions (and the activations between them)
in fp16, their weights fp16 initializers; everything else (normalisation, DF, outputs) fp32 with Casts at the
borders; inputs and outputs fp32. It is for GPU deployment: ONNX Runtime's CPU provider runs many fp16 ops through
casts to fp32, so a CPU validation checks the fp16 rounding only, not fp16 arithmetic or speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compressor.export.exported_file import Fp16Record

FP16_METHOD = ("fp16 convolutions and activations (initializers converted, Casts at the borders), normalisation, DF "
               "and outputs fp32")
"""An fp16 file's ``precision_method``."""
FP16_OPS = frozenset({"Conv", "Relu", "LeakyRelu", "PRelu"})
"""The ops computed in fp16: the CNN blocks' convolutions and the activations between them; every other node
(normalisation, DF, slicing, outputs) stays fp32."""
FP16_CPU_NOTE = ("validated on CPU: ONNX Runtime's CPU provider (and OpenVINO at f32 inference precision) computes "
                 "many fp16 ops through casts to fp32, so this checks fp16 rounding only, not fp16 arithmetic or "
                 "speed (measure those on a GPU)")


@dataclass
class Fp16Conversion:
    """The fp16 graph and which nodes are fp16."""

    graph: onnx.ModelProto
    fp16_nodes: list[str] = field(default_factory=list)


def convert_fp16(graph: onnx.ModelProto) -> Fp16Conversion:
    """``graph`` with its :data:`FP16_OPS` nodes in fp16 and everything else fp32, inputs and outputs fp32.

    The weights read only by fp16 nodes become fp16 initializers; a Cast to fp16 is placed where an fp16 node reads
    an fp32 tensor, and a Cast back to fp32 (under the tensor's own name) where an fp32 node or a graph output reads
    an fp16 node's output. (ONNX Runtime's ``onnxruntime.transformers.float16`` converter with a node block list
    writes duplicate Cast names for this graph, hence this direct conversion.)
    """
    model = onnx.ModelProto.FromString(graph.SerializeToString())
    nodes = list(model.graph.node)
    fp16 = {node.name for node in nodes if node.op_type in FP16_OPS}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {value.name for value in model.graph.output}
    for initializer in model.graph.initializer:
        if (initializer.data_type == TensorProto.FLOAT and initializer.name in readers
                and all(reader.name in fp16 for reader in readers[initializer.name])):
            initializer.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(initializer).astype(np.float16),
                                                         initializer.name))
    half = {init.name for init in model.graph.initializer if init.data_type == TensorProto.FLOAT16}
    rebuilt: list[onnx.NodeProto] = []
    for node in nodes:
        if node.name not in fp16:
            rebuilt.append(node)
            continue
        for index, name in enumerate(node.input):
            if name and name not in half:
                cast_name = f"{name}_to_fp16"
                if cast_name not in half:
                    rebuilt.append(helper.make_node("Cast", [name], [cast_name], f"{cast_name}_cast",
                                                    to=TensorProto.FLOAT16))
                    half.add(cast_name)
                node.input[index] = cast_name
        rebuilt.append(node)
        for index, name in enumerate(node.output):
            half_name = f"{name}_fp16"
            node.output[index] = half_name
            half.add(half_name)
            for reader in readers.get(name, []):
                if reader.name in fp16:
                    reader.input[:] = [half_name if value == name else value for value in reader.input]
            if name in graph_outputs or any(reader.name not in fp16 for reader in readers.get(name, [])):
                rebuilt.append(helper.make_node("Cast", [half_name], [name], f"{name}_to_fp32_cast",
                                                to=TensorProto.FLOAT))
    del model.graph.node[:]
    model.graph.node.extend(rebuilt)
    del model.graph.value_info[:]  # fp32 shapes of tensors that are fp16 now; ONNX Runtime infers them again
    return Fp16Conversion(model, sorted(fp16))


def fp16_record(conversion: Fp16Conversion, bound: float) -> Fp16Record:
    """What the fp16 file records of how it was made (its ``fp16`` key), with its PSNR-loss ``bound`` (dB)."""
    return Fp16Record(tuple(conversion.fp16_nodes), bound, FP16_CPU_NOTE)
