"""Reading MRD (ISMRMRD) streaming messages off a socket, safely: exact reads, a bound on every read, a disconnect
told apart from a malformed message, and XML headers with FIRE's trailing NUL taken.

:func:`read_messages` gives the messages of one connection (``ismrmrd.ProtocolDeserializer``'s objects: config file
and text, XML header, text, acquisition, waveform, image) and :func:`next_message` takes them one at a time: a
message that does not parse is an :class:`~compressor.errors.InputError` ("bad message"), a connection closed
mid-message a :class:`ClientDisconnectedError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import ismrmrd
from ismrmrd.serialization import ProtocolDeserializer
from ismrmrd.xsd import ismrmrdHeader

from compressor.errors import InputError, first_line

MAX_MESSAGE_BYTES = 256 << 20
"""The largest single read a message may ask for (256 MiB; a 1024-sample readout of 128 coils is 1 MiB): a corrupt
length field is refused instead of allocated."""


class ClientDisconnectedError(EOFError):
    """The client closed its side before a message was complete, or before sending close."""


class NulTolerantDeserializer(ProtocolDeserializer):
    """``ismrmrd``'s deserializer, also taking an XML header with a trailing NUL: python-ismrmrd-server's client and
    FIRE send header, config and text messages NUL-terminated, which the XML parser refuses."""

    # ``_deserialize_ismrmrd_header`` is a private method of ``ismrmrd.serialization`` (ismrmrd 1.15, hence the pin
    # ``ismrmrd>=1.15,<2`` in pyproject.toml): ``deserialize`` calls it for every header message (id 3) after
    # reading the id. Should a release rename it, this override is no longer called and NUL-terminated headers are
    # refused as "bad message" (tests/test_mrd_server.py sends one), not misread.
    def _deserialize_ismrmrd_header(self) -> ismrmrdHeader:
        (length,) = struct.unpack("<I", self._stream.read(4))
        return ismrmrd.xsd.CreateFromDocument(self._stream.read(length).rstrip(b"\0"))


class ExactReader:
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



def read_messages(stream: BinaryIO, source: str) -> Iterator[object]:
    """The messages of ``stream`` (a connection's reading side), each read exactly and within
    :data:`MAX_MESSAGE_BYTES`."""
    return NulTolerantDeserializer(ExactReader(stream, MAX_MESSAGE_BYTES, source)).deserialize()


def next_message(messages: Iterator[object], source: str) -> object | None:
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
