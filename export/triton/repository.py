"""A Triton Inference Server model repository from validated exports: ``compress export --triton-repo DIR``.

Layout, one entry per exported file (any precision)::

    DIR/<model>/config.pbtxt        ModelConfig in protobuf text format, backend "onnxruntime"
    DIR/<model>/1/model.onnx        the export with its training mask folded in (below)

**The mask is folded into the graph.** Triton batches every input along its first axis, but the exported graph takes
one ``mask`` ``(H, W)`` for the whole batch. The repository's model therefore has the training mask (the export's
``mask`` metadata, uncentred) as a constant initializer in place of the ``mask`` input, and takes only
``kspace_real``, ``kspace_imag`` ``(B, H, W)``: requests of one model always share its mask, so the dynamic batcher
may join any of them, as one scanner protocol matches one model. Another mask means another model entry (export the
model trained for it). The other choice, a batched mask ``(B, H, W)``, would send H×W more floats per slice and let
one batch mix masks the model was not trained for. Folding is graph surgery with ``onnx``; the folded file keeps the
export's metadata (its ``inputs`` entry updated), passes ``onnx.checker``, and before anything is written its outputs
on a test batch must equal the original export's with the mask fed, to :data:`FOLD_RELATIVE_TOLERANCE` (a few
rounding steps of the output's dtype) times the largest output value: ONNX Runtime may now pre-compute the
mask-dependent part of the graph, which changes at most the rounding.

**Names.** Triton model names are folder names (and URL path segments): :func:`triton_model_name` maps an export's
name, e.g. the ``results.json`` name ``sft_kd/at/d3c5@4x``, to ``sft_kd-at-d3c5-4x``: every run of characters other
than letters, digits, ``_`` and ``.`` becomes one ``-``; an export that is not fp32 (its ``precision`` metadata)
gets ``-<precision>`` appended, e.g. ``sft_kd-at-d3c5-4x-int8``.

**config.pbtxt** (field names of Triton's ``model_config.proto``): ``backend: "onnxruntime"``; ``max_batch_size``
(> 0, so ``dims`` exclude the batch axis, which must be dynamic in the graph); inputs and outputs with the graph's
names, element types (``TYPE_FP32`` for float32, ``TYPE_FP16`` for float16, ...) and per-slice dims, a per-slice
scalar such as ``scale`` ``(B,)`` as ``dims: [1]`` with ``reshape: { shape: [] }`` (Triton's convention for a
tensor whose batch axis is its whole shape); ``instance_group`` ``KIND_CPU`` or ``KIND_GPU``; ``dynamic_batching``
with a queue delay and no preferred sizes (the batcher then forms the largest batch it can); the ONNX Runtime
backend's ``intra_op_thread_count`` / ``inter_op_thread_count`` parameters; ``model_warmup`` with one random batch of
one slice. The text is rendered here from a nested description (:func:`to_text_format`), so exporting needs no
Triton package; the tests parse it with ``tritonclient``'s ``ModelConfig``.

**Existing entries.** Every entry is prepared and checked before any is written. ``DIR/<model>`` that holds the same
``1/model.onnx`` (same bytes) is kept, its ``config.pbtxt`` rewritten (atomically) only if the options changed; one
that holds another model, or anything else, is an :class:`~compressor.errors.InputError` naming it and what differs,
and nothing is written. A new entry is written in a hidden folder beside it and renamed into place when complete.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from compressor.errors import InputError, first_line
from compressor.export.exported_file import (
    INPUT_NAMES,
    Precision,
    metadata_of,
    metadata_properties,
    read_exported_metadata,
    set_metadata,
)
from compressor.export.graph.validate import ExportValidationError, compare_outputs
from compressor.export.runtimes.base import Runtime
from compressor.export.runtimes.registry import choose_runtime, onnxruntime_cpu
from compressor.export.runtimes.session import graph_feed
from compressor.io import atomic_path

BACKEND = "onnxruntime"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
VERSION = "1"
MASK_INPUT = INPUT_NAMES[2]
FOLDED_INPUTS = INPUT_NAMES[:2]
FULL_PRECISION = Precision.FP32
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
"""``--triton-instance`` choices and the ``instance_group`` kind each writes."""
TRITON_TYPES = {
    TensorProto.FLOAT: "TYPE_FP32", TensorProto.FLOAT16: "TYPE_FP16", TensorProto.BFLOAT16: "TYPE_BF16",
    TensorProto.DOUBLE: "TYPE_FP64", TensorProto.INT8: "TYPE_INT8", TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.INT32: "TYPE_INT32", TensorProto.INT64: "TYPE_INT64", TensorProto.BOOL: "TYPE_BOOL",
}
"""ONNX element type -> Triton ``DataType`` (the table in Triton's model configuration docs)."""
FOLD_RELATIVE_TOLERANCE = 16
"""Folded vs original export: max abs difference <= this x the output dtype's machine epsilon x max |original|."""
TEST_BATCH = 2
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
class TritonSource:
    """A validated export to serve.

    Attributes:
        name: the export's name: the ``results.json`` name (``sft_kd/at/d3c5@4x``), a stage or weights file stem.
        path: its ONNX file, with this tool's metadata (any precision; the ``precision`` metadata names it).
    """

    name: str
    path: Path


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


@dataclass(frozen=True)
class TritonEntry:
    """A model entry of the repository.

    Attributes:
        name: the Triton model name (the folder name).
        folder: ``DIR/<name>``.
        source: the export it was made from.
        precision: the export's precision (``fp32`` when its metadata names none).
        action: ``"written"`` (new), ``"unchanged"`` (the same model and config were there) or ``"config updated"``
            (the same model file was there, with another config).
        max_abs_difference: max |folded - original export with the mask fed| over every output of the test batch.
        tolerance: the largest difference the check allowed (see :data:`FOLD_RELATIVE_TOLERANCE`).
    """

    name: str
    folder: Path
    source: Path
    precision: str
    action: str
    max_abs_difference: float
    tolerance: float


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


def triton_model_name(name: str, precision: str = FULL_PRECISION) -> str:
    """The Triton model (folder) name of an export called ``name`` of ``precision``.

    Every run of characters other than ASCII letters, digits, ``_`` and ``.`` becomes ``-``, leading and trailing
    ``-``/``.`` are dropped, and a precision other than fp32 is appended: ``sft_kd/at/d3c5@4x`` ->
    ``sft_kd-at-d3c5-4x``; with ``int8``, ``sft_kd-at-d3c5-4x-int8``.
    """
    base = re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.")
    if not base:
        raise InputError(f"the export name {name!r} has no letters or digits to name a Triton model")
    return base if precision == FULL_PRECISION else f"{base}-{triton_model_name(precision)}"


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
    """The ``ModelConfig`` of model ``name`` as nested values for :func:`to_text_format` (docstring of the module)."""
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


def sample_kspace(mask: np.ndarray, count: int = TEST_BATCH, seed: int = 0) -> np.ndarray:
    """Complex Gaussian k-space ``(count, H, W)`` complex64, uncentred, undersampled with ``mask`` ``(H, W)``."""
    rng = np.random.default_rng(seed)
    kspace = rng.standard_normal((count, *mask.shape)) + 1j * rng.standard_normal((count, *mask.shape))
    return (kspace * (np.asarray(mask) != 0)).astype(np.complex64)


def check_folded(original: onnx.ModelProto, folded: onnx.ModelProto, mask: np.ndarray, runtime: Runtime,
                 source: Path) -> tuple[float, float]:
    """Run both graphs with ONNX Runtime on :func:`sample_kspace`: the original fed ``mask``, the folded one without.

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


@dataclass(frozen=True)
class _PreparedEntry:
    """An entry ready to write: the folded model's bytes and the config text."""

    name: str
    source: Path
    precision: Precision
    model_bytes: bytes
    config_text: str
    max_abs_difference: float
    tolerance: float


def _prepare(source: TritonSource, options: TritonOptions, runtime: Runtime) -> _PreparedEntry:
    """Fold, check and describe one export (nothing written)."""
    path = Path(source.path)
    if not path.is_file():
        raise InputError("exported model file not found", path)
    try:
        proto = onnx.load(str(path))
    except (OSError, DecodeError) as error:
        raise InputError(f"not a loadable ONNX model ({first_line(error)})", path) from None
    metadata = metadata_of(proto, path)
    if [value.name for value in proto.graph.input] != list(INPUT_NAMES):
        raise InputError(f"inputs {[value.name for value in proto.graph.input]}, expected {list(INPUT_NAMES)}: "
                         "only a file of 'compress export' is served", path)
    precision = metadata.precision
    name = triton_model_name(source.name, precision)
    try:
        folded = fold_mask(proto, metadata.mask)
    except ValueError as error:
        raise InputError(str(error), path) from None
    try:
        onnx.checker.check_model(folded, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise InputError(f"the model with its mask folded in fails onnx.checker ({first_line(error)})", path) from None
    difference, tolerance = check_folded(proto, folded, metadata.mask, runtime, path)
    config = model_config(name, tensor_configs(folded.graph.input, path), tensor_configs(folded.graph.output, path),
                          options)
    return _PreparedEntry(name, path, precision, folded.SerializeToString(), to_text_format(config) + "\n",
                          difference, tolerance)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _difference(folder: Path, entry: _PreparedEntry) -> str | None:
    """Why the existing ``folder`` cannot stand for ``entry`` (``None`` when it holds the same model file)."""
    if not folder.is_dir():
        return "exists and is not a folder"
    existing_file = folder / VERSION / MODEL_FILE
    if not existing_file.is_file():
        return f"exists without {VERSION}/{MODEL_FILE}: not a model entry written from this export"
    existing = existing_file.read_bytes()
    if existing == entry.model_bytes:
        return None
    try:
        theirs = metadata_properties(onnx.load_from_string(existing))
    except DecodeError:  # an unreadable file is simply another model
        theirs = {}
    ours = metadata_properties(onnx.load_from_string(entry.model_bytes))
    keys = sorted(key for key in set(theirs) | set(ours) if theirs.get(key) != ours.get(key))
    detail = f"metadata differs in {', '.join(keys)}" if keys else "same metadata, other graph or weights"
    return (f"holds another model: {VERSION}/{MODEL_FILE} is sha256 {_digest(existing)}, this export's "
            f"{_digest(entry.model_bytes)} ({detail}) from {entry.source}; remove it or choose another --triton-repo")


@dataclass(frozen=True)
class PlannedEntry:
    """An export about to be written and served, as far as it is known before exporting: the name and precision
    that make its Triton model name (:func:`triton_model_name`) and the metadata that will tell which model it is.

    Attributes:
        name: as :attr:`TritonSource.name` (the ``results.json`` name, or the weights file stem).
        precision: the file's precision (``"fp32"``, ``"int8"``, ``"fp16"``).
        architecture, mask_digest, config_key, image_channels: what its metadata will record
            (:class:`~compressor.export.exported_file.ExportMetadata`; ``config_key`` ``None`` for bare weights).
    """

    name: str
    precision: str
    architecture: str
    mask_digest: str
    config_key: str | None
    image_channels: int

    @property
    def triton_name(self) -> str:
        return triton_model_name(self.name, self.precision)


def _planned_difference(folder: Path, planned: PlannedEntry) -> str | None:
    """Why the existing entry ``folder`` cannot be ``planned``'s, from its model file's metadata (``None`` when the
    metadata names the same model: whether it holds the same weights is known only after the export)."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        return "exists and is not a folder"
    existing = folder / VERSION / MODEL_FILE
    if not existing.is_file():
        return f"exists without {VERSION}/{MODEL_FILE}: not a model entry written by this tool"
    try:
        metadata = read_exported_metadata(existing)
    except (OSError, DecodeError, InputError) as error:
        return f"holds a model this tool cannot read as its export ({first_line(error)})"
    theirs = {"architecture": metadata.architecture, "precision": metadata.precision,
              "mask_digest": metadata.mask_digest, "config_key": metadata.config_key,
              "image_channels": metadata.image_channels}
    ours = {key: getattr(planned, key) for key in theirs}
    differing = [f"{key} {theirs[key]!r} (this export: {ours[key]!r})" for key in theirs if theirs[key] != ours[key]]
    if not differing:
        return None
    return f"holds another model: {', '.join(differing)}; remove it or choose another --triton-repo"


def check_planned_entries(planned: Sequence[PlannedEntry], repository: str | Path) -> None:
    """Refuse, before anything is exported, what :func:`write_triton_repository` would refuse after: a repository
    that is a file, two exports with one Triton name, or an existing ``repository/<name>`` that is not an entry of
    this tool or whose model's metadata names another model (architecture, precision, mask, stage key, image
    channels). An entry that agrees on all of these but holds other weights is found after the export, by
    :func:`write_triton_repository`'s byte comparison.

    Raises:
        InputError: naming ``repository/<name>`` (or the repository) and the problem.
    """
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise InputError("the Triton model repository is a file, not a folder", repository)
    by_name: dict[str, str] = {}
    for entry in planned:
        name = entry.triton_name
        if name in by_name:
            raise InputError(f"{by_name[name]!r} and {entry.name!r} ({entry.precision}) both map to the Triton model "
                             f"name {name!r}", repository)
        by_name[name] = entry.name
        problem = _planned_difference(repository / name, entry)
        if problem is not None:
            raise InputError(problem, repository / name)


@contextmanager
def _staged_folder(folder: Path) -> Iterator[Path]:
    """A hidden temporary folder beside ``folder``, renamed onto it only if the block completes."""
    staged = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield staged
        staged.chmod(0o777 & ~_umask())  # mkdtemp creates 0700; give the entry the usual permissions
        os.rename(staged, folder)
    finally:
        if staged.exists():
            shutil.rmtree(staged)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_new(folder: Path, entry: _PreparedEntry) -> None:
    with _staged_folder(folder) as staged:
        (staged / VERSION).mkdir()
        (staged / VERSION / MODEL_FILE).write_bytes(entry.model_bytes)
        (staged / CONFIG_FILE).write_text(entry.config_text)


def write_triton_repository(sources: Sequence[TritonSource], repository: str | Path,
                            options: TritonOptions = TritonOptions(), provider: str = "auto") -> list[TritonEntry]:
    """Write a Triton model repository entry ``repository/<model>`` for every export in ``sources``.

    Every export is folded, checked against itself (:func:`check_folded`, on ONNX Runtime's ``provider``) and
    compared with what ``repository`` holds before anything is written (module docstring: existing entries).

    Raises:
        InputError: a source that is not this tool's export, two sources with one Triton name, or an existing entry
            that holds another model (the message names ``repository/<model>`` and what differs).
        export.validate.ExportValidationError: a folded model does not reproduce its export.
    """
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise InputError("the Triton model repository is a file, not a folder", repository)
    chosen = choose_runtime(provider)
    if not chosen.is_onnxruntime:
        chosen = onnxruntime_cpu()  # Triton's onnxruntime backend serves the folded model: check it on ONNX Runtime
    entries = [_prepare(source, options, chosen) for source in sources]
    by_name: dict[str, Path] = {}
    for entry in entries:
        if entry.name in by_name:
            raise InputError(f"{by_name[entry.name]} and {entry.source} both map to the Triton model name "
                             f"{entry.name!r}", repository)
        by_name[entry.name] = entry.source
    for entry in entries:
        folder = repository / entry.name
        problem = _difference(folder, entry) if folder.exists() else None
        if problem is not None:
            raise InputError(problem, folder)
    repository.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in entries:
        folder = repository / entry.name
        config = folder / CONFIG_FILE
        if not folder.exists():
            _write_new(folder, entry)
            action = "written"
        elif config.is_file() and config.read_text() == entry.config_text:
            action = "unchanged"
        else:
            with atomic_path(config) as staged:
                staged.write_text(entry.config_text)
            action = "config updated"
        written.append(TritonEntry(entry.name, folder, entry.source, entry.precision, action,
                                   entry.max_abs_difference, entry.tolerance))
    return written
