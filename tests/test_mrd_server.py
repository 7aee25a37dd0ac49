"""``compress serve``: a real MRD streaming server on 127.0.0.1 (port 0, in a thread of this process) and a client built
on ``ismrmrd``'s serializer, against ``compress reconstruct --source ismrmrd`` on the same scans.

The model is a tiny 2-channel d2c2 (8 channels) exported for 16x12 images (readout x phase-encode, a non-square grid so
that the axes cannot be mixed up) with whole-column mask lines 0, 1, 3, 6, 10; the scans are H1's synthetic multi-slice,
multi-coil Cartesian scans with 2x readout oversampling acquiring exactly those lines. Every socket operation has a
timeout and every wait is bounded.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import ismrmrd
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from compressor.cli.serve_command import serve_command
from compressor.errors import InputError
from compressor.export.run_models import simulated_kspace
from compressor.export.scanner.mrd_client import stream_scan
from compressor.export.scanner.mrd_server import ReconstructionServer, ServeOptions
from compressor.export.scanner.reconstruct import reconstruct_file
from compressor.export.scanner.server_limits import ServerLimits
from compressor.export.targets.export import export_model
from compressor.masks import SamplingMask
from compressor.models import ModelOptions, build_model
from tests.synthetic_scans import synthetic_scan

SIZE = (16, 12)
COLUMNS = [0, 1, 3, 6, 10]
SLICES, COILS = 3, 4
TIMEOUT = 20.0
TOLERANCE = 1e-5  # of the image's max: ONNX Runtime's fp32 rounding between batch 1 (server) and batch 8 (offline)
INTEGER_TOLERANCE = 1  # a 16-bit pixel: that rounding may move a value across a half step


def line_mask() -> SamplingMask:
    values = np.zeros(SIZE, np.float32)
    values[:, COLUMNS] = 1
    return SamplingMask(values, acceleration=SIZE[1] / len(COLUMNS))


def acquired_lines() -> np.ndarray:
    """The mask's columns as the synthesiser takes them: ``(W,)`` bool, uncentred."""
    lines = np.zeros(SIZE[1], bool)
    lines[COLUMNS] = True
    return lines


def coil_images(slices: int = SLICES, coils: int = COILS, size: tuple[int, int] = SIZE, seed: int = 0,
                phase: bool = True) -> np.ndarray:
    """``(slices, coils, H, W)`` coil images: a smooth object (with a smooth phase, unless ``phase`` is false) times
    smooth complex coil sensitivities."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[0], 0:size[1]] / np.array(size)[:, None, None]
    magnitude = rng.random((slices, 1, *size)) * 0.3 + np.exp(-((y - 0.5) ** 2 + (x - 0.5) ** 2) * 4)
    object_phase = np.exp(1j * (2.0 * x + 1.0 * y)) if phase else 1.0
    sensitivities = np.stack([np.exp(-((y - c / coils) ** 2) * 2) * np.exp(1j * c * 0.7 * x) for c in range(coils)])
    return magnitude * object_phase * (sensitivities if coils > 1 else 1.0)


def tiny_export(path: Path, image_channels: int) -> Path:
    """A tiny d2c2 exported for :data:`SIZE` with :func:`line_mask`, validated on two slices."""
    torch.manual_seed(0)
    model = build_model("d2c2", ModelOptions(width=8, image_channels=image_channels)).eval()
    images = coil_images(2, 1, seed=5, phase=image_channels == 2)[:, 0]
    export_model(model, path, mask=line_mask(), validation_kspace=simulated_kspace(images, line_mask().values))
    return path


def offline_images(model_path: Path, scan, folder: Path) -> list[ismrmrd.Image]:
    """``compress reconstruct --source ismrmrd`` of ``scan`` written to an ISMRMRD file: its ISMRMRD images."""
    raw = scan.write_ismrmrd(folder / "scan.h5")
    reconstruct_file(model_path, raw, folder / "out.h5", source="ismrmrd", ismrmrd_out=folder / "images.h5",
                     progress=False)
    dataset = ismrmrd.Dataset(str(folder / "images.h5"), "dataset", create_if_needed=False)
    try:
        return [dataset.read_image("images_0", index) for index in range(dataset.number_of_images("images_0"))]
    finally:
        dataset.close()


def serving(model_path: Path, provider: str = "cpu", threads: int | None = 1, **limits) -> ReconstructionServer:
    """A server on a free loopback port for ``model_path`` (one or several), idle timeout :data:`TIMEOUT` unless
    ``limits`` says otherwise."""
    limits = {"idle_timeout": TIMEOUT, **limits}
    return ReconstructionServer(model_path, "127.0.0.1", 0,
                                ServeOptions(provider=provider, threads=threads, limits=ServerLimits(**limits)))


def meta_without_reason(image: ismrmrd.Image) -> dict:
    """An image's MetaContainer without the last ``ImageComment`` value (why the model ran: the server's selection,
    or the command line offline)."""
    meta = dict(ismrmrd.Meta.deserialize(image.attribute_string))
    meta["ImageComment"] = meta["ImageComment"][:-1]
    return meta


def head_bytes(image: ismrmrd.Image) -> bytes:
    """An image's header bytes, its ``attribute_string_len`` zeroed (set when an image is sent, 0 in a file)."""
    head = image.getHead()
    head.attribute_string_len = 0
    return bytes(head)


def assert_same_images(received: list[ismrmrd.Image], expected: list[ismrmrd.Image]) -> None:
    """Same count, same header bytes, same MetaContainer but for the selection reason, same data up to
    :data:`TOLERANCE` (float) or :data:`INTEGER_TOLERANCE` (16-bit), same rescale slope to :data:`TOLERANCE`."""
    assert len(received) == len(expected)
    for got, want in zip(received, expected, strict=True):
        assert head_bytes(got) == head_bytes(want)
        assert got.data.shape == want.data.shape == (1, 1, SIZE[1], SIZE[0])
        assert got.data.dtype == want.data.dtype
        got_meta, want_meta = meta_without_reason(got), meta_without_reason(want)
        for key in ("RescaleSlope", "WindowCenter", "WindowWidth"):
            np.testing.assert_allclose(float(got_meta.pop(key)), float(want_meta.pop(key)), rtol=TOLERANCE)
        assert got_meta == want_meta
        if got.data.dtype.kind in "iu":
            assert np.abs(got.data.astype(int) - want.data.astype(int)).max() <= INTEGER_TOLERANCE
        else:
            np.testing.assert_allclose(got.data, want.data, rtol=0, atol=TOLERANCE * float(np.abs(want.data).max()))


def wait_for(condition, timeout: float = TIMEOUT) -> bool:
    """Poll ``condition()`` every 20 ms until it is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mrd_server")


@pytest.fixture(scope="module")
def model_path(folder) -> Path:
    return tiny_export(folder / "complex.onnx", image_channels=2)


@pytest.fixture(scope="module")
def scans():
    """Two different 3-slice, 4-coil scans."""
    return [synthetic_scan(coil_images(seed=seed), acquired_lines=acquired_lines(), measurement_uid=100 + seed)
            for seed in (1, 2)]


@pytest.fixture(scope="module")
def expected(model_path, scans, folder) -> list[list[ismrmrd.Image]]:
    results = []
    for index, scan in enumerate(scans):
        (folder / f"offline{index}").mkdir()
        results.append(offline_images(model_path, scan, folder / f"offline{index}"))
    return results


@pytest.fixture(scope="module")
def server(model_path):
    with serving(model_path) as running:
        yield running


def outcomes(server: ReconstructionServer) -> dict[str, int]:
    return server.stats.snapshot()[1]


# ------------------------------------------------------------------------------------------------ reconstruction
def test_every_image_equals_compress_reconstruct_on_the_same_scan(server, scans, expected):
    reply = stream_scan(server.address, scans[0].xml, scans[0].acquisitions, timeout=TIMEOUT)
    assert reply.texts == [] and reply.closed
    assert_same_images(reply.images, expected[0])
    assert [image.slice for image in reply.images] == list(range(SLICES))
    assert [image.image_index for image in reply.images] == [1, 2, 3]


def test_images_arrive_slice_by_slice_before_the_scan_ends(server, scans, expected):
    # the client sends the first slice's lines, then waits for an image before sending the other slices' lines
    earlier = len(server.stats.snapshot()[0])  # the module's server has served other tests' connections
    reply = stream_scan(server.address, scans[0].xml, scans[0].acquisitions, timeout=TIMEOUT,
                        wait_after=len(COLUMNS))
    assert reply.images_before == 1
    assert_same_images(reply.images, expected[0])
    ours = server.stats.snapshot()[0][earlier:]
    (connection,) = {timing.connection for timing in ours}  # this test's one connection
    timings = [timing for timing in ours if timing.connection == connection]
    assert [timing.key.slice for timing in timings] == list(range(SLICES))
    for timing in timings:
        assert timing.compute > 0 and timing.queued >= 0 and timing.compute + timing.queued <= timing.latency


def assert_clients_at_once_get_their_own_images(server: ReconstructionServer, scans, expected) -> list:
    """Stream every scan from its own client thread at once; each reply must be its own scan's ``expected`` images.
    Returns the replies."""
    replies = [None] * len(scans)

    def client(index: int) -> None:
        replies[index] = stream_scan(server.address, scans[index].xml, scans[index].acquisitions, timeout=TIMEOUT)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(len(scans))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    for reply, images in zip(replies, expected, strict=True):
        assert reply is not None and reply.closed and reply.texts == []
        assert_same_images(reply.images, images)
    return replies


def test_two_clients_at_once_both_get_their_own_images(server, scans, expected):
    replies = assert_clients_at_once_get_their_own_images(server, scans, expected)
    assert {image.measurement_uid for image in replies[0].images} == {101}
    assert {image.measurement_uid for image in replies[1].images} == {102}


def test_on_openvino_two_clients_at_once_get_the_images_of_onnx_runtime(model_path, scans, expected):
    """``--provider openvino``: one compiled model behind concurrent calls (a pool of infer requests)."""
    with serving(model_path, provider="openvino") as running:
        assert running.models[0].model.runtime.name == "OpenVINO-CPU"
        assert_clients_at_once_get_their_own_images(running, scans, expected)


# ------------------------------------------------------------------------------------------------ refusals
def test_a_header_for_another_matrix_size_is_refused_naming_both_sizes(server, scans, expected):
    other = synthetic_scan(coil_images(size=(20, 12)), acquired_lines=acquired_lines())
    reply = stream_scan(server.address, other.xml, other.acquisitions, timeout=TIMEOUT)
    assert reply.images == [] and reply.closed and len(reply.texts) == 1
    assert reply.texts[0].startswith("ERROR ")
    assert "20x12" in reply.texts[0] and "16x12" in reply.texts[0]
    # the server goes on serving
    assert_same_images(stream_scan(server.address, scans[0].xml, scans[0].acquisitions, timeout=TIMEOUT).images,
                       expected[0])


def test_a_non_cartesian_header_is_refused(server, scans):
    header = ismrmrd.xsd.CreateFromDocument(scans[0].xml)
    header.encoding[0].trajectory = ismrmrd.xsd.trajectoryType.RADIAL
    reply = stream_scan(server.address, ismrmrd.xsd.ToXML(header), scans[0].acquisitions, timeout=TIMEOUT)
    assert reply.images == [] and reply.closed
    assert len(reply.texts) == 1 and "not Cartesian" in reply.texts[0]


def test_lines_the_mask_needs_but_the_scan_lacks_are_refused(server, scans):
    lines = acquired_lines()
    lines[6] = False
    sparse = synthetic_scan(coil_images(), acquired_lines=lines)
    reply = stream_scan(server.address, sparse.xml, sparse.acquisitions, timeout=TIMEOUT)
    assert reply.images == [] and len(reply.texts) == 1 and "did not acquire" in reply.texts[0]


def raw_exchange(address: tuple[str, int], payload: bytes) -> list[object]:
    """Send ``payload`` bytes, then read the server's messages until it closes."""
    with socket.create_connection(address, timeout=TIMEOUT) as sock, sock.makefile("rb") as incoming:
        sock.sendall(payload)
        messages = []
        try:
            messages.extend(ismrmrd.serialization.ProtocolDeserializer(incoming).deserialize())
            messages.append("<close>")
        except EOFError:
            pass
        return messages


def test_a_corrupt_stream_is_refused_and_the_server_serves_the_next_client(server, scans, expected):
    header = scans[0].xml.encode()
    valid = struct.pack("<HI", 3, len(header)) + header
    reply = raw_exchange(server.address, valid + struct.pack("<H", 4321) + bytes(range(200)))
    assert reply == ["ERROR connection from " + reply[0].split("connection from ")[1], "<close>"]
    assert "bad message (Unknown MessageID: 4321)" in reply[0]
    reply = raw_exchange(server.address, b"\x03\x00\xff\xff\xff\x7f")  # a header of 2 GiB announced
    assert len(reply) == 2 and "more than the" in reply[0] and reply[1] == "<close>"
    reply = raw_exchange(server.address, struct.pack("<HI", 3, 9) + b"<not xml>")
    assert len(reply) == 2 and reply[0].startswith("ERROR") and "bad message" in reply[0]
    assert_same_images(stream_scan(server.address, scans[0].xml, scans[0].acquisitions, timeout=TIMEOUT).images,
                       expected[0])


def test_nul_terminated_config_header_and_text_as_python_ismrmrd_server_sends_them(server, scans, expected):
    def with_nul(message_id: int, text: str) -> bytes:
        data = text.encode() + b"\0"
        return struct.pack("<HI", message_id, len(data)) + data

    payload = (with_nul(2, "<configuration/>") + with_nul(3, scans[0].xml) + with_nul(5, '{"parameters": {}}')
               + b"".join(struct.pack("<H", 1008) + acquisition.to_bytes() for acquisition in scans[0].acquisitions)
               + struct.pack("<H", 4))
    reply = raw_exchange(server.address, payload)
    assert reply[-1] == "<close>"
    assert_same_images(reply[:-1], expected[0])


def test_an_acquisition_before_the_header_is_refused(server, scans):
    payload = struct.pack("<H", 1008) + scans[0].acquisitions[0].to_bytes()
    reply = raw_exchange(server.address, payload)
    assert len(reply) == 2 and "an acquisition before the XML header" in reply[0]


def test_a_client_that_disconnects_mid_scan_is_logged_and_the_server_goes_on(server, scans, expected, caplog):
    before = outcomes(server).get("disconnected", 0)
    with caplog.at_level(logging.INFO, logger="compressor.serve"), \
            socket.create_connection(server.address, timeout=TIMEOUT) as sock, sock.makefile("wb") as outgoing:
        serializer = ismrmrd.serialization.ProtocolSerializer(outgoing)
        serializer.serialize(ismrmrd.xsd.CreateFromDocument(scans[0].xml))
        for acquisition in scans[0].acquisitions[:7]:  # the first slice and two lines of the second
            serializer.serialize(acquisition)
        outgoing.write(b"\xf0\x03")  # and half an acquisition
        outgoing.flush()
        time.sleep(0.2)
    assert wait_for(lambda: outcomes(server).get("disconnected", 0) == before + 1)
    lines = [record.getMessage() for record in caplog.records if "disconnected mid-scan" in record.getMessage()]
    assert len(lines) == 1 and "after 7 acquisitions, 1 images sent" in lines[0]
    assert_same_images(stream_scan(server.address, scans[0].xml, scans[0].acquisitions, timeout=TIMEOUT).images,
                       expected[0])


def test_a_1_channel_model_serves_real_images_and_refuses_a_phased_scan(folder):
    model_path = tiny_export(folder / "real.onnx", image_channels=1)
    real = synthetic_scan(coil_images(coils=1, phase=False, seed=3), acquired_lines=acquired_lines())
    phased = synthetic_scan(coil_images(coils=1, seed=3), acquired_lines=acquired_lines())
    (folder / "real").mkdir()
    expected = offline_images(model_path, real, folder / "real")
    with serving(model_path) as server:
        assert_same_images(stream_scan(server.address, real.xml, real.acquisitions, timeout=TIMEOUT).images, expected)
        reply = stream_scan(server.address, phased.xml, phased.acquisitions, timeout=TIMEOUT)
        multi_coil = synthetic_scan(coil_images(coils=2, phase=False), acquired_lines=acquired_lines())
        multi_reply = stream_scan(server.address, multi_coil.xml, multi_coil.acquisitions, timeout=TIMEOUT)
    assert reply.images == [] and len(reply.texts) == 1
    assert "complex-valued image" in reply.texts[0] and "imaginary" in reply.texts[0]
    assert multi_reply.images == [] and "2-channel model" in multi_reply.texts[0]


# ------------------------------------------------------------------------------------------------ life cycle
def test_an_idle_client_is_closed_after_the_idle_timeout(model_path, scans):
    with serving(model_path, threads=None, idle_timeout=0.3) as server, \
            socket.create_connection(server.address, timeout=TIMEOUT) as sock, sock.makefile("rb") as incoming:
        sock.sendall(struct.pack("<HI", 3, len(scans[0].xml)) + scans[0].xml.encode())
        reply = list(ismrmrd.serialization.ProtocolDeserializer(incoming).deserialize())
    assert len(reply) == 1 and "no data for 0.3 s" in reply[0]


def test_a_connection_over_max_connections_is_told_the_server_is_busy(model_path, scans):
    with serving(model_path, threads=None, max_connections=1) as server, \
            socket.create_connection(server.address, timeout=TIMEOUT) as first:
        first.sendall(struct.pack("<HI", 3, len(scans[0].xml)) + scans[0].xml.encode())
        assert wait_for(lambda: server.active_connections == 1)
        reply = raw_exchange(server.address, b"")
        assert outcomes(server) == {"busy": 1}
    assert reply == ["ERROR the server is busy (1 connections); try again later", "<close>"]


def test_shutdown_tells_open_connections_and_stops(model_path, scans, caplog):
    server = serving(model_path, threads=None).start()
    with caplog.at_level(logging.INFO, logger="compressor.serve"), \
            socket.create_connection(server.address, timeout=TIMEOUT) as sock, sock.makefile("rb") as incoming:
        sock.sendall(struct.pack("<HI", 3, len(scans[0].xml)) + scans[0].xml.encode())
        assert wait_for(lambda: any("connected (#1)" in record.getMessage() for record in caplog.records))
        server.shutdown()
        reply = list(ismrmrd.serialization.ProtocolDeserializer(incoming).deserialize())
    assert reply == ["ERROR the server is shutting down"]
    assert "server stopped" in caplog.records[-1].getMessage()
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=1).close()


def test_a_port_in_use_is_a_one_line_input_error(model_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(InputError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            ReconstructionServer(model_path, "127.0.0.1", taken.getsockname()[1], ServeOptions(provider="cpu"))


def test_serve_command_refuses_a_bad_model_in_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = CliRunner().invoke(serve_command, [str(bad), "--port", "0"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1


def test_serve_command_runs_until_ctrl_c_and_exits_cleanly(model_path, scans, expected, tmp_path):
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "compressor", "serve", str(model_path), "--port", "0", "--provider", "cpu",
               "--log", str(log)]
    # Ctrl-C as at a terminal: a test run started in the background of a script inherits SIGINT ignored, which a
    # Python child keeps (no KeyboardInterrupt); the server is started with the default disposition instead.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert wait_for(lambda: log.is_file() and "serving" in log.read_text(), timeout=60)
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", log.read_text()).group(1))
        reply = stream_scan(("127.0.0.1", port), scans[0].xml, scans[0].acquisitions, timeout=TIMEOUT)
        assert_same_images(reply.images, expected[0])
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
    assert process.returncode == 0, stderr.decode()
    assert stdout == b"" and stderr == b""  # everything went to the log
    text = log.read_text()
    assert "done: 15 acquisitions, 3 images sent" in text
    assert text.splitlines()[-1].endswith("server stopped: 3 slice(s) reconstructed; connections: 1 completed")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["serve.log"]
