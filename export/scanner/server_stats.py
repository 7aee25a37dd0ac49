"""What the MRD server measured: per slice its latency and the parts of it (:class:`SliceTiming`), per connection
its outcome (:class:`ServerStats`), for tests and ``benchmarks/mrd_server.py``."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from compressor.data.mrd_readout import SliceKey


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
