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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from models.data import SKLEARN_DATASETS
from models.images import ImageAugment
from models.preprocess import PreprocessConfig
from models.spec import ModelSpec
from models.training import TrainConfig

from .addresses import advertised_address, advertised_addresses, check_listen, circuit_address
from .net.factory import TRANSPORT_NAMES

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
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} items ({', '.join(_describe(a) for a in args)})"
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
        args = typing.get_args(annotation)
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not isinstance(value, list) or (not variadic and len(value) != len(args)):
            raise _fail(source, key, value, annotation)
        items = [args[0]] * len(value) if variadic else list(args)
        pairs = enumerate(zip(items, value, strict=True))
        return tuple(_build(t, v, source, f"{key}[{i}]") for i, (t, v) in pairs)
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
    for name, spec in fields.items():
        if name in table:
            kwargs[name] = _build(hints[name], table[name], source, f"{prefix}{name}")
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing key {prefix}{name} ({_describe(hints[name])})")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the dataclass's own range checks name their field
        raise ConfigError(f"{source}: {prefix.rstrip('.') or cls.__name__}: {exc}") from None


# -- site.toml ------------------------------------------------------------------------

LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True, kw_only=True)
class NodeSection:
    """Who this site is and where it keeps its state."""

    name: str
    key_file: Path = Path("node.key")
    storage_dir: Path = Path("state")
    log_level: LogLevel = "info"


@dataclass(frozen=True, kw_only=True)
class NetworkSection:
    """Where this node listens, where peers reach it (`advertise`: IP addresses, DNS names or
    multiaddrs; see `swarmnode.addresses`), whom it dials first (multiaddrs with /p2p/<peer id>)
    and over which transport (`swarmnode.net.factory`)."""

    listen: str = "127.0.0.1"
    port: int = 0
    advertise: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()
    transport: str = "libp2p"
    relays: tuple[str, ...] = ()  # reserve a slot on these (multiaddrs with /p2p/): for sites behind NAT
    relay_service: bool = False  # relay for other members (a site peers can dial)

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORT_NAMES:
            raise ValueError(f"transport = {self.transport!r}: expected one of {', '.join(TRANSPORT_NAMES)}")
        for i, relay in enumerate(self.relays):
            try:
                circuit_address(relay)
            except ValueError as exc:
                raise ValueError(f"relays[{i}] = {relay!r}: {exc}") from None
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0-65535, got {self.port}")
        try:
            check_listen(self.listen)
        except ValueError as exc:
            raise ValueError(f"listen = {self.listen!r}: {exc}") from None
        for i, entry in enumerate(self.advertise):
            try:
                advertised_address(entry, self.port)
            except ValueError as exc:
                raise ValueError(f"advertise[{i}] = {entry!r}: {exc}") from None

    def advertised(self) -> tuple[str, ...]:
        """The multiaddrs peers dial (no /p2p/ part of our own): the direct ones, then one
        circuit address per relay; () if this site gives none."""
        direct = advertised_addresses(self.listen, self.port, self.advertise)
        return direct + tuple(circuit_address(relay) for relay in self.relays)


@dataclass(frozen=True, kw_only=True)
class LedgerSection:
    """The swarm's genesis document and the BFT ledger's timing."""

    genesis: Path = Path("genesis.cbor")
    propose_timeout: float = 1.0
    block_interval: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.propose_timeout <= 60 or not 0 <= self.block_interval <= 60:
            raise ValueError("propose_timeout must be in (0, 60] and block_interval in [0, 60] seconds")


DataKind = Literal["table", "image_folder"]


@dataclass(frozen=True, kw_only=True)
class DataSection:
    """This site's private data. `source` is a bundled dataset name or a .csv/.h5ad/.npz file
    (None: the site brings its own data and training loop, e.g. through the embedding API;
    `kind` "table"), or with `kind` "image_folder" a folder holding one sub-folder of PNG /
    JPEG images per class (`models.images`).

    `test_source` optionally names a held-out test set to report test metrics on.
    Images are resized to `image_size` (height, width) with `channels` (1: grey, 3: RGB);
    both default to the model's ``image_shape`` and must match it. `augment` ("none",
    "affine", "affine_flip") randomly moves training images (`models.images.ImageAugmenter`).
    """

    source: str | None = None
    label_column: str | None = None
    positive_class: str | None = None
    test_source: str | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    kind: DataKind = "table"
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    augment: ImageAugment = "none"

    def __post_init__(self) -> None:
        images = (self.image_size, self.channels) != (None, None) or self.augment != "none"
        if images and self.kind != "image_folder":
            raise ValueError('image_size, channels and augment are for kind = "image_folder"')
        if self.image_size is not None and min(self.image_size) < 1:
            raise ValueError(f"image_size must be two sizes >= 1, got {list(self.image_size)}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")

    def image_shape(self, model: ModelSpec) -> tuple[int, int, int]:
        """(channels, height, width) images are read at: `model`'s ``image_shape``, which
        ``channels`` and ``image_size``, when given, must equal."""
        shape = model.image_shape
        if shape is None:
            raise ValueError(f'data.kind = "image_folder" needs an image model; [model] kind {model.kind!r}')
        wanted = (
            shape[0] if self.channels is None else self.channels,
            *(shape[1:] if self.image_size is None else self.image_size),
        )
        if wanted != shape:
            raise ValueError(
                f"data.channels / data.image_size give images of {list(wanted)}, "
                f"but the model's image_shape is {list(shape)}"
            )
        return shape


@dataclass(frozen=True, kw_only=True)
class SwarmSection:
    """How this site takes part: its weightage (1-100) scales its merge weight."""

    weightage: int = 1
    seed: int = 0
    merge_timeout: float = 3600.0

    def __post_init__(self) -> None:
        if not 1 <= self.weightage <= 100:
            raise ValueError(f"weightage must be in 1-100, got {self.weightage}")
        if self.merge_timeout <= 0:
            raise ValueError("merge_timeout must be > 0 seconds")


def parse_listen_address(text: str, *, field: str = "metrics.prometheus") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) into (host, port); ValueError names `field`."""
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{field}: expected HOST:PORT such as 127.0.0.1:9464, got {text!r}")
    return host, int(port_text)


@dataclass(frozen=True, kw_only=True)
class MetricsSection:
    """Optional exports of this site's metrics: `prometheus` is ``HOST:PORT`` for a Prometheus
    endpoint at ``http://HOST:PORT/metrics`` (off when unset; port 0 picks a free port)."""

    prometheus: str | None = None

    def __post_init__(self) -> None:
        if self.prometheus is not None:
            parse_listen_address(self.prometheus, field="prometheus")


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """One site's `site.toml`. Relative paths are relative to the file's directory."""

    node: NodeSection
    data: DataSection
    model: ModelSpec
    network: NetworkSection = field(default_factory=NetworkSection)
    ledger: LedgerSection = field(default_factory=LedgerSection)
    training: TrainConfig = field(default_factory=TrainConfig)
    swarm: SwarmSection = field(default_factory=SwarmSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    source: Path | None = None  # the file this was loaded from

    @classmethod
    def load(cls, path: str | Path, overrides: Sequence[str] = ()) -> NodeConfig:
        config = load_config(cls, path, overrides)
        base = Path(path).resolve().parent
        data = config.data
        return dataclasses.replace(
            config,
            source=Path(path),
            node=dataclasses.replace(
                config.node,
                key_file=base / config.node.key_file,
                storage_dir=base / config.node.storage_dir,
            ),
            ledger=dataclasses.replace(config.ledger, genesis=base / config.ledger.genesis),
            data=dataclasses.replace(
                data,
                source=None if data.source is None else _resolve_data(base, data.source),
                test_source=None if data.test_source is None else _resolve_data(base, data.test_source),
            ),
        )


def _resolve_data(base: Path, source: str) -> str:
    # Bundled dataset names stay names; anything that looks like a file is made absolute.
    if source in SKLEARN_DATASETS or Path(source).is_absolute():
        return source
    return str(base / source)
