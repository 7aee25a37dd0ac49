"""What the MRD server measured: per slice its latency and the parts of it (:class:`SliceTiming`), per connection
its outcome (:class:`ServerStats`), and the process's resident memory (:func:`resident_bytes`), for the log, tests
and ``benchmarks/mrd_server.py``."""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field

from compressor.data.mrd_readout import SliceKey

STATUS_FILE = "/proc/self/status"
SLICE_HISTORY = 10_000
"""The latest slices whose timings are kept (a server runs for months: older ones are dropped, and counted)."""


def resident_bytes(field: str = "VmRSS") -> int | None:
    """The process's resident memory (``VmRSS``; ``VmHWM``: its peak) in bytes from ``/proc/self/status``;
    ``None`` where there is no such file (not Linux)."""
    try:
        with open(STATUS_FILE) as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class SliceTiming:
    """One slice sent by the server (seconds, ``time.perf_counter``).

    Attributes:
        connection: the connection's number (1, 2, ... in order of arrival).
        key: the slice's indices.
        latency: from the message that completed the slice having been read to its last image byte having been
            written to the socket (its comparison image too, when asked for).
        compute: the part of ``latency`` spent preparing (checks, coil compression), running the model and building
            the image (pixels, header, MetaContainer).
        queued: the part of ``latency`` spent waiting for a model run slot (other slices running).
        model: the served name of the model that ran.
    """

    connection: int
    key: SliceKey
    latency: float
    compute: float
    queued: float
    model: str = ""


@dataclass
class ServerStats:
    """What the server did, for tests and the benchmark (thread-safe): the timings of the latest
    :data:`SLICE_HISTORY` slices, the number of slices sent since start, and each connection outcome's count."""

    slices: deque[SliceTiming] = field(default_factory=lambda: deque(maxlen=SLICE_HISTORY))
    slices_sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_slice(self, timing: SliceTiming) -> None:
        with self._lock:
            self.slices.append(timing)
            self.slices_sent += 1

    def record_outcome(self, outcome: str) -> None:
        """``"completed"``, ``"refused"``, ``"disconnected"``, ``"empty"`` (closed before any message), ``"timed
        out"``, ``"busy"``, ``"shut down"`` or ``"failed"`` (an internal error)."""
        with self._lock:
            self.outcomes[outcome] += 1

    def snapshot(self) -> tuple[list[SliceTiming], dict[str, int]]:
        """The kept slice timings (oldest first) and the outcome counts."""
        with self._lock:
            return list(self.slices), dict(self.outcomes)
