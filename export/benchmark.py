"""Latency benchmark: ONNX Runtime (exported graph with DF) against PyTorch eager (``torch.fft`` DF, the paper's
formulation), across model sizes, in the shape of the paper's Table 8.

Method (these machines are noisy, so the runtimes are timed *interleaved*):

* every model gets the same input, one slice of a phantom undersampled with the mask, batch 1;
* per iteration one call of each: ORT full graph, PyTorch eager, ORT graph with the DF removed (blocks only);
  ``warmup`` iterations are discarded, then ``iterations`` (≥ 30) are kept; medians and 90th percentiles;
* same thread count on both sides (``torch.set_num_threads`` and ORT ``intra_op_num_threads``), ORT thread
  spinning off; PyTorch under ``torch.inference_mode``;
* the PyTorch time covers the model's forward on already normalised inputs, the ORT time the whole graph
  (masking, zero filling and normalisation included), so the comparison is conservative for ORT;
* DF share ``= 1 - t(blocks only) / t(full graph)`` in ORT;
* real and complex images: for an architecture whose family has both (the DC-CNNs), the 1-channel (real image) and
  the 2-channel (complex image) graph are both timed, full and blocks only, in the same interleaved loop (the variant
  the row's model is not is built with random weights and the same options: latency does not depend on the
  weights); the row gives each one's latency and DF share and the ratio of the 2-channel graph's latency to the
  1-channel one's;
* throughput: slices per second at batch 16 (median of a few calls);
* glibc's malloc keeps freed blocks up to 32 MiB (:func:`keep_freed_memory`): otherwise it returns PyTorch's
  ~8 MB activations to the OS after each call and maps and zero-fills them afresh on the next, and PyTorch eager
  d3c5 at 240x240 swings between ~41 and ~105 ms on a 2-core machine (ONNX Runtime has its own arena). This
  gives PyTorch its best case, so the speed-ups are conservative.

A model is timed once per architecture (latency does not depend on the weights); trained models of the same
architecture share that timing and add their PSNR/SSIM.

The research comparisons (every DF formulation side by side, ONNX's ``DFT`` operator against the matrix-product DFT)
live with the benchmark scripts, in ``benchmarks/dft_formulations.py``.
"""

from __future__ import annotations

import copy
import csv
import ctypes
import io
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from compressor import rundir
from compressor.errors import InputError
from compressor.export.graph import ScannerGraph
from compressor.export.onnx_export import phantom_kspace, resolve_formulation, trace_graph
from compressor.export.runtime import choose_provider, create_session, graph_feed, graph_outputs
from compressor.export.targets import save_with_metadata
from compressor.export.validate import pytorch_reference
from compressor.io import atomic_path, save_json
from compressor.masks import SamplingMask
from compressor.models import ModelOptions, build_model, parse_architecture
from compressor.models.base import CascadeModel
from compressor.physics import IMAGE_CHANNELS, apply_mask, normalise_kspace

MIN_ITERATIONS = 30
THROUGHPUT_BATCH = 16
THROUGHPUT_CALLS = 5
DEFAULT_STUDENTS = ("d2c5", "d3c5", "d4c5")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES = 32 << 20, 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (32 MiB, 1 GiB) for this process so that freed activations stay
    in the heap; ``False`` where the C library has no ``mallopt`` (not glibc)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mmap_set = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    trim_set = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    return bool(mmap_set and trim_set)


@dataclass
class TrainedModel:
    """A trained model to include in the table, with its validation metrics."""

    model: CascadeModel
    role: str
    psnr: float | None = None
    ssim: float | None = None


@dataclass(frozen=True)
class _Entry:
    """A model to put in the table: a trained one (``trained`` set) or a randomly initialised architecture."""

    name: str
    role: str
    model: CascadeModel
    trained: TrainedModel | None


@dataclass
class ModelBenchmark:
    """One row of the table (JSON keys of ``benchmark.json``; times in ms per slice at batch 1).

    The ``ort_*``, ``torch_*``, ``df_share`` and ``parity`` fields are the row's model's (of ``image_channels``);
    ``*_1ch``/``*_2ch`` are the real-image and complex-image graphs of the same architecture, and
    ``complex_latency_ratio`` is ``ort_2ch_ms_median / ort_1ch_ms_median`` (``None`` where the family is real-only).
    """

    name: str
    arch: str
    role: str
    parameters: int
    compression: float
    formulation: str
    ort_ms_median: float
    ort_ms_p90: float
    torch_ms_median: float
    torch_ms_p90: float
    speedup: float
    ort_throughput_b16: float
    torch_throughput_b16: float
    ort_no_df_ms_median: float
    df_share: float
    parity_max_abs_error: float
    image_channels: int = 1
    ort_1ch_ms_median: float | None = None
    ort_1ch_no_df_ms_median: float | None = None
    df_share_1ch: float | None = None
    ort_2ch_ms_median: float | None = None
    ort_2ch_no_df_ms_median: float | None = None
    df_share_2ch: float | None = None
    complex_latency_ratio: float | None = None
    torch_cuda_ms_median: float | None = None
    psnr: float | None = None
    ssim: float | None = None


@dataclass
class BenchmarkResult:
    """The whole benchmark; :meth:`to_json` is the ``benchmark.json`` schema."""

    provider: str
    threads: int
    image_size: tuple[int, int]
    iterations: int
    warmup: int
    steady_malloc: bool
    models: list[ModelBenchmark] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "threads": self.threads, "image_size": list(self.image_size),
                "iterations": self.iterations, "warmup": self.warmup, "torch_version": torch.__version__,
                "onnxruntime_version": ort.__version__, "glibc_malloc_keeps_freed_memory": self.steady_malloc,
                "models": [asdict(m) for m in self.models]}


@dataclass(frozen=True)
class Timing:
    """Median and 90th percentile of a list of durations, in ms."""

    median: float
    p90: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        ms = np.asarray(seconds) * 1e3
        return cls(float(np.median(ms)), float(np.percentile(ms, 90)))


def timed(call: Callable[[], Any]) -> float:
    """Wall seconds of one ``call()``."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def interleaved_timings(calls: Mapping[str, Callable[[], Any]], iterations: int, warmup: int) -> dict[str, Timing]:
    """Time the ``calls`` in turn, one call of each per iteration; the first ``warmup`` iterations are dropped."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for iteration in range(warmup + iterations):
        for name, call in calls.items():
            seconds = timed(call)
            if iteration >= warmup:
                samples[name].append(seconds)
    return {name: Timing.of(values) for name, values in samples.items()}


def export_for_timing(model: CascadeModel, mask: SamplingMask, formulation: str, folder: Path) -> Path:
    """Export ``model`` with ``formulation`` (a name of :data:`~compressor.export.graph.FORMULATIONS`), unvalidated."""
    line_axis = resolve_formulation(formulation, mask).line_axis
    path = folder / f"{getattr(model, 'arch', 'model')}_{model.image_channels}ch_{formulation}.onnx"
    save_with_metadata(trace_graph(ScannerGraph(model, mask.shape, formulation, line_axis)), path, {})
    return path


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


def benchmark_architecture(model: CascadeModel, mask: SamplingMask, kspace: np.ndarray, provider: str, threads: int,
                           iterations: int, warmup: int, folder: Path) -> dict[str, Any]:
    """Time one architecture, its real- and complex-image variants where it has both (see the module docstring);
    returns the timing fields of :class:`ModelBenchmark`."""
    formulation = resolve_formulation("auto", mask).name
    variants = channel_variants(model)
    full = {channels: create_session(export_for_timing(variant, mask, formulation, folder), provider, threads)
            for channels, variant in variants.items()}
    blocks = {channels: create_session(export_for_timing(variant, mask, "none", folder), provider, threads)
              for channels, variant in variants.items()}
    own = model.image_channels
    single = graph_feed(kspace[:1], mask.values)
    torch_single = TorchEager(model, kspace[:1], mask.values)
    calls: dict[str, Callable[[], Any]] = {"torch": torch_single}
    for channels in variants:
        calls[f"ort_{channels}"] = lambda session=full[channels]: session.run(None, single)
        calls[f"blocks_{channels}"] = lambda session=blocks[channels]: session.run(None, single)
    timings = interleaved_timings(calls, iterations, warmup)
    ort_ms = {channels: timings[f"ort_{channels}"].median for channels in variants}
    blocks_ms = {channels: timings[f"blocks_{channels}"].median for channels in variants}
    df_share = {channels: 1.0 - blocks_ms[channels] / ort_ms[channels] for channels in variants}
    batch = np.repeat(kspace[:1], THROUGHPUT_BATCH, axis=0)
    batch_feed = graph_feed(batch, mask.values)
    torch_batch = TorchEager(model, batch, mask.values)
    return {
        "formulation": formulation,
        "ort_ms_median": ort_ms[own], "ort_ms_p90": timings[f"ort_{own}"].p90,
        "torch_ms_median": timings["torch"].median, "torch_ms_p90": timings["torch"].p90,
        "speedup": timings["torch"].median / ort_ms[own],
        "ort_throughput_b16": throughput(lambda: full[own].run(None, batch_feed), THROUGHPUT_BATCH),
        "torch_throughput_b16": throughput(torch_batch, THROUGHPUT_BATCH),
        "ort_no_df_ms_median": blocks_ms[own],
        "df_share": df_share[own],
        "parity_max_abs_error": parity_error(full[own], model, kspace[:1], mask.values),
        "image_channels": own,
        **{key: value for channels in (1, 2) for key, value in (
            (f"ort_{channels}ch_ms_median", ort_ms.get(channels)),
            (f"ort_{channels}ch_no_df_ms_median", blocks_ms.get(channels)),
            (f"df_share_{channels}ch", df_share.get(channels)))},
        "complex_latency_ratio": ort_ms[2] / ort_ms[1] if len(variants) == 2 else None,
        "torch_cuda_ms_median": cuda_latency(model, kspace[:1], mask.values, iterations, warmup),
    }


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
    provider: str = "auto",
    log: Callable[[str], None] = print,
) -> BenchmarkResult:
    """Benchmark ``archs`` (randomly initialised) and the ``trained`` models (keyed by name).

    Args:
        archs: architectures to time, e.g. ``["d5c5", "d2c5", "d3c5", "d4c5"]``.
        image_size: ``(H, W)``; must equal ``mask.shape``.
        mask: the sampling mask.
        threads: threads for both runtimes (default: PyTorch's current count).
        iterations: timed iterations after warm-up (at least :data:`MIN_ITERATIONS`).
        trained: ``{name: TrainedModel}``; each architecture is timed once, with trained weights when there are
            some, and an architecture of ``archs`` that has trained models gets no separate untrained row.
        teacher: the architecture compression is measured against.
        options: model options of the untrained models (default :class:`ModelOptions`).
    """
    if tuple(image_size) != mask.shape:
        raise ValueError(f"image size {tuple(image_size)} differs from the mask's shape {mask.shape}")
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"at least {MIN_ITERATIONS} timed iterations are needed, got {iterations}")
    trained = dict(trained or {})
    options = options or ModelOptions()
    provider = choose_provider(provider)
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
    result = BenchmarkResult(provider, threads, mask.shape, iterations, warmup, keep_freed_memory())
    try:
        with tempfile.TemporaryDirectory() as folder:
            for arch in dict.fromkeys(entry.model.arch for entry in entries):
                group = [entry for entry in entries if entry.model.arch == arch]
                log(f"benchmarking {arch} ({provider}, {threads} threads)")
                timing = benchmark_architecture(copy.deepcopy(group[0].model).cpu().eval(), mask, kspace, provider,
                                                threads, iterations, warmup, Path(folder))
                for entry in group:
                    parameters = entry.model.num_parameters()
                    result.models.append(ModelBenchmark(
                        name=entry.name, arch=arch, role=entry.role, parameters=parameters,
                        compression=1.0 - parameters / teacher_parameters, **timing,
                        psnr=entry.trained.psnr if entry.trained else None,
                        ssim=entry.trained.ssim if entry.trained else None))
    finally:
        torch.set_num_threads(previous_threads)
    return result


TABLE_COLUMNS = (
    ("name", "model", "{}"), ("image_channels", "image channels", "{:d}"), ("parameters", "parameters", "{:d}"),
    ("compression", "compression", "{:.2%}"),
    ("ort_ms_median", "ORT ms (median)", "{:.1f}"), ("ort_ms_p90", "ORT ms (p90)", "{:.1f}"),
    ("torch_ms_median", "PyTorch ms (median)", "{:.1f}"), ("torch_ms_p90", "PyTorch ms (p90)", "{:.1f}"),
    ("speedup", "speed-up", "{:.2f}x"), ("ort_throughput_b16", "ORT slices/s (b16)", "{:.1f}"),
    ("torch_throughput_b16", "PyTorch slices/s (b16)", "{:.1f}"), ("df_share_1ch", "DF share 1-ch (ORT)", "{:.1%}"),
    ("ort_1ch_ms_median", "ORT 1-ch ms (median)", "{:.1f}"), ("ort_2ch_ms_median", "ORT 2-ch ms (median)", "{:.1f}"),
    ("complex_latency_ratio", "2-ch / 1-ch", "{:.2f}x"),
    ("df_share_2ch", "DF share 2-ch (ORT)", "{:.1%}"),
    ("torch_cuda_ms_median", "PyTorch CUDA ms", "{:.2f}"), ("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"),
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
    return (f"ONNX Runtime {ort.__version__} ({result.provider}) vs PyTorch {torch.__version__} eager (torch.fft DF), "
            f"{result.threads} threads, {height}x{width}, batch 1, median of {result.iterations} interleaved "
            f"iterations\n\n" + tabulate(rows, headers=headers, tablefmt=tablefmt))


def write_benchmark(result: BenchmarkResult, json_path: Path, csv_path: Path | None = None) -> list[Path]:
    """Write ``benchmark.json`` (the schema of :meth:`BenchmarkResult.to_json`) and optionally a CSV of the rows."""
    written = [save_json(json_path, result.to_json())]
    if csv_path is not None:
        buffer = io.StringIO()
        columns = list(asdict(result.models[0])) if result.models else []
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(asdict(model) for model in result.models)
        with atomic_path(csv_path) as temporary:
            temporary.write_text(buffer.getvalue())
        written.append(csv_path)
    return written


def benchmark_run(run_dir: str | Path, archs: Sequence[str] | None = None, *, threads: int | None = None,
                  iterations: int = MIN_ITERATIONS, warmup: int = 5, provider: str = "auto",
                  log: Callable[[str], None] = print) -> BenchmarkResult:
    """Benchmark a run directory's trained models plus ``archs`` (default: the run's teacher and
    :data:`DEFAULT_STUDENTS`) and write ``<run>/benchmark.json`` and ``benchmark.csv``. Called at the end of
    ``compress``. Uses the first trained model's mask (every model of one acceleration shares it)."""
    from compressor.export.run_models import load_run_models

    run_dir = Path(run_dir)
    # The scanner graph takes k-space: the image-to-image models of the feature-domain ablation are not deployed.
    run_models = [m for m in load_run_models(run_dir) if m.model.has_data_fidelity]
    if not run_models:
        raise InputError("the run has no trained models with data-fidelity layers to benchmark", run_dir)
    teacher = rundir.read_results(run_dir).teacher or "d5c5"
    mask = run_models[0].mask
    same_mask = [m for m in run_models if m.mask.digest() == mask.digest()]
    trained = {m.name: TrainedModel(m.model, m.role, m.psnr, m.ssim) for m in same_mask}
    archs = list(archs) if archs is not None else [teacher, *DEFAULT_STUDENTS]
    options = ModelOptions(**run_models[0].stage.model_options)
    result = benchmark_models(archs, mask.shape, mask, threads, iterations, warmup, trained, teacher, options,
                              provider, log)
    write_benchmark(result, run_dir / rundir.BENCHMARK_FILE, (run_dir / rundir.BENCHMARK_FILE).with_suffix(".csv"))
    return result
