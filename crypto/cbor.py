"""Canonical CBOR for everything swarmnode signs, hashes or sends.

Encoding uses `cbor2` in canonical mode. Decoding does *not* use cbor2: peer
bytes go through the small strict decoder below, which only knows the CBOR
subset our schemas use (integers, byte and text strings, arrays, maps with
text keys, booleans, null, floats). Tags, indefinite lengths, undefined and
other simple values are refused, nesting and item counts are bounded by the
input size, and the result must re-encode to exactly the input bytes, so every
value has one encoding and a signature covers one meaning.

Frozen dataclasses are the schemas: `dumps_dataclass` turns one into
canonical bytes, `loads_dataclass` checks every field (no unknown, no missing,
no wrong type) on the way back.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct
import types
import typing
from collections.abc import Callable
from typing import Final, TypeVar

import cbor2

from .errors import MalformedMessage, NonCanonicalEncoding, SchemaError
from .identity import NodeId

CborValue = int | float | bool | str | bytes | None | list["CborValue"] | dict[str, "CborValue"]

MAX_DEPTH: Final = 32

T = TypeVar("T")


def dumps(value: CborValue) -> bytes:
    """The canonical CBOR encoding of `value`."""
    return cbor2.dumps(value, canonical=True)


def loads(data: bytes, *, max_depth: int = MAX_DEPTH) -> CborValue:
    """Strictly decode canonical CBOR; raise `MalformedMessage` on anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    value, end = _Decoder(data, max_depth).item(0, 0)
    if end != len(data):
        raise MalformedMessage(f"{len(data) - end} trailing bytes after the CBOR item")
    if dumps(value) != data:
        raise NonCanonicalEncoding("CBOR item is not canonically encoded")
    return value


class _Decoder:
    __slots__ = ("_data", "_max_depth")

    def __init__(self, data: bytes, max_depth: int) -> None:
        self._data = data
        self._max_depth = max_depth

    def _need(self, pos: int, n: int) -> None:
        if pos + n > len(self._data):
            raise MalformedMessage(f"truncated CBOR: need {n} bytes at offset {pos}")

    def _argument(self, info: int, pos: int) -> tuple[int, int]:
        if info < 24:
            return info, pos
        if info > 27:
            raise MalformedMessage(f"unsupported CBOR additional info {info} at offset {pos - 1}")
        width = 1 << (info - 24)
        self._need(pos, width)
        return int.from_bytes(self._data[pos : pos + width], "big"), pos + width

    def item(self, pos: int, depth: int) -> tuple[CborValue, int]:
        if depth > self._max_depth:
            raise MalformedMessage(f"CBOR nested deeper than {self._max_depth} levels")
        self._need(pos, 1)
        initial = self._data[pos]
        major, info = initial >> 5, initial & 0x1F
        pos += 1
        if major == 7:
            return self._simple(info, pos)
        arg, pos = self._argument(info, pos)
        if major == 0:
            return arg, pos
        if major == 1:
            return -1 - arg, pos
        if major in (2, 3):
            self._need(pos, arg)
            raw = self._data[pos : pos + arg]
            if major == 2:
                return raw, pos + arg
            try:
                return raw.decode("utf-8"), pos + arg
            except UnicodeDecodeError:
                raise MalformedMessage(f"invalid UTF-8 in text string at offset {pos}") from None
        if major == 4:
            # Every item takes at least one byte: a count beyond the input is a lie.
            self._need(pos, arg)
            items: list[CborValue] = []
            for _ in range(arg):
                value, pos = self.item(pos, depth + 1)
                items.append(value)
            return items, pos
        if major == 5:
            self._need(pos, 2 * arg)
            mapping: dict[str, CborValue] = {}
            for _ in range(arg):
                key, pos = self.item(pos, depth + 1)
                if not isinstance(key, str):
                    raise MalformedMessage("CBOR map keys must be text strings")
                if key in mapping:
                    raise NonCanonicalEncoding(f"duplicate map key {key!r}")
                mapping[key], pos = self.item(pos, depth + 1)
            return mapping, pos
        raise MalformedMessage(f"CBOR tags (major type 6) are not accepted, offset {pos - 1}")

    def _simple(self, info: int, pos: int) -> tuple[CborValue, int]:
        if info == 20:
            return False, pos
        if info == 21:
            return True, pos
        if info == 22:
            return None, pos
        if info in (25, 26, 27):
            width, fmt = {25: (2, ">e"), 26: (4, ">f"), 27: (8, ">d")}[info]
            self._need(pos, width)
            (number,) = struct.unpack(fmt, self._data[pos : pos + width])
            return float(number), pos + width
        raise MalformedMessage(f"unsupported CBOR simple value {info} at offset {pos - 1}")


# -- dataclass schemas -------------------------------------------------------------


def dumps_dataclass(obj: object) -> bytes:
    """Canonical CBOR of a (frozen) dataclass instance, as a map of its fields."""
    return dumps(to_cbor_value(obj))


def loads_dataclass(cls: type[T], data: bytes, *, max_depth: int = MAX_DEPTH) -> T:
    """Decode `data` strictly into an instance of `cls`, checking every field."""
    return from_cbor_value(cls, loads(data, max_depth=max_depth))


def to_cbor_value(obj: object) -> CborValue:
    if isinstance(obj, NodeId):
        return obj.public_key
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        floats = _float_fields(type(obj))
        values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return {name: to_cbor_value(_as_float(v) if name in floats else v) for name, v in values.items()}
    if isinstance(obj, tuple | list):
        return [to_cbor_value(item) for item in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError("non-finite floats are not encodable")
    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        return obj
    raise TypeError(f"cannot encode {type(obj).__name__} as CBOR")


_UNIONS: Final = (typing.Union, types.UnionType)


def _as_float(value: object) -> object:
    return float(value) if type(value) is int else value


@functools.cache
def _float_fields(cls: type) -> frozenset[str]:
    # A float field holding an int must still encode as a float: one value, one encoding.
    return frozenset(
        name
        for name, hint in typing.get_type_hints(cls).items()
        if hint is float or (typing.get_origin(hint) in _UNIONS and float in typing.get_args(hint))
    )


def check_schema(cls: type) -> None:
    """Raise `TypeError` if `cls` has a field type the CBOR schema cannot carry."""
    _converter(cls)


def from_cbor_value(cls: type[T], value: CborValue) -> T:
    result: T = _converter(typing.cast(object, cls))(value, cls.__name__)
    return result


_Convert = Callable[[CborValue, str], typing.Any]


@functools.cache
def _converter(annotation: object) -> _Convert:
    """Build (once per type) a function checking and converting a decoded value."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return _exact(type(None), "null")
    if annotation is bool:
        return _exact(bool, "a boolean")
    if annotation is int:
        return _int
    if annotation is float:
        return _float
    if annotation is str:
        return _exact(str, "a text string")
    if annotation is bytes:
        return _exact(bytes, "a byte string")
    if annotation is NodeId:
        return _node_id
    if origin in (typing.Union, types.UnionType):
        return _union(tuple(_converter(arg) for arg in args), args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _tuple_of(_converter(args[0]))
        return _fixed_tuple(tuple(_converter(arg) for arg in args))
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _dataclass(annotation)
    raise TypeError(f"no CBOR schema for annotation {annotation!r}")


def _exact(kind: type, what: str) -> _Convert:
    def convert(value: CborValue, path: str) -> object:
        if type(value) is not kind:
            raise SchemaError(f"{path}: expected {what}, got {type(value).__name__}")
        return value

    return convert


def _int(value: CborValue, path: str) -> int:
    if type(value) is not int:
        raise SchemaError(f"{path}: expected an integer, got {type(value).__name__}")
    return value


def _float(value: CborValue, path: str) -> float:
    if type(value) is not float:
        raise SchemaError(f"{path}: expected a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise SchemaError(f"{path}: non-finite float")
    return value


def _node_id(value: CborValue, path: str) -> NodeId:
    if type(value) is not bytes or len(value) != 32:
        raise SchemaError(f"{path}: expected a 32-byte public key")
    return NodeId(value)


def _union(options: tuple[_Convert, ...], args: tuple[object, ...]) -> _Convert:
    maps = [k for k, arg in enumerate(args) if isinstance(arg, type) and dataclasses.is_dataclass(arg)]

    def convert(value: CborValue, path: str) -> object:
        errors: list[SchemaError] = []
        for option in options:
            try:
                return option(value, path)
            except SchemaError as exc:
                errors.append(exc)
        if type(value) is dict and len(maps) == 1:  # the one map type's own error names the field
            raise errors[maps[0]]
        names = " or ".join(getattr(arg, "__name__", str(arg)) for arg in args)
        raise SchemaError(f"{path}: expected {names}, got {type(value).__name__}")

    return convert


def _tuple_of(item: _Convert) -> _Convert:
    def convert(value: CborValue, path: str) -> tuple[object, ...]:
        if type(value) is not list:
            raise SchemaError(f"{path}: expected an array, got {type(value).__name__}")
        return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))

    return convert


def _fixed_tuple(items: tuple[_Convert, ...]) -> _Convert:
    def convert(value: CborValue, path: str) -> tuple[object, ...]:
        if type(value) is not list or len(value) != len(items):
            raise SchemaError(f"{path}: expected an array of {len(items)} items")
        pairs = enumerate(zip(items, value, strict=True))
        return tuple(conv(v, f"{path}[{i}]") for i, (conv, v) in pairs)

    return convert


def _dataclass(cls: type) -> _Convert:
    hints = typing.get_type_hints(cls)
    fields = {f.name: _converter(hints[f.name]) for f in dataclasses.fields(cls) if f.init}

    def convert(value: CborValue, path: str) -> object:
        if type(value) is not dict:
            raise SchemaError(f"{path}: expected a map, got {type(value).__name__}")
        unknown = value.keys() - fields.keys()
        if unknown:
            raise SchemaError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
        missing = fields.keys() - value.keys()
        if missing:
            raise SchemaError(f"{path}: missing field(s) {', '.join(sorted(missing))}")
        kwargs = {name: conv(value[name], f"{path}.{name}") for name, conv in fields.items()}
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:  # the dataclass's own validation
            raise SchemaError(f"{path}: {exc}") from None

    return convert
