"""``compress benchmark``: latency of the exported graph against PyTorch eager, the paper's Table 8."""

from __future__ import annotations

from pathlib import Path

import click

from compressor.cli.choices import PROVIDERS, SHOW_DEFAULTS
from compressor.cli.common import CONSOLE, OneLineCommand, comma_separated, handles_input_errors
from compressor.rundir import BENCHMARK_FILE, RunLayout, refuse_if_training
from compressor.workflow.outputs import require_file


def _check_outputs(run_dir: Path | None, json_path: Path | None) -> None:
    """Refuse, before any timing, a run another process is training in (its models still change) and an output
    that could not be written: ``--json`` and its CSV, and with ``--run`` the run's ``benchmark.json`` and CSV."""
    if run_dir is not None:
        refuse_if_training(run_dir)
    written = []
    if run_dir is not None:
        layout = RunLayout(run_dir)
        written += [(layout.benchmark, "the run's benchmark record is written here"),
                    (layout.benchmark_table, "the run's benchmark table is written here")]
    if json_path is not None or run_dir is None:
        json_path = json_path or Path(BENCHMARK_FILE)
        written += [(json_path, "--json is the JSON file to write"),
                    (json_path.with_suffix(".csv"), "the CSV beside --json is written here")]
    for path, role in written:
        require_file(path, role)


@click.command("benchmark", cls=OneLineCommand, context_settings=SHOW_DEFAULTS)
@click.option("--run", "run_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Run directory: include its trained models (with PSNR/SSIM) and use its mask.")
@click.option("--archs", help="Architectures to time (default: the teacher and d2c5,d3c5,d4c5).")
@click.option("--teacher", default="d5c5", help="Teacher architecture (compression reference) without --run.")
@click.option("--image-size", type=int, default=240, help="Square image size without --run.")
@click.option("--acceleration", type=float, default=4.0, help="Acceleration of the generated mask without --run.")
@click.option("--mask-type", type=click.Choice(["random", "equispaced"]), default="random",
              help="Generated mask type without --run.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for ONNX Runtime and PyTorch alike "
              "(default: PyTorch's count).")
@click.option("--iterations", type=click.IntRange(min=30), default=30, help="Timed iterations after warm-up.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, help="Warm-up iterations (not timed).")
@click.option("--provider", type=PROVIDERS, default="auto",
              help="ONNX Runtime execution provider (OpenVINO: python -m benchmarks.precision --openvino).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Output JSON (default <run>/benchmark.json, else ./benchmark.json); a CSV is written beside it.")
@click.option("--precision", "precisions", default="fp32",
              help="Comma-separated precisions to time, one row each (fp32, int8, fp16): with --run the run's "
                   "exports (compress export --precision), else files made from the random weights for timing.")
@handles_input_errors
def benchmark_command(run_dir: Path | None, archs: str | None, teacher: str, image_size: int, acceleration: float,
                      mask_type: str, threads: int | None, iterations: int, warmup: int, provider: str,
                      json_path: Path | None, precisions: str) -> None:
    """Latency of ONNX Runtime (with DF) vs PyTorch eager across model sizes and precisions: the paper's Table 8."""
    from compressor.export.benchmark import (
        DEFAULT_STUDENTS,
        benchmark_models,
        benchmark_run,
        format_table,
        parse_precisions,
        write_benchmark,
    )

    chosen = parse_precisions(precisions)
    _check_outputs(run_dir, json_path)
    log = CONSOLE.log
    if run_dir is not None:
        result = benchmark_run(run_dir, comma_separated(archs), threads=threads, iterations=iterations, warmup=warmup,
                               provider=provider, log=log, precisions=chosen)
        written = [run_dir / BENCHMARK_FILE, (run_dir / BENCHMARK_FILE).with_suffix(".csv")]
        if json_path is not None:
            written = write_benchmark(result, json_path, json_path.with_suffix(".csv"))
    else:
        from compressor.masks import make_mask

        mask = make_mask(mask_type, acceleration, (image_size, image_size))
        result = benchmark_models(comma_separated(archs) or [teacher, *DEFAULT_STUDENTS], mask.shape, mask, threads,
                                  iterations, warmup, teacher=teacher, provider=provider, log=log,
                                  precisions=chosen)
        json_path = json_path or Path(BENCHMARK_FILE)
        written = write_benchmark(result, json_path, json_path.with_suffix(".csv"))
    click.echo(format_table(result))
    click.echo(f"\nwritten: {', '.join(str(p) for p in written)}")



