r"""``compress serve``: a TCP server speaking the MRD (ISMRMRD) streaming protocol, as python-ismrmrd-server does for
Siemens FIRE / OpenRecon, reconstructing each slice with an exported model as soon as its lines have arrived.

Message flow of one connection (ISMRMRD streaming messages, read with ``ismrmrd.ProtocolDeserializer`` and written
with ``ismrmrd.ProtocolSerializer``; ids: config file 1, config text 2, XML header 3, close 4, text 5, acquisition
1008, image 1022, waveform 1026)::

    client -> server   [config file | config text]  XML header  [text]  acquisition ...  close
    server -> client   image (one per slice, sent as soon as the slice is complete) ...  close
                       or, on a problem:  text "ERROR <reason>"  close

* config (file name or text) and text messages (e.g. FIRE's JSON parameters) are logged and otherwise ignored: the
  server runs the one model it was started with;
* the header is checked before any acquisition is used: one 2-D Cartesian encoding
  (:meth:`~compressor.data.mrd_raw.EncodingGeometry.from_header`) whose image grid is the model's image size
  (:func:`~compressor.export.scanner.raw_input.check_grid`); a header the model cannot serve ends the connection with
  the reason;
* each acquisition becomes a :class:`~compressor.data.mrd_raw.Readout` and goes to the connection's
  :class:`~compressor.data.mrd_raw.SliceAssembler`; a slice it completes is reconstructed at once (the checks of
  :func:`~compressor.export.scanner.raw_input.prepare_slice`, acceleration, lines and, for a 1-channel model, the phase,
  then the model) and its image is sent; waveforms are counted and ignored;
* close: slices still open are completed (:meth:`~compressor.data.mrd_raw.SliceAssembler.finish`) and sent, then
  the server sends close and closes the socket.

Errors: a bad message (unknown id, a message that does not parse, a message over :data:`MAX_MESSAGE_BYTES`), a
header or slice the model cannot serve, or an acquisition the assembler refuses ends that connection with an MRD text
message ``"ERROR <reason>"`` and close (the convention of python-ismrmrd-server's ``send_logging``: level, space,
text), and one log line. A client that disconnects mid-scan, or stays silent for ``idle_timeout`` seconds, ends its
connection with one log line (and, after a timeout, the text message if the socket still takes it). Every other
connection goes on; the server writes nothing but its log.

Threads and batching:

* one thread per connection (as python-ismrmrd-server's thread/process per connection): it reads, assembles,
  reconstructs and sends, so a slow client only slows itself; at most ``max_connections`` at once (a further one is
  told the server is busy and closed);
* one session shared by every connection (ONNX Runtime's ``InferenceSession.run`` is thread-safe; OpenVINO's
  :class:`~compressor.export.runtimes.openvino_runtime.OpenVINOSession` gives each call its own infer request,
  with ``cores // threads`` streams; one copy of the weights). ``threads`` intra-op threads per run, and at most
  ``max(1, cores // threads)`` runs
  at once (a semaphore in :class:`~compressor.export.scanner.mrd_stream.SliceReconstructor`): with the default
  ``threads`` = all
  cores, runs take turns and each slice gets every core (the lowest latency per slice, what a scanner waits on;
  throughput with several scans is then that of one); ``threads=1`` lets one run per core go in parallel (throughput
  with many concurrent scans, each slice slower). More concurrent runs than that would share one intra-op pool and
  oversubscribe the cores. Measured here with a 160x160 d3c5 2-channel session and 1, 2, 4 calling threads, with and
  without a lock: two runs on this shared 2-core machine (load average near 3 from other jobs) disagreed by more than
  the differences measured, so the choice rests on ONNX Runtime's threading model; ``benchmarks/mrd_server.py --threads
  1`` against the default gives the numbers on a quiet machine;
* no batching across scans: a slice is run alone (batch 1) the moment it is complete. Batching would hold a finished
  slice back until others arrive, adding latency to every slice for a throughput gain on CPU that is not measured
  here (on a GPU it would be larger; that is what Triton's dynamic batcher is for, see ``export/triton/repository.py``).

:class:`ServerStats` records per slice the time from receiving its last readout (the message that completed it) to
its image having been written to the socket, the compute time within it (checks, coil compression, model, image) and
the time the slice waited for a model run slot (other connections' slices running): what
``benchmarks/mrd_server.py`` reports.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import ismrmrd
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolDeserializer, ProtocolSerializer
from ismrmrd.xsd import ismrmrdHeader

from compressor.data.mrd_raw import (
    AssembledSlice,
    EncodingGeometry,
    SliceAssembler,
    SliceKey,
    readout_from_ismrmrd,
    skipped_summary,
)
from compressor.errors import InputError, first_line
from compressor.export.runtimes.session import ExportedModel, open_exported
from compressor.export.scanner.mrd_stream import SliceReconstructor
from compressor.export.scanner.raw_input import check_grid

MAX_MESSAGE_BYTES = 256 << 20
"""The largest single read a message may ask for (256 MiB; a 1024-sample readout of 128 coils is 1 MiB): a corrupt
length field is refused instead of allocated."""

DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_MAX_CONNECTIONS = 16
SHUTDOWN_JOIN_SECONDS = 10.0
DRAIN_SECONDS = 2.0
ERROR_LEVEL = "ERROR"
LOGGER_NAME = "compressor.serve"


class ClientDisconnectedError(EOFError):
    """The client closed its side before a message was complete, or before sending close."""


class _Deserializer(ProtocolDeserializer):
    """``ismrmrd``'s deserializer, also taking an XML header with a trailing NUL: python-ismrmrd-server's client and
    FIRE send header, config and text messages NUL-terminated, which the XML parser refuses."""

    # ``_deserialize_ismrmrd_header`` is a private method of ``ismrmrd.serialization`` (ismrmrd 1.15, hence the pin
    # ``ismrmrd>=1.15,<2`` in pyproject.toml): ``deserialize`` calls it for every header message (id 3) after
    # reading the id. Should a release rename it, this override is no longer called and NUL-terminated headers are
    # refused as "bad message" (tests/test_mrd_server.py sends one), not misread.
    def _deserialize_ismrmrd_header(self) -> ismrmrdHeader:
        (length,) = struct.unpack("<I", self._stream.read(4))
        return ismrmrd.xsd.CreateFromDocument(self._stream.read(length).rstrip(b"\0"))


class _ExactReader:
    """``read(n)`` returns exactly ``n`` bytes of ``stream`` or raises: the reads ``ismrmrd``'s deserializer makes,
    made safe for a socket (a short read is a disconnect, never a truncated message; no read over ``limit``)."""

    def __init__(self, stream: BinaryIO, limit: int, source: str):
        self._stream, self._limit, self._source = stream, limit, source

    def read(self, size: int) -> bytes:
        if size > self._limit:
            raise InputError(f"bad message: it announces {size} bytes, more than the {self._limit} allowed",
                             self._source)
        data = self._stream.read(size)
        if len(data) < size:
            raise ClientDisconnectedError(f"{len(data)} of {size} bytes before the connection closed")
        return data


@dataclass(frozen=True)
class SliceTiming:
    """One slice sent by the server (seconds, ``time.perf_counter``).

    Attributes:
        connection: the connection's number (1, 2, ... in order of arrival).
        key: the slice's indices.
        latency: from the message that completed the slice having been read to its image having been written.
        compute: the part of ``latency`` spent checking, reconstructing and building the image.
        queued: the part of ``latency`` spent waiting for a model run slot (other slices running).
    """

    connection: int
    key: SliceKey
    latency: float
    compute: float
    queued: float


@dataclass
class ServerStats:
    """What the server did, for tests and the benchmark (thread-safe)."""

    slices: list[SliceTiming] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_slice(self, timing: SliceTiming) -> None:
        with self._lock:
            self.slices.append(timing)

    def record_outcome(self, outcome: str) -> None:
        """``"completed"``, ``"refused"``, ``"disconnected"``, ``"empty"`` (closed before any message), ``"timed
        out"``, ``"busy"``, ``"shut down"`` or ``"failed"`` (an internal error)."""
        with self._lock:
            self.outcomes[outcome] += 1

    def snapshot(self) -> tuple[list[SliceTiming], dict[str, int]]:
        with self._lock:
            return list(self.slices), dict(self.outcomes)


@dataclass
class _Connection:
    """One client's socket and scan as the handler sees them."""

    number: int
    source: str
    sock: socket.socket
    rfile: BinaryIO
    writer: ProtocolSerializer
    geometry: EncodingGeometry | None = None
    assembler: SliceAssembler | None = None
    messages: int = 0
    acquisitions: int = 0
    images: int = 0
    waveforms: int = 0


class _Handler(socketserver.StreamRequestHandler):
    """Hands the socket to :meth:`ReconstructionServer._serve_connection`."""

    server: _TcpServer

    def setup(self) -> None:
        self.timeout = self.server.app.idle_timeout
        super().setup()

    def handle(self) -> None:
        self.server.app._serve_connection(self.request, self.rfile, self.wfile, self.client_address)


class _TcpServer(socketserver.ThreadingTCPServer):
    """The listening socket; one daemon thread per connection, tracked and joined by the application."""

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: ReconstructionServer):
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address) -> None:
        # _serve_connection catches everything; anything reaching here is logged, never printed to stderr
        self.app.log.exception("connection from %s:%s: unhandled error", *client_address[:2])


class ReconstructionServer:
    """The MRD streaming reconstruction server (module docstring: message flow, errors, threads).

    Args:
        model: an exported model path (opened with ``provider`` and ``threads``) or an opened model.
        host, port: where to listen; port 0 picks a free port (:attr:`address` tells which).
        provider: the runtime for a model path (``--provider``: an ONNX Runtime provider or OpenVINO).
        threads: intra-op threads per run (``None``: all cores); also sets how many runs go at once.
        idle_timeout: seconds a connection may stay silent (or not take our bytes) before it is closed.
        max_connections: connections served at once.
        log: the logger every line goes to (default ``compressor.serve``).

    A port in use, or a model that cannot be opened, raises :class:`InputError`.
    """

    def __init__(self, model: str | Path | ExportedModel, host: str = "127.0.0.1", port: int = 9002, *,
                 provider: str = "auto", threads: int | None = None, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, take_real_part: bool = False,
                 log: logging.Logger | None = None):
        if idle_timeout <= 0:
            raise InputError(f"the idle timeout must be positive, got {idle_timeout}")
        if max_connections < 1:
            raise InputError(f"max connections must be >= 1, got {max_connections}")
        self.model = model if isinstance(model, ExportedModel) else open_exported(model, provider, threads)
        self.log = log or logging.getLogger(LOGGER_NAME)
        self.idle_timeout = float(idle_timeout)
        self.max_connections = max_connections
        intra_op = self.model.threads or os.cpu_count() or 1
        self.reconstructor = SliceReconstructor(self.model, take_real_part,
                                                parallel_runs=max(1, (os.cpu_count() or 1) // intra_op))
        self.stats = ServerStats()
        self._numbers = itertools.count(1)
        self._active: dict[int, tuple[socket.socket, threading.Thread]] = {}
        self._active_lock = threading.Lock()
        self._stopping = threading.Event()
        self._closed = False
        self._serving = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self._tcp = _TcpServer((host, port), self)
        except OSError as error:
            raise InputError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound."""
        host, port = self._tcp.server_address[:2]
        return str(host), int(port)

    @property
    def active_connections(self) -> int:
        """Connections being served now."""
        with self._active_lock:
            return len(self._active)

    # ------------------------------------------------------------------------------------------------ life cycle
    def serve_forever(self, poll_interval: float = 0.2) -> None:
        """Accept connections until :meth:`shutdown` (from another thread) or ``KeyboardInterrupt`` (Ctrl-C); then
        stop every connection and close (:meth:`close`). ``KeyboardInterrupt`` is not re-raised: Ctrl-C is the normal
        way to stop the server."""
        metadata = self.model.metadata
        host, port = self.address
        self.log.info("serving %s (%s, %d channel(s), %dx%d) on %s:%d with %s, %s intra-op thread(s), %d run(s) at "
                      "once", self.model.path.name, metadata.architecture, metadata.image_channels,
                      *metadata.image_size, host, port, self.model.runtime.name, self.model.threads or "all",
                      self.reconstructor.parallel_runs)
        try:
            self._serving.set()
            self._tcp.serve_forever(poll_interval)
        except KeyboardInterrupt:
            self.log.info("interrupted: shutting down")
        finally:
            self.close()

    def start(self) -> ReconstructionServer:
        """Serve in a background thread (tests, the benchmark); stop with :meth:`shutdown`."""
        self._thread = threading.Thread(target=self.serve_forever, name="mrd-server", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop accepting, end every connection and close; returns when done (call from another thread than
        :meth:`serve_forever`'s)."""
        if self._serving.is_set():  # socketserver's shutdown waits for a loop that was never started otherwise
            self._tcp.shutdown()
        if self._thread is not None:
            self._thread.join(SHUTDOWN_JOIN_SECONDS)
        self.close()

    def close(self) -> None:
        """End every connection (their reading side is shut, so each handler finishes the slice it is on, tells its
        client the server is shutting down and closes), wait for them (bounded) and close the listening socket."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        with self._active_lock:
            active = list(self._active.values())
        for sock, _ in active:
            with contextlib.suppress(OSError):  # already closed by the client
                sock.shutdown(socket.SHUT_RD)
        deadline = time.monotonic() + SHUTDOWN_JOIN_SECONDS
        for _, thread in active:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._tcp.server_close()
        slices, outcomes = self.stats.snapshot()
        summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items())) or "none"
        self.log.info("server stopped: %d slice(s) reconstructed; connections: %s", len(slices), summary)

    def __enter__(self) -> ReconstructionServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------------------------------------ connections
    def _serve_connection(self, sock: socket.socket, rfile: BinaryIO, wfile: BinaryIO,
                          client: tuple[str, int]) -> None:
        """One connection from accept to close: every outcome is one log line and one :class:`ServerStats` count."""
        connection = _Connection(next(self._numbers), f"connection from {client[0]}:{client[1]}", sock, rfile,
                                 ProtocolSerializer(wfile))
        with self._active_lock:
            busy = len(self._active) >= self.max_connections
            if not busy:
                self._active[connection.number] = (sock, threading.current_thread())
        try:
            if busy:
                self._refuse(connection, "busy",
                             f"the server is busy ({self.max_connections} connections); try again later")
                return
            if self._stopping.is_set():  # accepted while close() was ending the others
                self._refuse(connection, "shut down", "the server is shutting down")
                return
            self.log.info("%s: connected (#%d)", connection.source, connection.number)
            reader = _Deserializer(_ExactReader(rfile, MAX_MESSAGE_BYTES, connection.source))
            self._stream_scan(reader.deserialize(), connection)
            self.stats.record_outcome("completed")
            self.log.info("%s: done: %d acquisitions, %d images sent%s", connection.source, connection.acquisitions,
                          connection.images, self._set_aside(connection))
        except InputError as error:
            self._refuse(connection, "refused", str(error))
        except (ClientDisconnectedError, ConnectionError) as error:
            if self._stopping.is_set():
                self._refuse(connection, "shut down", "the server is shutting down")
            elif connection.messages == 0:  # a port probe, or a client that changed its mind
                self.stats.record_outcome("empty")
                self.log.info("%s: closed without sending a message", connection.source)
            else:
                how = "" if isinstance(error, ClientDisconnectedError) else f" ({error.strerror or error})"
                self.stats.record_outcome("disconnected")
                self.log.warning("%s: the client disconnected mid-scan%s after %d acquisitions, %d images sent",
                                 connection.source, how, connection.acquisitions, connection.images)
        except TimeoutError:
            self._refuse(connection, "timed out",
                         f"no data for {self.idle_timeout:g} s: the connection is closed")
        except OSError as error:
            self.stats.record_outcome("disconnected")
            self.log.warning("%s: connection lost (%s) after %d acquisitions, %d images sent", connection.source,
                             error.strerror or error.__class__.__name__, connection.acquisitions, connection.images)
        except Exception as error:  # a bug must end this connection only, said in one line to the log and client
            self._refuse(connection, "failed", f"internal error ({error.__class__.__name__}: {error})")
        finally:
            with self._active_lock:
                self._active.pop(connection.number, None)

    def _refuse(self, connection: _Connection, outcome: str, reason: str) -> None:
        """Log ``reason`` in one line, send it as an MRD text message and close (if the client still listens).

        The client may still be sending; closing a socket with unread data makes the kernel reset the connection,
        which can destroy our text message before the client reads it. So the server closes its sending side, then
        reads and drops what the client sends for at most :data:`DRAIN_SECONDS` (and :data:`MAX_MESSAGE_BYTES`).
        """
        self.stats.record_outcome(outcome)
        log = self.log.error if outcome == "failed" else self.log.warning
        log("%s: %s: %s", connection.source, outcome, reason.replace("\n", " "))
        try:
            connection.writer.serialize(f"{ERROR_LEVEL} {reason}")
            connection.writer.close()
            connection.sock.shutdown(socket.SHUT_WR)
            deadline, drained = time.monotonic() + DRAIN_SECONDS, 0
            while drained < MAX_MESSAGE_BYTES and (left := deadline - time.monotonic()) > 0:
                connection.sock.settimeout(left)
                chunk = connection.rfile.read1(1 << 16)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass  # the client is gone, or kept sending past the drain: nothing more to tell it

    @staticmethod
    def _set_aside(connection: _Connection) -> str:
        """The end of the connection's log line: what was not image data (:func:`skipped_summary`, waveforms)."""
        assembler = connection.assembler
        if assembler is None:
            return "; no header received"
        parts = [skipped_summary(assembler.skipped, assembler.noise_readouts)]
        parts += [f"{connection.waveforms} waveforms ignored"] if connection.waveforms else []
        summary = ", ".join(part for part in parts if part)
        return f"; set aside: {summary}" if summary else ""

    @staticmethod
    def _next_message(messages: Iterator[object], source: str) -> object | None:
        """The next message, ``None`` at close; anything the deserializer cannot parse is a bad message
        (:class:`InputError`); disconnects and timeouts pass through."""
        try:
            return next(messages)
        except StopIteration:
            return None
        except (ClientDisconnectedError, OSError, InputError):
            raise
        except Exception as error:  # ismrmrd and xsdata raise many unrelated types for malformed bytes
            raise InputError(f"bad message ({first_line(error)})", source) from None

    def _stream_scan(self, messages: Iterator[object], connection: _Connection) -> None:
        """The message loop (module docstring); returns after sending close."""
        source, writer = connection.source, connection.writer
        while (message := self._next_message(messages, source)) is not None:
            received = time.perf_counter()
            connection.messages += 1
            if isinstance(message, ConfigFile | ConfigText):  # str subclasses: before the text case
                if connection.geometry is not None:
                    raise InputError("a config message after the XML header", source)
                self.log.info("%s: config %r (ignored: this server runs one model)", source,
                              str(message).rstrip("\0")[:80])
            elif isinstance(message, ismrmrdHeader):
                if connection.geometry is not None:
                    raise InputError("a second XML header", source)
                connection.geometry = EncodingGeometry.from_header(message, source)
                check_grid(connection.geometry, self.model.metadata, source)
                connection.assembler = SliceAssembler(connection.geometry, source)
            elif isinstance(message, str):
                self.log.info("%s: text message (ignored): %s", source, message.rstrip("\0")[:200].replace("\n", " "))
            elif isinstance(message, ismrmrd.Acquisition):
                if connection.assembler is None:
                    raise InputError("an acquisition before the XML header", source)
                connection.acquisitions += 1
                for assembled in connection.assembler.add(readout_from_ismrmrd(message, source)):
                    self._send_slice(assembled, connection, received)
            elif isinstance(message, ismrmrd.Waveform):
                connection.waveforms += 1
            else:
                raise InputError(f"unexpected {type(message).__name__} message: this server takes raw acquisitions",
                                 source)
        if connection.assembler is not None:
            closed = time.perf_counter()
            for assembled in connection.assembler.finish():
                self._send_slice(assembled, connection, closed)
        writer.close()

    def _send_slice(self, assembled: AssembledSlice, connection: _Connection, received: float) -> None:
        """Reconstruct one slice, send its image, record its timing."""
        started = time.perf_counter()
        reconstruction, queued = self.reconstructor.reconstruct(assembled, connection.geometry, connection.source)
        message = self.reconstructor.image(assembled, connection.geometry, reconstruction, connection.images + 1)
        compute = time.perf_counter() - started - queued
        connection.writer.serialize(message)
        connection.images += 1
        latency = time.perf_counter() - received
        self.stats.record_slice(SliceTiming(connection.number, assembled.key, latency, compute, queued))
        self.log.debug("%s: slice %s sent, %.3f ms after its last readout (%.3f ms compute, %.3f ms queued)",
                       connection.source, tuple(assembled.key), latency * 1e3, compute * 1e3, queued * 1e3)


# ---------------------------------------------------------------------------------------------------- the client side
@dataclass
class ScanReply:
    """What the server sent back for one scan (:func:`stream_scan`).

    Attributes:
        images: the images, in the order received.
        texts: the text messages (``"ERROR <reason>"`` on a refusal).
        closed: whether the server sent close.
        images_before: the images received before the client sent acquisition ``wait_after`` + 1 (see
            :func:`stream_scan`); ``None`` without ``wait_after``.
    """

    images: list[ismrmrd.Image] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    closed: bool = False
    images_before: int | None = None


def stream_scan(address: tuple[str, int], xml: str, acquisitions: Iterable[ismrmrd.Acquisition], *,
                config: str | None = "compress", timeout: float = 30.0, wait_after: int | None = None) -> ScanReply:
    """Send one scan to an MRD server as a scanner does (``ismrmrd.ProtocolSerializer``: config file, XML header,
    acquisitions, close) while a second thread receives its reply (``ismrmrd.ProtocolDeserializer``).

    Args:
        config: the config file name sent first (``None``: none).
        timeout: seconds any socket operation, and the wait for the reply, may take.
        wait_after: after that many acquisitions, wait (up to ``timeout``) for a first image before sending the rest:
            a server that reconstructs slice by slice sends it, one that waits for the whole scan does not.

    Sending stops early, without error, when the server has closed (a refusal): its text says why.
    """
    reply = ScanReply()
    first_image = threading.Event()
    with socket.create_connection(address, timeout=timeout) as sock, sock.makefile("rb") as incoming, \
            sock.makefile("wb") as outgoing:

        def receive() -> None:
            try:
                for message in ProtocolDeserializer(incoming).deserialize():
                    if isinstance(message, ismrmrd.Image):
                        reply.images.append(message)
                        first_image.set()
                    elif isinstance(message, str):
                        reply.texts.append(message)
                reply.closed = True
            except (EOFError, OSError, ValueError):
                pass  # the server closed without close, or sent bytes that are not MRD: what arrived is the reply
            finally:
                first_image.set()

        receiver = threading.Thread(target=receive, name="mrd-client-receiver", daemon=True)
        receiver.start()
        serializer = ProtocolSerializer(outgoing)
        try:
            if config is not None:
                serializer.serialize(ConfigFile(config))
            serializer.serialize(ismrmrd.xsd.CreateFromDocument(xml))
            for number, acquisition in enumerate(acquisitions, 1):
                if reply.closed or reply.texts:
                    break
                serializer.serialize(acquisition)
                if number == wait_after:
                    outgoing.flush()
                    first_image.wait(timeout)
                    reply.images_before = len(reply.images)
            serializer.close()
        except OSError:
            pass  # the server closed the connection (a refusal): its reply says why
        receiver.join(timeout)
    return reply


def server_logger(path: Path | None, verbose: bool = False) -> logging.Logger:
    """The server's logger (``compressor.serve``) writing one line per event to ``path`` (appended, created at the
    first line) or to standard error; ``verbose`` adds every slice's latency (debug level)."""
    log = logging.getLogger(LOGGER_NAME)
    handler = logging.FileHandler(path, delay=True) if path is not None else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.handlers = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    return log
