"""Plaintext merges of flat float32 parameter vectors (genesis ``secure = false``).

All functions are pure and deterministic: the same inputs in the same order give
bit-identical float32 output on any machine. Sums are accumulated in float64
one contribution at a time (elementwise IEEE operations, no reassociation), so
the caller must pass contributions in an order every node agrees on (e.g. sorted
by node id). The encrypted default merge (weighted mean under threshold CKKS)
lives in the node; ``weighted_mean`` here is its plaintext reference.

Weights are ``merge_weight(num_samples, weightage)`` = samples x weightage (1-100).
The rules `models.rules.RULES` registers point at `MEAN`, `MEDIAN` and `TRIMMED_MEAN` below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final, NewType

import numpy as np
import numpy.typing as npt

from .rules import RuleMath, rule_named

FloatVector = npt.NDArray[np.float32]
MergeMethod = NewType("MergeMethod", str)  # a rule name the genesis checked against `models.rules.RULES`
MAX_WEIGHTAGE: Final = 100


def merge_weight(num_samples: int, weightage: int = 1) -> int:
    """A contribution's weight: local sample count x site weightage (1-100)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    if isinstance(weightage, bool) or not isinstance(weightage, int) or not 1 <= weightage <= MAX_WEIGHTAGE:
        raise ValueError(f"weightage must be an int in [1, {MAX_WEIGHTAGE}], got {weightage!r}")
    return num_samples * weightage


def _check(vectors: Sequence[FloatVector], weights: Sequence[float]) -> tuple[npt.NDArray[np.float64], int]:
    if not vectors:
        raise ValueError("nothing to merge")
    if len(weights) != len(vectors):
        raise ValueError(f"{len(vectors)} vectors but {len(weights)} weights")
    size = vectors[0].shape[0] if vectors[0].ndim == 1 else -1
    for i, v in enumerate(vectors):
        if not isinstance(v, np.ndarray) or v.dtype != np.float32 or v.ndim != 1:
            raise TypeError(f"contribution {i} is not a 1-D float32 numpy vector")
        if v.shape[0] != size:
            raise ValueError(f"contribution {i} has {v.shape[0]} entries, contribution 0 has {size}")
        if not np.isfinite(v).all():
            raise ValueError(f"contribution {i} holds NaN or infinity")
    w = np.array([float(x) for x in weights], dtype=np.float64)
    if not np.isfinite(w).all() or (w <= 0).any():
        raise ValueError(f"weights must be finite and > 0, got {list(weights)}")
    return w, size


def weighted_mean(vectors: Sequence[FloatVector], weights: Sequence[float]) -> FloatVector:
    """sum_i w_i v_i / sum_i w_i, accumulated in float64 in the given order."""
    w, size = _check(vectors, weights)
    total = math.fsum(w.tolist())
    acc = np.zeros(size, dtype=np.float64)
    for v, wi in zip(vectors, w.tolist(), strict=True):
        acc += v.astype(np.float64) * (wi / total)
    return acc.astype(np.float32)


def coordinate_median(vectors: Sequence[FloatVector], weights: Sequence[float] | None = None) -> FloatVector:
    """Per coordinate, the weighted median (all weights 1 if ``weights`` is None).

    The weighted median is the smallest value whose cumulative weight reaches half of
    the total; when the cumulative weight equals exactly half, the mean of that value
    and the next one (so equal weights give the textbook median). Ties in value are
    ordered by contribution index, so the result does not depend on sort stability.
    """
    w, _ = _check(vectors, [1.0] * len(vectors) if weights is None else weights)
    stacked = np.stack(vectors).astype(np.float64)  # (k, n)
    order = np.argsort(stacked, axis=0, kind="stable")
    values = np.take_along_axis(stacked, order, axis=0)
    cumulative = np.cumsum(w[order], axis=0)
    half = float(w.sum()) / 2.0
    first = np.argmax(cumulative >= half, axis=0)
    columns = np.arange(stacked.shape[1])
    chosen = values[first, columns]
    exactly_half = cumulative[first, columns] == half
    following = values[np.minimum(first + 1, len(vectors) - 1), columns]
    merged: FloatVector = np.where(exactly_half, (chosen + following) / 2.0, chosen).astype(np.float32)
    return merged


def trimmed_mean(
    vectors: Sequence[FloatVector], weights: Sequence[float] | None = None, *, trim_fraction: float = 0.1
) -> FloatVector:
    """Per coordinate, drop the floor(trim_fraction * k) smallest and largest of the k
    values, then take the weighted mean of the rest (with their own weights)."""
    k = len(vectors)
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError("trim_fraction must be in [0, 0.5)")
    w, _ = _check(vectors, [1.0] * k if weights is None else weights)
    cut = math.floor(trim_fraction * k)
    stacked = np.stack(vectors).astype(np.float64)
    order = np.argsort(stacked, axis=0, kind="stable")[cut : k - cut]
    values = np.take_along_axis(stacked, order, axis=0)
    kept_weights = w[order]
    acc = np.zeros(stacked.shape[1], dtype=np.float64)
    norm = np.zeros(stacked.shape[1], dtype=np.float64)
    for row in range(values.shape[0]):  # fixed order: by value rank
        acc += values[row] * kept_weights[row]
        norm += kept_weights[row]
    return (acc / norm).astype(np.float32)


MEAN: Final = RuleMath(merge=lambda vectors, weights, _: weighted_mean(vectors, weights))
MEDIAN: Final = RuleMath(merge=lambda vectors, weights, _: coordinate_median(vectors, weights))
TRIMMED_MEAN: Final = RuleMath(merge=lambda vectors, weights, _: trimmed_mean(vectors, weights))


def merge(
    method: str,
    vectors: Sequence[FloatVector],
    weights: Sequence[float],
    *,
    params: Mapping[str, float] | None = None,
) -> FloatVector:
    """Merge by the registered rule `method` (the genesis ``merge_method``) with its
    parameters `params` (genesis ``merge_params``; defaults for those not given)."""
    rule = rule_named(method)
    return rule.load_math().merge(vectors, weights, rule.settings(params or {}))
