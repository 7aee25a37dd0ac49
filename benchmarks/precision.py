"""The precision accounting: fp32, INT8 and fp16 files of the DC-CNN sizes, where INT8's time goes, and OpenVINO.

For every image size and architecture (default d2c5-d5c5 at 240x240 and 120x120) one interleaved loop times the
model's fp32, INT8 and fp16 files and PyTorch eager (:func:`compressor.export.benchmark.timing.benchmark_architecture`:
medians and 90th percentiles of at least 30 iterations at batch 1, throughput at batch 16, each file's DF share from
ONNX Runtime's per-node profile). The table gives, per model and precision: parameters, file size, median and p90
latency, throughput, the speed relative to the fp32 file and ΔPSNR/ΔSSIM against fp32. Then:

* the profile: where ONNX Runtime's kernel time goes in the INT8 and fp32 files of d3c5 (the largest size), by
  operator (``QuantizeLinear``/``DequantizeLinear``, ``Conv``/``QLinearConv``, layout ``Reorder*``/``Transpose``, and
  the DF's nodes gathered under ``DF``), which explains the INT8 figure;
* OpenVINO (``--openvino``, optional: ``pip install openvino``): the same fp32 and INT8 files on the tool's OpenVINO
  backend (``--provider openvino``, :class:`compressor.export.runtimes.openvino_runtime.OpenVINORuntime`),
  interleaved with ONNX Runtime
  on the same slice, with the largest output difference between the two and the speed ratio (OpenVINO's median over
  ONNX Runtime's: above 1 means OpenVINO is slower). The backend pins fp32 inference precision
  (``INFERENCE_PRECISION_HINT=f32``): by default OpenVINO would run bf16 on CPUs that have it, which changes the
  numbers the validation checked.

Weights: ``--run RUN`` times the run's trained models (per architecture its SFT-KD-Recon student where it has one, else
its Std-KD student, student or teacher) at the run's image size, with the run's exports (``compress export --run RUN
--precision fp32,int8,fp16``, whose metadata carries ΔPSNR/ΔSSIM on the run's validation slices). Without ``--run`` the
models have random weights and their INT8/fp16 files are made for timing on phantoms: only the timing means anything,
and the quality columns stay empty. Writes ``benchmarks/results/precision.{json,md}``. Usage::

    python -m benchmarks.precision [--run runs/default] [--sizes 240,120] [--archs d2c5,d3c5,d4c5,d5c5]
        [--iterations 30] [--threads 2] [--openvino]
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx
import onnxruntime as ort
import torch
from tabulate import tabulate

from compressor.errors import InputError
from compressor.export.benchmark.precision_files import PrecisionFile, parse_precisions, timing_file
from compressor.export.benchmark.profile import (
    PROFILE_RUNS,
    data_fidelity_scopes,
    df_share,
    profile_graph,
    time_by_op_type,
)
from compressor.export.benchmark.run import MIN_ITERATIONS, run_precision_files
from compressor.export.benchmark.timing import benchmark_architecture, export_for_timing
from compressor.export.exported_file import read_exported_metadata
from compressor.export.run_models import RunModel, load_run_models
from compressor.export.runtimes.cpu import cpu_features
from compressor.export.runtimes.registry import RUNTIMES, onnxruntime_cpu
from compressor.export.runtimes.session import graph_feed
from compressor.export.runtimes.timing import interleaved_timings
from compressor.export.targets.export import phantom_kspace, resolve_formulation
from compressor.io import atomic_path, save_json
from compressor.masks import SamplingMask, make_mask
from compressor.models import build_model
from compressor.models.base import CascadeModel

RESULTS = Path(__file__).resolve().parent / "results"
ARCHS = ("d2c5", "d3c5", "d4c5", "d5c5")
SIZES = (240, 120)
PROFILED_ARCH = "d3c5"
ROLE_PREFERENCE = ("sft_kd", "std_kd", "student", "teacher")
"""Which of a run's models of one architecture is timed: the first role present."""
QUALITY_MAX_PSNR_LOSS = 0.1
"""The issue's bound: INT8 d3c5 loses at most 0.1 dB PSNR on validation."""
SPEEDUP_TARGET = 1.5
"""The issue's target on a CPU with an int8 dot product: INT8 d3c5 at 240x240 at least 1.5x the fp32 export."""


@dataclass(frozen=True)
class Subject:
    """One model to time at one size: the model, its mask, and its files other than fp32 (empty: made here)."""

    name: str
    model: CascadeModel
    mask: SamplingMask
    files: Mapping[str, PrecisionFile]


def random_subjects(archs: Sequence[str], size: int) -> list[Subject]:
    """Randomly initialised ``archs`` at ``size x size`` with a 4x random column mask."""
    mask = make_mask("random", 4, (size, size))
    torch.manual_seed(0)
    return [Subject(arch, build_model(arch).eval(), mask, {}) for arch in archs]


def run_subjects(run_dir: Path, archs: Sequence[str], precisions: Sequence[str]) -> list[Subject]:
    """The run's model of each of ``archs`` (:data:`ROLE_PREFERENCE`) with its exported precision files."""
    models = [m for m in load_run_models(run_dir) if m.model.has_data_fidelity]
    subjects = []
    for arch in archs:
        candidates = [m for m in models if m.model.arch == arch]
        if not candidates:
            raise InputError(f"the run has no trained {arch} with data-fidelity layers", run_dir)
        chosen: RunModel = min(candidates, key=lambda m: ROLE_PREFERENCE.index(m.role)
                               if m.role in ROLE_PREFERENCE else len(ROLE_PREFERENCE))
        subjects.append(Subject(chosen.name, chosen.model, chosen.mask,
                                run_precision_files(run_dir, chosen.file_name, precisions)))
    return subjects


def subject_files(subject: Subject, precisions: Sequence[str], folder: Path) -> dict[str, PrecisionFile]:
    """``{precision: file}`` of ``subject`` in ``precisions`` order: fp32 exported for timing, the others its files
    or made for timing (:func:`~compressor.export.benchmark.precision_files.timing_file`)."""
    folder.mkdir(parents=True, exist_ok=True)
    formulation = resolve_formulation("auto", subject.mask).name
    files = {"fp32": PrecisionFile("fp32", export_for_timing(subject.model, subject.mask, formulation, folder))}
    for precision in precisions:
        if precision != "fp32":
            files[precision] = (subject.files.get(precision)
                                or timing_file(subject.model, subject.mask, precision, folder))
    return files


def accounting_rows(subject: Subject, files: Mapping[str, PrecisionFile], threads: int, iterations: int, warmup: int,
                    folder: Path) -> list[dict[str, Any]]:
    """One row per precision of ``files`` (:func:`benchmark_architecture`, all precisions in one loop)."""
    kspace = phantom_kspace(subject.mask, count=1, image_channels=subject.model.image_channels)
    timings = benchmark_architecture(subject.model, subject.mask, kspace, onnxruntime_cpu(), threads, iterations,
                                     warmup, folder, list(files), files)
    size = "x".join(str(n) for n in subject.mask.shape)
    rows = []
    for precision, timing in timings.items():
        known = files[precision]
        rows.append({"size": size, "model": subject.name, "arch": subject.model.arch, "precision": precision,
                     "parameters": subject.model.num_parameters(), "file_bytes": timing["file_bytes"],
                     "ort_ms_median": timing["ort_ms_median"], "ort_ms_p90": timing["ort_ms_p90"],
                     "ort_throughput_b16": timing["ort_throughput_b16"], "speedup_vs_fp32": timing["speedup_vs_fp32"],
                     "df_share": timing["df_share"], "parity_max_abs_error": timing["parity_max_abs_error"],
                     "delta_psnr": known.delta_psnr, "delta_ssim": known.delta_ssim})
    return rows


def profile_summary(files: Mapping[str, PrecisionFile], feed: Mapping[str, np.ndarray], threads: int,
                    warmup: int) -> dict[str, Any]:
    """Per precision: the share of ONNX Runtime's kernel time by operator (the DF's nodes as ``DF``, named by the fp32
    graph: a quantized file keeps the node names, not always their scopes), the DF share, the share of the nodes ONNX
    Runtime inserted itself (layout reorders; no exported node behind them) and the exported node counts."""
    fp32_scopes = data_fidelity_scopes(onnx.load(str(files["fp32"].path)))
    summary = {}
    for precision, file in files.items():
        times = profile_graph(file.path, onnxruntime_cpu(), threads, feed, warmup=warmup, scopes=fp32_scopes)
        op_counts: dict[str, int] = {}
        for node in onnx.load(str(file.path)).graph.node:
            op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
        total = sum(node.microseconds for node in times)
        summary[precision] = {"time_by_op_type": time_by_op_type(times), "df_share": df_share(times),
                              "runtime_inserted_share": sum(n.microseconds for n in times if n.source is None) / total,
                              "kernel_ms_per_run": sum(node.microseconds for node in times) / 1e3 / PROFILE_RUNS,
                              "exported_nodes_by_op_type": dict(sorted(op_counts.items()))}
    return summary


def openvino_comparison(files: Mapping[str, PrecisionFile], feed: Mapping[str, np.ndarray], threads: int,
                        iterations: int, warmup: int) -> dict[str, Any]:
    """The same files on ONNX Runtime and on the tool's OpenVINO backend (:class:`~compressor.export.runtimes.
    openvino_runtime.OpenVINORuntime`, f32 inference precision), interleaved in one loop: per precision both medians,
    ``openvino / onnxruntime`` and the largest output difference between the two."""
    cpu, openvino = onnxruntime_cpu(), RUNTIMES.get("openvino")
    sessions = {(runtime.name, precision): runtime.session(file.path, threads)
                for precision, file in files.items() for runtime in (cpu, openvino)}
    differences = {}
    for precision in files:
        reference, candidate = (sessions[runtime.name, precision].run(None, feed) for runtime in (cpu, openvino))
        differences[precision] = max(float(np.max(np.abs(a - b))) for a, b in zip(candidate, reference, strict=True))
    timings = interleaved_timings({f"{runtime}/{precision}": (lambda session=session: session.run(None, feed))
                                   for (runtime, precision), session in sessions.items()}, iterations, warmup)
    return {"runtime": openvino.label, "threads": threads, "by_precision": {
        precision: {"onnxruntime_ms_median": timings[f"{cpu.name}/{precision}"].median,
                    "openvino_ms_median": timings[f"{openvino.name}/{precision}"].median,
                    "openvino_over_onnxruntime": timings[f"{openvino.name}/{precision}"].median
                    / timings[f"{cpu.name}/{precision}"].median,
                    "max_abs_output_difference": differences[precision]} for precision in files}}


def target_checks(rows: Sequence[Mapping[str, Any]], cpu: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's INT8 targets on the :data:`PROFILED_ARCH` rows: ΔPSNR within :data:`QUALITY_MAX_PSNR_LOSS` at every
    size (``None`` without quality figures), and at 240x240 the speed against fp32, which must reach
    :data:`SPEEDUP_TARGET` where the CPU has an int8 dot product and is only reported where it has not."""
    int8 = [row for row in rows if row["arch"] == PROFILED_ARCH and row["precision"] == "int8"]
    deltas = [row["delta_psnr"] for row in int8 if row["delta_psnr"] is not None]
    speed = next((row["speedup_vs_fp32"] for row in int8 if row["size"] == "240x240"), None)
    return {"arch": PROFILED_ARCH,
            "int8_delta_psnr_db": deltas, "quality_met": all(d >= -QUALITY_MAX_PSNR_LOSS for d in deltas)
            if deltas else None,
            "int8_speedup_vs_fp32_240": speed, "int8_dot_product": cpu["int8_dot_product"],
            "speed_met": speed >= SPEEDUP_TARGET if speed is not None and cpu["int8_dot_product"] else None}


def int8_layers_kept_fp32(file: PrecisionFile) -> list[dict[str, Any]]:
    """The convolutions the INT8 file's sensitivity analysis kept in fp32, with why (its metadata's
    ``quantization.layers``)."""
    quantization = read_exported_metadata(file.path).quantization
    layers = quantization.layers if quantization is not None else ()
    return [{"layer": layer.layer, "psnr_loss_alone_db": layer.psnr_loss_alone_db, "reason": layer.reason}
            for layer in layers if not layer.int8]


def openvino_verdict(comparisons: Mapping[str, Any]) -> str:
    """One line: whether OpenVINO was clearly faster (by 10 %) than ONNX Runtime on any file measured here."""
    ratios = [c["openvino_over_onnxruntime"] for entry in comparisons.values() for c in entry["by_precision"].values()]
    faster = [ratio for ratio in ratios if ratio < 1 / 1.1]
    if faster:
        return (f"OpenVINO was clearly faster on {len(faster)} of {len(ratios)} files (best {1 / min(faster):.2f}x): "
                "on such files it is worth `--provider openvino`, which validates the same way.")
    return (f"OpenVINO was not clearly faster on any of the {len(ratios)} files (OpenVINO / ORT between "
            f"{min(ratios):.2f}x and {max(ratios):.2f}x): ONNX Runtime is the runtime to use on this CPU.")


def _cell(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def accounting_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The accounting rows as a Markdown table."""
    return tabulate(
        [[r["size"], r["model"], r["precision"], f"{r['parameters']:,d}", f"{r['file_bytes']:,d}",
          f"{r['ort_ms_median']:.2f}", f"{r['ort_ms_p90']:.2f}", f"{r['ort_throughput_b16']:.1f}",
          f"{r['speedup_vs_fp32']:.2f}x", f"{r['df_share']:.1%}", _cell(r["delta_psnr"], "{:+.3f}"),
          _cell(r["delta_ssim"], "{:+.4f}")] for r in rows],
        headers=["size", "model", "precision", "parameters", "file bytes", "ORT ms (median, b1)", "ORT ms (p90, b1)",
                 "slices/s (b16)", "vs fp32", "DF share", "ΔPSNR (dB)", "ΔSSIM"], tablefmt="github",
        disable_numparse=True)


def profile_table(summary: Mapping[str, Any]) -> str:
    """Kernel-time shares by operator, one column per precision."""
    ops = list(dict.fromkeys(op for entry in summary.values() for op in entry["time_by_op_type"]))
    return tabulate([[op, *(_cell(entry["time_by_op_type"].get(op), "{:.1%}") for entry in summary.values())]
                     for op in ops], headers=["operator", *summary], tablefmt="github")


def openvino_table(comparison: Mapping[str, Any]) -> str:
    return tabulate([[precision, f"{c['onnxruntime_ms_median']:.2f}", f"{c['openvino_ms_median']:.2f}",
                      f"{c['openvino_over_onnxruntime']:.2f}x", f"{c['max_abs_output_difference']:.1e}"]
                     for precision, c in comparison["by_precision"].items()],
                    headers=["file", "ORT ms (median)", "OpenVINO ms (median)", "OpenVINO / ORT", "max |OV - ORT|"],
                    tablefmt="github")


def markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: setting, accounting, profile and OpenVINO sections."""
    cpu = report["cpu"]
    lines = [f"# Precision accounting\n\nCPU: {cpu['model']} ({', '.join(cpu['instruction_sets']) or 'no AVX2'}; "
             f"int8 dot product (VNNI/AMX): {'yes' if cpu['int8_dot_product'] else 'no'}), {report['threads']} "
             f"threads, ONNX Runtime {report['onnxruntime_version']}, batch 1 medians of {report['iterations']} "
             f"interleaved iterations.\n\nWeights: {report['weights']}\n",
             accounting_table(report["rows"])]
    checks = report["targets"]
    quality = ("not measured (no quality figures)" if checks["quality_met"] is None else
               f"{'met' if checks['quality_met'] else 'NOT met'} (ΔPSNR "
               f"{', '.join(f'{d:+.3f}' for d in checks['int8_delta_psnr_db'])} dB)")
    speed = checks["int8_speedup_vs_fp32_240"]
    speed_text = ("not measured at 240x240" if speed is None else f"{speed:.2f}x the fp32 file at 240x240, " + (
        f"target {SPEEDUP_TARGET}x {'met' if checks['speed_met'] else 'NOT met'}" if checks["int8_dot_product"]
        else "no int8 dot product on this CPU: reported, no target"))
    lines.append(f"\nTargets, INT8 {checks['arch']}: quality (loss at most {QUALITY_MAX_PSNR_LOSS} dB) {quality}; "
                 f"speed {speed_text}.")
    for size, entry in report["profiles"].items():
        lines += [f"\n## Where the time goes: {entry['model']} at {size} (share of ONNX Runtime kernel time)\n",
                  profile_table(entry["summary"])]
    for label, kept in report["int8_kept_fp32"].items():
        lines += [f"\n## INT8 {label}: convolutions kept in fp32 by the sensitivity analysis\n",
                  tabulate([[k["layer"], f"{k['psnr_loss_alone_db']:.3f}", k["reason"]] for k in kept],
                           headers=["layer", "PSNR loss alone (dB)", "why"], tablefmt="github") if kept else "none"]
    if report["openvino"]:
        lines.append(f"\n{openvino_verdict(report['openvino'])}")
    for label, entry in report["openvino"].items():
        lines += [f"\n## {entry['runtime']} vs ONNX Runtime (CPU, fp32 inference precision): {label}\n",
                  openvino_table(entry)]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A trained run: its models and exports at its image size (default: random weights).")
@click.option("--archs", default=",".join(ARCHS), show_default=True)
@click.option("--sizes", default=",".join(str(s) for s in SIZES), show_default=True,
              help="Square image sizes without --run.")
@click.option("--precisions", default="fp32,int8,fp16", show_default=True)
@click.option("--iterations", type=click.IntRange(min=MIN_ITERATIONS), default=MIN_ITERATIONS, show_default=True)
@click.option("--warmup", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="Threads for every runtime (default: PyTorch's).")
@click.option("--openvino/--no-openvino", "with_openvino", default=False, show_default=True,
              help="Also time the fp32 and INT8 files on OpenVINO's CPU runtime (pip install openvino).")
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS / "precision.json", show_default=True)
def main(run_dir: Path | None, archs: str, sizes: str, precisions: str, iterations: int, warmup: int,
         threads: int | None, with_openvino: bool, out: Path) -> None:
    if with_openvino and not RUNTIMES.get("openvino").usable():
        raise click.UsageError("--openvino needs OpenVINO with its CPU device: pip install openvino")
    chosen = parse_precisions(precisions)
    if "fp32" not in chosen:
        chosen = ["fp32", *chosen]
    arch_list = [a.strip() for a in archs.split(",") if a.strip()]
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    if run_dir is not None:
        subjects = {None: run_subjects(run_dir, arch_list, chosen)}
        weights = f"trained, run {run_dir} (quality from its exports' metadata, on its validation slices)"
    else:
        subjects = {size: random_subjects(arch_list, size) for size in (int(s) for s in sizes.split(",") if s)}
        weights = ("random (no --run): quality figures from random weights mean nothing, so none are given; only "
                   "the timing is meaningful")
    rows, profiles, openvino, kept = [], {}, {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for group in subjects.values():
            profiled = next((s for s in group if s.model.arch == PROFILED_ARCH), group[0])
            for subject in group:
                size = "x".join(str(n) for n in subject.mask.shape)
                click.echo(f"timing {subject.name} at {size}", err=True)
                files = subject_files(subject, chosen, Path(folder) / size)
                rows += accounting_rows(subject, files, threads, iterations, warmup, Path(folder) / size)
                if "int8" in files:
                    kept[f"{subject.name} at {size}"] = int8_layers_kept_fp32(files["int8"])
                feed = graph_feed(phantom_kspace(subject.mask, count=1, image_channels=subject.model.image_channels),
                                  subject.mask.values)
                if subject is profiled:
                    profiles[size] = {"model": subject.name, "summary": profile_summary(files, feed, threads, warmup)}
                if with_openvino:
                    compared = {p: files[p] for p in ("fp32", "int8") if p in files}
                    openvino[f"{subject.name} at {size}"] = {
                        "model": subject.name, **openvino_comparison(compared, feed, threads, iterations, warmup)}
    report = {"cpu": cpu_features().to_json(), "threads": threads, "iterations": iterations, "warmup": warmup,
              "onnxruntime_version": ort.__version__, "weights": weights, "precisions": chosen,
              "targets": target_checks(rows, cpu_features().to_json()),
              "rows": rows, "int8_kept_fp32": kept, "profiles": profiles, "openvino": openvino,
              **({"openvino_verdict": openvino_verdict(openvino)} if openvino else {})}
    save_json(out, report)
    with atomic_path(out.with_suffix(".md")) as temporary:
        temporary.write_text(markdown(report))
    click.echo(markdown(report))
    click.echo(f"written: {out}, {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
