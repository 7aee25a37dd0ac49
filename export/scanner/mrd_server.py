r"""``compress serve``: a TCP server speaking the MRD (ISMRMRD) streaming protocol, as python-ismrmrd-server does for
Siemens FIRE / OpenRecon, reconstructing each slice with one of its exported models as soon as its lines have
arrived.

The message flow of one connection, model selection and images are :mod:`compressor.export.scanner.mrd_connection`'s;
the models (files, a run's exports, a Triton repository) :mod:`compressor.export.scanner.served_models`'; every cap
:mod:`compressor.export.scanner.server_limits`'. This module is the server's life: listening, one thread per
connection, the outcome of each connection, shutdown.

Errors: a bad message (:mod:`compressor.export.scanner.mrd_protocol`), a cap exceeded, a header or slice no served
model can take, or an acquisition the assembler refuses ends that connection with an MRD text message
``"ERROR <reason>"`` and close (the convention of python-ismrmrd-server's ``send_logging``: level, space, text), and
one log line, as Gadgetron ends one connection and not the server. A client that disconnects mid-scan ends its
connection with one log line; one that stays silent, drips a message or overstays (the three clocks of
:class:`~compressor.export.scanner.server_limits.ServerLimits`) gets the reason as text if its socket still takes
it. Every other connection goes on; the server writes nothing but its log (:mod:`.server_log`).

Threads and batching:

* one thread per connection (as python-ismrmrd-server's thread/process per connection): it reads, assembles,
  reconstructs and sends, so a slow client only slows itself; at most ``max_connections`` at once (a further one is
  told the server is busy and closed);
* one session per served model, opened at start-up and shared by every connection (ONNX Runtime's
  ``InferenceSession.run`` is thread-safe; OpenVINO's
  :class:`~compressor.export.runtimes.openvino_runtime.OpenVINOSession` gives each call its own infer request).
  ``threads`` intra-op threads per run, and at most ``max(1, cores // threads)`` runs at once across all models (one
  semaphore): with the default ``threads`` = all cores, runs take turns and each slice gets every core (the lowest
  latency per slice, what a scanner waits on; throughput with several scans is then that of one); ``threads=1`` lets
  one run per core go in parallel (throughput with many concurrent scans, each slice slower). More concurrent runs
  would share one intra-op pool and oversubscribe the cores. ``benchmarks/mrd_server.py --threads 1`` against the
  default measures it (results: ``benchmarks/results/mrd_server/``);
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from compressor.data.mrd_limits import MIB
from compressor.errors import InputError
from compressor.export.scanner.image_formats import DEFAULT_IMAGE_FORMAT, image_format
from compressor.export.scanner.mrd_connection import Connection, ServingContext
from compressor.export.scanner.mrd_protocol import (
    ClientDisconnectedError,
    DeadlineError,
    MessageReader,
    MessageWriter,
    source_of,
)
from compressor.export.scanner.served_models import ServedModel, open_served_models
from compressor.export.scanner.server_limits import ServerLimits
from compressor.export.scanner.server_log import LOGGER_NAME, LimitedLog, RateLimit
from compressor.export.scanner.server_stats import ServerStats
from compressor.export.scanner.slice_reconstruction import SliceReconstructor
from compressor.export.scanner.stream_recorder import DEFAULT_SAVE_CAP_MIB

SHUTDOWN_JOIN_SECONDS = 10.0
DRAIN_SECONDS = 2.0
DRAIN_BYTES = 16 * MIB
ERROR_LEVEL = "ERROR"


@dataclass(frozen=True)
class ServeOptions:
    """How ``compress serve`` serves its models.

    Attributes:
        provider, threads: the runtime (``--provider``) and intra-op threads per run (``None``: all cores).
        default_model: the served name chosen among several that fit (``--default-model``).
        image_format: the served-image convention's name (``--image-format``).
        take_real_part: 1-channel models: reconstruct the real part of complex-valued images instead of refusing.
        save_data: the folder recording each stream (``--save-data``), ``None``: none.
        save_cap: bytes recorded per stream at most (``--save-data-cap``).
        limits: every cap and clock (:class:`~compressor.export.scanner.server_limits.ServerLimits`).
    """

    provider: str = "auto"
    threads: int | None = None
    default_model: str | None = None
    image_format: str = DEFAULT_IMAGE_FORMAT
    take_real_part: bool = False
    save_data: Path | None = None
    save_cap: int = DEFAULT_SAVE_CAP_MIB * MIB
    limits: ServerLimits = field(default_factory=ServerLimits)


class _Handler(socketserver.StreamRequestHandler):
    """Hands the socket to :meth:`ReconstructionServer._serve_connection`."""

    server: _TcpServer

    def setup(self) -> None:
        self.timeout = self.server.app.limits.idle_timeout
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        self.server.app._serve_connection(self.request, self.rfile, self.client_address)


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
    """The MRD streaming reconstruction server (module docstring: errors, threads).

    Args:
        models: an exported file, or several files, exports folders, Triton repositories (:mod:`.served_models`),
            or models opened already.
        host, port: where to listen; port 0 picks a free port (:attr:`address` tells which).
        options: everything else (:class:`ServeOptions`).
        log: the logger every line goes to (default ``compressor.serve``), through the server's rate limit.

    A port in use, a model that cannot be opened, or an option out of range raises :class:`InputError`.
    """

    def __init__(self, models: str | Path | Sequence[str | Path] | Sequence[ServedModel], host: str = "127.0.0.1",
                 port: int = 9002, options: ServeOptions | None = None, log: logging.Logger | None = None):
        options = options if options is not None else ServeOptions()
        self.options, self.limits = options, options.limits
        self.rate_limit = RateLimit()
        self.log = LimitedLog(log or logging.getLogger(LOGGER_NAME), self.rate_limit)
        models = [models] if isinstance(models, str | Path) else list(models)
        served = models if models and isinstance(models[0], ServedModel) \
            else open_served_models(models, options.provider, options.threads, options.default_model)
        intra_op = options.threads or os.cpu_count() or 1
        self.parallel_runs = max(1, (os.cpu_count() or 1) // intra_op)
        runs = threading.BoundedSemaphore(self.parallel_runs)
        reconstructors = {model.name: SliceReconstructor(model.model, options.take_real_part, runs)
                          for model in served}
        self.stats = ServerStats()
        self.context = ServingContext(served, reconstructors, options.default_model, image_format(options.image_format),
                                      self.limits, self.limits.total_budget(), self.stats, self.log,
                                      options.save_data, options.save_cap)
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
    def models(self) -> Sequence[ServedModel]:
        return self.context.models

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
        self._log_start()
        try:
            self._serving.set()
            self._tcp.serve_forever(poll_interval)
        except KeyboardInterrupt:
            self.log.info("interrupted: shutting down")
        finally:
            self.close()

    def _log_start(self) -> None:
        host, port = self.address
        first = self.models[0].model
        self.log.info("serving %d model(s) on %s:%d with %s, %s intra-op thread(s), %d run(s) at once, images %s",
                      len(self.models), host, port, first.runtime.name, first.threads or "all",
                      self.parallel_runs, self.options.image_format)
        for served in self.models:
            metadata = served.metadata
            memory = f"{served.session_bytes / MIB:.0f} MiB" if served.session_bytes is not None else "unknown"
            self.log.info("model %s (%s): %s, %s, %d channel(s), %dx%d; session %s resident", served.name,
                          served.origin, metadata.architecture, metadata.precision.value, metadata.image_channels,
                          *metadata.image_size, memory)

    def start(self) -> ReconstructionServer:
        """Serve in a background thread (tests, the benchmark); stop with :meth:`shutdown`."""
        self._thread = threading.Thread(target=self.serve_forever, name="mrd-server", daemon=True)
        self._thread.start()
        self._serving.wait(SHUTDOWN_JOIN_SECONDS)
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
        for line in self.rate_limit.summaries():
            self.log.info("%s", line)
        outcomes = self.stats.snapshot()[1]
        summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items())) or "none"
        self.log.info("server stopped: %d slice(s) reconstructed; connections: %s", self.stats.slices_sent, summary)

    def __enter__(self) -> ReconstructionServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def _serve_connection(self, sock: socket.socket, rfile: BinaryIO, client: tuple[str, int]) -> None:
        """One connection from accept to close: every outcome is one log line and one :class:`ServerStats` count."""
        number, source = next(self._numbers), source_of(client)
        writer = MessageWriter(sock, self.limits.idle_timeout)
        with self._active_lock:
            busy = len(self._active) >= self.limits.max_connections
            if not busy:
                self._active[number] = (sock, threading.current_thread())
        if busy:
            self._refuse(sock, rfile, writer, source, "busy",
                         f"the server is busy ({self.limits.max_connections} connections); try again later")
            return
        budget = self.limits.connection_budget(self.context.budget)
        connection = Connection(self.context, number, source, MessageReader(sock, rfile, self.limits, budget, source),
                                writer, budget)
        try:
            if self._stopping.is_set():  # accepted while close() was ending the others
                self._refuse(sock, rfile, writer, source, "shut down", "the server is shutting down")
                return
            self.log.info("%s: connected (#%d)", source, number)
            self._run(connection, sock, rfile)
        finally:
            saved = connection.close()
            if saved is not None:
                self.log.info("%s: stream saved as %s", source, saved)
            with self._active_lock:
                self._active.pop(number, None)

    def _run(self, connection: Connection, sock: socket.socket, rfile: BinaryIO) -> None:
        """:meth:`Connection.run` and its outcome."""
        source, writer = connection.source, connection.writer
        try:
            connection.run()
            self.stats.record_outcome("completed")
            self.log.info("%s: done: %d acquisitions, %d images sent; %s", source, connection.acquisitions,
                          connection.images, connection.summary())
        except InputError as error:
            self._refuse(sock, rfile, writer, source, "refused", str(error))
        except (ClientDisconnectedError, ConnectionError) as error:
            if self._stopping.is_set():
                self._refuse(sock, rfile, writer, source, "shut down", "the server is shutting down")
            elif connection.messages == 0:  # a port probe, or a client that changed its mind
                self.stats.record_outcome("empty")
                self.log.info("%s: closed without sending a message", source)
            else:
                how = "" if isinstance(error, ClientDisconnectedError) else f" ({error.strerror or error})"
                self.stats.record_outcome("disconnected")
                self.log.warning("%s: the client disconnected mid-scan%s after %d acquisitions, %d images sent",
                                 source, how, connection.acquisitions, connection.images)
        except DeadlineError as error:
            self._refuse(sock, rfile, writer, source, "timed out", error.reason)
        except OSError as error:
            self.stats.record_outcome("disconnected")
            self.log.warning("%s: connection lost (%s) after %d acquisitions, %d images sent", source,
                             error.strerror or error.__class__.__name__, connection.acquisitions, connection.images)
        except Exception as error:  # a bug must end this connection only, said in one line to the log and client
            self._refuse(sock, rfile, writer, source, "failed", f"internal error ({error.__class__.__name__}: {error})")

    def _refuse(self, sock: socket.socket, rfile: BinaryIO, writer: MessageWriter, source: str, outcome: str,
                reason: str) -> None:
        """Log ``reason`` in one line, send it as an MRD text message and close (if the client still listens).

        The client may still be sending; closing a socket with unread data makes the kernel reset the connection,
        which can destroy our text message before the client reads it. So the server closes its sending side, then
        reads and drops what the client sends for at most :data:`DRAIN_SECONDS` (and :data:`DRAIN_BYTES`).
        """
        self.stats.record_outcome(outcome)
        log = self.log.error if outcome == "failed" else self.log.warning
        log("%s: %s: %s", source, outcome, reason.replace("\n", " "))
        try:
            writer.send(f"{ERROR_LEVEL} {reason}")
            writer.close()
            sock.shutdown(socket.SHUT_WR)
            deadline, drained = time.monotonic() + DRAIN_SECONDS, 0
            while drained < DRAIN_BYTES and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = rfile.read1(1 << 16)
                if not chunk:
                    break
                drained += len(chunk)
        except (OSError, ValueError):
            pass  # the client is gone, or kept sending past the drain, or the reading side timed out: nothing to say
