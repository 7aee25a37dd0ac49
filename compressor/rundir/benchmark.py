"""``benchmark.json`` (``compress benchmark``; ``compress`` writes it after its export): how latency was measured,
and one :class:`ModelTiming` per benchmarked model and precision. Written by :mod:`compressor.export.benchmark`, read
by the report. Times are ms per slice at batch 1; throughputs slices per second at batch 16.

Files written before a field existed lack its key: it reads as ``None`` (``precision``: ``fp32``; ``image_channels``:
1), and keys this tool no longer writes are ignored.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.errors import InputError
from compressor.io import atomic_path, load_json, save_json
from compressor.json_record import JsonRecord, json_object
from compressor.rundir.layout import RunLayout


@dataclass(frozen=True, kw_only=True)
class ModelTiming(JsonRecord):
    """One row of ``benchmark.json``'s ``models``: a model in one precision.

    The ``ort_*``, ``torch_*``, ``df_share`` and ``parity`` fields are the row's model's (of ``image_channels``);
    ``*_1ch``/``*_2ch`` are the real-image and complex-image graphs of the same architecture, and
    ``complex_latency_ratio`` is ``ort_2ch_ms_median / ort_1ch_ms_median`` (``None`` where the family is real-only;
    fp32 rows only). ``speedup`` is PyTorch's median over ONNX Runtime's; ``speedup_vs_fp32`` the fp32 file's
    median over this file's (same loop); ``file_bytes`` the file's size; ``psnr``/``ssim`` the trained model's
    validation means (``None`` for random weights); ``delta_psnr``/``delta_ssim`` a non-fp32 file's change against
    the fp32 export, as its metadata records it.
    """

    name: str = ""
    arch: str
    role: str = ""
    parameters: int | None = None
    compression: float | None = None
    formulation: str | None = None
    ort_ms_median: float | None = None
    ort_ms_p90: float | None = None
    torch_ms_median: float | None = None
    torch_ms_p90: float | None = None
    speedup: float | None = None
    ort_throughput_b16: float | None = None
    torch_throughput_b16: float | None = None
    df_share: float | None = None
    parity_max_abs_error: float | None = None
    image_channels: int = 1
    ort_1ch_ms_median: float | None = None
    df_share_1ch: float | None = None
    ort_2ch_ms_median: float | None = None
    df_share_2ch: float | None = None
    complex_latency_ratio: float | None = None
    torch_cuda_ms_median: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    precision: str = "fp32"
    file_bytes: int | None = None
    speedup_vs_fp32: float | None = None
    delta_psnr: float | None = None
    delta_ssim: float | None = None

    WRITES_NULL = True

    @classmethod
    def from_json(cls, raw: Any, path: Path, key: str) -> ModelTiming:
        raw = json_object(raw, path, key, what="an object with an 'arch' string")
        if not isinstance(raw.get("arch"), str):
            raise InputError("expected an object with an 'arch' string", path, key)
        return super().from_json(raw, path, key)


@dataclass(frozen=True)
class BenchmarkRecord(JsonRecord):
    """``benchmark.json``: how latency was measured and one :class:`ModelTiming` per model and precision.

    Attributes:
        provider: the runtime that timed the files (an ONNX Runtime execution provider name).
        threads: threads of both runtimes.
        image_size: ``(H, W)`` of the timed graphs.
        iterations: timed, interleaved iterations per graph (after ``warmup`` untimed ones).
        torch_version, onnxruntime_version: the versions that ran.
        glibc_malloc_keeps_freed_memory: whether glibc's allocator was told to keep freed memory (steady timings).
        cpu: the CPU's features (``compressor.export.runtimes.cpu.CpuFeatures.to_json``).
        models: the rows, in the order they were timed.
    """

    provider: str = "unknown"
    threads: int | None = None
    image_size: tuple[int, int] | None = None
    iterations: int | None = None
    warmup: int | None = None
    torch_version: str | None = None
    onnxruntime_version: str | None = None
    glibc_malloc_keeps_freed_memory: bool | None = None
    cpu: dict[str, Any] | None = None
    models: tuple[ModelTiming, ...] = field(default_factory=tuple)

    WRITES_NULL = True

    @classmethod
    def from_json(cls, raw: Any, path: Path, key: str = "") -> BenchmarkRecord:
        if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
            raise InputError("expected an object with a 'models' list", path)
        return super().from_json(raw, path, key)

    def latency_ms(self, arch: str | None, precision: str = "fp32") -> float | None:
        """Median latency of the first row with this architecture and precision (all roles of an architecture run
        the same graph)."""
        for model in self.models:
            if model.arch == arch and model.precision == precision and model.ort_ms_median is not None:
                return model.ort_ms_median
        return None

    def precisions(self) -> tuple[str, ...]:
        """The precisions benchmarked, fp32 first, then in the file's order."""
        return tuple(dict.fromkeys(["fp32", *(model.precision for model in self.models)]))

    def timing(self, name: str, precision: str) -> ModelTiming | None:
        """The row of the model called ``name`` (``results.json``'s name) in ``precision``, if benchmarked."""
        return next((m for m in self.models if m.name == name and m.precision == precision), None)


def read_benchmark(run_dir: Path) -> BenchmarkRecord | None:
    """``benchmark.json`` of ``run_dir``, or ``None`` when the run has none; a malformed one is one-line
    :class:`InputError` naming the file and key."""
    path = RunLayout(Path(run_dir)).benchmark
    return BenchmarkRecord.from_json(load_json(path), path) if path.is_file() else None


def write_benchmark_files(path: Path, record: BenchmarkRecord, table: Path | None = None) -> list[Path]:
    """Write ``record`` as JSON to ``path`` and, when ``table`` is given, its rows as CSV there (one column per
    :class:`ModelTiming` field); each file atomically. Returns the paths written."""
    written = [save_json(path, record.to_json())]
    if table is not None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(record.models[0].to_json()) if record.models else [])
        writer.writeheader()
        writer.writerows(model.to_json() for model in record.models)
        with atomic_path(table) as temporary:
            temporary.write_text(buffer.getvalue())
        written.append(Path(table))
    return written


def write_benchmark(run_dir: Path, record: BenchmarkRecord) -> list[Path]:
    """Write ``record`` as the run's ``benchmark.json`` and ``benchmark.csv``; returns their paths."""
    layout = RunLayout(Path(run_dir))
    return write_benchmark_files(layout.benchmark, record, layout.benchmark_table)
