"""The latency benchmark's driver: ONNX Runtime (the exported graph with its DF) against PyTorch eager (``torch.fft``
DF, the paper's formulation) across model sizes and precisions, in the shape of the paper's Table 8.

One row per model and precision (:class:`~compressor.rundir.ModelTiming`): the architectures asked for, randomly
initialised, and a run's trained models with their validation PSNR/SSIM; trained models of one architecture share
its fp32 and PyTorch timings (:mod:`~compressor.export.benchmark.timing`). A precision row (``compress benchmark
--precision fp32,int8,fp16``) gives the file's size, its speed relative to the fp32 file (``speedup_vs_fp32``: below
1 where that precision does not pay on this CPU, whose model and instruction sets head the table) and the PSNR/SSIM
change its export measured against fp32; a trained model's files are its exports (:func:`run_precision_files`).

While it runs, glibc's malloc keeps freed blocks up to 32 MiB (:func:`~compressor.process.keep_freed_memory`):
otherwise it returns PyTorch's activations to the OS after each call and maps and zero-fills them afresh on the next.
This gives PyTorch its best case, so the speed-ups are conservative.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort
import torch

from compressor import rundir
from compressor.errors import InputError
from compressor.export.benchmark.precision_files import PrecisionFile, read_precision_file
from compressor.export.benchmark.timing import ModelFiles, time_architecture
from compressor.export.exported_file import Precision
from compressor.export.runtimes.cpu import cpu_features
from compressor.export.runtimes.onnxruntime_provider import OnnxRuntimeProvider
from compressor.export.runtimes.registry import AUTO, choose_runtime, require_onnxruntime
from compressor.export.targets.export import phantom_kspace
from compressor.masks import SamplingMask
from compressor.models import ModelOptions, build_model
from compressor.models.base import CascadeModel
from compressor.process import keep_freed_memory

MIN_ITERATIONS = 30
DEFAULT_STUDENTS = ("d2c5", "d3c5", "d4c5")


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
) -> rundir.BenchmarkRecord:
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
    entries = [_Entry(name, item.role, item.model, item) for name, item in trained.items()]
    trained_archs = {entry.model.arch for entry in entries}
    entries += [_Entry(arch, "teacher" if arch == teacher else "student", build_model(arch, options).eval(), None)
                for arch in dict.fromkeys(a.strip().lower() for a in archs) if arch not in trained_archs]
    entries.sort(key=lambda entry: (-entry.model.num_parameters(), entry.name))
    steady_malloc = keep_freed_memory()
    try:
        rows = _time_entries(entries, mask, runtime, threads, iterations, warmup, teacher_parameters, log, precisions)
    finally:
        torch.set_num_threads(previous_threads)
    return rundir.BenchmarkRecord(
        provider=runtime.name, threads=threads, image_size=mask.shape, iterations=iterations, warmup=warmup,
        torch_version=torch.__version__, onnxruntime_version=ort.__version__,
        glibc_malloc_keeps_freed_memory=steady_malloc, cpu=cpu_features().to_json(), models=tuple(rows))


def _time_entries(entries: Sequence[_Entry], mask: SamplingMask, runtime: OnnxRuntimeProvider, threads: int,
                  iterations: int, warmup: int, teacher_parameters: int, log: Callable[[str], None],
                  precisions: Sequence[str]) -> list[rundir.ModelTiming]:
    """The rows of ``entries``, timed by architecture and image-channel count (:func:`time_architecture`), in the
    order of ``entries``' groups."""
    kspace = phantom_kspace(mask, count=1)
    rows = []
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
                    rows.append(rundir.ModelTiming(
                        name=entry.name, arch=arch, role=entry.role, parameters=parameters,
                        compression=1.0 - parameters / teacher_parameters, **timing,
                        **_quality_fields(entry.trained, precision)))
    return rows


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



def run_precision_files(run_dir: Path, file_name: str, precisions: Sequence[str]) -> dict[str, PrecisionFile]:
    """A run model's exported files of ``precisions`` other than fp32 (``<run>/exports/<stem>.<precision>.onnx``,
    ``compress export --precision``); a missing one is an :class:`InputError` saying how to write it."""
    files = {}
    for precision in precisions:
        if precision == "fp32":
            continue
        path = rundir.RunLayout(run_dir).exports / Precision(precision).file_name(Path(file_name).stem)
        if not path.is_file():
            raise InputError(f"no {precision} export to benchmark; write it with `compress export --run {run_dir} "
                             f"--precision {precision}`", path)
        files[precision] = read_precision_file(path)
    return files

def benchmark_run(run_dir: str | Path, archs: Sequence[str] | None = None, *, threads: int | None = None,
                  iterations: int = MIN_ITERATIONS, warmup: int = 5, provider: str = AUTO,
                  log: Callable[[str], None] = print, precisions: Sequence[str] = ("fp32",)) -> rundir.BenchmarkRecord:
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
    rundir.write_benchmark(run_dir, result)
    return result
