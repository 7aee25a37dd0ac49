"""Timing one architecture: its fp32 graph, each precision file and PyTorch eager in one interleaved loop.

Method (shared machines are noisy, so the runtimes are timed *interleaved*,
:func:`~compressor.export.runtimes.timing.interleaved_timings`):

* every graph gets the same input, one slice of a phantom undersampled with the mask, batch 1;
* per iteration one call of each: the ONNX Runtime graphs and PyTorch eager; ``warmup`` iterations are discarded,
  then ``iterations`` are kept; medians and 90th percentiles, in ms;
* the same thread count on both sides (``torch.set_num_threads`` and ORT ``intra_op_num_threads``), ORT thread
  spinning off; PyTorch under ``torch.inference_mode``;
* the PyTorch time covers the model's forward on already normalised inputs (its training DF, ``torch.fft``), the ORT
  time the whole graph (masking, zero filling and normalisation included), so the comparison is conservative for ORT;
* each ORT graph is then profiled for its DF share (:mod:`~compressor.export.benchmark.profile`);
* throughput: slices per second at batch :data:`THROUGHPUT_BATCH` (median of :data:`THROUGHPUT_CALLS` calls).

The fp32 graph and PyTorch are timed once per architecture and image-channel count (latency does not depend on the
weights; for a family with both real and complex images, the other variant is built with random weights and the same
options and timed alongside). A precision file's latency does depend on its weights (the convolutions its export kept
in fp32), so every model's own files are timed in the same loop. The fp32 graph is traced with the DF formulation the
precision files record, and each file's nodes must match the DF of every cascade of that graph, so that
``speedup_vs_fp32`` compares precisions of one formulation and no DF share reads 0 for want of matching nodes.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from compressor.export.benchmark.precision_files import PrecisionFile, shared_formulation, timing_file
from compressor.export.benchmark.profile import (
    data_fidelity_scopes,
    df_share,
    profile_graph,
    require_data_fidelity_scopes,
    require_matched_data_fidelity,
)
from compressor.export.exported_file import graph_outputs
from compressor.export.graph.scanner_graph import ScannerGraph
from compressor.export.graph.validate import pytorch_reference
from compressor.export.runtimes.onnxruntime_provider import OnnxRuntimeProvider
from compressor.export.runtimes.session import graph_feed
from compressor.export.runtimes.timing import interleaved_timings, timed
from compressor.export.targets.export import resolve_formulation, trace_graph
from compressor.masks import SamplingMask
from compressor.models import build_model, parse_architecture
from compressor.models.base import CascadeModel
from compressor.physics import IMAGE_CHANNELS, apply_mask, normalise_kspace

THROUGHPUT_BATCH = 16
THROUGHPUT_CALLS = 5

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

