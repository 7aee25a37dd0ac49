"""Every cap of ``compress serve`` in one record (:class:`ServerLimits`): what one connection may cost, the total
across connections, and how long it may take. Each is checked before the allocation or wait it bounds; going over
one ends that connection with ``ERROR <reason>`` naming the cap and its option, never the server.

=======================  ==============================  =========  ============================================
cap                      option                          default    bounds
=======================  ==============================  =========  ============================================
connections at once      ``--max-connections``           16         threads, sockets (one more is told "busy")
coils per acquisition    ``--max-coils``                 128        noise covariance (coils²), slice buffers
samples per readout      ``--max-samples``               16384      each acquisition, the header's encoded readout
slices open at once      ``--max-open-slices``           64         slice buffers kept between readouts
bytes per connection     ``--connection-memory`` (MiB)   1024       slice buffers + noise covariance + the message
                                                                    being read, reserved before allocating
bytes, all connections   ``--memory-budget`` (MiB)       4096       the sum of the above over connections
text message             (fixed)                         4 MiB      config text, XML header, text (JSON parameters)
waveform message         (fixed)                         4 MiB      physiological waveforms (counted, not used)
silence                  ``--idle-timeout`` (s)          300        no byte received (or taken) for that long
one message              ``--message-timeout`` (s)       30         a message arriving byte by byte ("drip")
one connection           ``--connection-timeout`` (s)    3600       the whole scan, first byte to close
log lines                (fixed)                         20 / min   per kind of line; the rest are counted and
                                                                    summarised (:mod:`.server_log`)
=======================  ==============================  =========  ============================================

An acquisition's size is ``active_channels x number_of_samples x 8`` bytes (plus its trajectory): the coil and sample
caps bound it (16 MiB at the defaults) before its data are read. Image (1022) and NDArray (1030) messages are refused
by their id, unread: this server takes raw acquisitions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from compressor.data.mrd_limits import (
    DEFAULT_MAX_COILS,
    DEFAULT_MAX_OPEN_SLICES,
    DEFAULT_MAX_SAMPLES,
    MIB,
    AssemblyLimits,
    ByteBudget,
)
from compressor.errors import InputError

DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_CONNECTION_MEMORY_MIB = 1024
DEFAULT_MEMORY_BUDGET_MIB = 4096
MAX_TEXT_BYTES = 4 * MIB
MAX_WAVEFORM_BYTES = 4 * MIB
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_MESSAGE_TIMEOUT = 30.0
DEFAULT_CONNECTION_TIMEOUT = 3600.0


@dataclass(frozen=True)
class ServerLimits:
    """The server's caps (module docstring for what each bounds; sizes in bytes, times in seconds)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_coils: int = DEFAULT_MAX_COILS
    max_samples: int = DEFAULT_MAX_SAMPLES
    max_open_slices: int = DEFAULT_MAX_OPEN_SLICES
    connection_bytes: int = DEFAULT_CONNECTION_MEMORY_MIB * MIB
    total_bytes: int = DEFAULT_MEMORY_BUDGET_MIB * MIB
    max_text_bytes: int = MAX_TEXT_BYTES
    max_waveform_bytes: int = MAX_WAVEFORM_BYTES
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    message_timeout: float = DEFAULT_MESSAGE_TIMEOUT
    connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not value > 0:
                raise InputError(f"{item.name.replace('_', ' ')} must be positive, got {value}")

    @property
    def assembly(self) -> AssemblyLimits:
        """The caps the slice assembler checks."""
        return AssemblyLimits(self.max_coils, self.max_samples, self.max_open_slices)

    def total_budget(self) -> ByteBudget:
        """The budget every connection reserves from (one per server)."""
        return ByteBudget(self.total_bytes, "the server's memory budget across connections (--memory-budget)")

    def connection_budget(self, total: ByteBudget) -> ByteBudget:
        """A new connection's budget inside ``total``."""
        return ByteBudget(self.connection_bytes, "this connection's memory cap (--connection-memory)", total)
