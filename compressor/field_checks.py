"""Field metadata of the typed configuration sections: what a value must be, checked when a config is loaded.

A section is a dataclass whose fields are annotated ``Annotated[type, check, ...]``; :mod:`compressor.config` coerces
each value to its type and then calls every check's ``check(value, where)``, which returns the value or raises a
one-line :class:`~compressor.errors.InputError` naming ``where`` (``[data] image_size``), the value and what is valid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

from compressor.errors import InputError
from compressor.vocabulary import values


@dataclass(frozen=True)
class OneOf:
    """The value must be one of ``names()``, a closed vocabulary or a registry's names.

    ``kind`` names what the value is in messages (``unknown KD schedule 'x'``). ``names`` is called when a config is
    checked. ``extra`` are names valid besides those (``all`` for the KD methods). Registry names ignore case.
    """

    kind: str
    names: Callable[[], Iterable[str]]
    extra: tuple[str, ...] = ()
    ignore_case: bool = False

    @classmethod
    def enum(cls, kind: str, enumeration: type[Enum]) -> OneOf:
        return cls(kind, lambda: values(enumeration))

    @classmethod
    def fixed(cls, kind: str, names: Iterable[str]) -> OneOf:
        """One of a fixed list of names (a module's constant)."""
        names = tuple(names)
        return cls(kind, lambda: names)

    def check(self, value: str, where: str) -> str:
        valid = [*self.names(), *self.extra]
        if (value.lower() if self.ignore_case else value) not in valid:
            raise InputError(f"{where}: unknown {self.kind} {value!r}; valid: {', '.join(valid)}")
        return value


@dataclass(frozen=True)
class Between:
    """A number in a range; ``low``/``high`` of ``None`` are open ends, ``strict`` excludes ``low``."""

    low: float | None = None
    high: float | None = None
    strict: bool = False

    def check(self, value: float, where: str) -> float:
        below = self.low is not None and (value <= self.low if self.strict else value < self.low)
        if below or (self.high is not None and value > self.high):
            bounds = [f"{'>' if self.strict else '>='} {self.low:g}"] if self.low is not None else []
            bounds += [f"<= {self.high:g}"] if self.high is not None else []
            raise InputError(f"{where} must be {' and '.join(bounds)}, got {value!r}")
        return value


def AtLeast(low: float) -> Between:  # noqa: N802  (reads as a type in annotations)
    return Between(low)


def Above(low: float) -> Between:  # noqa: N802
    return Between(low, strict=True)


@dataclass(frozen=True)
class Valid:
    """``check_value(value)`` raises :class:`InputError` for a bad value (e.g. an architecture name)."""

    check_value: Callable[[Any], None]

    def check(self, value: Any, where: str) -> Any:
        try:
            self.check_value(value)
        except InputError as error:
            raise InputError(f"{where}: {error}") from None
        return value


Count = Annotated[int, AtLeast(1)]
NonNegative = Annotated[float, AtLeast(0)]
Positive = Annotated[float, Above(0)]
