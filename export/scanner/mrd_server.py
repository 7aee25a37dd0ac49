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
  (:meth:`~compressor.data.mrd_header.EncodingGeometry.from_header`) whose image grid is the model's image size
  (:func:`~compressor.export.scanner.raw_input.check_grid`); a header the model cannot serve ends the connection with
  the reason;
* each acquisition becomes a :class:`~compressor.data.mrd_readout.Readout` and goes to the connection's
  :class:`~compressor.data.mrd_raw.SliceAssembler`; a slice it completes is reconstructed at once (the checks of
  :func:`~compressor.export.scanner.raw_input.prepare_slice`, acceleration, lines and, for a 1-channel model, the phase,
  then the model) and its image is sent; waveforms are counted and ignored;
* close: slices still open are completed (:meth:`~compressor.data.mrd_raw.SliceAssembler.finish`) and sent, then
  the server sends close and closes the socket.

Errors: a bad message (unknown id, a message that does not parse, a message over
:data:`~compressor.export.scanner.mrd_protocol.MAX_MESSAGE_BYTES`, :mod:`compressor.export.scanner.mrd_protocol`), a
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
  :class:`~compressor.export.runtimes.openvino_runtime.OpenVINOSession` gives each call its own infer request, with
  ``cores // threads`` streams; one copy of the weights). ``threads`` intra-op threads per run, and at most
  ``max(1, cores // threads)`` runs at once (a semaphore in
  :class:`~compressor.export.scanner.mrd_stream.SliceReconstructor`): with the default ``threads`` = all cores, runs
  take turns and each slice gets every core (the lowest latency per slice, what a scanner waits on; throughput with
  several scans is then that of one); ``threads=1`` lets one run per core go in parallel (throughput with many
  concurrent scans, each slice slower). More concurrent runs than that would share one intra-op pool and
  oversubscribe the cores. The choice rests on ONNX Runtime's threading model; ``benchmarks/mrd_server.py --threads
  1`` against the default measures it (results: ``benchmarks/results/mrd_server/``);
* no batching across scans: a slice is run alone (batch 1) the moment it is complete. Batching would hold a finished
  slice back until others arrive, adding latency to every slice for a throughput gain (that is what Triton's dynamic
  batcher is for, see ``export/serving/``).

The server records each slice's latency and its parts (:mod:`compressor.export.scanner.server_stats`), which
``benchmarks/mrd_server.py`` reports; its client is :mod:`compressor.export.scanner.mrd_client`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import ismrmrd
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolSerializer
from ismrmrd.xsd import ismrmrdHeader

from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_raw import AssembledSlice, SliceAssembler, skipped_summary
from compressor.data.mrd_readout import readout_from_ismrmrd
from compressor.errors import InputError
from compressor.export.runtimes.session import ExportedModel, open_exported
from compressor.export.scanner.mrd_protocol import (
    MAX_MESSAGE_BYTES,
    ClientDisconnectedError,
    next_message,
    read_messages,
)
from compressor.export.scanner.mrd_stream import SliceReconstructor
from compressor.export.scanner.raw_input import check_grid
from compressor.export.scanner.server_stats import ServerStats, SliceTiming

DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_MAX_CONNECTIONS = 16
SHUTDOWN_JOIN_SECONDS = 10.0
DRAIN_SECONDS = 2.0
ERROR_LEVEL = "ERROR"
LOGGER_NAME = "compressor.serve"


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
        take_real_part: 1-channel models: reconstruct the real part of complex-valued images instead of refusing them.
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

    def serve_forever(self, poll_interval: float = 0.2) -> None:
        """Accept connections until :meth:`shutdown` (from another thread) or Ctrl-C (``KeyboardInterrupt``, the normal
        way to stop: not re-raised); then end every connection and close (:meth:`close`)."""
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
            self._stream_scan(read_messages(rfile, connection.source), connection)
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

    def _stream_scan(self, messages: Iterator[object], connection: _Connection) -> None:
        """The message loop (module docstring); returns after sending close."""
        source, writer = connection.source, connection.writer
        while (message := next_message(messages, source)) is not None:
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
