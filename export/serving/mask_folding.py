"""The served model: an export with its training mask folded into the graph, checked against the export.

A serving system's batcher joins requests along their first axis, but the exported graph takes one ``mask``
``(H, W)`` for the whole batch. The served model therefore has the training mask (the export's ``mask`` metadata,
uncentred) as a constant initializer in place of the ``mask`` input, and takes only ``kspace_real``, ``kspace_imag``
``(B, H, W)``: requests of one model always share its mask, so the batcher may join any of them, as one scanner
protocol matches one model. Another mask means another model entry (export the model trained for it). The other
choice, a batched mask ``(B, H, W)``, would send H×W more floats per slice and let one batch mix masks the model was
not trained for.

Folding is graph surgery with ``onnx``; the folded model keeps the export's metadata (its ``inputs`` entry updated),
passes ``onnx.checker``, and its outputs on a test batch must equal the original export's with the mask fed, to
:data:`FOLD_RELATIVE_TOLERANCE` (a few rounding steps of the output's dtype) times the largest output value: ONNX
Runtime may now pre-compute the mask-dependent part of the graph, which changes at most the rounding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.errors import InputError, first_line
from compressor.export.exported_file import INPUT_NAMES, ExportMetadata, load_exported, metadata_of, set_metadata
from compressor.export.graph.validate import ExportValidationError, compare_outputs
from compressor.export.runtimes.base import Runtime
from compressor.export.runtimes.session import graph_feed

MASK_INPUT = INPUT_NAMES[2]
FOLDED_INPUTS = INPUT_NAMES[:2]
FOLD_RELATIVE_TOLERANCE = 16
"""Folded vs original export: max abs difference <= this x the output dtype's machine epsilon x max |original|."""
TEST_BATCH = 2


@dataclass(frozen=True)
class FoldedExport:
    """An export with its mask folded in, checked.

    Attributes:
        source: the export's file.
        metadata: the export's metadata.
        model: the folded graph (inputs :data:`FOLDED_INPUTS`; the metadata's ``inputs`` entry names them).
        max_abs_difference: max |folded - original export with the mask fed| over every output of the test batch.
        tolerance: the largest difference the check allowed (:data:`FOLD_RELATIVE_TOLERANCE`).
    """

    source: Path
    metadata: ExportMetadata
    model: onnx.ModelProto
    max_abs_difference: float
    tolerance: float


def fold_mask(proto: onnx.ModelProto, mask: np.ndarray) -> onnx.ModelProto:
    """A copy of the exported graph whose ``mask`` input is replaced by a constant initializer holding ``mask``.

    Args:
        proto: an exported graph with inputs ``kspace_real``, ``kspace_imag`` ``(B, H, W)`` and ``mask`` ``(H, W)``.
        mask: the training mask ``(H, W)``, 0/1, uncentred (the export's metadata); stored in the dtype of the
            graph's ``mask`` input.

    Returns:
        The graph with inputs ``kspace_real``, ``kspace_imag`` only, the same outputs, and the metadata's
        ``inputs`` entry naming those two.
    """
    folded = copy.deepcopy(proto)
    graph_mask = next((value for value in folded.graph.input if value.name == MASK_INPUT), None)
    if graph_mask is None:
        raise ValueError(f"the graph has no {MASK_INPUT!r} input to fold")
    declared = tuple(dim.dim_value for dim in graph_mask.type.tensor_type.shape.dim)
    if declared != mask.shape:
        raise ValueError(f"the graph's {MASK_INPUT!r} input is {declared}, the mask {mask.shape}")
    dtype = helper.tensor_dtype_to_np_dtype(graph_mask.type.tensor_type.elem_type)
    folded.graph.input.remove(graph_mask)
    folded.graph.initializer.append(numpy_helper.from_array(np.asarray(mask, dtype=dtype), MASK_INPUT))
    set_metadata(folded, replace(metadata_of(proto), inputs=tuple(value.name for value in folded.graph.input)))
    return folded


def sample_kspace(mask: np.ndarray, count: int = TEST_BATCH, seed: int = 0) -> np.ndarray:
    """Complex Gaussian k-space ``(count, H, W)`` complex64, uncentred, undersampled with ``mask`` ``(H, W)``."""
    rng = np.random.default_rng(seed)
    kspace = rng.standard_normal((count, *mask.shape)) + 1j * rng.standard_normal((count, *mask.shape))
    return (kspace * (np.asarray(mask) != 0)).astype(np.complex64)


def check_folded(original: onnx.ModelProto, folded: onnx.ModelProto, mask: np.ndarray, runtime: Runtime,
                 source: Path) -> tuple[float, float]:
    """Run both graphs on ``runtime`` on :func:`sample_kspace`: the original fed ``mask``, the folded one without.

    Returns ``(max abs difference, tolerance)`` over every output; raises
    :class:`~compressor.export.graph.validate.ExportValidationError` when an output differs by more than
    :data:`FOLD_RELATIVE_TOLERANCE` x the output dtype's epsilon x its max |original|, or the outputs differ.
    """
    types = {value.name: helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
             for value in original.graph.input}
    feed = {name: array.astype(types[name]) for name, array in graph_feed(sample_kspace(mask), mask).items()}
    names = [value.name for value in original.graph.output]
    sessions = [runtime.session(graph.SerializeToString()) for graph in (original, folded)]
    reference = dict(zip(names, sessions[0].run(names, feed), strict=True))
    candidate = dict(zip(names, sessions[1].run(names, {name: feed[name] for name in FOLDED_INPUTS}), strict=True))
    relative = FOLD_RELATIVE_TOLERANCE * max(float(np.finfo(value.dtype).eps) for value in reference.values())
    comparisons, failures = compare_outputs(reference, candidate, f"mask folded ({runtime.name})", relative)
    if failures:
        raise ExportValidationError(f"{source.name}: the model with its mask folded in differs from the export: "
                                    f"{'; '.join(map(str, failures))}", failures)
    return (max(c.max_abs_error for c in comparisons), min(c.tolerance for c in comparisons))


def fold_export(path: Path, runtime: Runtime) -> FoldedExport:
    """Load the export ``path``, fold its mask in (:func:`fold_mask`) and check the result (``onnx.checker``,
    :func:`check_folded` on ``runtime``). A file that is not this tool's export with :data:`INPUT_NAMES`, or a folded
    model the checker refuses, is an :class:`InputError` naming ``path``."""
    if not path.is_file():
        raise InputError("exported model file not found", path)
    proto = load_exported(path)
    metadata = metadata_of(proto, path)
    if [value.name for value in proto.graph.input] != list(INPUT_NAMES):
        raise InputError(f"inputs {[value.name for value in proto.graph.input]}, expected {list(INPUT_NAMES)}: "
                         "only a file of 'compress export' is served", path)
    try:
        folded = fold_mask(proto, metadata.mask)
    except ValueError as error:
        raise InputError(str(error), path) from None
    try:
        onnx.checker.check_model(folded, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise InputError(f"the model with its mask folded in fails onnx.checker ({first_line(error)})", path) from None
    difference, tolerance = check_folded(proto, folded, metadata.mask, runtime, path)
    return FoldedExport(path, metadata, folded, difference, tolerance)
