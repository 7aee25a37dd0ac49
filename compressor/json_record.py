"""Typed JSON records: frozen dataclasses whose fields are the keys of a JSON object, read with one-line errors.

A record subclasses :class:`JsonRecord`; each field is one key (its attribute name, or :func:`json_key`'s), typed by
its annotation: ``str``, ``int``, ``float`` (an integer, NaN and Infinity included), ``bool``, a ``StrEnum``,
``tuple[X, ...]`` (a JSON list), ``dict[str, Any]`` (any object), another record, or ``X | None`` (``null`` or an
absent key; left out of the JSON when ``None``). A value of another type, or a missing key, is an
:class:`~compressor.errors.InputError` naming the file and the key's path (``"quantization.layers[2].int8"``); keys
a record does not know are ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import StrEnum
from pathlib import Path
from typing import Any

from compressor.errors import InputError


def json_key(name: str) -> Any:
    """A record field written under the JSON key ``name`` instead of its attribute name."""
    return dataclasses.field(metadata={"json": name})


def json_path(parent: str, name: str | int) -> str:
    """The path of ``name`` (a key, or a list index) inside ``parent``, e.g. ``"quantization.layers[2]"``."""
    if isinstance(name, int):
        return f"{parent}[{name}]"
    return f"{parent}.{name}" if parent else name


def json_object(value: Any, source: str | Path, key: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an :class:`InputError` naming ``source`` and ``key``."""
    if not isinstance(value, dict):
        raise InputError(f"must be a JSON object, got {value!r:.60}", source, key or None)
    return value


def typed_json(value: Any, hint: Any, source: str | Path, key: str) -> Any:
    """``value`` (decoded JSON) checked against the type ``hint`` (module docstring) and converted to it (a list to a
    tuple, an object to a :class:`JsonRecord`, a string to an enum); a mismatch is an :class:`InputError` naming
    ``source`` and ``key``."""
    if isinstance(hint, types.UnionType):
        if value is None:
            return None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        variadic = args[-1] is Ellipsis
        if not isinstance(value, list) or (not variadic and len(value) != len(args)):
            raise InputError(f"must be a JSON list{'' if variadic else f' of {len(args)}'}, got {value!r:.60}",
                             source, key)
        kinds = args[:1] * len(value) if variadic else args
        return tuple(typed_json(item, kind, source, json_path(key, index))
                     for index, (item, kind) in enumerate(zip(value, kinds, strict=True)))
    if origin is dict or hint is dict:
        return json_object(value, source, key)
    if isinstance(hint, type) and issubclass(hint, JsonRecord):
        return hint.from_json(value, source, key)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        if value not in {member.value for member in hint}:
            raise InputError(f"{value!r:.60} is not one of {', '.join(member.value for member in hint)}", source, key)
        return hint(value)
    accepted = {float: (int, float), int: (int,), bool: (bool,), str: (str,)}[hint]
    if not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool)):
        raise InputError(f"must be a JSON {hint.__name__}, got {value!r:.60}", source, key)
    return hint(value)


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
    overrides :meth:`to_json` and :meth:`from_json`."""

    def to_json(self) -> dict[str, Any]:
        hints = typing.get_type_hints(type(self))
        values = {}
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            if value is None and isinstance(hints[item.name], types.UnionType):
                continue
            values[item.metadata.get("json", item.name)] = to_json_value(value)
        return values

    @classmethod
    def from_json(cls, value: Any, source: str | Path, key: str) -> Any:
        """The record of the JSON object ``value`` found at ``key`` of the file ``source``."""
        json_object(value, source, key)
        hints = typing.get_type_hints(cls)
        found = {}
        for item in dataclasses.fields(cls):  # type: ignore[arg-type]
            name = item.metadata.get("json", item.name)
            if name in value:
                found[item.name] = typed_json(value[name], hints[item.name], source, json_path(key, name))
            elif isinstance(hints[item.name], types.UnionType):
                found[item.name] = None
            elif item.default is dataclasses.MISSING:
                raise InputError("is missing", source, json_path(key, name))
        return cls(**found)
