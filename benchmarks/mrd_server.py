"""The MRD streaming server under load: N concurrent scans over loopback (N = 1, 2, 4, 8) against ``compress
reconstruct`` on the same slices.

The server runs as ``compress serve --verbose`` in a subprocess (its own interpreter, as in deployment: the clients'
serialisation does not share its GIL) and logs, per slice, the time from reading the readout that completed the slice
to having written its image, and the compute part of it (checks, coil compression, model, image). The clients
(:func:`compressor.export.scanner.mrd_client.stream_scan`, one thread each) send synthetic multi-slice multi-coil
Cartesian scans (:func:`tests.synthetic_scans.synthetic_scan`) as fast as the socket takes them. Per N it reports:

* slices per second: the N scans' slices over the wall time from the first connection to the last reply;
* per-slice latency, last line received -> image sent, median and p95 (ms), and its parts (medians): the server's
  compute and the wait for a model run slot while other scans' slices run;
* the overhead against the offline path: ``compress reconstruct --source ismrmrd``'s work on the same scan in this
  process with the same model and threads (read and assemble, prepare, phase check, the model, the images; no
  session creation, no output file), per slice; ``latency / offline`` as a ratio, against its default batches of 8
  and against batches of 1 (the server's: a slice is run the moment it is complete), which separates what streaming
  adds (protocol, socket, threads) from what batching changes in ONNX Runtime's speed.

Configurations are interleaved (for each repeat, N = 1, 2, 4, 8, then the offline path) so that a change in the
machine's load touches all alike. Goals (the issue): streaming adds at most 10 % to the per-slice compute
(``latency / offline <= 1.10`` at N = 1), and throughput at N = 4 is at least that at N = 1. Usage (the lead runs the
real one on a quiet machine; ``--slices 2 --repeats 1 --image-size 48`` is a seconds-long smoke run)::

    python -m benchmarks.mrd_server [--model MODEL.onnx] [--threads 2] [--slices 8] [--coils 8] [--repeats 3]

Without ``--model`` a bare 2-channel d3c5 with random weights (seed 0) is exported for ``--image-size`` with a 4x
random line mask: timing does not depend on the weights. Writes ``mrd_server.{json,md}`` into ``--out`` (default
``benchmarks/results/``).

Committed results: ``benchmarks/results/mrd_server/<model>/mrd_server.{md,json}`` (``quick_complex_d3c5_120``, the
quick run's trained 2-channel d3c5; ``bare_d3c5_240``, a bare 2-channel d3c5), each with its machine and load.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import ismrmrd
import numpy as np
from tabulate import tabulate

from compressor.export.runtimes.cpu import cpu_features
from compressor.export.runtimes.session import ExportedModel, open_exported
from compressor.export.scanner.ismrmrd_images import scan_images
from compressor.export.scanner.mrd_client import ScanReply, stream_scan
from compressor.export.scanner.raw_input import read_raw_input
from compressor.export.scanner.reconstruct import reconstruct_slices
from compressor.export.scanner.scanner_input import check_phase
from compressor.io import atomic_path, save_json
from tests.synthetic_scans import SyntheticScan, synthetic_scan

RESULTS = Path(__file__).resolve().parent / "results"
CLIENTS = (1, 2, 4, 8)
OVERHEAD_GOAL = 1.10
SLICE_LINE = re.compile(r"slice \(.*?\) sent, ([\d.]+) ms after its last readout \(([\d.]+) ms compute, "
                        r"([\d.]+) ms queued\)")
SERVING_LINE = re.compile(r"serving .* on 127\.0\.0\.1:(\d+)")
TIMEOUT = 600.0


def bare_model(folder: Path, image_size: int, seed: int = 0) -> Path:
    """A 2-channel d3c5 with random weights (``seed``) exported for ``image_size``² with a 4x random line mask."""
    import torch

    from compressor.export.targets.export import export_model, phantom_kspace
    from compressor.masks import make_mask
    from compressor.models import ModelOptions, build_model

    torch.manual_seed(seed)
    mask = make_mask("random", 4, (image_size, image_size), seed=seed)
    model = build_model("d3c5", ModelOptions(image_channels=2)).eval()
    path = folder / f"d3c5_2ch_{image_size}.onnx"
    export_model(model, path, mask=mask, validation_kspace=phantom_kspace(mask, count=1, image_channels=2))
    return path


def benchmark_scan(model: ExportedModel, slices: int, coils: int, seed: int) -> SyntheticScan:
    """A scan the model serves: ``slices`` x ``coils`` smooth complex coil images on its grid, acquiring exactly its
    mask's lines, 2x readout oversampling."""
    height, width = model.metadata.image_size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    body = np.exp(-((y - 0.5) ** 2 + (x - 0.5) ** 2) * 6) * np.exp(1j * (1.5 * x + y))
    sensitivities = np.stack([np.exp(-((y - c / coils) ** 2) * 3) * np.exp(1j * c * x) for c in range(coils)])
    images = (body + 0.05 * rng.standard_normal((slices, 1, height, width))) * sensitivities
    return synthetic_scan(images, acquired_lines=model.metadata.mask.any(axis=0), seed=seed)


def offline_images(model: ExportedModel, scan_path: Path, batch_size: int = 8) -> tuple[float, list[ismrmrd.Image]]:
    """``compress reconstruct --source ismrmrd --batch-size batch_size``'s work on a scan file with an open model:
    its wall seconds and the ISMRMRD images it gives."""
    started = time.perf_counter()
    scanner_input = read_raw_input(scan_path, model.metadata, model.metadata.mask)
    check_phase(scanner_input.kspace, scanner_input.mask, model.metadata.image_channels, False, scan_path)
    reconstruction = reconstruct_slices(model, scanner_input.kspace, scanner_input.mask, batch_size=batch_size)
    images = scan_images(scanner_input.scan, reconstruction)
    return time.perf_counter() - started, images


def agreement(served: list[ismrmrd.Image], offline: list[ismrmrd.Image]) -> dict[str, float | bool]:
    """How the served images compare with the offline ones of the same scan: the largest absolute pixel difference,
    that over the offline images' largest pixel, and whether every header is identical."""
    difference = max(float(np.max(np.abs(a.data - b.data))) for a, b in zip(served, offline, strict=True))
    largest = max(float(np.max(np.abs(b.data))) for b in offline)
    headers = all(bytes(a.getHead()) == bytes(b.getHead()) for a, b in zip(served, offline, strict=True))
    return {"max_abs_difference": difference, "relative_to_max": difference / largest, "headers_identical": headers}


class ServerProcess:
    """``compress serve --verbose`` on a free loopback port, its log in ``log``."""

    def __init__(self, model_path: Path, log: Path, threads: int | None, provider: str):
        command = [sys.executable, "-m", "compressor", "serve", str(model_path), "--port", "0", "--provider",
                   provider, "--log", str(log), "--verbose", "--max-connections", str(max(CLIENTS))]
        if threads is not None:
            command += ["--threads", str(threads)]
        self.log, errors = log, log.with_suffix(".stderr")
        with open(errors, "wb") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 120
        while not (log.is_file() and SERVING_LINE.search(log.read_text())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {errors.read_text()[-2000:]}")
            time.sleep(0.1)
        self.address = ("127.0.0.1", int(SERVING_LINE.search(log.read_text()).group(1)))

    def log_size(self) -> int:
        return self.log.stat().st_size

    def slice_times(self, offset: int, expected: int) -> np.ndarray:
        """``(expected, 3)`` latency, compute and queued time (ms) of the slices logged after byte ``offset``, once
        all have been logged (bounded wait)."""
        deadline = time.monotonic() + 60
        while True:
            with open(self.log, "rb") as stream:
                stream.seek(offset)
                found = SLICE_LINE.findall(stream.read().decode())
            if len(found) >= expected or time.monotonic() > deadline:
                return np.array(found, float).reshape(-1, 3)
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.send_signal(2)  # SIGINT: the server's clean shutdown
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)


def concurrent_scans(address: tuple[str, int], scans: list[SyntheticScan]) -> tuple[float, list[ScanReply]]:
    """Stream every scan on its own connection at once; wall seconds until the last reply, and the replies. Each
    reply must hold one image per slice."""
    replies = [None] * len(scans)

    def client(index: int) -> None:
        replies[index] = stream_scan(address, scans[index].xml, scans[index].acquisitions, timeout=TIMEOUT)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(len(scans))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    seconds = time.perf_counter() - started
    for reply, scan in zip(replies, scans, strict=True):
        if reply is None or reply.texts or len(reply.images) != len(scan.expected_kspace):
            raise RuntimeError(f"a scan was not served: {reply}")
    return seconds, replies


@dataclass
class Row:
    """One N: throughput, latency and overhead (ms unless said)."""

    clients: int
    slices_per_second: float
    latency_median_ms: float
    latency_p95_ms: float
    compute_median_ms: float
    queued_median_ms: float
    offline_ms_per_slice: float
    overhead_ratio: float
    offline_b1_ms_per_slice: float
    overhead_ratio_b1: float


def run(model_path: Path, threads: int | None, provider: str, slices: int, coils: int, repeats: int,
        folder: Path) -> dict:
    """The interleaved measurements (module docstring) and their summary."""
    model = open_exported(model_path, provider, threads)
    scans = [benchmark_scan(model, slices, coils, seed) for seed in range(max(CLIENTS))]
    scan_path = scans[0].write_ismrmrd(folder / "scan.h5")
    server = ServerProcess(model_path, folder / "serve.log", threads, provider)
    walls: dict[int, list[float]] = {n: [] for n in CLIENTS}
    times: dict[int, list[np.ndarray]] = {n: [] for n in CLIENTS}
    offline: list[float] = []
    offline_b1: list[float] = []
    try:
        # warm-up (first-run allocations of the server's session), and the served images against the offline ones
        _, (reply,) = concurrent_scans(server.address, scans[:1])
        agreements = {f"batch_{batch}": agreement(reply.images, offline_images(model, scan_path, batch)[1])
                      for batch in (1, 8)}
        for repeat in range(repeats):
            for n in CLIENTS:
                offset = server.log_size()
                walls[n].append(concurrent_scans(server.address, scans[:n])[0])
                times[n].append(server.slice_times(offset, n * slices))
            offline.append(offline_images(model, scan_path)[0] / slices)
            offline_b1.append(offline_images(model, scan_path, batch_size=1)[0] / slices)
            click.echo(f"repeat {repeat + 1}/{repeats} done", err=True)
    finally:
        server.stop()
    offline_ms, offline_b1_ms = float(np.median(offline)) * 1e3, float(np.median(offline_b1)) * 1e3
    rows = []
    for n in CLIENTS:
        measured = np.concatenate(times[n])
        latency, compute, queued = measured.T
        rows.append(Row(n, float(n * slices / np.median(walls[n])), float(np.median(latency)),
                        float(np.percentile(latency, 95)), float(np.median(compute)), float(np.median(queued)),
                        offline_ms, float(np.median(latency)) / offline_ms, offline_b1_ms,
                        float(np.median(latency)) / offline_b1_ms))
    by_clients = {row.clients: row for row in rows}
    metadata = model.metadata
    return {
        "model": {"file": model_path.name, "architecture": metadata.architecture,
                  "image_size": list(metadata.image_size), "image_channels": metadata.image_channels,
                  "formulation": metadata.formulation},
        "settings": {"threads": threads, "provider": model.runtime.name, "slices_per_scan": slices, "coils": coils,
                     "repeats": repeats, "readout_oversampling": 2, "clients": list(CLIENTS)},
        "rows": [asdict(row) for row in rows],
        "served_vs_offline": agreements,
        "goals": {"overhead_ratio_n1": by_clients[1].overhead_ratio, "overhead_goal": OVERHEAD_GOAL,
                  "overhead_met": by_clients[1].overhead_ratio <= OVERHEAD_GOAL,
                  "overhead_ratio_b1_n1": by_clients[1].overhead_ratio_b1,
                  "throughput_n4_over_n1": by_clients[4].slices_per_second / by_clients[1].slices_per_second,
                  "throughput_met": by_clients[4].slices_per_second >= by_clients[1].slices_per_second},
        "machine": {"cpu": cpu_features().to_json(), "cpu_description": cpu_features().describe(),
                    "cpu_count": os.cpu_count(), "load_average": os.getloadavg()[0]},
    }


def table(report: dict) -> str:
    return tabulate([[r["clients"], f"{r['slices_per_second']:.1f}", f"{r['latency_median_ms']:.1f}",
                      f"{r['latency_p95_ms']:.1f}", f"{r['compute_median_ms']:.1f}", f"{r['queued_median_ms']:.1f}",
                      f"{r['offline_ms_per_slice']:.1f}", f"{r['overhead_ratio']:.2f}",
                      f"{r['offline_b1_ms_per_slice']:.1f}", f"{r['overhead_ratio_b1']:.2f}"] for r in report["rows"]],
                    headers=["concurrent scans", "slices/s", "latency median ms", "latency p95 ms",
                             "compute median ms", "queued median ms", "offline ms/slice (b8)", "latency / offline",
                             "offline ms/slice (b1)", "latency / offline b1"],
                    tablefmt="github")


def markdown(report: dict) -> str:
    model, settings, goals, machine = report["model"], report["settings"], report["goals"], report["machine"]
    return "\n\n".join([
        f"# MRD streaming server: {model['architecture']} {model['image_channels']}-channel "
        f"{model['image_size'][0]}x{model['image_size'][1]}, {settings['slices_per_scan']} slices x "
        f"{settings['coils']} coils per scan",
        table(report),
        "Latency: from the server reading the readout that completed a slice to its image written to the socket. "
        "Offline: `compress reconstruct --source ismrmrd`'s work on the same scan per slice, same model and "
        "threads, in the benchmark process, with its default batches of 8 and with batches of 1 (the server's).",
        f"- streaming latency / offline per-slice compute at N = 1: {goals['overhead_ratio_n1']:.2f} (goal <= "
        f"{goals['overhead_goal']:.2f}): {'met' if goals['overhead_met'] else 'NOT met'}; against batches of 1: "
        f"{goals['overhead_ratio_b1_n1']:.2f}\n"
        f"- throughput N = 4 / N = 1: {goals['throughput_n4_over_n1']:.3f} (goal >= 1): "
        f"{'met' if goals['throughput_met'] else 'NOT met'}",
        "Served images against `compress reconstruct --source ismrmrd` on the same scan: " + "; ".join(
            f"{name.replace('_', ' ')}: max |difference| {value['max_abs_difference']:.2e} "
            f"({value['relative_to_max']:.1e} of the largest pixel), headers "
            f"{'identical' if value['headers_identical'] else 'DIFFERENT'}"
            for name, value in report["served_vs_offline"].items()) + ".",
        f"Machine: {machine['cpu_description']}, {machine['cpu_count']} CPUs, load average "
        f"{machine['load_average']:.2f}; provider {settings['provider']}, intra-op threads "
        f"{settings['threads'] or 'all cores'}, "
        f"{settings['repeats']} interleaved repeats.",
    ]) + "\n"


@click.command()
@click.option("--model", "model_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="An exported model (default: a bare 2-channel d3c5 with random weights for --image-size).")
@click.option("--image-size", type=click.IntRange(min=16), default=240, show_default=True,
              help="Square image size of the bare model.")
@click.option("--threads", type=click.IntRange(min=1), help="Inference threads (default: all cores).")
@click.option("--provider", default="cpu", show_default=True, help="Runtime of server and offline run.")
@click.option("--slices", type=click.IntRange(min=1), default=8, show_default=True, help="Slices per scan.")
@click.option("--coils", type=click.IntRange(min=1), default=8, show_default=True, help="Coils per scan.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Interleaved repeats.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=RESULTS, show_default=True,
              help="Folder for mrd_server.json and mrd_server.md.")
def main(model_path: Path | None, image_size: int, threads: int | None, provider: str, slices: int, coils: int,
         repeats: int, out: Path) -> None:
    """Time the MRD server with 1, 2, 4 and 8 concurrent scans and write the results."""
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        if model_path is None:
            click.echo(f"exporting a bare d3c5 for {image_size}x{image_size}", err=True)
            model_path = bare_model(folder, image_size)
        report = run(model_path, threads, provider, slices, coils, repeats, folder)
    save_json(out / "mrd_server.json", report)
    with atomic_path(out / "mrd_server.md") as path:
        path.write_text(markdown(report))
    click.echo(table(report))
    click.echo(f"\nwritten: {out / 'mrd_server.json'}, {out / 'mrd_server.md'}")


if __name__ == "__main__":
    main()
