"""A model's structure: the identity the ledger records for the swarm's model.

Two models with the same parameter count can still be different networks (a 4x8 layer
and an 8x4 one, layers in another order, a float64 tensor where float32 was agreed).
Merging their vectors would average unrelated numbers. The structure is every entry of
``model.state_dict()`` in order, with its name, shape and dtype; genesis records it
(`consensus.genesis.TrainingParams.model_structure`) and every site compares its own
model against it at start and before contributing (`swarmnode.model_identity`).

This module imports torch only inside the functions that need a model, so the genesis
(which types one of its fields with `ModelTensor`) stays free of torch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:
    from torch import nn

    from .spec import ModelSpec

MAX_TENSORS: Final = 100_000
MAX_TENSOR_NAME: Final = 512
MAX_DIMS: Final = 8
# torch dtype names (str(torch.float32) without "torch.") a state dict may hold
DTYPES: Final = (
    "float16", "bfloat16", "float32", "float64",
    "uint8", "int8", "int16", "int32", "int64", "bool",
)  # fmt: skip
# How many differences an error lists before "...".
_SHOWN: Final = 5


class StructureMismatch(ValueError):
    """A model's structure differs from the agreed one; the message lists the differences."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ModelTensor:
    """One entry of a model's state dict: name, shape and dtype (``"float32"``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        where = f"model tensor {self.name!r}"
        if not (isinstance(self.name, str) and 1 <= len(self.name) <= MAX_TENSOR_NAME):
            raise ValueError(f"{where}: name must be 1-{MAX_TENSOR_NAME} characters")
        if not (isinstance(self.shape, tuple) and len(self.shape) <= MAX_DIMS):
            raise ValueError(f"{where}: shape must be a tuple of at most {MAX_DIMS} sizes")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in self.shape):
            raise ValueError(f"{where}: sizes must be ints >= 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"{where}: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def floating(self) -> bool:
        """Merged with the parameters (`models.flatten` flattens the floating entries)."""
        return self.dtype.startswith(("float", "bfloat"))

    def describe(self) -> str:
        return f"{self.name} {list(self.shape)} {self.dtype}"


def check_structure_value(structure: Sequence[ModelTensor], path: str) -> None:
    """Raise ValueError (starting with `path`) unless `structure` is a valid record: at most
    MAX_TENSORS entries with distinct names."""
    if len(structure) > MAX_TENSORS:
        raise ValueError(f"{path}: at most {MAX_TENSORS} tensors")
    names = [t.name for t in structure]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: a tensor name is listed twice")


def structure_of(model: nn.Module) -> tuple[ModelTensor, ...]:
    """The structure of ``model`` as it is now: every state-dict entry, in order."""
    return tuple(
        ModelTensor(name=name, shape=tuple(tensor.shape), dtype=str(tensor.dtype).removeprefix("torch."))
        for name, tensor in model.state_dict(keep_vars=True).items()
    )


@functools.lru_cache(maxsize=64)
def spec_structure(spec: ModelSpec) -> tuple[ModelTensor, ...]:
    """The structure every correctly built model of ``spec`` has."""
    import torch

    from .nets import build_network

    return structure_of(build_network(spec, torch.Generator().manual_seed(0)))


def n_merged(structure: Sequence[ModelTensor]) -> int:
    """Length of the flat vector a model of this structure merges (its floating entries)."""
    return sum(t.size for t in structure if t.floating)


def structure_differences(expected: Sequence[ModelTensor], actual: Sequence[ModelTensor]) -> list[str]:
    """What differs, one line per tensor: missing, unexpected, other shape or dtype, other
    order. Empty when the structures are equal."""
    want = {t.name: t for t in expected}
    have = {t.name: t for t in actual}
    lines = [f"missing {t.describe()}" for t in expected if t.name not in have]
    lines += [f"unexpected {t.describe()}" for t in actual if t.name not in want]
    for t in expected:
        other = have.get(t.name)
        if other is not None and other != t:
            lines.append(f"{t.name}: {list(other.shape)} {other.dtype}, agreed {list(t.shape)} {t.dtype}")
    if not lines and [t.name for t in expected] != [t.name for t in actual]:
        first = next(i for i, (a, b) in enumerate(zip(expected, actual, strict=True)) if a != b)
        lines.append(f"tensor order differs from entry {first}: {actual[first].name} where the agreed "
                     f"model has {expected[first].name}")  # fmt: skip
    return lines


def check_structure(expected: Sequence[ModelTensor], actual: Sequence[ModelTensor], where: str) -> None:
    """Raise StructureMismatch naming `where` and the differences unless equal."""
    lines = structure_differences(expected, actual)
    if not lines:
        return
    shown = "; ".join(lines[:_SHOWN]) + (f"; ... ({len(lines) - _SHOWN} more)" if len(lines) > _SHOWN else "")
    raise StructureMismatch(
        f"{where}: the model's structure is not the one the genesis records "
        f"({n_merged(actual)} vs {n_merged(expected)} merged values): {shown}"
    )
