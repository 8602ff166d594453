"""Networks built from a ModelSpec, initialised from an explicit torch.Generator.

Construction never touches torch's global RNG: layers are created on the meta
device (no allocation, no default init), materialised with ``to_empty`` and then
initialised with the caller's generator using the same distributions as torch's
defaults. Dropout is ``SeededDropout``, which draws its masks from a generator the
training loop binds (``bind_generator``), so training is reproducible without
``torch.manual_seed``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import cast, final

import torch
from torch import nn

from .monai_nets import monai_network
from .spec import MONAI_WIDTHS, ModelSpec, SpecError


@final
class SeededDropout(nn.Module):
    """Inverted dropout whose masks come from an explicitly bound torch.Generator."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.generator is None:
            raise RuntimeError(
                "SeededDropout in training mode needs a generator: call models.nets.bind_generator(model, g)"
            )
        # the generator is a CPU one: draw there, use on x's device
        keep = (torch.rand(x.shape, generator=self.generator, dtype=x.dtype) >= self.p).to(x.device)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


@final
class SpecNet(nn.Module):
    """The network for one ModelSpec. Input: float32 rows of length spec.n_features."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.features: nn.Sequential | None = None
        self.backbone: nn.Module | None = None  # a MONAI network (`models.monai_nets`)
        self.head: nn.Sequential | None = None
        if spec.kind in MONAI_WIDTHS:
            self.backbone = monai_network(spec)
            return
        if spec.kind == "cnn":
            self.features, flat = _conv_blocks(spec)
        else:
            flat = spec.n_features
        self.head = _dense_layers(spec, flat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.image_shape is not None:
            x = x.reshape(x.shape[0], *self.spec.image_shape)
        if self.backbone is not None:
            logits: torch.Tensor = self.backbone(x)
            return logits
        if self.features is not None:
            x = self.features(x).flatten(1)
        assert self.head is not None
        out: torch.Tensor = self.head(x)
        return out


def _conv_blocks(spec: ModelSpec) -> tuple[nn.Sequential, int]:
    assert spec.image_shape is not None
    channels, height, width = spec.image_shape
    layers: list[nn.Module] = []
    for out_channels in spec.conv_channels:
        layers.append(nn.Conv2d(channels, out_channels, kernel_size=3, padding=1))
        if spec.batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU())
        # Halve the resolution while it stays >= 1; an 8x8 input with two blocks ends at 2x2.
        if height >= 2 and width >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = out_channels
    return nn.Sequential(*layers), channels * height * width


def _dense_layers(spec: ModelSpec, n_in: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in spec.hidden:
        layers.append(nn.Linear(n_in, width))
        if spec.batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        if spec.dropout > 0.0:
            layers.append(SeededDropout(spec.dropout))
        n_in = width
    layers.append(nn.Linear(n_in, 1 if spec.binary_head else spec.n_classes))
    return nn.Sequential(*layers)


def build_model(spec: ModelSpec, generator: torch.Generator) -> SpecNet:
    """Build and initialise the network for ``spec`` (float32, CPU, train mode).

    Equal spec and equal generator state give bit-identical parameters; torch's
    global RNG is neither read nor advanced. A "factory" spec is built by `build_network`.
    """
    if spec.kind == "factory":
        raise SpecError(f"a factory model ({spec.factory}) is built by models.nets.build_network")
    with torch.device("meta"):
        model = SpecNet(spec)
    model = model.to_empty(device="cpu")
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            _init_like_torch_default(module.weight, module.bias, generator)
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.reset_running_stats()
    bind_generator(model, generator)
    return model


def build_network(spec: ModelSpec, generator: torch.Generator) -> nn.Module:
    """The network for any spec: `build_model` for the built-in kinds; for "factory" the
    user's function, called with torch's global RNG seeded from ``generator`` inside
    ``torch.random.fork_rng`` (restored afterwards), so equal generators give equal models
    and the caller's global RNG is untouched."""
    if spec.kind != "factory":
        return build_model(spec, generator)
    function = load_factory(spec)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = function(n_features=spec.n_features, n_classes=spec.n_classes)
    if not isinstance(model, nn.Module):
        raise SpecError(f"model.factory {spec.factory!r} returned {type(model).__name__}, not a torch module")
    model.train()
    bind_generator(model, generator)
    return model


def load_factory(spec: ModelSpec) -> Callable[..., object]:
    """The function ``spec.factory`` names ("package.module:function"), imported."""
    assert spec.factory is not None
    return import_callable(spec.factory, "model.factory")


def import_callable(path: str, key: str) -> Callable[..., object]:
    """The function `path` ("package.module:function") names, imported; a `SpecError` naming
    the setting `key` if it cannot be."""
    module_name, _, attribute = path.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"{key} {path!r}: cannot import {module_name!r} ({exc})") from None
    for part in attribute.split("."):
        if not part or not hasattr(target, part):
            raise SpecError(f"{key} {path!r}: {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise SpecError(f"{key} {path!r} is not a function")
    return cast(Callable[..., object], target)


def _init_like_torch_default(
    weight: torch.Tensor, bias: torch.Tensor | None, generator: torch.Generator
) -> None:
    # Same distributions as nn.Linear/nn.Conv2d.reset_parameters, but seeded explicitly.
    with torch.no_grad():
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        if bias is not None:
            fan_in = weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(bias, -bound, bound, generator=generator)


def bind_generator(model: nn.Module, generator: torch.Generator) -> None:
    """Make every SeededDropout in ``model`` draw its masks from ``generator``."""
    for module in model.modules():
        if isinstance(module, SeededDropout):
            module.generator = generator
