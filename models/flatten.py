"""Stable flatten/unflatten of a model's mergeable state to one float32 vector.

The vector holds every floating-point entry of ``model.state_dict()`` in
state-dict order (module registration order, fixed by the spec): all parameters
plus the floating-point buffers that must be merged with them (batch-norm running
mean and variance). Integer buffers (``num_batches_tracked``) are local
bookkeeping and are left out. Both directions copy float32 values unchanged, so a
round trip is bit-exact.

Every call checks the model's actual layout against the layout its spec implies
(or an explicitly expected one), so a vector is never poured into a different
architecture.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Literal, final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from .nets import SpecNet, build_network
from .spec import ModelSpec

FloatVector = npt.NDArray[np.float32]


class LayoutMismatch(ValueError):
    """A model or a vector does not have the layout its spec (or the caller) expects."""


@final
@dataclass(frozen=True, slots=True)
class TensorSlot:
    """Where one named tensor lives in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int
    kind: Literal["parameter", "buffer"]

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@final
@dataclass(frozen=True, slots=True)
class ParameterLayout:
    """The ordered tensor slots of a model's flat vector."""

    slots: tuple[TensorSlot, ...]

    @property
    def size(self) -> int:
        """Number of float32 entries in the flat vector."""
        return 0 if not self.slots else self.slots[-1].offset + self.slots[-1].size

    def fingerprint(self) -> bytes:
        """SHA-256 over names, kinds and shapes: equal for equal layouts."""
        text = ";".join(f"{s.name}:{s.kind}:{'x'.join(map(str, s.shape))}" for s in self.slots)
        return hashlib.sha256(text.encode()).digest()


def layout_of(model: nn.Module) -> ParameterLayout:
    """The layout of ``model`` as it is now (any nn.Module with float32 state)."""
    parameter_names = {name for name, _ in model.named_parameters()}
    slots: list[TensorSlot] = []
    offset = 0
    for name, tensor in model.state_dict(keep_vars=True).items():
        if not tensor.is_floating_point():
            continue
        if tensor.dtype != torch.float32:
            raise LayoutMismatch(f"tensor {name!r} is {tensor.dtype}; only float32 models can be flattened")
        slot = TensorSlot(
            name=name,
            shape=tuple(tensor.shape),
            offset=offset,
            kind="parameter" if name in parameter_names else "buffer",
        )
        slots.append(slot)
        offset += slot.size
    return ParameterLayout(tuple(slots))


@functools.lru_cache(maxsize=64)
def spec_layout(spec: ModelSpec) -> ParameterLayout:
    """The layout every correctly built model of ``spec`` has."""
    return layout_of(build_network(spec, torch.Generator().manual_seed(0)))


def _check_layout(model: nn.Module, expect: ModelSpec | ParameterLayout | None) -> ParameterLayout:
    if expect is None:
        if not isinstance(model, SpecNet):
            raise LayoutMismatch("a model not built by models.build_model needs an explicit expected layout")
        expect = model.spec
    if isinstance(model, SpecNet) and isinstance(expect, ModelSpec) and model.spec != expect:
        raise LayoutMismatch(f"model was built from {model.spec}, but {expect} was expected")
    expected = spec_layout(expect) if isinstance(expect, ModelSpec) else expect
    actual = layout_of(model)
    if actual != expected:
        raise LayoutMismatch(_describe_difference(actual, expected))
    return expected


def _describe_difference(actual: ParameterLayout, expected: ParameterLayout) -> str:
    for got, want in zip(actual.slots, expected.slots, strict=False):
        if got != want:
            return f"layout mismatch at tensor {got.name!r} {got.shape}: expected {want.name!r} {want.shape}"
    return f"layout mismatch: model has {len(actual.slots)} tensors, expected {len(expected.slots)}"


def flatten(model: nn.Module, expect: ModelSpec | ParameterLayout | None = None) -> FloatVector:
    """Copy the model's mergeable state into a new 1-D float32 numpy vector.

    ``expect`` defaults to the model's own spec (for SpecNet models).
    """
    _check_layout(model, expect)
    state = model.state_dict()
    with torch.no_grad():
        parts = [t.detach().reshape(-1).cpu() for t in state.values() if t.is_floating_point()]
        flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float32)
    return flat.numpy().copy()


def unflatten(
    model: nn.Module, vector: FloatVector, expect: ModelSpec | ParameterLayout | None = None
) -> None:
    """Load ``vector`` (from ``flatten`` or a merge) into ``model`` in place.

    Raises LayoutMismatch if the model's layout differs from the expected one or the
    vector has the wrong length, TypeError if it is not float32, and ValueError if it
    holds NaN or infinity (a broken merge must never be loaded silently).
    """
    layout = _check_layout(model, expect)
    if not isinstance(vector, np.ndarray) or vector.dtype != np.float32:
        raise TypeError(
            f"parameters must be a float32 numpy vector, got {getattr(vector, 'dtype', vector)!r}"
        )
    if vector.ndim != 1 or vector.shape[0] != layout.size:
        raise LayoutMismatch(f"parameter vector has shape {vector.shape}, expected ({layout.size},)")
    if not np.isfinite(vector).all():
        bad = int(np.flatnonzero(~np.isfinite(vector))[0])
        slot = next(s for s in layout.slots if s.offset <= bad < s.offset + s.size)
        raise ValueError(f"parameter vector holds NaN/inf at index {bad} (tensor {slot.name!r})")
    source = torch.from_numpy(np.ascontiguousarray(vector))
    state = model.state_dict()
    with torch.no_grad():
        for slot in layout.slots:
            state[slot.name].copy_(source[slot.offset : slot.offset + slot.size].view(slot.shape))
