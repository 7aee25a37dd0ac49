"""The benchmark's outputs: the table printed by ``compress benchmark`` and the files it writes.

The files are ``benchmark.json`` (:class:`~compressor.rundir.BenchmarkRecord`) and ``benchmark.csv`` (one column per
:class:`~compressor.rundir.ModelTiming` field), both written by the run-directory package. The table has one row per
model and precision, the columns of :data:`TABLE_COLUMNS` (empty cells for unknown values), under one line naming
the runtimes, threads, image size, iterations and the CPU.
"""

from __future__ import annotations

from pathlib import Path

from compressor import rundir

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


def table_rows(result: rundir.BenchmarkRecord) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of the table (empty cells for unknown values)."""
    headers = [header for _, header, _ in TABLE_COLUMNS]
    rows = [[fmt.format(getattr(model, key)) if getattr(model, key) is not None else "" for key, _, fmt in
             TABLE_COLUMNS] for model in result.models]
    return headers, rows


def format_table(result: rundir.BenchmarkRecord, tablefmt: str = "github") -> str:
    """The table, with the provider, thread count and image size stated above it."""
    from tabulate import tabulate

    headers, rows = table_rows(result)
    height, width = result.image_size
    cpu = result.cpu
    heading = (f"ONNX Runtime {result.onnxruntime_version} ({result.provider}) vs PyTorch {result.torch_version} "
               f"eager (torch.fft DF), {result.threads} threads, {height}x{width}, batch 1, median of "
               f"{result.iterations} interleaved iterations; CPU {cpu['model']} "
               f"({', '.join(cpu['instruction_sets']) or 'no AVX2'}; int8 dot product: "
               f"{'yes' if cpu['int8_dot_product'] else 'no'})")
    return f"{heading}\n\n" + tabulate(rows, headers=headers, tablefmt=tablefmt)


def write_benchmark(result: rundir.BenchmarkRecord, json_path: Path, csv_path: Path | None = None) -> list[Path]:
    """Write ``result`` as ``benchmark.json`` at ``json_path`` and optionally its rows as CSV at ``csv_path``."""
    return rundir.write_benchmark_files(json_path, result, csv_path)

