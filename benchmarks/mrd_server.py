"""The MRD streaming server under load: N concurrent scans over loopback (N = 1, 2, 4, 8), each slice's latency
against the server's own compute for that slice.

The server runs as ``compress serve --verbose`` in a subprocess (its own interpreter, as in deployment: the clients'
serialisation does not share its GIL) and logs, per slice, two clocks read by the server itself
(:class:`~compressor.export.scanner.server_stats.SliceTiming`):

* **latency**: from having read the readout that completed the slice to having written its last image byte to the
  socket;
* **compute**: the part of it spent preparing the slice (checks, coil compression), running the model and building
  the image (16-bit conversion, header, MetaContainer: the default ``--image-format magnitude16``), as well as
  **queued**, the wait for a model run slot while other scans' slices run.

``latency / compute`` (the median over slices of each slice's ratio) is what streaming adds around the work itself:
reading the message, completing the slice's assembly, serialising and sending. Goals (issue 24): at most 1.10 at
N = 1, and throughput at N = 4 at least that at N = 1 (a goal missed is written as missed). The clients
(:func:`compressor.export.scanner.mrd_client.stream_scan`, one thread each) send synthetic multi-slice multi-coil
Cartesian scans with 2x readout oversampling (:func:`tests.synthetic_scans.synthetic_scan`) as fast as the socket
takes them; configurations are interleaved (per repeat, N = 1, 2, 4, 8) so that a change in the machine's load touches
all alike. Once, the served images are compared with ``compress reconstruct --source ismrmrd``'s on the same scan
(batch 1 and 8: equal headers, pixel differences). The session's resident memory (the server's start-up log line)
and the server process's resident memory after the run are recorded too.

Usage (the lead runs the real one on a quiet machine; ``--slices 2 --repeats 1 --image-size 48`` is a seconds-long
smoke run)::

    python -m benchmarks.mrd_server [--model MODEL.onnx] [--threads 2] [--slices 8] [--coils 8] [--repeats 3]

Without ``--model`` a bare 2-channel d3c5 with random weights (seed 0) is exported for ``--image-size`` with a 4x
random line mask: timing does not depend on the weights. Writes ``mrd_server.{json,md}`` into ``--out`` (default
``benchmarks/results/``). Committed results: ``benchmarks/results/mrd_server/<model>/``, each with its machine.
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
from compressor.export.scanner.mrd_client import ScanReply, stream_scan
from compressor.export.scanner.reconstruct import reconstruct_file
from compressor.io import atomic_path, save_json
from tests.synthetic_scans import SyntheticScan, synthetic_scan

RESULTS = Path(__file__).resolve().parent / "results"
CLIENTS = (1, 2, 4, 8)
OVERHEAD_GOAL = 1.10
SLICE_LINE = re.compile(r"slice \(.*?\) sent, ([\d.]+) ms after its last readout \(([\d.]+) ms compute, "
                        r"([\d.]+) ms queued\)")
SERVING_LINE = re.compile(r"serving .* on 127\.0\.0\.1:(\d+)")
SESSION_LINE = re.compile(r"session (\d+) MiB resident")
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


def offline_images(model_path: Path, scan_path: Path, folder: Path, batch_size: int) -> list[ismrmrd.Image]:
    """``compress reconstruct --source ismrmrd --ismrmrd-out`` of a scan file: its ISMRMRD images."""
    images = folder / f"offline_b{batch_size}.h5"
    reconstruct_file(model_path, scan_path, folder / f"offline_b{batch_size}_recon.h5", source="ismrmrd",
                     ismrmrd_out=images, batch_size=batch_size, progress=False)
    with ismrmrd.Dataset(str(images), "dataset", create_if_needed=False) as dataset:
        return [dataset.read_image("images_0", index) for index in range(dataset.number_of_images("images_0"))]


def _head(image: ismrmrd.Image) -> bytes:
    head = image.getHead()
    head.attribute_string_len = 0  # set when an image is sent, 0 in a file
    return bytes(head)


def agreement(served: list[ismrmrd.Image], offline: list[ismrmrd.Image]) -> dict[str, float | bool]:
    """How the served images compare with the offline ones of the same scan: the largest pixel difference (16-bit
    steps), the largest relative difference of the rescale slopes, and whether every header is identical."""
    difference = max(int(np.max(np.abs(a.data.astype(np.int64) - b.data.astype(np.int64))))
                     for a, b in zip(served, offline, strict=True))
    slopes = [(float(ismrmrd.Meta.deserialize(a.attribute_string)["RescaleSlope"]),
               float(ismrmrd.Meta.deserialize(b.attribute_string)["RescaleSlope"])) for a, b in zip(served, offline)]
    return {"max_pixel_difference": difference,
            "max_slope_relative_difference": max(abs(a - b) / b for a, b in slopes),
            "headers_identical": all(_head(a) == _head(b) for a, b in zip(served, offline, strict=True))}


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
        session = SESSION_LINE.search(log.read_text())
        self.session_mib = int(session.group(1)) if session else None

    def log_size(self) -> int:
        return self.log.stat().st_size

    def resident_mib(self) -> float | None:
        """The server process's resident memory (``VmRSS``), MiB; ``None`` where unknown."""
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

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
    """One N: throughput and the per-slice clocks (ms, medians over slices unless said)."""

    clients: int
    slices_per_second: float
    latency_median_ms: float
    latency_p95_ms: float
    compute_median_ms: float
    queued_median_ms: float
    outside_compute_median_ms: float
    latency_over_compute: float


def row(clients: int, slices: int, walls: list[float], measured: np.ndarray) -> Row:
    """The :class:`Row` of ``clients`` concurrent scans of ``slices`` slices: wall seconds per repeat, and the
    ``(slices, 3)`` latency, compute, queued (ms) of every slice."""
    latency, compute, queued = measured.T
    return Row(clients, float(clients * slices / np.median(walls)), float(np.median(latency)),
               float(np.percentile(latency, 95)), float(np.median(compute)), float(np.median(queued)),
               float(np.median(latency - compute - queued)), float(np.median(latency / compute)))


def run(model_path: Path, threads: int | None, provider: str, slices: int, coils: int, repeats: int,
        folder: Path) -> dict:
    """The interleaved measurements (module docstring) and their summary."""
    model = open_exported(model_path, provider, threads)
    scans = [benchmark_scan(model, slices, coils, seed) for seed in range(max(CLIENTS))]
    scan_path = scans[0].write_ismrmrd(folder / "scan.h5")
    server = ServerProcess(model_path, folder / "serve.log", threads, provider)
    walls: dict[int, list[float]] = {n: [] for n in CLIENTS}
    times: dict[int, list[np.ndarray]] = {n: [] for n in CLIENTS}
    try:
        # warm-up (first-run allocations of the server's session), and the served images against the offline ones
        _, (reply,) = concurrent_scans(server.address, scans[:1])
        agreements = {f"batch_{batch}": agreement(reply.images, offline_images(model_path, scan_path, folder, batch))
                      for batch in (1, 8)}
        for repeat in range(repeats):
            for n in CLIENTS:
                offset = server.log_size()
                walls[n].append(concurrent_scans(server.address, scans[:n])[0])
                times[n].append(server.slice_times(offset, n * slices))
            click.echo(f"repeat {repeat + 1}/{repeats} done", err=True)
        resident = server.resident_mib()
    finally:
        server.stop()
    rows = {n: row(n, slices, walls[n], np.concatenate(times[n])) for n in CLIENTS}
    metadata = model.metadata
    return {
        "model": {"file": model_path.name, "architecture": metadata.architecture,
                  "image_size": list(metadata.image_size), "image_channels": metadata.image_channels,
                  "formulation": metadata.formulation, "precision": metadata.precision.value},
        "settings": {"threads": threads, "provider": model.runtime.name, "slices_per_scan": slices, "coils": coils,
                     "repeats": repeats, "readout_oversampling": 2, "clients": list(CLIENTS),
                     "image_format": "magnitude16"},
        "rows": [asdict(item) for item in rows.values()],
        "served_vs_offline": agreements,
        "memory": {"session_mib": server.session_mib, "server_resident_mib_after": resident},
        "goals": {"latency_over_compute_n1": rows[1].latency_over_compute, "overhead_goal": OVERHEAD_GOAL,
                  "overhead_met": rows[1].latency_over_compute <= OVERHEAD_GOAL,
                  "throughput_n4_over_n1": rows[4].slices_per_second / rows[1].slices_per_second,
                  "throughput_met": rows[4].slices_per_second >= rows[1].slices_per_second},
        "machine": {"cpu": cpu_features().to_json(), "cpu_description": cpu_features().describe(),
                    "cpu_count": os.cpu_count(), "load_average": os.getloadavg()[0]},
    }


def table(report: dict) -> str:
    return tabulate([[r["clients"], f"{r['slices_per_second']:.1f}", f"{r['latency_median_ms']:.1f}",
                      f"{r['latency_p95_ms']:.1f}", f"{r['compute_median_ms']:.1f}", f"{r['queued_median_ms']:.1f}",
                      f"{r['outside_compute_median_ms']:.2f}", f"{r['latency_over_compute']:.3f}"]
                     for r in report["rows"]],
                    headers=["concurrent scans", "slices/s", "latency median ms", "latency p95 ms",
                             "compute median ms", "queued median ms", "latency - compute - queued ms",
                             "latency / compute"],
                    tablefmt="github")


def markdown(report: dict) -> str:
    model, settings, goals, machine = report["model"], report["settings"], report["goals"], report["machine"]
    memory = report["memory"]
    return "\n\n".join([
        f"# MRD streaming server: {model['architecture']} {model['image_channels']}-channel "
        f"{model['image_size'][0]}x{model['image_size'][1]} ({model['precision']}), {settings['slices_per_scan']} "
        f"slices x {settings['coils']} coils per scan, {settings['image_format']} images",
        f"Machine: {machine['cpu_description']}, {machine['cpu_count']} CPUs, load average "
        f"{machine['load_average']:.2f}; provider {settings['provider']}, intra-op threads "
        f"{settings['threads'] or 'all cores'}, {settings['repeats']} interleaved repeats.",
        table(report),
        "Per slice, as the server clocks it: latency from reading the readout that completed the slice to writing "
        "its last image byte; compute = preparation, the model run and building the image (16-bit conversion, "
        "header, MetaContainer); queued = waiting for a model run slot. latency / compute: median over slices.",
        f"- latency / compute at N = 1: {goals['latency_over_compute_n1']:.3f} (goal <= {goals['overhead_goal']:.2f}):"
        f" {'met' if goals['overhead_met'] else 'MISSED'}\n"
        f"- throughput N = 4 / N = 1: {goals['throughput_n4_over_n1']:.3f} (goal >= 1): "
        f"{'met' if goals['throughput_met'] else 'MISSED'}",
        f"Memory: the model's session {memory['session_mib']} MiB resident when it opened; the server process "
        f"{memory['server_resident_mib_after'] or 0:.0f} MiB resident after the run.",
        "Served images against `compress reconstruct --source ismrmrd` on the same scan: " + "; ".join(
            f"{name.replace('_', ' ')}: max pixel difference {value['max_pixel_difference']} (16-bit steps), rescale "
            f"slopes within {value['max_slope_relative_difference']:.1e}, headers "
            f"{'identical' if value['headers_identical'] else 'DIFFERENT'}"
            for name, value in report["served_vs_offline"].items()) + ".",
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
