"""The model spec: a small frozen value every node builds the same network from.

The spec is stored (by hash) in genesis, so it has one canonical byte form:
JSON with sorted keys, no whitespace, ASCII only, tuples as lists and floats in
Python's shortest round-trip repr. ``spec_hash()`` is SHA-256 over exactly those
bytes. This module deliberately does not use ``crypto.cbor``: ``models`` must not
import ``crypto`` (README, Architecture), and the ledger only ever stores the hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Final, Literal, cast, final, get_args

ModelKind = Literal["logreg", "mlp", "cnn", "resnet18", "densenet121", "factory"]
MODEL_KINDS: Final[tuple[str, ...]] = get_args(ModelKind)
#: Kinds built by MONAI (`models.monai_nets`) for images; for them ``conv_channels`` holds
#: the network's widths, and () means MONAI's standard ones (stored as those values).
MONAI_WIDTHS: Final[dict[str, tuple[int, ...]]] = {
    "resnet18": (64, 128, 256, 512),  # block_inplanes of the four residual stages
    "densenet121": (64, 32),  # init_features, growth_rate
}
# DenseNet-121 halves the resolution 5 times before its pooled head: 32 pixels end at 1.
MONAI_MIN_SIZE: Final[dict[str, int]] = {"resnet18": 1, "densenet121": 32}

#: Bumped whenever the mapping spec -> architecture changes, so an old genesis
#: can never silently build a different network under the same hash.
SPEC_FORMAT: Final = "swarmnode.models.spec/1"

_FIELDS: Final = (
    "batch_norm",
    "conv_channels",
    "dropout",
    "format",
    "hidden",
    "image_shape",
    "kind",
    "n_classes",
    "n_features",
)
# Keys a spec's JSON holds only when they are set, so every spec without them keeps the
# bytes (and the genesis hash) it had before they existed.
_OPTIONAL_FIELDS: Final = ("binary_head", "factory")
_FACTORY_PATTERN: Final = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
MAX_FACTORY: Final = 256


class SpecError(ValueError):
    """A model spec is invalid, or its canonical bytes cannot be decoded."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """Architecture of one network.

    kind:          "logreg" (one linear layer), "mlp" (hidden layers with ReLU and
                   dropout), "cnn" (3x3 conv + 2x2 max-pool blocks, then dense layers),
                   MONAI's 2-D "resnet18" / "densenet121" (`models.monai_nets`) or
                   "factory" (any torch module, built by the function `factory` names).
    n_features:    length of one flat input row (for image kinds: prod(image_shape)).
    n_classes:     number of classes (>= 2); the network has this many output logits
                   unless binary_head.
    hidden:        hidden layer widths ("mlp"; for "cnn" the dense layers after the convs).
    dropout:       dropout probability after each hidden dense layer (0 disables it).
    batch_norm:    batch normalisation after each hidden layer / conv; its running
                   mean and variance are merged with the parameters.
    image_shape:   (channels, height, width) for "cnn" and the MONAI kinds; None otherwise.
    conv_channels: output channels of each conv block ("cnn"); for a MONAI kind its widths
                   (`MONAI_WIDTHS`: resnet18's 4 stage widths, densenet121's init_features
                   and growth_rate), () standing for the standard ones.
    binary_head:   one output logit trained with BCE-with-logits instead of two with softmax
                   (n_classes = 2, built-in kinds; a factory's model decides by its width).
    factory:       "package.module:function" ("factory" only): called as
                   ``function(n_features=..., n_classes=...)`` it returns any torch module
                   taking float32 rows of n_features and returning n_classes logits (or 1
                   for a binary task); `models.nets.build_network` builds it.
    """

    kind: ModelKind
    n_features: int
    n_classes: int
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0
    batch_norm: bool = False
    image_shape: tuple[int, int, int] | None = None
    conv_channels: tuple[int, ...] = ()
    binary_head: bool = False
    factory: str | None = None

    def __post_init__(self) -> None:
        _require(self.kind in MODEL_KINDS, f"kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        _require(_is_int(self.n_features) and self.n_features >= 1, "n_features must be an int >= 1")
        _require(_is_int(self.n_classes) and self.n_classes >= 2, "n_classes must be an int >= 2")
        _require(
            isinstance(self.hidden, tuple) and all(_is_int(h) and h >= 1 for h in self.hidden),
            "hidden must be a tuple of ints >= 1",
        )
        _require(
            isinstance(self.dropout, float) and math.isfinite(self.dropout) and 0.0 <= self.dropout < 1.0,
            "dropout must be a float in [0, 1)",
        )
        _require(isinstance(self.batch_norm, bool), "batch_norm must be a bool")
        _require(
            isinstance(self.conv_channels, tuple) and all(_is_int(c) and c >= 1 for c in self.conv_channels),
            "conv_channels must be a tuple of ints >= 1",
        )
        if self.kind == "logreg":
            _require(self.hidden == (), "logreg has no hidden layers")
            _require(self.dropout == 0.0 and not self.batch_norm, "logreg has no dropout or batch_norm")
        if self.kind == "mlp":
            _require(len(self.hidden) >= 1, "mlp needs at least one hidden layer")
        _require(isinstance(self.binary_head, bool), "binary_head must be a bool")
        _require(not self.binary_head or self.n_classes == 2, "binary_head needs n_classes = 2")
        if self.kind == "factory":
            self._check_factory()
        else:
            _require(self.factory is None, f"factory is only for kind 'factory', not {self.kind}")
        if self.kind in MONAI_WIDTHS:
            self._check_monai()
        if self.kind in ("cnn", *MONAI_WIDTHS):
            shape = self.image_shape
            _require(
                isinstance(shape, tuple) and len(shape) == 3 and all(_is_int(s) and s >= 1 for s in shape),
                f"{self.kind} needs image_shape = (channels, height, width)",
            )
            assert shape is not None
            _require(
                shape[0] * shape[1] * shape[2] == self.n_features,
                f"image_shape {shape} does not multiply to n_features={self.n_features}",
            )
            _require(len(self.conv_channels) >= 1, f"{self.kind} needs at least one conv channel count")
        else:
            _require(
                self.image_shape is None, f"image_shape is only for cnn and image models, not {self.kind}"
            )
            _require(
                self.conv_channels == (), f"conv_channels is only for cnn and image models, not {self.kind}"
            )

    def _check_monai(self) -> None:
        standard = MONAI_WIDTHS[self.kind]
        if self.conv_channels == ():
            object.__setattr__(self, "conv_channels", standard)  # one canonical form per network
        _require(
            len(self.conv_channels) == len(standard),
            f"{self.kind}: conv_channels holds its {len(standard)} widths (standard {list(standard)}), "
            f"got {list(self.conv_channels)}",
        )
        _require(self.hidden == () and self.dropout == 0.0, f"{self.kind} has no hidden or dropout setting")
        # Both MONAI networks normalise every conv with batch norm; saying so keeps the trainer
        # from feeding them one-row batches.
        _require(self.batch_norm, f"{self.kind} always has batch norm: set batch_norm = true")
        smallest = MONAI_MIN_SIZE[self.kind]
        _require(
            self.image_shape is None or min(self.image_shape[1:]) >= smallest,
            f"{self.kind} needs images of at least {smallest} x {smallest} pixels, got {self.image_shape}",
        )

    def _check_factory(self) -> None:
        factory = self.factory
        _require(
            isinstance(factory, str)
            and len(factory) <= MAX_FACTORY
            and _FACTORY_PATTERN.fullmatch(factory) is not None,
            f"factory must be 'package.module:function', got {factory!r}",
        )
        _require(
            self.hidden == () and self.dropout == 0.0 and not self.batch_norm and not self.binary_head,
            "a factory model has no hidden, dropout, batch_norm or binary_head: its function builds it",
        )

    def to_json_dict(self) -> dict[str, object]:
        """Plain JSON-compatible dict (tuples as lists), including the format tag."""
        optional: dict[str, object] = {}
        if self.binary_head:
            optional["binary_head"] = True
        if self.factory is not None:
            optional["factory"] = self.factory
        return optional | {
            "batch_norm": self.batch_norm,
            "conv_channels": list(self.conv_channels),
            "dropout": self.dropout,
            "format": SPEC_FORMAT,
            "hidden": list(self.hidden),
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "kind": self.kind,
            "n_classes": self.n_classes,
            "n_features": self.n_features,
        }

    def canonical_bytes(self) -> bytes:
        """The one byte form of this spec (sorted keys, no whitespace, ASCII)."""
        return json.dumps(
            self.to_json_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode("ascii")

    def spec_hash(self) -> bytes:
        """SHA-256 of ``canonical_bytes()``: the value genesis records."""
        return hashlib.sha256(self.canonical_bytes()).digest()

    @classmethod
    def from_json_dict(cls, data: dict[str, object]) -> ModelSpec:
        """Inverse of ``to_json_dict``; unknown, missing or wrongly typed keys raise SpecError."""
        _require(isinstance(data, dict), "a model spec must be a JSON object")
        keys = set(data) - set(_OPTIONAL_FIELDS)
        _require(
            keys == set(_FIELDS),
            f"model spec keys must be {sorted(_FIELDS)} (and optionally {', '.join(_OPTIONAL_FIELDS)}), "
            f"got {sorted(data)}",
        )
        _require(data.get("binary_head", True) is True, "binary_head is written only as true")
        _require(isinstance(data.get("factory", ""), str), "factory must be a string")
        _require(data["format"] == SPEC_FORMAT, f"unsupported model spec format {data['format']!r}")
        image_shape = data["image_shape"]
        _require(image_shape is None or isinstance(image_shape, list), "image_shape must be a list or null")
        for key in ("hidden", "conv_channels"):
            _require(isinstance(data[key], list), f"{key} must be a list")
        dropout = data["dropout"]
        # JSON writes 0.0 as 0.0, but hand-written specs may say 0; accept ints, store floats.
        _require(_is_int(dropout) or isinstance(dropout, float), "dropout must be a number")
        return cls(
            kind=cast(ModelKind, data["kind"]),
            n_features=cast(int, data["n_features"]),
            n_classes=cast(int, data["n_classes"]),
            hidden=tuple(cast(list[int], data["hidden"])),
            dropout=float(cast(float, dropout)),
            batch_norm=cast(bool, data["batch_norm"]),
            image_shape=None
            if image_shape is None
            else cast(tuple[int, int, int], tuple(cast(list[int], image_shape))),
            conv_channels=tuple(cast(list[int], data["conv_channels"])),
            binary_head="binary_head" in data,
            factory=cast(str | None, data.get("factory")),
        )

    @classmethod
    def from_canonical_bytes(cls, data: bytes) -> ModelSpec:
        """Decode ``canonical_bytes()``; refuses anything that does not re-encode identically."""
        try:
            decoded = json.loads(data.decode("ascii"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SpecError(f"model spec is not ASCII JSON: {exc}") from None
        _require(isinstance(decoded, dict), "a model spec must be a JSON object")
        spec = cls.from_json_dict(cast(dict[str, object], decoded))
        _require(spec.canonical_bytes() == data, "model spec bytes are not in canonical form")
        return spec


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def logistic_regression(n_features: int, n_classes: int = 2) -> ModelSpec:
    """Spec of a multinomial logistic regression (one linear layer + softmax)."""
    return ModelSpec(kind="logreg", n_features=n_features, n_classes=n_classes)


def mlp(
    n_features: int,
    n_classes: int = 2,
    hidden: tuple[int, ...] = (64, 32),
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> ModelSpec:
    """Spec of a multi-layer perceptron for tabular / transcriptome data."""
    return ModelSpec(
        kind="mlp",
        n_features=n_features,
        n_classes=n_classes,
        hidden=hidden,
        dropout=dropout,
        batch_norm=batch_norm,
    )


def factory_model(factory: str, n_features: int, n_classes: int = 2) -> ModelSpec:
    """Spec of any torch module: ``factory`` is "package.module:function" (see ModelSpec)."""
    return ModelSpec(kind="factory", n_features=n_features, n_classes=n_classes, factory=factory)


def small_cnn(
    image_shape: tuple[int, int, int] = (1, 8, 8),
    n_classes: int = 10,
    conv_channels: tuple[int, ...] = (16, 32),
    hidden: tuple[int, ...] = (64,),
    dropout: float = 0.0,
    batch_norm: bool = True,
) -> ModelSpec:
    """Spec of a small CNN for small images such as scikit-learn's 8x8 digits."""
    c, h, w = image_shape
    return ModelSpec(
        kind="cnn",
        n_features=c * h * w,
        n_classes=n_classes,
        hidden=hidden,
        dropout=dropout,
        batch_norm=batch_norm,
        image_shape=image_shape,
        conv_channels=conv_channels,
    )


def monai_image_net(
    kind: Literal["resnet18", "densenet121"],
    image_shape: tuple[int, int, int],
    n_classes: int,
    widths: tuple[int, ...] = (),
) -> ModelSpec:
    """Spec of MONAI's 2-D ResNet-18 or DenseNet-121 (`models.monai_nets`) for images of
    ``image_shape`` = (channels, height, width); ``widths`` () are MONAI's standard ones."""
    c, h, w = image_shape
    return ModelSpec(
        kind=kind,
        n_features=c * h * w,
        n_classes=n_classes,
        batch_norm=True,
        image_shape=image_shape,
        conv_channels=widths,
    )
