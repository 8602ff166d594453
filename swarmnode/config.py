"""The one config loader: TOML files into frozen dataclasses, strictly.

Every error names the file, the key (dotted), the bad value and what was
expected; unknown keys are errors, so a typo never silently falls back to a
default. Overrides use the same dotted keys with TOML values
(``training.lr=0.01``), as Flower's ``--run-config`` does.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(Exception):
    """A config file or override is invalid; the message says where and why."""


def load_config(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Read `path` as TOML, apply dotted `overrides` and build a `cls` instance."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read config file ({exc})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    for override in overrides:
        _apply_override(raw, override, source)
    return from_mapping(cls, raw, source=str(source))


def from_mapping(cls: type[T], raw: Mapping[str, object], *, source: str) -> T:
    """Build `cls` from parsed TOML; `source` names the origin in errors."""
    result: T = _build(typing.cast(Any, cls), raw, source, "")
    return result


def _apply_override(raw: dict[str, Any], override: str, source: Path) -> None:
    key, sep, value_text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. training.lr=0.01")
    try:
        value = tomllib.loads(f"v = {value_text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text.strip()  # a bare word is taken as a string, as a shell user expects
    *parents, leaf = key.split(".")
    table = raw
    for part in parents:
        nested = table.setdefault(part, {})
        if not isinstance(nested, dict):
            raise ConfigError(f"{source}: override {key}: {part} is not a table")
        table = nested
    table[leaf] = value


def _describe(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(annotation)[0])}"
    if annotation is type(None):
        return "nothing"
    if annotation is Path:
        return "a path (string)"
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        typing.cast(type, annotation), str(annotation)
    )


def _fail(source: str, key: str, value: object, annotation: object) -> ConfigError:
    return ConfigError(f"{source}: {key} = {value!r}: expected {_describe(annotation)}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(annotation: Any, value: object, source: str, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise _fail(source, key or "(top level)", value, annotation)
        return _build_dataclass(annotation, value, source, key)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _build(option, value, source, key)
            except ConfigError:
                continue
        raise _fail(source, key, value, annotation)
    if origin is typing.Literal:
        if value in typing.get_args(annotation):
            return value
        raise _fail(source, key, value, annotation)
    if origin is tuple:
        if not isinstance(value, list):
            raise _fail(source, key, value, annotation)
        item = typing.get_args(annotation)[0]
        return tuple(_build(item, v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is type(None):
        raise _fail(source, key, value, annotation)
    if annotation is float and type(value) in (int, float):
        return float(typing.cast(float, value))
    if annotation is Path and isinstance(value, str):
        return Path(value)
    if annotation in (int, str, bool) and type(value) is annotation:
        return value
    raise _fail(source, key, value, annotation)


def _build_dataclass(cls: type, table: Mapping[str, object], source: str, key: str) -> object:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{key}." if key else ""
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]}; expected one of: {', '.join(sorted(fields))}"
        )
    hints = _hints(cls)
    kwargs: dict[str, object] = {}
    for name, field in fields.items():
        if name in table:
            kwargs[name] = _build(hints[name], table[name], source, f"{prefix}{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing key {prefix}{name} ({_describe(hints[name])})")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the dataclass's own range checks name their field
        raise ConfigError(f"{source}: {prefix.rstrip('.') or cls.__name__}: {exc}") from None
