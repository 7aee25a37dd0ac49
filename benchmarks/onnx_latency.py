"""ONNX Runtime vs PyTorch eager latency of the DC-CNN sizes at 240x240, against the deployment targets; and the
cost of complex images: each size's 2-channel (complex image) graph against its 1-channel (real image) graph.

Run from the repository root (one run, same inputs for every model)::

    python -m benchmarks.onnx_latency [--threads 2] [--iterations 30]

PyTorch is given its best conditions: its default OpenMP settings (idle threads spin briefly, which helps it; ONNX
Runtime's spinning is off), and glibc's malloc told to keep freed blocks up to 32 MiB in its heap
(:func:`compressor.process.keep_freed_memory`; why: ``benchmarks/results/benchmark_method.md``); ONNX Runtime has
its own arena. ``OMP_WAIT_POLICY=PASSIVE`` in the environment turns PyTorch's spinning off too (slower, but robust
when other processes share the cores); the allocator setting and that variable are recorded in the results.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from pathlib import Path

import click
from tabulate import tabulate

from benchmarks.dft_formulations import compare_formulations, dft_accuracy
from compressor.export.benchmark.report import format_table
from compressor.export.benchmark.run import benchmark_models
from compressor.io import atomic_path, save_json
from compressor.masks import make_mask

RESULTS = Path(__file__).resolve().parent / "results"
ARCHS = ("d5c5", "d4c5", "d3c5", "d2c5")
SPEEDUP_TARGET = 1.5
DF_SHARE_TARGET = 0.10
DF_SHARE_ARCHS = ("d3c5", "d4c5", "d5c5")
PAPER_RTX3090_MS = {"d5c5": 17.415, "d4c5": 9.353, "d3c5": 6.628, "d2c5": 3.686}


def targets(models: list[dict]) -> dict:
    """The issue's targets, checked against the benchmark rows."""
    by_arch = {m["arch"]: m for m in models}
    return {
        "d3c5_speedup": by_arch["d3c5"]["speedup"],
        "d3c5_speedup_target": SPEEDUP_TARGET,
        "d3c5_speedup_met": by_arch["d3c5"]["speedup"] >= SPEEDUP_TARGET,
        "df_share": {arch: by_arch[arch]["df_share"] for arch in ARCHS},
        "df_share_target": DF_SHARE_TARGET,
        "df_share_met": all(by_arch[arch]["df_share"] <= DF_SHARE_TARGET for arch in DF_SHARE_ARCHS),
    }


def complex_images(models: list[dict]) -> list[dict]:
    """Per architecture with both graphs: the 1- and 2-channel graphs' ORT latency, the ratio, and each one's DF share
    (the share of ONNX Runtime's kernel time in the DF nodes, from its per-node profile)."""
    return [{"arch": m["arch"], "ort_1ch_ms": m["ort_1ch_ms_median"], "ort_2ch_ms": m["ort_2ch_ms_median"],
             "ratio": m["complex_latency_ratio"], "df_share_1ch": m["df_share_1ch"], "df_share_2ch": m["df_share_2ch"]}
            for m in models if m["complex_latency_ratio"] is not None]


def complex_table(rows: list[dict]) -> str:
    """:func:`complex_images` as a Markdown table."""
    return tabulate([[r["arch"], f"{r['ort_1ch_ms']:.1f}", f"{r['ort_2ch_ms']:.1f}", f"{r['ratio']:.2f}x",
                      f"{r['df_share_1ch']:.1%}", f"{r['df_share_2ch']:.1%}"] for r in rows],
                    headers=["model", "ORT 1-ch ms (median)", "ORT 2-ch ms (median)", "2-ch / 1-ch", "DF share 1-ch",
                             "DF share 2-ch"], tablefmt="github")


def markdown(report: dict, table: str) -> str:
    """The results as Markdown: the main table, the formulations, the DFT accuracy and the targets."""
    goals = report["targets"]
    formulations = tabulate(
        [[f["formulation"], f"{f['ort_ms_median']:.1f}", f"{f['ort_ms_p90']:.1f}", f"{f['torch_ms_median']:.1f}",
          f"{f['speedup']:.2f}x", f"{f['max_abs_error']:.1e}"] for f in report["formulations"]],
        headers=["d3c5 DF formulation", "ORT ms (median)", "ORT ms (p90)", "PyTorch ms (median)", "speed-up",
                 "max abs error vs PyTorch"], tablefmt="github")
    accuracy = tabulate(
        [[a["size"], f"{a['dft_op_relative_error']:.1e}", f"{a['matmul_relative_error']:.1e}",
          f"{a['dft_op_ms']:.2f}", f"{a['matmul_ms']:.2f}"] for a in report["dft_accuracy"]],
        headers=["N (N x N)", "ORT DFT op rel. error", "matmul DFT rel. error", "DFT op ms", "matmul ms"],
        tablefmt="github")
    shares = ", ".join(f"{arch} {share:.1%}" for arch, share in goals["df_share"].items())
    machine = report["machine"]
    return "\n\n".join([
        "# ONNX Runtime latency of the DC-CNN sizes (240x240, 4x random mask)",
        table,
        "Paper's Table 8 (PyTorch on an RTX 3090, ms): "
        + ", ".join(f"{arch} {ms}" for arch, ms in PAPER_RTX3090_MS.items()) + ".",
        "## Targets",
        f"- d3c5 ORT speed-up over PyTorch eager (torch.fft DF): {goals['d3c5_speedup']:.2f}x "
        f"(target >= {SPEEDUP_TARGET}x): {'met' if goals['d3c5_speedup_met'] else 'NOT met'}\n"
        f"- DF share of ORT time: {shares} (target <= {DF_SHARE_TARGET:.0%} for d3c5-d5c5): "
        f"{'met' if goals['df_share_met'] else 'NOT met'}",
        "## Real (1-channel) vs complex (2-channel) images in ONNX Runtime (same interleaved loop)",
        complex_table(report["complex_images"]),
        "## DF formulations of d3c5 in ONNX Runtime (interleaved with PyTorch eager)",
        formulations,
        "## ONNX `DFT` operator vs matrix-product DFT (fp32, relative to max |X|, vs NumPy float64)",
        accuracy,
        f"Machine: {machine['cpu_count']} CPUs, {machine['platform']}, OMP_WAIT_POLICY="
        f"{machine['omp_wait_policy'] or 'unset'}, glibc malloc keeps freed memory: "
        f"{machine['glibc_malloc_keeps_freed_memory']}; load average before "
        f"{machine['load_before']:.2f}, after {machine['load_after']:.2f} (a shared machine: other processes "
        "slow PyTorch's OpenMP threads far more than ONNX Runtime's, so compare within this run only).",
    ]) + "\n"


@click.command()
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Threads for both runtimes.")
@click.option("--iterations", type=click.IntRange(min=30), default=30, show_default=True,
              help="Timed iterations after warm-up.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Warm-up iterations.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=RESULTS, show_default=True,
              help="Folder for onnx_latency.json and onnx_latency.md.")
def main(threads: int, iterations: int, warmup: int, out: Path) -> None:
    """Benchmark d5c5, d4c5, d3c5, d2c5 at 240x240 and write the results."""
    load_before = os.getloadavg()[0]
    mask = make_mask("random", 4, (240, 240))
    result = benchmark_models(list(ARCHS), mask.shape, mask, threads, iterations, warmup, teacher="d5c5",
                              log=lambda message: click.echo(message, err=True))
    click.echo("timing the d3c5 DF formulations", err=True)
    formulations = compare_formulations("d3c5", mask, ("lines", "dft", "fft"), threads, iterations, warmup)
    accuracy = [dft_accuracy(n, threads) for n in (240, 150, 256)]
    data = result.to_json()
    report = {
        "benchmark": data,
        "formulations": [asdict(f) for f in formulations],
        "dft_accuracy": [asdict(a) for a in accuracy],
        "targets": targets(data["models"]),
        "complex_images": complex_images(data["models"]),
        "paper_rtx3090_ms": PAPER_RTX3090_MS,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "load_before": load_before,
                    "load_after": os.getloadavg()[0], "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "glibc_malloc_keeps_freed_memory": data["glibc_malloc_keeps_freed_memory"]},
    }
    table = format_table(result)
    save_json(out / "onnx_latency.json", report)
    with atomic_path(out / "onnx_latency.md") as temporary:
        temporary.write_text(markdown(report, table))
    click.echo(table)
    click.echo(f"\nwritten: {out / 'onnx_latency.json'}, {out / 'onnx_latency.md'}")


if __name__ == "__main__":
    main()
