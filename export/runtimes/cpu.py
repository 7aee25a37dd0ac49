"""The CPU at hand: its model name and the vector instruction sets that decide how INT8 runs on it.

One function, :func:`cpu_features`, read by everything that reports a CPU figure (the precision exports' metadata
and summaries, the benchmarks): these machines differ from day to day, so every INT8 or latency figure is recorded
with the instruction set it was measured on. Needs only the standard library (scanner side).

Why the flags matter (ONNX Runtime's quantization guide, ``docs/performance/model-optimizations/quantization.md``):
on x86-64 with AVX2 or AVX-512 but without VNNI, ONNX Runtime computes U8S8 products with ``VPMADDUBSW``, whose
16-bit intermediate can saturate; ``reduce_range`` (7-bit weights) avoids it, and per-channel weights "generally"
need it there. This holds for the S8S8 QDQ files written here too: on x86 ONNX Runtime's graph optimiser shifts S8
activations to U8 (``QDQS8ToU8Transformer``, ``onnxruntime/core/optimizer/qdq_transformer/qdq_s8_to_u8.cc``; MLAS's
x86 integer kernels are U8S8/U8U8), so the convolutions run through the same U8S8 ``VPMADDUBSW`` path. With VNNI
(AVX-512-VNNI, AVX-VNNI) or AMX the int8 dot product has no such issue and is what makes INT8 pay.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.export.exported_file import CpuRecord

PROC_CPUINFO = Path("/proc/cpuinfo")

INSTRUCTION_SETS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_int8": "AMX-INT8",
    "asimddp": "ARM-DOTPROD",
}
"""``/proc/cpuinfo`` flag -> the name reported, in the order reported."""

INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})
"""Flags of an int8 dot-product instruction (VNNI, AMX, ARM's SDOT/UDOT): no U8S8 saturation, INT8 can pay."""


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's model name, architecture and its ``/proc/cpuinfo`` flags (empty where there is no such file).

    Attributes:
        model: e.g. ``"AMD EPYC 7B13"``.
        machine: :func:`platform.machine`, e.g. ``"x86_64"``, ``"aarch64"``.
        flags: every flag the kernel lists.
    """

    model: str
    machine: str
    flags: frozenset[str]

    @property
    def instruction_sets(self) -> tuple[str, ...]:
        """The vector instruction sets of :data:`INSTRUCTION_SETS` this CPU has, e.g. ``("AVX2",)``."""
        return tuple(name for flag, name in INSTRUCTION_SETS.items() if flag in self.flags)

    @property
    def int8_dot_product(self) -> bool:
        """Whether the CPU has an int8 dot-product instruction (VNNI, AMX or ARM dot product)."""
        return bool(self.flags & INT8_DOT_PRODUCT_FLAGS)

    @property
    def x86(self) -> bool:
        return self.machine.lower() in {"x86_64", "amd64", "i686", "x86"}

    def describe(self) -> str:
        """One line for reports: ``"<model> (AVX2, AVX-512, AVX-512-VNNI)"``."""
        return f"{self.model} ({', '.join(self.instruction_sets) or 'no AVX2'})"

    def record(self) -> CpuRecord:
        """What an INT8 file records of the CPU it was made on."""
        return CpuRecord(self.model, self.machine, self.instruction_sets, self.int8_dot_product)

    def to_json(self) -> dict[str, Any]:
        return self.record().to_json()


def parse_cpuinfo(text: str, machine: str) -> CpuFeatures:
    """The :class:`CpuFeatures` of a ``/proc/cpuinfo`` text: its first processor's ``model name`` and its ``flags``
    (ARM kernels call them ``Features``). ARM kernels often list no ``model name`` (only numeric ``CPU implementer``
    and ``CPU part`` codes, not read here): the model is then :func:`platform.processor` or ``machine``."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in {"flags", "Features"} and not flags:
            flags = frozenset(value.split())
    return CpuFeatures(model or platform.processor() or machine, machine, flags)


@functools.cache
def cpu_features() -> CpuFeatures:
    """The CPU this process runs on (read once per process)."""
    machine = platform.machine()
    text = PROC_CPUINFO.read_text() if PROC_CPUINFO.is_file() else ""
    return parse_cpuinfo(text, machine)
