r"""MRD (ISMRMRD) streaming messages on a socket, read safely and written whole.

:class:`MessageReader` reads one connection's messages (``next`` gives each, ``None`` at close) with every bound
of :class:`~compressor.export.scanner.server_limits.ServerLimits` applied **before** anything is allocated:

* the fixed part of a message is read first (an acquisition's 340-byte header, a text's length field) and what it
  announces is checked: an acquisition's coils and samples (:class:`~compressor.data.mrd_limits.AssemblyLimits`),
  its trajectory dimensions (at most 3), a text's or header's length, a waveform's size; then the bytes of the rest
  are reserved from the connection's :class:`~compressor.data.mrd_limits.ByteBudget` (released when the next message
  begins), and only then read, exactly (a short read is a disconnect, never a truncated message);
* image (1022) and NDArray (1030) messages are refused by their id, unread (this server takes raw acquisitions); an
  unknown id is a bad message;
* three clocks: no byte for ``idle_timeout`` seconds, a message not complete ``message_timeout`` seconds after its
  first byte (a client dripping bytes), the connection open for ``connection_timeout`` seconds: each is a
  :class:`DeadlineError` saying which;
* the XML header goes through :func:`~compressor.data.mrd_header.parse_header` (UTF-8, no DTD, so no external
  entities and no entity expansion); config, header and text messages may end in NUL (FIRE and
  python-ismrmrd-server's client send them so), which is dropped.

Messages are typed: :class:`ConfigMessage`, :class:`HeaderMessage`, :class:`TextMessage`, ``ismrmrd.Acquisition``,
``ismrmrd.Waveform``. Anything malformed is an :class:`~compressor.errors.InputError` starting ``bad message``, or
naming the cap it exceeds.

:class:`MessageWriter` sends each outgoing message (image, text, close) in one ``sendall`` on a socket with
``TCP_NODELAY`` (the server sets it): no small write waits for the client's acknowledgement of the previous one.
"""

from __future__ import annotations

import ctypes
import io
import math
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import BinaryIO

import ismrmrd
import numpy as np
from ismrmrd.serialization import ProtocolSerializer
from ismrmrd.xsd import ismrmrdHeader

from compressor.data.mrd_header import parse_header
from compressor.data.mrd_limits import ByteBudget
from compressor.errors import InputError
from compressor.export.scanner.server_limits import ServerLimits

CONFIG_FILE_BYTES = 1024
ACQUISITION_HEADER_BYTES = ctypes.sizeof(ismrmrd.AcquisitionHeader)
WAVEFORM_HEADER_BYTES = ctypes.sizeof(ismrmrd.WaveformHeader)
MAX_TRAJECTORY_DIMENSIONS = 3


class MessageId(IntEnum):
    """MRD streaming message ids (python-ismrmrd-server's ``constants.py``)."""

    CONFIG_FILE = 1
    CONFIG_TEXT = 2
    HEADER = 3
    CLOSE = 4
    TEXT = 5
    ACQUISITION = 1008
    IMAGE = 1022
    WAVEFORM = 1026
    NDARRAY = 1030


REFUSED_UNREAD = {MessageId.IMAGE: "an image message (1022)", MessageId.NDARRAY: "an NDArray message (1030)"}


class ClientDisconnectedError(EOFError):
    """The client closed its side before a message was complete, or before sending close."""


class DeadlineError(TimeoutError):
    """A clock of the connection ran out (:attr:`reason` says which, in words)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ConfigMessage:
    """A config message: a file name (id 1, ``is_file``) or a config text (id 2, e.g. Gadgetron's XML)."""

    text: str
    is_file: bool


@dataclass(frozen=True)
class HeaderMessage:
    """The XML header, parsed, and its text as received (without a trailing NUL)."""

    header: ismrmrdHeader
    xml: str


@dataclass(frozen=True)
class TextMessage:
    """A text message (FIRE/OpenRecon's JSON parameters, or any text)."""

    text: str


def _text(data: bytes | bytearray) -> str:
    """Message text: up to the first NUL, UTF-8 (undecodable bytes replaced)."""
    return bytes(data).split(b"\0", 1)[0].decode("utf-8", errors="replace")


class MessageReader:
    """One connection's incoming messages (module docstring).

    Args:
        sock, rfile: the connection's socket and its buffered reading file.
        limits: the caps and clocks.
        budget: the connection's byte budget (message bodies are reserved from it).
        source: names the connection in errors.
    """

    def __init__(self, sock: socket.socket, rfile: BinaryIO, limits: ServerLimits, budget: ByteBudget, source: str):
        self._sock, self._rfile, self.limits, self._budget, self.source = sock, rfile, limits, budget, source
        self._connection_deadline = time.monotonic() + limits.connection_timeout
        self._message_deadline = self._connection_deadline
        self._in_flight = 0
        self._readers: dict[int, Callable[[], object]] = {
            MessageId.CONFIG_FILE: self._config_file, MessageId.CONFIG_TEXT: self._config_text,
            MessageId.HEADER: self._header, MessageId.TEXT: lambda: TextMessage(_text(self._sized_text("text"))),
            MessageId.ACQUISITION: self._acquisition, MessageId.WAVEFORM: self._waveform}

    def next(self) -> object | None:
        """The next message, ``None`` at close (module docstring for what is refused)."""
        self._budget.release(self._in_flight)
        self._in_flight = 0
        self._message_deadline = math.inf
        (message_id,) = struct.unpack("<H", self._read(2, first=True))
        if message_id == MessageId.CLOSE:
            return None
        if message_id in REFUSED_UNREAD:
            raise InputError(f"bad message: {REFUSED_UNREAD[MessageId(message_id)]}; this server reconstructs raw "
                             "acquisitions", self.source)
        reader = self._readers.get(message_id)
        if reader is None:
            raise InputError(f"bad message (Unknown MessageID: {message_id})", self.source)
        return reader()

    def _clock(self) -> tuple[float, str]:
        """The seconds the next socket read may wait and the clock that sets it (``"idle"``, ``"message"``,
        ``"connection"``); a clock already run out is a :class:`DeadlineError`."""
        now = time.monotonic()
        clocks = [(self.limits.idle_timeout, "idle"), (self._message_deadline - now, "message"),
                  (self._connection_deadline - now, "connection")]
        seconds, clock = min(clocks)
        if seconds <= 0:
            raise self._deadline(clock)
        return seconds, clock

    def _deadline(self, clock: str) -> DeadlineError:
        if clock == "connection":
            return DeadlineError(f"the connection was open for more than {self.limits.connection_timeout:g} s "
                                 "(--connection-timeout)")
        if clock == "message":
            return DeadlineError(f"a message took more than {self.limits.message_timeout:g} s to arrive "
                                 "(--message-timeout)")
        return DeadlineError(f"no data for {self.limits.idle_timeout:g} s: the connection is closed")

    def _read(self, size: int, first: bool = False) -> bytearray:
        """Exactly ``size`` bytes (reserved beforehand for bodies); ``first``: a message's first bytes, whose
        arrival starts its clock."""
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            seconds, clock = self._clock()
            self._sock.settimeout(seconds)
            try:
                count = self._rfile.readinto1(view[got:])
            except TimeoutError:
                raise self._deadline(clock) from None
            if not count:
                raise ClientDisconnectedError(f"{got} of {size} bytes before the connection closed")
            if first and got == 0:
                self._message_deadline = time.monotonic() + self.limits.message_timeout
            got += count
        return buffer

    def _body(self, size: int, what: str) -> bytearray:
        """A message's variable part of ``size`` bytes, reserved from the budget before it is allocated."""
        self._budget.reserve(size, what, self.source)
        self._in_flight += size
        return self._read(size)

    def _sized_text(self, what: str) -> bytearray:
        (length,) = struct.unpack("<I", self._read(4))
        if length > self.limits.max_text_bytes:
            raise InputError(f"bad message: {what} announces {length} bytes, more than the "
                             f"{self.limits.max_text_bytes} allowed", self.source)
        return self._body(length, what)

    def _config_file(self) -> ConfigMessage:
        return ConfigMessage(_text(self._read(CONFIG_FILE_BYTES)), is_file=True)

    def _config_text(self) -> ConfigMessage:
        return ConfigMessage(_text(self._sized_text("config text")), is_file=False)

    def _header(self) -> HeaderMessage:
        data = bytes(self._sized_text("the XML header")).split(b"\0", 1)[0]
        try:
            header = parse_header(data, None)
        except InputError as error:
            raise InputError(f"bad message ({error})", self.source) from None
        return HeaderMessage(header, data.decode("utf-8"))

    def _acquisition(self) -> ismrmrd.Acquisition:
        head = ismrmrd.AcquisitionHeader.from_buffer_copy(self._read(ACQUISITION_HEADER_BYTES))
        coils, samples, dimensions = head.active_channels, head.number_of_samples, head.trajectory_dimensions
        self.limits.assembly.check_readout(coils, samples, f"acquisition {head.scan_counter}", self.source)
        if dimensions > MAX_TRAJECTORY_DIMENSIONS:
            raise InputError(f"bad message: acquisition {head.scan_counter} has a trajectory of {dimensions} "
                             f"dimensions (at most {MAX_TRAJECTORY_DIMENSIONS})", self.source)
        trajectory_bytes = samples * dimensions * 4
        body = self._body(trajectory_bytes + coils * samples * 8, f"acquisition {head.scan_counter}")
        trajectory = np.frombuffer(body, np.float32, samples * dimensions).reshape(samples, dimensions)
        data = np.frombuffer(body, np.complex64, coils * samples, trajectory_bytes).reshape(coils, samples)
        return ismrmrd.Acquisition(head, data=data, trajectory=trajectory)

    def _waveform(self) -> ismrmrd.Waveform:
        head_bytes = bytes(self._read(WAVEFORM_HEADER_BYTES))
        head = ismrmrd.WaveformHeader.from_buffer_copy(head_bytes)
        size = head.channels * head.number_of_samples * 4
        if size > self.limits.max_waveform_bytes:
            raise InputError(f"bad message: a waveform of {head.channels} channels x {head.number_of_samples} "
                             f"samples, more than the {self.limits.max_waveform_bytes} bytes allowed", self.source)
        body = self._body(size, "a waveform")
        return ismrmrd.Waveform(head_bytes, np.frombuffer(body, np.uint32))


class MessageWriter:
    """Outgoing messages, each serialised by ``ismrmrd.ProtocolSerializer`` into one buffer and sent with one
    ``sendall`` (``idle_timeout``: how long the client may leave our bytes untaken)."""

    def __init__(self, sock: socket.socket, idle_timeout: float):
        self._sock, self._idle_timeout = sock, idle_timeout

    def send(self, message: object) -> None:
        """Send an ``ismrmrd.Image`` or a text (``str``)."""
        buffer = io.BytesIO()
        ProtocolSerializer(buffer).serialize(message)
        self._sendall(buffer.getvalue())

    def close(self) -> None:
        """Send close (id 4)."""
        self._sendall(struct.pack("<H", MessageId.CLOSE))

    def _sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._idle_timeout)
        self._sock.sendall(data)


def source_of(client: tuple[str, int] | str | Path) -> str:
    """How a connection is named in messages and the log: ``connection from HOST:PORT``."""
    return f"connection from {client[0]}:{client[1]}" if isinstance(client, tuple) else str(client)
