"""Typed JSON: the one set of readers for this tool's JSON files (the run directory's records, the exported file's
metadata). Each reader returns the typed value or raises a one-line :class:`~compressor.errors.InputError` naming
the file and the key's path (``"models[0].ort_ms_median"``, ``"quantization.layers[2].int8"``).

Scalar readers: :func:`number`, :func:`integer`, :func:`text`, :func:`choice`, :func:`json_object`,
:func:`check_version`. Records: a frozen dataclass subclassing :class:`JsonRecord` is read and written field by field;
each field is one key (its attribute name, or :func:`json_key`'s), typed by its annotation: ``str``, ``int`` (a JSON
integer), ``float`` (any JSON number, NaN and Infinity included), ``bool``, a ``StrEnum``, ``tuple[X, ...]`` (a JSON
list), ``dict[str, Any]`` (any object), ``np.ndarray`` (a 0/1 array: :func:`encode_bits`), another record (under its
key, or with its keys among the record's own: :func:`json_flat`), or ``X | None``. A key that is absent or ``null``
reads as the field's default, ``None`` for ``X | None`` without one; a field with neither is missing (an error). Keys a
record does not know are ignored. A ``None`` field is left out of the JSON, or written as ``null`` where the record's
:attr:`JsonRecord.WRITES_NULL` says so.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from compressor.errors import InputError, first_line


def json_key(name: str, default: Any = dataclasses.MISSING) -> Any:
    """A record field written under the JSON key ``name`` instead of its attribute name."""
    return dataclasses.field(default=default, metadata={"json": name})


def json_flat(default: Any = dataclasses.MISSING) -> Any:
    """A record field whose record's keys sit among the parent's own keys; an optional one is read when any of its
    keys is present."""
    return dataclasses.field(default=default, metadata={"flat": True})


def json_path(parent: str, name: str | int) -> str:
    """The path of ``name`` (a key, or a list index) inside ``parent``, e.g. ``"quantization.layers[2]"``."""
    if isinstance(name, int):
        return f"{parent}[{name}]"
    return f"{parent}.{name}" if parent else name


def json_object(value: Any, source: str | Path, key: str | None = None, what: str = "an object") -> dict[str, Any]:
    """``value`` when it is a JSON object; ``what`` names it in the message."""
    if not isinstance(value, dict):
        raise InputError(f"expected {what}", source, key or None)
    return value


def number(value: Any, source: str | Path, key: str, optional: bool = True) -> float | None:
    """A JSON number as a float (``None`` for ``null`` when ``optional``); booleans are not numbers."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"expected a number{' or null' if optional else ''}, got {value!r:.60}", source, key)
    return float(value)


def integer(value: Any, source: str | Path, key: str) -> int | None:
    """:func:`number`, truncated to an int (``None`` for ``null``)."""
    found = number(value, source, key)
    return None if found is None else int(found)


def text(value: Any, source: str | Path, key: str, optional: bool = True, what: str = "a string") -> str | None:
    """A JSON string (``None`` for ``null`` when ``optional``); ``what`` names it in the message."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InputError(f"expected {what}{' or null' if optional else ''}, got {value!r:.60}", source, key)
    return value


def choice(value: Any, valid: Sequence[str], source: str | Path, key: str) -> str:
    """``value`` when it is one of ``valid``, else one line listing them."""
    if value not in valid:
        raise InputError(f"unknown {key.rsplit('.', 1)[-1]} {value!r:.60}; valid: {', '.join(valid)}", source, key)
    return value


def check_version(version: Any, readable: Sequence[int], what: str, remedy: str, source: str | Path,
                  key: str | None = None) -> int:
    """``version`` when it is one of the ``readable`` format versions, else one line naming it, the readable ones
    and the ``remedy``: ``"<what> <version> is not one this tool reads (1, 2); <remedy>"``."""
    if isinstance(version, bool) or version not in readable:
        raise InputError(f"{what} {version!r} is not one this tool reads ({', '.join(map(str, readable))}); "
                         f"{remedy}", source, key)
    return int(version)


def encode_bits(array: np.ndarray) -> dict[str, Any]:
    """A 0/1 array as ``{"shape": [...], "packbits": base64}`` (1 bit per element, row-major; nonzero is 1)."""
    bits = np.packbits(np.asarray(array) != 0, axis=None)
    return {"shape": [int(n) for n in array.shape], "packbits": base64.b64encode(bits.tobytes()).decode("ascii")}


def decode_bits(value: Any, source: str | Path, key: str) -> np.ndarray:
    """The float32 0/1 array :func:`encode_bits` wrote as ``value``."""
    try:
        shape = tuple(int(n) for n in value["shape"])
        bits = np.frombuffer(base64.b64decode(value["packbits"]), dtype=np.uint8)
        return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(np.float32)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise InputError(f"not a packed mask ({first_line(error)})", source, key) from None


def _whole_number(value: Any, source: str | Path, key: str, optional: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"expected an integer{' or null' if optional else ''}, got {value!r:.60}", source, key)
    return value


def _boolean(value: Any, source: str | Path, key: str, optional: bool) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"expected true or false{' or null' if optional else ''}, got {value!r:.60}", source, key)
    return value


_SCALARS = {float: number, str: text, int: _whole_number, bool: _boolean}


def typed_json(value: Any, hint: Any, source: str | Path, key: str) -> Any:
    """``value`` (decoded JSON) checked against the type ``hint`` (module docstring) and converted to it (a list to a
    tuple, an object to a :class:`JsonRecord`, a string to an enum); a mismatch is an :class:`InputError` naming
    ``source`` and ``key``."""
    optional = isinstance(hint, types.UnionType)
    if optional:
        if value is None:
            return None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        variadic = args[-1] is Ellipsis
        if not isinstance(value, list) or (not variadic and len(value) != len(args)):
            raise InputError(f"expected a list{'' if variadic else f' of {len(args)}'}, got {value!r:.60}", source,
                             key)
        kinds = args[:1] * len(value) if variadic else args
        return tuple(typed_json(item, kind, source, json_path(key, index))
                     for index, (item, kind) in enumerate(zip(value, kinds, strict=True)))
    if origin is dict or hint is dict:
        return json_object(value, source, key)
    if isinstance(hint, type) and issubclass(hint, JsonRecord):
        return hint.from_json(value, source, key)
    if hint is np.ndarray:
        return decode_bits(value, source, key)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return hint(choice(value, [member.value for member in hint], source, key))
    return _SCALARS[hint](value, source, key, optional)


def json_values(texts: Mapping[str, str], what: str, source: str | Path) -> dict[str, Any]:
    """``{key: decoded value}`` of ``{key: JSON text}``; undecodable text is an :class:`InputError` naming ``what``,
    ``source`` and the key."""
    values = {}
    for key, text in texts.items():
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{what} ({error})", source, key) from None
    return values


def json_fields(record: type, value: Any, source: str | Path, key: str, skip: Collection[str] = ()) -> dict[str, Any]:
    """The fields (but ``skip``) of the dataclass ``record`` read from the JSON object ``value`` found at ``key``
    (module docstring), ``{attribute name: typed value}``, for ``record(**fields)``."""
    json_object(value, source, key)
    hints = typing.get_type_hints(record)
    found = {}
    for item in dataclasses.fields(record):
        name, hint = item.metadata.get("json", item.name), hints[item.name]
        if item.name in skip:
            continue
        if item.metadata.get("flat"):
            (kind,) = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
            keys = {part.metadata.get("json", part.name) for part in dataclasses.fields(kind)}
            if value.keys() & keys or not _has_default(item):
                found[item.name] = kind.from_json(value, source, key)
        elif value.get(name) is not None:
            found[item.name] = typed_json(value[name], hint, source, json_path(key, name))
        elif not _has_default(item) and isinstance(hint, types.UnionType):
            found[item.name] = None
        elif not _has_default(item):
            raise InputError("is missing" if name not in value else "must not be null", source, json_path(key, name))
    return found


def json_member(value: dict[str, Any], name: str, hint: Any, source: str | Path, key: str) -> Any:
    """The member ``name`` of the JSON object ``value`` (found at ``key``) as ``hint`` (:func:`typed_json`); a
    missing one is an :class:`InputError`."""
    if name not in value:
        raise InputError("is missing", source, json_path(key, name))
    return typed_json(value[name], hint, source, json_path(key, name))


def to_json_value(value: Any) -> Any:
    """A record field as JSON: records by their :meth:`~JsonRecord.to_json`, tuples as lists, enums as values."""
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, tuple):
        return [to_json_value(item) for item in value]
    return value.value if isinstance(value, StrEnum) else value


class JsonRecord:
    """Base of the typed records (frozen dataclasses, module docstring); a subclass whose JSON is laid out otherwise
    overrides :meth:`to_json` and :meth:`from_json`.

    Attributes:
        WRITES_NULL: a ``None`` field is written as ``null`` (the run directory's files) rather than left out (the
            exported file's metadata).
    """

    WRITES_NULL: ClassVar[bool] = False

    def to_json(self) -> dict[str, Any]:
        values = {}
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            if item.metadata.get("flat") and value is not None:
                values.update(value.to_json())
            elif value is not None or self.WRITES_NULL:
                values[item.metadata.get("json", item.name)] = to_json_value(value)
        return values

    @classmethod
    def from_json(cls, value: Any, source: str | Path, key: str) -> Any:
        """The record of the JSON object ``value`` found at ``key`` of the file ``source``."""
        return cls(**json_fields(cls, value, source, key))


def _has_default(item: dataclasses.Field) -> bool:
    return item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING
