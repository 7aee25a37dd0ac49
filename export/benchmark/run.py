"""Latency benchmark: ONNX Runtime (exported graph with DF) against PyTorch eager (``torch.fft`` DF, the paper's
formulation), across model sizes, in the shape of the paper's Table 8.

Method (these machines are noisy, so the runtimes are timed *interleaved*):

* every model gets the same input, one slice of a phantom undersampled with the mask, batch 1;
* per iteration one call of each: ORT graph, PyTorch eager; ``warmup`` iterations are discarded, then
  ``iterations`` (≥ 30) are kept; medians and 90th percentiles;
* same thread count on both sides (``torch.set_num_threads`` and ORT ``intra_op_num_threads``), ORT thread
  spinning off; PyTorch under ``torch.inference_mode``;
* the PyTorch time covers the model's forward on already normalised inputs, the ORT time the whole graph
  (masking, zero filling and normalisation included), so the comparison is conservative for ORT;
* DF share: the fraction of ONNX Runtime's kernel time spent in the DF's nodes, from its per-node profile of the
  same graph (:func:`profile_graph`, a separate profiling session after the timed loop, ``warmup`` runs dropped):
  ``sum of the DF nodes' kernel times / sum of every node's kernel time``, in [0, 1] by construction. The DF nodes
  are those the exporter put in a DF module's scope
  (:data:`~compressor.export.graph.scanner_graph.DATA_FIDELITY_SCOPE`: each
  cascade's ``data_fidelity`` and the line projection built once from the mask); a node ONNX Runtime fused or
  re-laid out is traced back to the exported node it stems from (:func:`source_node`); the nodes it inserts itself
  (layout reorders around the blocked convolutions) count with the rest. Why not ``1 - t(blocks only) / t(graph)``,
  as before: the graph without the DF is optimised differently by ONNX Runtime (other layout reorders and fusions
  between consecutive blocks), so it differed from the full graph by more than the DF and the "share" came out
  negative (−7.6 % to −19.0 % at 120x120);
* real and complex images: for an architecture whose family has both (the DC-CNNs), the 1-channel (real image) and
  the 2-channel (complex image) graph are both timed and profiled, in the same interleaved loop (the variant
  the row's model is not is built with random weights and the same options: latency does not depend on the
  weights); the row gives each one's latency and DF share and the ratio of the 2-channel graph's latency to the
  1-channel one's;
* throughput: slices per second at batch 16 (median of a few calls);
* precisions (``precisions``, ``compress benchmark --precision fp32,int8,fp16``): one row per model and precision,
  every precision's file of an architecture timed in the same interleaved loop as its fp32 graph and PyTorch, with
  the file's size, its speed relative to the fp32 file (``speedup_vs_fp32``: below 1 where INT8 does not pay on this
  CPU, whose model and instruction sets head the table) and the PSNR/SSIM change its export measured against fp32;
  a trained model's files are its exports (``compress export --precision``), a random-weight architecture's are made
  for timing (:func:`timing_file`, no quality figures). Results written before precisions existed read as fp32;
* glibc's malloc keeps freed blocks up to 32 MiB (:func:`keep_freed_memory`): otherwise it returns PyTorch's
  ~8 MB activations to the OS after each call and maps and zero-fills them afresh on the next, and PyTorch eager
  d3c5 at 240x240 swings between ~41 and ~105 ms on a 2-core machine (ONNX Runtime has its own arena). This
  gives PyTorch its best case, so the speed-ups are conservative.

The fp32 graph and PyTorch are timed once per architecture and image-channel count (latency does not depend on the
weights): trained models of one architecture share those rows and add their PSNR/SSIM. A precision file's latency
does depend on its weights (the convolutions its export kept in fp32), so every model's own files are timed in the
same loop, and each precision row pairs that file's latency with that file's PSNR/SSIM change. The fp32 graph is
traced with the DF formulation the precision files record (files of different formulations are refused), and each
file's nodes must match the DF of every cascade of that graph, so that ``speedup_vs_fp32`` compares precisions of one
formulation and no DF share reads 0 for want of matching nodes.

The research comparisons (every DF formulation side by side, ONNX's ``DFT`` operator against the matrix-product DFT)
live with the benchmark scripts, in ``benchmarks/dft_formulations.py``.
"""

from __future__ import annotations

import ast
import copy
import math
import re
import statistics
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from compressor import rundir
from compressor.errors import InputError
from compressor.export.exported_file import Precision, graph_outputs, read_exported_metadata
from compressor.export.graph.scanner_graph import DATA_FIDELITY_SCOPE, ScannerGraph
from compressor.export.graph.validate import pytorch_reference
from compressor.export.precision.options import PrecisionOptions
from compressor.export.run_models import EXPORTS_FOLDER
from compressor.export.runtimes.cpu import cpu_features
from compressor.export.runtimes.onnxruntime_provider import OnnxRuntimeProvider
from compressor.export.runtimes.registry import AUTO, choose_runtime, require_onnxruntime
from compressor.export.runtimes.session import graph_feed
from compressor.export.runtimes.timing import interleaved_timings, timed
from compressor.export.targets.export import export_model, phantom_kspace, resolve_formulation, trace_graph
from compressor.masks import SamplingMask
from compressor.models import ModelOptions, build_model, parse_architecture
from compressor.models.base import CascadeModel
from compressor.physics import IMAGE_CHANNELS, apply_mask, normalise_kspace
from compressor.process import keep_freed_memory

MIN_ITERATIONS = 30
THROUGHPUT_BATCH = 16
THROUGHPUT_CALLS = 5
DEFAULT_STUDENTS = ("d2c5", "d3c5", "d4c5")


@dataclass(frozen=True)
class PrecisionFile:
    """One precision's ONNX file of a model and its image quality against the model's fp32 export.

    Attributes:
        precision: ``"fp32"``, ``"int8"`` or ``"fp16"`` (:func:`~compressor.export.targets.registry.precision_choices`).
        path: the file.
        delta_psnr: mean PSNR of this file minus mean PSNR of the fp32 export, dB, on the export's quality slices
            (a run's whole validation split; negative: a loss), as its metadata records it; ``None`` for fp32 (the
            reference) and where unknown or meaningless (files made from random weights for timing).
        delta_ssim: the same for SSIM.
    """

    precision: str
    path: Path
    delta_psnr: float | None = None
    delta_ssim: float | None = None


@dataclass
class TrainedModel:
    """A trained model to include in the table, with its validation metrics and, by precision other than fp32, its
    exported files (``compress export --precision``)."""

    model: CascadeModel
    role: str
    psnr: float | None = None
    ssim: float | None = None
    files: Mapping[str, PrecisionFile] = field(default_factory=dict)


@dataclass(frozen=True)
class _Entry:
    """A model to put in the table: a trained one (``trained`` set) or a randomly initialised architecture."""

    name: str
    role: str
    model: CascadeModel
    trained: TrainedModel | None


@dataclass
class BenchmarkResult:
    """The whole benchmark; :meth:`to_json` is the ``benchmark.json`` schema."""

    provider: str
    threads: int
    image_size: tuple[int, int]
    iterations: int
    warmup: int
    steady_malloc: bool
    models: list[rundir.ModelTiming] = field(default_factory=list)
    cpu: dict[str, Any] = field(default_factory=lambda: cpu_features().to_json())

    def record(self) -> rundir.BenchmarkRecord:
        return rundir.BenchmarkRecord(
            provider=self.provider, threads=self.threads, image_size=tuple(self.image_size),
            iterations=self.iterations, warmup=self.warmup, torch_version=torch.__version__,
            onnxruntime_version=ort.__version__, glibc_malloc_keeps_freed_memory=self.steady_malloc, cpu=self.cpu,
            models=tuple(self.models))

    def to_json(self) -> dict[str, Any]:
        return self.record().to_json()


def export_for_timing(model: CascadeModel, mask: SamplingMask, formulation: str, folder: Path) -> Path:
    """Export ``model`` with ``formulation`` (a name of :data:`~compressor.export.graph.scanner_graph.FORMULATIONS`),
    unvalidated."""
    line_axis = resolve_formulation(formulation, mask).line_axis
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{getattr(model, 'arch', 'model')}_{model.image_channels}ch_{formulation}.onnx"
    onnx.save_model(trace_graph(ScannerGraph(model, mask.shape, formulation, line_axis)), str(path),
                    save_as_external_data=False)
    return path


def data_fidelity_layers(model: CascadeModel) -> int:
    """How many of ``model``'s cascades end in a DF layer."""
    return sum(cascade.data_fidelity is not None for cascade in model.cascades)


def channel_variants(model: CascadeModel) -> dict[int, CascadeModel]:
    """``{image channels: model}``: ``model`` itself and, when its family takes both real and complex images, the
    other variant, randomly initialised with the same options (latency does not depend on the weights)."""
    variants = {model.image_channels: model}
    family, _ = parse_architecture(model.arch)
    for channels in IMAGE_CHANNELS if family.complex_images else ():
        if channels not in variants:
            variants[channels] = build_model(model.arch, replace(model.options, image_channels=channels)).eval()
    return dict(sorted(variants.items()))


class TorchEager:
    """The model in PyTorch eager with its training DF (``torch.fft``) on normalised inputs, batch of slices."""

    def __init__(self, model: CascadeModel, kspace: np.ndarray, mask: np.ndarray, device: str = "cpu"):
        self.model = copy.deepcopy(model).to(device).eval()
        self.device = device
        self.mask = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None].to(device)
        measured = torch.view_as_real(torch.from_numpy(np.asarray(kspace, dtype=np.complex64)))[:, None]
        self.inputs = normalise_kspace(apply_mask(measured.to(device), self.mask), channels=model.image_channels)

    @torch.inference_mode()
    def __call__(self) -> torch.Tensor:
        image = self.model(self.inputs.zero_filled, self.inputs.kspace, self.mask)
        if self.device != "cpu":
            torch.cuda.synchronize()
        return image


def throughput(call: Callable[[], Any], batch: int, calls: int = THROUGHPUT_CALLS) -> float:
    """Slices per second of ``call`` on a batch of ``batch`` slices (median over ``calls`` after one warm-up)."""
    call()
    return batch / statistics.median(timed(call) for _ in range(calls))


def cuda_latency(model: CascadeModel, kspace: np.ndarray, mask: np.ndarray, iterations: int,
                 warmup: int) -> float | None:
    """PyTorch eager latency on CUDA (ms, median), or ``None`` without a CUDA device."""
    if not torch.cuda.is_available():
        return None
    run = TorchEager(model, kspace, mask, device="cuda")
    return interleaved_timings({"cuda": run}, iterations, warmup)["cuda"].median


def parity_error(session: ort.InferenceSession, model: CascadeModel, kspace: np.ndarray, mask: np.ndarray) -> float:
    """Max |ONNX Runtime - PyTorch| of the image outputs of ``model``'s graph ``session`` on ``kspace``
    ``(1, H, W)``."""
    outputs = graph_outputs(model.image_channels)
    got = dict(zip(outputs.names, session.run(list(outputs.names), graph_feed(kspace, mask)), strict=True))
    reference = pytorch_reference(model, kspace, mask)
    return max(float(np.max(np.abs(got[name] - reference[name]))) for name in outputs.image_names)


PROFILE_RUNS = 10
"""Profiled runs per graph for the DF share (after the ``warmup`` ones, which are dropped)."""

NCHWC_SUFFIX = "_nchwc"
"""ONNX Runtime names a node it moved to the channel-blocked layout after its output tensor plus this suffix."""

UNIQUE_SUFFIX = re.compile(r"_token_\d+$")
"""What ONNX Runtime appends to a name it reuses for a node it creates (``node_conv2d_token_18``: the QLinearConv that
replaced ``node_conv2d`` and its Q/DQ pairs; ``ReorderOutput_token_3``)."""


@dataclass(frozen=True)
class NodeTime:
    """One node of ONNX Runtime's per-node profile, summed over the kept runs.

    Attributes:
        name: the node's name in ONNX Runtime's optimised graph (fused nodes ``"<first>/<Fusion>"``, re-laid-out ones
            ``"<output>_nchwc"``).
        op_type: the kernel's operator, e.g. ``"Conv"``, ``"MatMul"``, ``"QLinearConv"``, ``"ReorderOutput"``.
        source: the exported node it stems from, ``None`` for a node ONNX Runtime inserted (layout reorders).
        scope: the DF scope of ``source`` (``"cascades.0.data_fidelity"``, ``"line_projection"``), ``None`` outside.
        microseconds: its kernel time, summed over the kept runs.
    """

    name: str
    op_type: str
    source: str | None
    scope: str | None
    microseconds: float


def node_scopes(node: onnx.NodeProto) -> list[str]:
    """The module scopes the dynamo exporter recorded on ``node`` (``pkg.torch.onnx.name_scopes``), outermost first,
    e.g. ``["", "cascades.0.data_fidelity", "matmul_12"]``; ``[]`` when it recorded none."""
    for entry in node.metadata_props:
        if entry.key == "pkg.torch.onnx.name_scopes":
            return list(ast.literal_eval(entry.value))
    return []


def data_fidelity_scopes(model: onnx.ModelProto) -> dict[str, str]:
    """``{exported node name: its DF scope}`` for the nodes inside a
    :data:`~compressor.export.graph.scanner_graph.DATA_FIDELITY_SCOPE` module: one scope per cascade with a DF
    (``cascades.<i>.data_fidelity``) plus ``line_projection`` for the ``"lines"`` formulation."""
    scopes = {}
    for node in model.graph.node:
        inside = [scope for scope in node_scopes(node) if DATA_FIDELITY_SCOPE.fullmatch(scope)]
        if inside:
            scopes[node.name] = inside[0]
    return scopes


def matched_cascades(model: onnx.ModelProto, scopes: Mapping[str, str]) -> set[str]:
    """The cascades' DF scopes (``cascades.<i>.data_fidelity``) that ``scopes`` (``{node name: DF scope}``, e.g. of
    the fp32 graph, :func:`data_fidelity_scopes`) gives to at least one of ``model``'s nodes."""
    return {scopes[node.name] for node in model.graph.node if scopes.get(node.name, "").startswith("cascades.")}


def require_data_fidelity_scopes(model: onnx.ModelProto, cascades: int) -> None:
    """Raise unless the exported ``model`` has nodes in each of its ``cascades`` DF layers' scopes: without them the
    DF share would read 0 whatever the DF costs."""
    found = matched_cascades(model, data_fidelity_scopes(model))
    if len(found) != cascades:
        raise RuntimeError(f"the exported graph has nodes in {len(found)} DF scopes, expected one per DF layer "
                           f"({cascades}): was the graph exported with ScannerGraph's DF modules?")


def source_node(name: str, node_names: set[str], producers: Mapping[str, str]) -> str | None:
    """The exported node an optimised-graph node ``name`` stems from: itself, the first node of a fusion
    (``"<first>/<Fusion>"``), the producer of the tensor a re-laid-out node is named after (``"<tensor>_nchwc"``), or
    the node whose name ONNX Runtime reused for its replacement (``"<node>_token_<n>"``); ``None`` for nodes ONNX
    Runtime inserted (``ReorderInput``/``ReorderOutput``, ``Transpose``, split helpers)."""
    base = UNIQUE_SUFFIX.sub("", name)
    for candidate in dict.fromkeys((name, base, base.split("/", 1)[0], base.removesuffix(NCHWC_SUFFIX))):
        if candidate in node_names:
            return candidate
        if candidate in producers:
            return producers[candidate]
    return None


def profile_node_times(events: Sequence[Mapping[str, Any]], model: onnx.ModelProto, skip_runs: int,
                       scopes: Mapping[str, str] | None = None) -> list[NodeTime]:
    """Per-node kernel times of an ONNX Runtime profile (the JSON list of ``session.end_profiling()``) of ``model``,
    summed over the runs after the first ``skip_runs``; see :class:`NodeTime`. ``scopes``: ``{node name: DF scope}``
    (default: ``model``'s own, :func:`data_fidelity_scopes`)."""
    runs = sorted((event["ts"], event["ts"] + event["dur"]) for event in events
                  if event.get("cat") == "Session" and event.get("name") == "model_run")
    if len(runs) <= skip_runs:
        raise ValueError(f"the profile has {len(runs)} runs, fewer than the {skip_runs + 1} needed")
    start = runs[skip_runs][0]
    node_names = {node.name for node in model.graph.node}
    producers = {output: node.name for node in model.graph.node for output in node.output}
    scopes = data_fidelity_scopes(model) if scopes is None else scopes
    totals: dict[tuple[str, str], float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= start:
            key = (event["name"].removesuffix("_kernel_time"), event["args"]["op_name"])
            totals[key] = totals.get(key, 0.0) + float(event["dur"])
    times = []
    for (name, op_type), microseconds in totals.items():
        source = source_node(name, node_names, producers)
        times.append(NodeTime(name, op_type, source, scopes.get(source) if source else None, microseconds))
    return times


def df_share(times: Sequence[NodeTime]) -> float:
    """The DF nodes' share of the kernel time: ``sum(DF nodes) / sum(all nodes)``, in [0, 1]."""
    total = sum(node.microseconds for node in times)
    if total <= 0:
        raise ValueError("the profile has no node with a positive kernel time")
    return sum(node.microseconds for node in times if node.scope is not None) / total


def time_by_op_type(times: Sequence[NodeTime]) -> dict[str, float]:
    """``{op type: share of the kernel time}``, largest first, with the DF's nodes gathered under ``"DF"``."""
    shares: dict[str, float] = {}
    total = sum(node.microseconds for node in times)
    for node in times:
        key = "DF" if node.scope is not None else node.op_type
        shares[key] = shares.get(key, 0.0) + node.microseconds / total
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def profile_graph(path: Path, runtime: OnnxRuntimeProvider, threads: int, feed: Mapping[str, np.ndarray],
                  runs: int = PROFILE_RUNS, warmup: int = 5, scopes: Mapping[str, str] | None = None) -> list[NodeTime]:
    """Run the exported graph ``path`` ``warmup + runs`` times on ``feed`` in a profiling session and return its
    per-node kernel times over the last ``runs`` (:func:`profile_node_times`; ``scopes`` as there)."""
    events = runtime.profile(path, feed, warmup + runs, threads)
    return profile_node_times(events, onnx.load(str(path)), warmup, scopes)


def parse_precisions(text: str) -> list[str]:
    """``"fp32,int8"`` -> ``["fp32", "int8"]``, validated as ``compress export --precision`` is
    (:meth:`~compressor.export.exported_file.Precision.parse`: an unknown name is an :class:`InputError`)."""
    return [precision.value for precision in Precision.parse(text)]


def require_matched_data_fidelity(path: Path, scopes: Mapping[str, str], cascades: int, formulation: str) -> None:
    """Raise an :class:`InputError` naming the precision file ``path`` unless its nodes match the DF of each of the
    ``cascades`` in ``scopes`` (the fp32 graph's, traced with ``formulation``): without them its DF share would read
    0 whatever its DF costs (a file of another formulation, or of another version of the exporter)."""
    found = matched_cascades(onnx.load(str(path)), scopes)
    if len(found) != cascades:
        raise InputError(f"its nodes match the DF layers of {len(found)} of the {cascades} cascades of the fp32 graph "
                         f"traced with the {formulation!r} formulation: re-export it with this version's "
                         "`compress export`", path)


def file_formulation(path: Path) -> str:
    """The DF formulation (``"lines"``, ``"dft"``) an exported file's metadata records."""
    return read_exported_metadata(path).formulation


def shared_formulation(files: Sequence[PrecisionFile]) -> str:
    """The one DF formulation of ``files`` (``"auto"`` without any): the fp32 graph they are timed and profiled
    against is traced with it. Files of different formulations are an :class:`InputError`: their speeds against
    one fp32 graph would compare formulations, not precisions."""
    formulations = {file.path: file_formulation(file.path) for file in files}
    first = next(iter(formulations.items()), None)
    for path, formulation in formulations.items():
        if formulation != first[1]:
            raise InputError(f"exported with the {formulation!r} DF formulation but {first[0].name} with "
                             f"{first[1]!r}: benchmark files of one formulation (compress export --formulation)", path)
    return first[1] if first else "auto"


def read_precision_file(path: Path) -> PrecisionFile:
    """The precision and the quality against fp32 that an exported file's metadata records (files written before
    precisions existed: fp32)."""
    metadata = read_exported_metadata(path)
    quality = None if metadata.precision is Precision.FP32 else metadata.quality
    return PrecisionFile(metadata.precision.value, Path(path), quality.delta_psnr_db if quality else None,
                         quality.delta_ssim if quality else None)


PHANTOM_SLICES = 8
"""Phantom slices that calibrate, choose and validate a precision file made for timing (:func:`timing_file`)."""


def timing_file(model: CascadeModel, mask: SamplingMask, precision: str, folder: Path,
                formulation: str = "auto") -> PrecisionFile:
    """A ``precision`` file of ``model`` for timing, written by the export driver through the precision's target
    (:func:`~compressor.export.targets.export.export_model`) on Shepp-Logan phantoms: INT8 calibrated on them with
    **every** convolution quantized (no PSNR bound, no quantization-aware fine-tuning: for random weights a
    sensitivity analysis would pick an arbitrary set; this is the fastest INT8 file, a trained model's own selection
    is timed from its export). Its quality figures are not kept: on phantoms, and for random weights, they mean
    nothing (a trained model's are read from its export, :func:`read_precision_file`). Made and validated on the
    CPU, as ``compress export`` makes INT8; DF in ``formulation``."""
    path = folder / f"{getattr(model, 'arch', 'model')}_{model.image_channels}ch.{precision}.onnx"
    kspace = phantom_kspace(mask, count=PHANTOM_SLICES, image_channels=model.image_channels)
    export_model(model, path, mask=mask, validation_kspace=kspace, formulation=formulation, provider="cpu",
                 target=Precision(precision).target,
                 precision_options=PrecisionOptions(max_psnr_loss=math.inf, qat_steps=0))
    return PrecisionFile(precision, path)


@dataclass(frozen=True)
class ModelFiles:
    """A model of the architecture being timed and its files of precisions other than fp32 (by precision; a missing
    one is made for timing, :func:`timing_file`)."""

    model: CascadeModel
    files: Mapping[str, PrecisionFile] = field(default_factory=dict)


def time_architecture(models: Mapping[str, ModelFiles], mask: SamplingMask, kspace: np.ndarray,
                      runtime: OnnxRuntimeProvider,
                      threads: int, iterations: int, warmup: int, folder: Path,
                      precisions: Sequence[str] = ("fp32",)) -> dict[str, dict[str, dict[str, Any]]]:
    """Time the ``models`` of one architecture and image-channel count in one interleaved loop: the first model's
    fp32 graph (and its other-channel variant where the family has both) and PyTorch eager, which every model shares
    (their latency does not depend on the weights), and **each model's own** file of every other precision of
    ``precisions`` (an INT8 file's latency does depend on which convolutions its export kept in fp32); profile each
    graph for its DF share (module docstring).

    The fp32 graph is traced with the DF formulation of the precision files (:func:`shared_formulation`; ``"auto"``
    without any), and every precision file's nodes must match each cascade's DF in it
    (:func:`require_matched_data_fidelity`). Returns ``{model name: {precision: the timing fields of its
    ModelTiming row}}``; the fp32 fields are the same for every model."""
    first = next(iter(models.values())).model
    others = [precision for precision in dict.fromkeys(precisions) if precision != "fp32"]
    given = [item.files[precision] for item in models.values() for precision in others if precision in item.files]
    formulation = resolve_formulation(shared_formulation(given), mask).name
    cascades = data_fidelity_layers(first)
    variants = channel_variants(first)
    own = first.image_channels
    graphs = {f"fp32/{channels}": export_for_timing(variant, mask, formulation, folder)
              for channels, variant in variants.items()}
    for path in graphs.values():
        require_data_fidelity_scopes(onnx.load(str(path)), cascades)
    # A precision file's nodes keep the fp32 graph's names but not always its scope metadata (the quantizer's
    # pre-processing drops it): its DF nodes are named by the fp32 graph of its formulation.
    fp32_scopes = data_fidelity_scopes(onnx.load(str(graphs[f"fp32/{own}"])))
    owners: dict[str, tuple[str, str]] = {}
    for index, (name, item) in enumerate(models.items()):
        for precision in others:
            made = item.files.get(precision) or timing_file(item.model, mask, precision, folder / f"model_{index}",
                                                            formulation)
            require_matched_data_fidelity(made.path, fp32_scopes, cascades, formulation)
            graphs[f"{precision}/{index}"] = made.path
            owners[f"{precision}/{index}"] = (name, precision)
    sessions = {key: runtime.session(path, threads) for key, path in graphs.items()}
    single = graph_feed(kspace[:1], mask.values)
    calls: dict[str, Callable[[], Any]] = {"torch": TorchEager(first, kspace[:1], mask.values)}
    calls.update({key: (lambda session=session: session.run(None, single)) for key, session in sessions.items()})
    timings = interleaved_timings(calls, iterations, warmup)
    shares = {key: df_share(profile_graph(path, runtime, threads, single, warmup=warmup,
                                          scopes=None if key.startswith("fp32/") else fp32_scopes))
              for key, path in graphs.items()}
    batch_feed = graph_feed(np.repeat(kspace[:1], THROUGHPUT_BATCH, axis=0), mask.values)
    torch_batch = TorchEager(first, np.repeat(kspace[:1], THROUGHPUT_BATCH, axis=0), mask.values)
    shared = {"formulation": formulation, "torch_ms_median": timings["torch"].median,
              "torch_ms_p90": timings["torch"].p90, "torch_throughput_b16": throughput(torch_batch, THROUGHPUT_BATCH),
              "image_channels": own,
              "torch_cuda_ms_median": cuda_latency(first, kspace[:1], mask.values, iterations, warmup)}
    ort_ms = {channels: timings[f"fp32/{channels}"].median for channels in variants}

    def row(key: str, precision: str, model: CascadeModel) -> dict[str, Any]:
        session = sessions[key]
        return {**shared, "precision": precision, "file_bytes": graphs[key].stat().st_size,
                "ort_ms_median": timings[key].median, "ort_ms_p90": timings[key].p90,
                "speedup": timings["torch"].median / timings[key].median,
                "speedup_vs_fp32": ort_ms[own] / timings[key].median,
                "ort_throughput_b16": throughput(lambda: session.run(None, batch_feed), THROUGHPUT_BATCH),
                "df_share": shares[key], "parity_max_abs_error": parity_error(session, model, kspace[:1], mask.values)}

    fp32 = {**row(f"fp32/{own}", "fp32", first),
            **{key: value for channels in (1, 2) for key, value in (
                (f"ort_{channels}ch_ms_median", ort_ms.get(channels)),
                (f"df_share_{channels}ch", shares.get(f"fp32/{channels}")))},
            "complex_latency_ratio": ort_ms[2] / ort_ms[1] if len(variants) == 2 else None}
    rows: dict[str, dict[str, dict[str, Any]]] = {name: {"fp32": fp32} for name in models}
    for key, (name, precision) in owners.items():
        rows[name][precision] = row(key, precision, models[name].model)
    return rows


def benchmark_architecture(model: CascadeModel, mask: SamplingMask, kspace: np.ndarray,
                           runtime: OnnxRuntimeProvider, threads: int,
                           iterations: int, warmup: int, folder: Path, precisions: Sequence[str] = ("fp32",),
                           files: Mapping[str, PrecisionFile] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`time_architecture` of one model: ``{precision: the timing fields of its ModelTiming row}``."""
    return time_architecture({"model": ModelFiles(model, files or {})}, mask, kspace, runtime, threads, iterations,
                             warmup, folder, precisions)["model"]


def benchmark_models(
    archs: Sequence[str],
    image_size: tuple[int, int],
    mask: SamplingMask,
    threads: int | None = None,
    iterations: int = MIN_ITERATIONS,
    warmup: int = 5,
    trained: Mapping[str, TrainedModel] | None = None,
    teacher: str = "d5c5",
    options: ModelOptions | None = None,
    provider: str = AUTO,
    log: Callable[[str], None] = print,
    precisions: Sequence[str] = ("fp32",),
) -> BenchmarkResult:
    """Benchmark ``archs`` (randomly initialised) and the ``trained`` models (keyed by name), one row per model and
    precision.

    Args:
        archs: architectures to time, e.g. ``["d5c5", "d2c5", "d3c5", "d4c5"]``.
        image_size: ``(H, W)``; must equal ``mask.shape``.
        mask: the sampling mask.
        threads: threads for both runtimes (default: PyTorch's current count).
        iterations: timed iterations after warm-up (at least :data:`MIN_ITERATIONS`).
        trained: ``{name: TrainedModel}``; each architecture's fp32 graph is timed once, with trained weights when
            there are some, and an architecture of ``archs`` that has trained models gets no separate untrained row.
        teacher: the architecture compression is measured against.
        options: model options of the untrained models (default :class:`ModelOptions`).
        precisions: the precisions to time (fp32 always): each trained model's own exported files
            (:attr:`TrainedModel.files`), else files made for timing (:func:`timing_file`); all of one architecture
            in one interleaved loop (:func:`time_architecture`).
    """
    if tuple(image_size) != mask.shape:
        raise ValueError(f"image size {tuple(image_size)} differs from the mask's shape {mask.shape}")
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"at least {MIN_ITERATIONS} timed iterations are needed, got {iterations}")
    trained = dict(trained or {})
    options = options or ModelOptions()
    runtime = require_onnxruntime(choose_runtime(provider), "the benchmark (ONNX Runtime against PyTorch, its DF "
                                  "share from ONNX Runtime's profiler; OpenVINO is compared on the same files by "
                                  "`python -m benchmarks.precision --openvino`)")
    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    torch.set_num_threads(threads)
    teacher_parameters = build_model(teacher, options).num_parameters()
    kspace = phantom_kspace(mask, count=1)
    entries = [_Entry(name, item.role, item.model, item) for name, item in trained.items()]
    trained_archs = {entry.model.arch for entry in entries}
    entries += [_Entry(arch, "teacher" if arch == teacher else "student", build_model(arch, options).eval(), None)
                for arch in dict.fromkeys(a.strip().lower() for a in archs) if arch not in trained_archs]
    entries.sort(key=lambda entry: (-entry.model.num_parameters(), entry.name))
    result = BenchmarkResult(runtime.name, threads, mask.shape, iterations, warmup, keep_freed_memory())
    try:
        with tempfile.TemporaryDirectory() as folder:
            for index, (arch, channels) in enumerate(dict.fromkeys((e.model.arch, e.model.image_channels)
                                                                   for e in entries)):
                group = [e for e in entries if (e.model.arch, e.model.image_channels) == (arch, channels)]
                log(f"benchmarking {arch} ({channels}-channel images; {runtime.name}, {threads} threads)")
                timings = time_architecture(
                    {entry.name: ModelFiles(copy.deepcopy(entry.model).cpu().eval(),
                                            entry.trained.files if entry.trained else {}) for entry in group},
                    mask, kspace, runtime, threads, iterations, warmup, Path(folder) / f"group_{index}", precisions)
                for entry in group:
                    parameters = entry.model.num_parameters()
                    for precision, timing in timings[entry.name].items():
                        result.models.append(rundir.ModelTiming(
                            name=entry.name, arch=arch, role=entry.role, parameters=parameters,
                            compression=1.0 - parameters / teacher_parameters, **timing,
                            **_quality_fields(entry.trained, precision)))
    finally:
        torch.set_num_threads(previous_threads)
    return result


def _quality_fields(trained: TrainedModel | None, precision: str) -> dict[str, float | None]:
    """A row's PSNR/SSIM (the trained model's validation means, fp32) and, for another precision, the change its
    exported file records; all ``None`` for random weights."""
    if trained is None:
        return {"psnr": None, "ssim": None}
    if precision == "fp32":
        return {"psnr": trained.psnr, "ssim": trained.ssim}
    file = trained.files.get(precision)
    return {"psnr": trained.psnr, "ssim": trained.ssim,
            "delta_psnr": file.delta_psnr if file else None, "delta_ssim": file.delta_ssim if file else None}


TABLE_COLUMNS = (
    ("name", "model", "{}"), ("precision", "precision", "{}"), ("image_channels", "image channels", "{:d}"),
    ("parameters", "parameters", "{:d}"), ("compression", "compression", "{:.2%}"),
    ("file_bytes", "file bytes", "{:,d}"), ("speedup_vs_fp32", "vs fp32", "{:.2f}x"),
    ("ort_ms_median", "ORT ms (median)", "{:.1f}"), ("ort_ms_p90", "ORT ms (p90)", "{:.1f}"),
    ("torch_ms_median", "PyTorch ms (median)", "{:.1f}"), ("torch_ms_p90", "PyTorch ms (p90)", "{:.1f}"),
    ("speedup", "speed-up", "{:.2f}x"), ("ort_throughput_b16", "ORT slices/s (b16)", "{:.1f}"),
    ("torch_throughput_b16", "PyTorch slices/s (b16)", "{:.1f}"), ("df_share", "DF share (ORT)", "{:.1%}"),
    ("ort_1ch_ms_median", "ORT 1-ch ms (median)", "{:.1f}"), ("ort_2ch_ms_median", "ORT 2-ch ms (median)", "{:.1f}"),
    ("complex_latency_ratio", "2-ch / 1-ch", "{:.2f}x"),
    ("df_share_2ch", "DF share 2-ch (ORT)", "{:.1%}"),
    ("torch_cuda_ms_median", "PyTorch CUDA ms", "{:.2f}"), ("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"),
    ("delta_psnr", "ΔPSNR vs fp32 (dB)", "{:+.3f}"), ("delta_ssim", "ΔSSIM vs fp32", "{:+.4f}"),
)


def table_rows(result: BenchmarkResult) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of the table (empty cells for unknown values)."""
    headers = [header for _, header, _ in TABLE_COLUMNS]
    rows = [[fmt.format(getattr(model, key)) if getattr(model, key) is not None else "" for key, _, fmt in
             TABLE_COLUMNS] for model in result.models]
    return headers, rows


def format_table(result: BenchmarkResult, tablefmt: str = "github") -> str:
    """The table, with the provider, thread count and image size stated above it."""
    from tabulate import tabulate

    headers, rows = table_rows(result)
    height, width = result.image_size
    cpu = result.cpu
    return (f"ONNX Runtime {ort.__version__} ({result.provider}) vs PyTorch {torch.__version__} eager (torch.fft DF), "
            f"{result.threads} threads, {height}x{width}, batch 1, median of {result.iterations} interleaved "
            f"iterations; CPU {cpu['model']} ({', '.join(cpu['instruction_sets']) or 'no AVX2'}; int8 dot product: "
            f"{'yes' if cpu['int8_dot_product'] else 'no'})\n\n" + tabulate(rows, headers=headers, tablefmt=tablefmt))


def write_benchmark(result: BenchmarkResult, json_path: Path, csv_path: Path | None = None) -> list[Path]:
    """Write ``benchmark.json`` (:class:`~compressor.rundir.BenchmarkRecord`) and optionally a CSV of the rows."""
    return rundir.write_benchmark_files(json_path, result.record(), csv_path)


def run_precision_files(run_dir: Path, file_name: str, precisions: Sequence[str]) -> dict[str, PrecisionFile]:
    """A run model's exported files of ``precisions`` other than fp32 (``<run>/exports/<stem>.<precision>.onnx``,
    ``compress export --precision``); a missing one is an :class:`InputError` saying how to write it."""
    files = {}
    for precision in precisions:
        if precision == "fp32":
            continue
        path = run_dir / EXPORTS_FOLDER / Precision(precision).file_name(Path(file_name).stem)
        if not path.is_file():
            raise InputError(f"no {precision} export to benchmark; write it with `compress export --run {run_dir} "
                             f"--precision {precision}`", path)
        files[precision] = read_precision_file(path)
    return files


def benchmark_run(run_dir: str | Path, archs: Sequence[str] | None = None, *, threads: int | None = None,
                  iterations: int = MIN_ITERATIONS, warmup: int = 5, provider: str = AUTO,
                  log: Callable[[str], None] = print, precisions: Sequence[str] = ("fp32",)) -> BenchmarkResult:
    """Benchmark a run directory's trained models plus ``archs`` (default: the run's teacher and
    :data:`DEFAULT_STUDENTS`) and write ``<run>/benchmark.json`` and ``benchmark.csv``. Called at the end of
    ``compress``. Uses the first trained model's mask (every model of one acceleration shares it). ``precisions``
    other than fp32 are timed from the run's exports (:func:`run_precision_files`)."""
    from compressor.export.run_models import load_run_models

    run_dir = Path(run_dir)
    # The scanner graph takes k-space: the image-to-image models of the feature-domain ablation are not deployed.
    run_models = [m for m in load_run_models(run_dir) if m.model.has_data_fidelity]
    if not run_models:
        raise InputError("the run has no trained models with data-fidelity layers to benchmark", run_dir)
    teacher = rundir.read_results(run_dir).teacher or "d5c5"
    mask = run_models[0].mask
    same_mask = [m for m in run_models if m.mask.digest() == mask.digest()]
    trained = {m.name: TrainedModel(m.model, m.role, m.psnr, m.ssim, run_precision_files(run_dir, m.file_name,
                                                                                          precisions))
               for m in same_mask}
    archs = list(archs) if archs is not None else [teacher, *DEFAULT_STUDENTS]
    options = ModelOptions.from_dict(run_models[0].stage.model_options)
    result = benchmark_models(archs, mask.shape, mask, threads, iterations, warmup, trained, teacher, options,
                              provider, log, precisions)
    rundir.write_benchmark(run_dir, result.record())
    return result
