"""Bounds on what assembling one MRD scan may hold, checked **before** anything is allocated.

A raw scan's size is announced by its senders (the XML header's matrix sizes, each acquisition header's
``active_channels`` and ``number_of_samples``), so a corrupt or hostile stream can ask for any amount of memory: the
noise covariance grows with coils², a slice buffer with coils × readout × lines, and every slice opened stays until
it completes. :class:`AssemblyLimits` caps each announced size and :class:`ByteBudget` the bytes held, so that
:class:`~compressor.data.mrd_raw.SliceAssembler` refuses (an :class:`~compressor.errors.InputError` naming the cap)
instead of allocating.

Byte accounting covers what the assembler keeps between readouts: slice buffers (the ``complex128`` sums, their line
counts and readout masks) and the noise covariance. A budget may sit inside a parent (a server's total across
connections, :mod:`compressor.export.scanner.server_limits`): a reservation must fit both, and closing the child
gives everything it still holds back to the parent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from compressor.errors import InputError

MIB = 1 << 20

DEFAULT_MAX_COILS = 128
"""Receive channels per acquisition (the largest clinical receive arrays have 64 to 128 channels)."""
DEFAULT_MAX_SAMPLES = 16384
"""Samples per readout, and the header's encoded readout (a 1024 matrix with 2x oversampling has 2048)."""
DEFAULT_MAX_OPEN_SLICES = 64
"""Slices (slice, contrast, phase, repetition, set) assembled at once: a 2-D multi-slice scan interleaves every slice
of a repetition (each TR visits them all), so this must hold a protocol's slices x contrasts."""


@dataclass(frozen=True)
class AssemblyLimits:
    """What one scan's assembly may announce (each checked before the allocation it would cause).

    Attributes:
        max_coils: receive channels per acquisition (noise or image).
        max_samples: samples per readout, and the header's encoded readout length.
        max_open_slices: slices open (begun, not complete) at once.
    """

    max_coils: int = DEFAULT_MAX_COILS
    max_samples: int = DEFAULT_MAX_SAMPLES
    max_open_slices: int = DEFAULT_MAX_OPEN_SLICES

    def __post_init__(self) -> None:
        for name in ("max_coils", "max_samples", "max_open_slices"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")

    def check_readout(self, coils: int, samples: int, what: str, source: str | Path) -> None:
        """Refuse a readout of ``coils`` x ``samples`` over the caps, or empty (``what`` names it in the message)."""
        if coils < 1 or samples < 1:
            raise InputError(f"{what} holds no data ({coils} coils x {samples} samples)", source)
        if coils > self.max_coils:
            raise InputError(f"{what} has {coils} coils, more than the {self.max_coils} allowed (--max-coils)",
                             source)
        if samples > self.max_samples:
            raise InputError(f"{what} has {samples} samples, more than the {self.max_samples} allowed "
                             "(--max-samples)", source)


class ByteBudget:
    """Bytes that may be held at once, optionally inside a ``parent`` budget (thread-safe).

    Args:
        capacity: bytes; ``None``: unbounded here (the parent's bound still applies).
        name: what the budget is, for messages (e.g. ``"this connection's memory cap (--connection-memory)"``).
        parent: the enclosing budget, reserved from and released to alongside this one.
    """

    def __init__(self, capacity: int | None, name: str, parent: ByteBudget | None = None):
        self.capacity, self.name, self.parent = capacity, name, parent
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Bytes reserved now."""
        with self._lock:
            return self._held

    def reserve(self, nbytes: int, purpose: str, source: str | Path) -> None:
        """Reserve ``nbytes`` for ``purpose`` (e.g. ``"slice (0, 0, 0, 0, 0)"``), or raise an :class:`InputError`
        naming the purpose and the budget that cannot hold it (this one or a parent); nothing is reserved then."""
        with self._lock:
            if self.capacity is not None and self._held + nbytes > self.capacity:
                raise InputError(f"{purpose} needs {_mib(nbytes)} but {self.name} holds {_mib(self._held)} of "
                                 f"{_mib(self.capacity)}", source)
            if self.parent is not None:
                self.parent.reserve(nbytes, purpose, source)
            self._held += nbytes

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` reserved earlier."""
        with self._lock:
            nbytes = min(nbytes, self._held)
            self._held -= nbytes
        if self.parent is not None:
            self.parent.release(nbytes)

    def close(self) -> None:
        """Give back everything still held (the holder is done: its arrays are garbage)."""
        self.release(self.held)


def _mib(nbytes: int) -> str:
    return f"{nbytes / MIB:.1f} MiB"
