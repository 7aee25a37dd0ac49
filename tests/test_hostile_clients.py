"""``compress serve`` against hostile clients: every case gets ``ERROR <reason>`` and a close (or is cut by a clock),
the server never crashes, writes nothing to standard error, and streams a good scan correctly afterwards; the
process's resident memory is recorded before the case, at its peak (``VmHWM``, reset before each case) and after
the good scan, and bounded. Sizes are the issue's where they are cheap to send (the caps refuse them from their
headers) and small where they only need to exceed a cap. ``pytest -s`` prints the RSS table at the end.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import ismrmrd
import numpy as np
import pytest
from click.testing import CliRunner

from compressor.cli.serve_command import serve_command
from compressor.export.scanner.mrd_client import stream_scan
from compressor.export.scanner.mrd_server import ReconstructionServer, ServeOptions
from compressor.export.scanner.server_limits import ServerLimits
from compressor.export.scanner.server_stats import resident_bytes
from tests.synthetic_scans import synthetic_scan
from tests.test_mrd_server import (
    TIMEOUT,
    acquired_lines,
    assert_same_images,
    coil_images,
    offline_images,
    raw_exchange,
    tiny_export,
    wait_for,
)

MB = 1 << 20
PEAK_BOUND = 64 * MB  # what one refused case may add to the process's peak resident memory
KEPT_BOUND = 16 * MB  # what it may leave behind
CLOCKS = {"idle_timeout": 2.0, "message_timeout": 1.0, "connection_timeout": 30.0}
ROWS: list[tuple[str, float, float, float]] = []


def header_message(xml: str | bytes) -> bytes:
    data = xml.encode() if isinstance(xml, str) else xml
    return struct.pack("<HI", 3, len(data)) + data


def text_message(text: str) -> bytes:
    return struct.pack("<HI", 5, len(text.encode())) + text.encode()


def acquisition_message(data: np.ndarray, flags=(), step1: int = 0, slice_index: int = 0,
                        center_sample: int | None = None) -> bytes:
    acquisition = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data, np.complex64))
    for flag in flags:
        acquisition.set_flag(flag)
    acquisition.idx.kspace_encode_step_1, acquisition.idx.slice = step1, slice_index
    acquisition.center_sample = data.shape[1] // 2 if center_sample is None else center_sample
    return struct.pack("<H", 1008) + acquisition.to_bytes()


def announced_acquisition(channels: int, samples: int, dimensions: int = 0) -> bytes:
    """An acquisition header announcing ``channels`` x ``samples`` (and a trajectory), without its data."""
    head = ismrmrd.AcquisitionHeader()
    head.active_channels, head.available_channels, head.number_of_samples = channels, channels, samples
    head.trajectory_dimensions = dimensions
    return struct.pack("<H", 1008) + bytes(head)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def model_path(folder):
    return tiny_export(folder / "complex.onnx", image_channels=2)


@pytest.fixture(scope="module")
def good(folder, model_path):
    scan = synthetic_scan(coil_images(seed=1), acquired_lines=acquired_lines(), measurement_uid=101)
    return scan, offline_images(model_path, scan, folder)


@pytest.fixture(scope="module")
def xml(good) -> str:
    return good[0].xml


def start(model_path, **limits) -> ReconstructionServer:
    return ReconstructionServer(model_path, "127.0.0.1", 0, ServeOptions(provider="cpu", threads=1,
                                                                         limits=ServerLimits(**{**CLOCKS, **limits})))


@pytest.fixture(scope="module")
def server(model_path):
    with start(model_path) as running:
        yield running
    print("\nhostile client                                       RSS MB before / peak / after")
    for name, before, peak, after in ROWS:
        print(f"{name:<52} {before:7.0f} / {peak:7.0f} / {after:7.0f}")


def measured(name: str, server: ReconstructionServer, good, attack: Callable[[], object]) -> object:
    """Run ``attack``, then stream the good scan (its images must be right); record and bound the RSS."""
    before = resident_bytes()
    with open("/proc/self/clear_refs", "w") as refs:  # VmHWM := VmRSS: the peak of this case alone
        refs.write("5")
    result = attack()
    assert wait_for(lambda: server.active_connections == 0)  # every slot free again: the hostile ones are over
    scan, expected = good
    reply = stream_scan(server.address, scan.xml, scan.acquisitions, timeout=TIMEOUT)
    assert reply.texts == [] and reply.closed, reply.texts
    assert_same_images(reply.images, expected)
    peak, after = resident_bytes("VmHWM"), resident_bytes()
    ROWS.append((name, before / MB, peak / MB, after / MB))
    assert peak - before < PEAK_BOUND and after - before < KEPT_BOUND, (name, before, peak, after)
    return result


@dataclass(frozen=True)
class Case:
    """A hostile stream (``payload(xml)`` bytes) and a fragment of the ``ERROR`` it must get."""

    name: str
    payload: Callable[[str], bytes]
    error: str


def _slices_of_one_line(count: int, coils: int = 1, samples: int = 32) -> Callable[[str], bytes]:
    def payload(xml: str) -> bytes:
        line = np.ones((coils, samples), np.complex64)
        return header_message(xml) + b"".join(acquisition_message(line, slice_index=index) for index in range(count))
    return payload


def _header_with(edit) -> Callable[[str], bytes]:
    def payload(xml: str) -> bytes:
        header = ismrmrd.xsd.CreateFromDocument(xml)
        edit(header)
        return header_message(ismrmrd.xsd.ToXML(header))
    return payload


def _three_d(header) -> None:
    header.encoding[0].encodedSpace.matrixSize.z = 8


def _radial(header) -> None:
    header.encoding[0].trajectory = ismrmrd.xsd.trajectoryType.RADIAL


def _two_encodings(header) -> None:
    header.encoding.append(header.encoding[0])


NOISE = [ismrmrd.ACQ_IS_NOISE_MEASUREMENT]
XXE = ('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><studyInformation><studyID>&x;</studyID>'
       '</studyInformation></ismrmrdHeader>')
LAUGHS = ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
          + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
          + ']><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><studyInformation><studyID>&i;</studyID>'
          '</studyInformation></ismrmrdHeader>')

CASES = [
    Case("noise readout of 4096 coils x 1 sample (33 KB)",
         lambda xml: header_message(xml) + acquisition_message(np.ones((4096, 1)), NOISE),
         "has 4096 coils, more than the 128 allowed (--max-coils)"),
    Case("noise readout of 16384 coils x 1 sample (128 KB)",
         lambda xml: header_message(xml) + acquisition_message(np.ones((16384, 1)), NOISE), "has 16384 coils"),
    Case("8 readouts of 1024 coils x 48 samples, new slices", _slices_of_one_line(8, 1024, 48), "has 1024 coils"),
    Case("2000 readouts of one line, each a new slice", _slices_of_one_line(2000),
         "would be the 65th slice open at once, more than the 64 allowed (--max-open-slices)"),
    Case("acquisition header announcing 65535 x 65535 (32 GiB)",
         lambda xml: header_message(xml) + announced_acquisition(65535, 65535), "has 65535 coils"),
    Case("acquisition header announcing 65535 samples",
         lambda xml: header_message(xml) + announced_acquisition(4, 65535),
         "has 65535 samples, more than the 16384 allowed (--max-samples)"),
    Case("trajectory of 9 dimensions", lambda xml: header_message(xml) + announced_acquisition(4, 32, 9),
         "a trajectory of 9 dimensions"),
    Case("XML header length of 2 GiB", lambda xml: b"\x03\x00\xff\xff\xff\x7f", "the XML header announces 2147483647"),
    Case("text length of 4 GiB", lambda xml: struct.pack("<HI", 5, 0xFFFFFFFF), "text announces 4294967295"),
    Case("config text length of 3 GiB", lambda xml: struct.pack("<HI", 2, 3 << 30), "config text announces"),
    Case("waveform of 65535 channels x 65535 samples",
         lambda xml: struct.pack("<H", 1026) + bytes(_waveform_head(65535, 65535)), "a waveform of 65535 channels"),
    Case("NDArray (1030) with overflowing dimensions",
         lambda xml: struct.pack("<HHHH", 1030, 5, 0, 3) + struct.pack("<QQQ", 2 ** 62, 2 ** 62, 2 ** 62),
         "an NDArray message (1030)"),
    Case("image message (1022)", lambda xml: struct.pack("<H", 1022) + bytes(200), "an image message (1022)"),
    Case("unknown message id", lambda xml: header_message(xml) + struct.pack("<H", 4321) + bytes(100),
         "bad message (Unknown MessageID: 4321)"),
    Case("non-XML header", lambda xml: header_message("<not xml>"), "bad message (the ISMRMRD XML header cannot"),
    Case("XXE header", lambda xml: header_message(XXE), "declares a DTD or entities"),
    Case("billion-laughs header", lambda xml: header_message(LAUGHS), "declares a DTD or entities"),
    Case("3-D header", _header_with(_three_d), "3-D encoding"),
    Case("radial header", _header_with(_radial), "not Cartesian"),
    Case("two-encoding header", _header_with(_two_encodings), "2 encoding spaces"),
    Case("extra channels within a slice", lambda xml: header_message(xml) + acquisition_message(np.ones((4, 32)))
         + acquisition_message(np.ones((5, 32)), step1=1), "has acquisitions with 4 and 5 coils"),
    Case("readout longer than the header's", lambda xml: header_message(xml) + acquisition_message(np.ones((4, 64))),
         "a readout of 64 samples (centre sample 32"),
    Case("readout shorter than the header's", lambda xml: _short_readouts(xml), "the readouts are partial"),
    Case("encode step of 65535", lambda xml: header_message(xml) + acquisition_message(np.ones((4, 32)), step1=65535),
         "kspace_encode_step_1 = 65535 lies outside the 12 encoded lines"),
    Case("NaN samples", lambda xml: header_message(xml) + acquisition_message(np.full((4, 32), np.nan)),
         "contains NaN or Inf"),
    Case("a readout holding an Inf", lambda xml: header_message(xml) + acquisition_message(_with_inf()),
         "contains NaN or Inf"),
    Case("acquisition before the header", lambda xml: acquisition_message(np.ones((4, 32))),
         "an acquisition before the XML header"),
]


def _waveform_head(channels: int, samples: int) -> ismrmrd.WaveformHeader:
    head = ismrmrd.WaveformHeader()
    head.channels, head.number_of_samples = channels, samples
    return head


def _with_inf() -> np.ndarray:
    data = np.ones((4, 32), np.complex64)
    data[2, 5] = np.inf
    return data


def _short_readouts(xml: str) -> bytes:
    """Every line of a slice with 16 of the header's 32 samples (the echo's first half missing)."""
    lines = np.flatnonzero(np.fft.fftshift(acquired_lines()))
    messages = [acquisition_message(np.ones((4, 16)), [ismrmrd.ACQ_LAST_IN_SLICE] if column == lines[-1] else [],
                                    step1=int(column), center_sample=0) for column in lines]
    return header_message(xml) + b"".join(messages)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_hostile_stream_gets_an_error_and_the_server_goes_on(server, good, xml, case, capfd):
    reply = measured(case.name, server, good, lambda: raw_exchange(server.address, case.payload(xml)))
    assert len(reply) == 2 and reply[-1] == "<close>", reply
    assert reply[0].startswith("ERROR ") and case.error in reply[0], reply[0]
    assert capfd.readouterr().err == ""  # no numpy warning, no traceback: the server writes only its log


def test_a_truncated_message_then_disconnect(server, good, xml):
    def attack():
        before = server.stats.snapshot()[1].get("disconnected", 0)
        with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
            sock.sendall(header_message(xml) + acquisition_message(np.ones((4, 32)))[:100])
        return wait_for(lambda: server.stats.snapshot()[1].get("disconnected", 0) == before + 1)

    assert measured("truncated message, then disconnect", server, good, attack)


def test_a_client_disconnecting_mid_send(server, good):
    scan = good[0]

    def attack():
        before = server.stats.snapshot()[1].get("disconnected", 0)
        with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
            sock.sendall(header_message(scan.xml) + b"".join(struct.pack("<H", 1008) + a.to_bytes()
                                                             for a in scan.acquisitions[:7]))
        return wait_for(lambda: server.stats.snapshot()[1].get("disconnected", 0) == before + 1)

    assert measured("client disconnecting mid-send", server, good, attack)


def drip(address: tuple[str, int], data: bytes, interval: float, replies: list) -> None:
    """Send ``data`` one byte every ``interval`` seconds until the server closes; keep what it answers."""
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        try:
            for byte in data:
                sock.sendall(bytes([byte]))
                time.sleep(interval)
        except OSError:
            pass
        replies.append(sock.recv(1 << 16))


def test_two_dripping_clients_are_cut_and_a_real_scan_is_served(model_path, good, xml):
    with start(model_path, max_connections=2) as server:
        replies: list[bytes] = []

        def attack():
            threads = [threading.Thread(target=drip, args=(server.address, header_message(xml), 0.2, replies))
                       for _ in range(2)]
            for thread in threads:
                thread.start()
            assert wait_for(lambda: server.active_connections == 2)
            for thread in threads:
                thread.join(TIMEOUT)
            return replies

        measured("two clients dripping a byte every 0.2 s", server, good, attack)
    assert len(replies) == 2 and all(b"a message took more than 1 s to arrive (--message-timeout)" in reply
                                     for reply in replies)


def test_a_connection_past_its_deadline_is_closed(model_path, good, xml):
    with start(model_path, connection_timeout=1.0) as server:
        def attack():
            with socket.create_connection(server.address, timeout=TIMEOUT) as sock, sock.makefile("rb") as incoming:
                sock.sendall(header_message(xml))
                try:
                    for _ in range(40):  # whole messages, slowly: no idle and no message clock runs out
                        sock.sendall(text_message("{}"))
                        time.sleep(0.1)
                except OSError:
                    pass
                return list(ismrmrd.serialization.ProtocolDeserializer(incoming).deserialize())

        reply = measured("texts past the connection deadline", server, good, attack)
    assert len(reply) == 1 and "the connection was open for more than 1 s (--connection-timeout)" in reply[0]


def test_the_idle_timeout(model_path, good, xml):
    with start(model_path, idle_timeout=0.3) as server:
        reply = measured("silent client (idle timeout)", server, good,
                         lambda: raw_exchange(server.address, header_message(xml)))
    assert "no data for 0.3 s" in reply[0]


def test_busy_beyond_max_connections(model_path, good, xml):
    with start(model_path, max_connections=1) as server:
        def attack():
            with socket.create_connection(server.address, timeout=TIMEOUT) as first:
                first.sendall(header_message(xml))
                assert wait_for(lambda: server.active_connections == 1)
                return raw_exchange(server.address, b"")

        reply = measured("one connection beyond --max-connections", server, good, attack)
    assert reply == ["ERROR the server is busy (1 connections); try again later", "<close>"]


def test_bytes_held_per_connection_and_across_connections_are_capped(model_path, good, xml):
    """1024-coil slices of 16x12 hold 3.0 MiB each (and each message being read 0.25 MiB): a connection may hold 2
    (8 MiB cap), two connections together 2 (9 MiB total)."""
    with start(model_path, max_coils=1024, connection_bytes=8 * MB, total_bytes=9 * MB) as server:
        line = np.ones((1024, 32), np.complex64)
        payload = header_message(xml) + b"".join(acquisition_message(line, slice_index=i) for i in range(3))
        alone = measured("3 slices of 1024 coils on an 8 MiB connection", server, good,
                         lambda: raw_exchange(server.address, payload))
        # 2 slices and the 1024-coil message being read (256 KiB) held
        assert "needs 3.0 MiB but this connection's memory cap (--connection-memory) holds 6.3 MiB of 8.0" in alone[0]

        def two_at_once():
            with socket.create_connection(server.address, timeout=TIMEOUT) as holder:
                holder.sendall(header_message(xml) + b"".join(acquisition_message(line, slice_index=i)
                                                              for i in range(2)))
                assert wait_for(lambda: server.context.budget.held >= 6 * MB)
                return raw_exchange(server.address, header_message(xml) + acquisition_message(line))

        second = measured("a second connection over the 9 MiB total", server, good, two_at_once)
        assert "the server's memory budget across connections (--memory-budget)" in second[0]
        assert wait_for(lambda: server.context.budget.held == 0)


def test_empty_texts_and_bad_streams_do_not_flood_the_log(model_path, good, xml, caplog):
    scan, expected = good
    texts = b"".join(text_message("") for _ in range(5000))
    payload = (header_message(xml) + texts + b"".join(struct.pack("<H", 1008) + a.to_bytes()
                                                      for a in scan.acquisitions) + struct.pack("<H", 4))
    with caplog.at_level("INFO", logger="compressor.serve"), start(model_path) as server:
        reply = measured("5000 empty text messages", server, good, lambda: raw_exchange(server.address, payload))
        for _ in range(60):
            raw_exchange(server.address, struct.pack("<H", 4321))
    assert_same_images(reply[:-1], expected)
    lines = [record.getMessage() for record in caplog.records]
    assert any("5000 text messages ignored" in line for line in lines), lines
    assert len(lines) < 20 + 20 + 20 + 10  # connected, refused, done: 20 of each kind per minute, then counted
    assert any("log lines like '%s: %s: %s' suppressed" in line for line in lines)


def test_a_log_in_a_missing_folder_is_refused_at_start_up(model_path, tmp_path):
    result = CliRunner().invoke(serve_command, [str(model_path), "--port", "0", "--log", "/no/such/dir/serve.log"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output == ("Error: /no/such/dir/serve.log: the log file's folder /no/such/dir does not exist\n")


def test_every_cap_is_in_serve_help_with_the_server_defaults():
    limits = ServerLimits()
    defaults = {param.name: param.default for param in serve_command.params}
    assert defaults["max_connections"] == limits.max_connections and defaults["max_coils"] == limits.max_coils
    assert defaults["max_samples"] == limits.max_samples and defaults["max_open_slices"] == limits.max_open_slices
    assert defaults["connection_memory"] * MB == limits.connection_bytes
    assert defaults["memory_budget"] * MB == limits.total_bytes
    assert (defaults["idle_timeout"], defaults["message_timeout"], defaults["connection_timeout"]) == (
        limits.idle_timeout, limits.message_timeout, limits.connection_timeout)
    text = CliRunner().invoke(serve_command, ["--help"]).output
    for fixed in ("header and text messages 4 MiB", "waveforms 4 MiB", "20 log lines of one kind per minute"):
        assert fixed in " ".join(text.split())
