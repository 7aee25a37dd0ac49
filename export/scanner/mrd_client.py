"""A client of the MRD streaming server (``compress serve``): it sends one scan as a scanner does and collects the
reply (:func:`stream_scan`), for tests and ``benchmarks/mrd_server.py``."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import ismrmrd
from ismrmrd.serialization import ConfigFile, ProtocolDeserializer, ProtocolSerializer


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
                config: str | None = "compress", parameters: dict[str, Any] | None = None, timeout: float = 30.0,
                wait_after: int | None = None) -> ScanReply:
    """Send one scan to an MRD server as a scanner does (``ismrmrd.ProtocolSerializer``: config file, XML header,
    JSON parameters, acquisitions, close) while a second thread receives its reply (``ismrmrd.ProtocolDeserializer``).

    Args:
        config: the config file name sent first (``None``: none).
        parameters: the scanner UI's parameters, sent as the JSON text ``{"parameters": parameters}`` after the
            header (``None``: no text).
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
            if parameters is not None:
                serializer.serialize(json.dumps({"parameters": parameters}))
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
