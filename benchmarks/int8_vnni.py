"""INT8 against fp32 on a CPU with int8 dot products (issue 26): one trained model's fp32 and INT8 files, timed
interleaved, their quality on data the layer choice never saw, where the time goes, OpenVINO beside, and the variants
tried and not taken.

Measurements accumulate in one JSON file (``--out``, default ``benchmarks/results/precision_vnni_<size>.json``), one
step per call, so that each timed step stays short enough to run under a lock that pauses other work on a shared
machine; ``report`` renders the Markdown beside it. Steps:

* ``quality``: ΔPSNR/ΔSSIM of each INT8 file (``--int8`` and every ``--variant``) against the fp32 file on the run's
  validation split (where the layer choice was made), its test split and every non-empty slice of the MNI volume
  at the run's size (per-slice PSNR, peak = the slice's maximum; k-space simulated with the run's mask); and of the
  fp32 file compiled by OpenVINO at bf16 inference precision. Untimed.
* ``timing``: batch-1 latency, interleaved, plain ONNX Runtime CPU sessions (default options, ``--threads``
  intra-op threads, spinning off): the fp32 file, the INT8 file and every variant; OpenVINO's CPU runtime (latency
  hint) runs the fp32 file at f32 and at bf16 inference precision and the INT8 file. Medians and 90th percentiles.
* ``profile``: ONNX Runtime's kernel time by operator of the fp32 file, the INT8 file and the ``--before`` file.
* ``files``: for ``--size`` other than the run's, the fp32 and INT8 files of the model at that size for timing, INT8
  with the convolutions ``--int8`` has INT8 (its layer choice), calibrated on MNI slices at that size; prints the
  ``--fp32``/``--int8`` arguments of the next steps.
* ``report``: the Markdown, with the CPU and its flags, the ONNX Runtime and OpenVINO versions and the ``--note``
  lines (e.g. the lock's idle line).

Usage::

    python -m benchmarks.int8_vnni STEP --run RUN --model sft_kd/at/d3c5@4x --fp32 F.onnx --int8 F.int8.onnx
        [--before OLD.int8.onnx] [--variant "name=path.onnx"]... [--size 120] [--iterations 100] [--threads 2]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx
import onnxruntime as ort
from tabulate import tabulate

from compressor.errors import InputError
from compressor.export.benchmark.profile import profile_graph, time_by_op_type
from compressor.export.graph.validate import QualitySlices
from compressor.export.precision.quality import QualityProbe
from compressor.export.run_models import RunModel, load_run_models, simulated_kspace
from compressor.export.runtimes.cpu import cpu_features
from compressor.export.runtimes.openvino_runtime import OpenVINOSession
from compressor.export.runtimes.registry import onnxruntime_cpu
from compressor.export.runtimes.session import graph_feed
from compressor.export.runtimes.timing import interleaved_timings
from compressor.io import save_json
from compressor.masks import SamplingMask, make_mask

RESULTS = Path(__file__).resolve().parent / "results"
SPLITS = ("validation", "test", "mni")
"""Where quality is measured: the run's validation and test splits (its stage's reconstruction files) and the MNI
volume at the run's size."""
WARMUP = 5


class OpenVINOPrecision:
    """OpenVINO's CPU device at one inference precision (``"f32"`` or ``"bf16"``), latency hint; the same calls as
    :class:`compressor.export.runtimes.base.Runtime` that :class:`QualityProbe` makes."""

    def __init__(self, precision: str):
        self.precision = precision
        self.label = f"OpenVINO (CPU, {precision} inference precision)"

    def session(self, model: str | Path | bytes, threads: int | None = None, spinning: bool = False) -> Any:
        import openvino

        core = openvino.Core()
        read = core.read_model(model if isinstance(model, bytes) else str(model))
        return OpenVINOSession(core.compile_model(read, "CPU", {"INFERENCE_PRECISION_HINT": self.precision,
                                                                "PERFORMANCE_HINT": "LATENCY"}))


def mni_images(size: int) -> np.ndarray:
    """Every slice ``(S, size, size)`` of the cached MNI volume at ``size`` (in-plane downsampling ``240 // size``)."""
    import h5py

    from compressor.data.embedded import build_mni_volume

    with h5py.File(build_mni_volume(image_size=size, downsample=max(1, 240 // size), log=lambda _: None)) as file:
        return file["target"][:]


def split_images(run_model: RunModel, split: str) -> np.ndarray:
    """Fully sampled ``(S, H, W)`` images of ``split``: the stage's validation/test targets, or every non-empty slice
    of the MNI volume at the model's size (:func:`mni_images`; empty ones are dropped)."""
    import h5py

    if split == "mni":
        images = mni_images(run_model.mask.shape[0])
        return images[images.reshape(len(images), -1).max(axis=1) > 0]
    with h5py.File(run_model.stage_dir / f"reconstructions_{split}.h5") as file:
        return file["target"][:]


def measure_quality(run_model: RunModel, fp32: Path, files: Mapping[str, Path]) -> dict[str, Any]:
    """``{name: {split: {delta_psnr_db, delta_ssim, psnr_fp32_db, slices}}}`` of each file against ``fp32`` on ONNX
    Runtime's CPU provider, and ``"openvino bf16"``: the fp32 file on OpenVINO at bf16 inference precision."""
    graph = onnx.load(str(fp32))
    results: dict[str, Any] = {name: {} for name in [*files, "openvino bf16"]}
    for split in SPLITS:
        images = split_images(run_model, split)
        slices = QualitySlices(simulated_kspace(images, run_model.mask.values), images, split)
        probe = QualityProbe(graph, slices, run_model.mask.values, run_model.model.image_channels, onnxruntime_cpu())
        for name, path in files.items():
            results[name][split] = probe.quality(onnx.load(str(path))).to_json()
        # the same fp32 reference, the candidate the fp32 graph compiled at bf16
        results["openvino bf16"][split] = probe.quality(graph, OpenVINOPrecision("bf16")).to_json()
    return results


def size_mask(run_model: RunModel, size: int) -> SamplingMask:
    """The run's mask at its own size, else a seeded 4x random column mask of ``size x size``."""
    return run_model.mask if size == run_model.mask.shape[0] else make_mask("random", 4, (size, size))


def build_size_files(run_model: RunModel, int8_file: Path, size: int, folder: Path) -> dict[str, Path]:
    """The fp32 and INT8 files of the run's model at ``size x size`` for timing, INT8 with the convolutions that
    ``int8_file`` (the model's export at its own size) has INT8, calibrated on 16 slices of the MNI volume at that
    size."""
    from compressor.export.benchmark.timing import export_for_timing
    from compressor.export.exported_file import read_exported_metadata
    from compressor.export.precision.options import CalibrationSlices
    from compressor.export.precision.quantizer import Quantizer, int8_settings
    from compressor.export.run_models import evenly_spaced_indices
    from compressor.export.targets.export import resolve_formulation

    mask = size_mask(run_model, size)
    fp32 = export_for_timing(run_model.model, mask, resolve_formulation("auto", mask).name, folder)
    labels = {layer.layer for layer in read_exported_metadata(int8_file).quantization.layers if layer.int8}
    images = mni_images(size)
    images = images[evenly_spaced_indices(len(images), 16)]
    calibration = CalibrationSlices(simulated_kspace(images, mask.values), f"16 MNI slices at {size}x{size}")
    quantizer = Quantizer(onnx.load(str(fp32)), run_model.model, calibration, mask.values, "minmax",
                          int8_settings(cpu_features()), folder)
    int8 = folder / f"{fp32.stem}.int8.onnx"
    onnx.save(quantizer.quantize([layer.node for layer in quantizer.layers if layer.label in labels]), str(int8))
    return {"fp32": fp32, "int8": int8}


def feed_for(run_model: RunModel, size: int) -> dict[str, np.ndarray]:
    """One seeded random k-space slice undersampled with :func:`size_mask` (latency does not depend on the
    values)."""
    mask = size_mask(run_model, size).values
    kspace = np.fft.fft2(np.random.default_rng(0).standard_normal((1, *mask.shape)), norm="ortho") * mask
    return graph_feed(kspace, mask)


def measure_timing(run_model: RunModel, size: int, files: Mapping[str, Path], iterations: int,
                   threads: int) -> dict[str, Any]:
    """Interleaved batch-1 medians and p90 (ms) of every file on ONNX Runtime and, under ``"openvino ..."`` names,
    the fp32 file at f32 and bf16 and the INT8 file on OpenVINO."""
    feed, cpu = feed_for(run_model, size), onnxruntime_cpu()
    sessions = {f"onnxruntime {name}": cpu.session(str(path), threads) for name, path in files.items()}
    for name, precision, path in (("openvino fp32 (f32)", "f32", files["fp32"]),
                                  ("openvino fp32 (bf16)", "bf16", files["fp32"]),
                                  ("openvino int8", "f32", files["int8"])):
        sessions[name] = OpenVINOPrecision(precision).session(str(path))
    timings = interleaved_timings({name: (lambda s=session: s.run(None, feed)) for name, session in sessions.items()},
                                  iterations, WARMUP)
    return {name: {"median_ms": timing.median, "p90_ms": timing.p90} for name, timing in timings.items()} | {
        "iterations": iterations, "threads": threads}


def measure_profile(run_model: RunModel, size: int, files: Mapping[str, Path],
                    threads: int) -> dict[str, dict[str, float]]:
    """``{file: {operator: share of ONNX Runtime's kernel time}}``."""
    feed = feed_for(run_model, size)
    return {name: time_by_op_type(profile_graph(path, onnxruntime_cpu(), threads, feed))
            for name, path in files.items()}


def environment() -> dict[str, Any]:
    import openvino

    cpu = cpu_features()
    return {"cpu": cpu.describe(), "cpu_flags": sorted(cpu.flags), "cores": os.cpu_count(),
            "onnxruntime_version": ort.__version__, "openvino_version": openvino.get_version().split("-")[0]}


def _ratio_rows(timing: Mapping[str, Any]) -> list[list[Any]]:
    base = timing["onnxruntime fp32"]["median_ms"]
    return [[name, f"{value['median_ms']:.2f}", f"{value['p90_ms']:.2f}", f"{base / value['median_ms']:.2f}x"]
            for name, value in timing.items() if isinstance(value, dict)]


def _quality_rows(quality: Mapping[str, Any]) -> list[list[Any]]:
    return [[name, *(f"{q[split]['delta_psnr_db']:+.3f} / {q[split]['delta_ssim']:+.4f}" if split in q else ""
                     for split in SPLITS)] for name, q in quality.items()]


def _profile_table(profile: Mapping[str, Mapping[str, float]]) -> str:
    operators = sorted({op for shares in profile.values() for op in shares},
                       key=lambda op: -max(shares.get(op, 0.0) for shares in profile.values()))
    rows = [[op, *(f"{shares[op]:.1%}" if op in shares else "" for shares in profile.values())] for op in operators]
    return tabulate(rows, headers=["operator", *profile], tablefmt="github")


def render(results: Mapping[str, Any]) -> str:
    """The Markdown of ``results``."""
    env = results["environment"]
    lines = [f"# INT8 on a CPU with int8 dot products: {results['model']} at {results['size']}x{results['size']}", "",
             f"CPU: {env['cpu']}, {env['cores']} cores; ONNX Runtime {env['onnxruntime_version']}, OpenVINO "
             f"{env['openvino_version']}.", "", f"CPU flags: `{' '.join(env['cpu_flags'])}`", "",
             *[f"{note}" for note in results.get("notes", [])], "", "Files:", "",
             *[f"- {name}: `{path}`" for name, path in results["files"].items()], ""]
    if "timing" in results:
        timing = results["timing"]
        lines += [f"## Batch-1 latency, interleaved ({timing['iterations']} iterations after {WARMUP} warm-up, "
                  f"{timing['threads']} intra-op threads, spinning off)", "",
                  tabulate(_ratio_rows(timing), headers=["file", "median ms", "p90 ms", "vs ORT fp32"],
                           tablefmt="github"), ""]
    if "quality" in results:
        lines += ["## Quality against the fp32 file (ΔPSNR dB / ΔSSIM; negative: worse)", "",
                  "validation: the run's validation split (the layer choice was made on it); test: its test split; "
                  "mni: every non-empty slice of the MNI volume, per-slice PSNR with peak = slice maximum.", "",
                  tabulate(_quality_rows(results["quality"]), headers=["file", *SPLITS], tablefmt="github"), ""]
    if "profile" in results:
        lines += ["## Where ONNX Runtime's kernel time goes (share by operator)", "",
                  _profile_table(results["profile"]), ""]
    return "\n".join(lines)


def parse_variants(variants: Sequence[str]) -> dict[str, Path]:
    parsed = {}
    for variant in variants:
        name, separator, path = variant.partition("=")
        if not separator or not Path(path).is_file():
            raise InputError(f"--variant must be NAME=EXISTING_FILE.onnx, got {variant!r}")
        parsed[name] = Path(path)
    return parsed


@click.command()
@click.argument("step", type=click.Choice(["files", "quality", "timing", "profile", "report"]))
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--model", required=True, help="results.json name, e.g. sft_kd/at/d3c5@4x")
@click.option("--fp32", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--int8", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--before", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The INT8 file before the change (profiled and timed beside).")
@click.option("--variant", "variants", multiple=True, help="NAME=FILE.onnx: a variant tried (timed, quality).")
@click.option("--size", type=int, default=120, show_default=True)
@click.option("--iterations", type=int, default=100, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--note", "notes", multiple=True, help="A line for the report (e.g. the lock's idle line).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(step: str, run_dir: Path, model: str, fp32: Path, int8: Path, before: Path | None, variants: Sequence[str],
         size: int, iterations: int, threads: int, notes: Sequence[str], out: Path | None) -> None:
    """One step of the INT8 benchmark (module docstring); results merge into ``--out``."""
    out = out or RESULTS / f"precision_vnni_{size}.json"
    results = json.loads(out.read_text()) if out.is_file() else {}
    (run_model,) = load_run_models(run_dir, [model])
    if step == "files":  # the files at another size, with the layer choice of --int8; the next steps time them
        made = build_size_files(run_model, int8, size, out.parent / f"files_{size}")
        click.echo(" ".join(f"--{name} {path}" for name, path in made.items()))
        return
    files = {"fp32": fp32, "int8": int8, **({"int8 before": before} if before else {}), **parse_variants(variants)}
    results.update(model=model, size=size, environment=environment(),
                   files={name: str(path) for name, path in files.items()})
    results["notes"] = [*results.get("notes", []), *notes]
    if step == "quality":
        results["quality"] = measure_quality(run_model, fp32, {k: v for k, v in files.items() if k != "fp32"})
    elif step == "timing":
        results["timing"] = measure_timing(run_model, size, files, iterations, threads)
    elif step == "profile":
        profiled = {k: v for k, v in files.items() if k in {"fp32", "int8 before", "int8"}}
        results["profile"] = measure_profile(run_model, size, profiled, threads)
    save_json(out, results)
    out.with_suffix(".md").write_text(render(results))
    click.echo(render(results))


if __name__ == "__main__":
    main()
