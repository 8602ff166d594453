"""Plaintext merges: weighted mean, coordinate median, trimmed mean."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models.merge import coordinate_median, merge, merge_weight, trimmed_mean, weighted_mean


def _v(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_merge_weight_is_samples_times_weightage() -> None:
    assert merge_weight(120, 3) == 360
    for bad in [(0, 1), (10, 0), (10, 101), (True, 1), (10, 1.5)]:
        with pytest.raises(ValueError, match="must be an int"):
            merge_weight(*bad)  # type: ignore[arg-type]


def test_weighted_mean_matches_the_formula() -> None:
    vectors = [_v(1, 2, 3), _v(3, 2, 1), _v(0, 0, 9)]
    merged = weighted_mean(vectors, [1, 3, 4])
    expected = (1 * vectors[0].astype(np.float64) + 3 * vectors[1] + 4 * vectors[2]) / 8
    assert merged.dtype == np.float32
    assert np.array_equal(merged, expected.astype(np.float32))
    assert np.array_equal(merge("mean", vectors, [1, 3, 4]), merged)


def test_median_is_the_textbook_median_for_equal_weights_and_resists_an_outlier() -> None:
    vectors = [_v(1, 10), _v(2, 20), _v(3, 30), _v(1000, -1000)]
    assert np.array_equal(coordinate_median(vectors), _v(2.5, 15))
    assert np.array_equal(coordinate_median(vectors[:3]), _v(2, 20))
    # Weighted: one contribution holding more than half the weight decides.
    assert np.array_equal(coordinate_median(vectors, [1, 1, 10, 1]), _v(3, 30))
    assert np.array_equal(merge("median", vectors, [1, 1, 1, 1]), coordinate_median(vectors))


def test_trimmed_mean_drops_extremes_per_coordinate() -> None:
    vectors = [_v(1, 5), _v(2, 6), _v(3, 7), _v(4, 8), _v(100, -100)]
    assert np.array_equal(trimmed_mean(vectors, trim_fraction=0.2), _v(3, 6))
    # Kept values are averaged with their own weights: coordinate 0 keeps 2, 3, 4.
    weighted = trimmed_mean(vectors, [1, 1, 2, 1, 1], trim_fraction=0.2)
    assert weighted[0] == np.float32((2 + 6 + 4) / 4)
    assert np.array_equal(trimmed_mean(vectors, trim_fraction=0.0), weighted_mean(vectors, [1] * 5))
    with pytest.raises(ValueError, match="trim_fraction"):
        trimmed_mean(vectors, trim_fraction=0.5)


def test_merges_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="nothing"):
        weighted_mean([], [])
    with pytest.raises(ValueError, match="weights"):
        weighted_mean([_v(1)], [1, 2])
    with pytest.raises(ValueError, match="> 0"):
        weighted_mean([_v(1), _v(2)], [1, 0])
    with pytest.raises(ValueError, match="entries"):
        weighted_mean([_v(1), _v(1, 2)], [1, 1])
    with pytest.raises(TypeError, match="float32"):
        coordinate_median([np.zeros(2)], [1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="NaN"):
        trimmed_mean([_v(np.nan)], [1])
    with pytest.raises(ValueError, match="unknown merge method"):
        merge("krum", [_v(1)], [1])  # type: ignore[arg-type]


vectors_strategy = st.integers(1, 6).flatmap(
    lambda k: st.lists(
        hnp.arrays(np.float32, 5, elements=st.floats(-1e6, 1e6, width=32)), min_size=k, max_size=k
    )
)


@settings(max_examples=80, deadline=None)
@given(vectors=vectors_strategy, data=st.data())
def test_merges_are_deterministic_and_stay_within_the_inputs_range(
    vectors: list[np.ndarray], data: st.DataObject
) -> None:
    weights = data.draw(st.lists(st.integers(1, 1000), min_size=len(vectors), max_size=len(vectors)))
    low = np.min(np.stack(vectors), axis=0)
    high = np.max(np.stack(vectors), axis=0)
    for method in ("mean", "median", "trimmed_mean"):
        first = merge(method, vectors, weights)
        again = merge(method, [v.copy() for v in vectors], list(weights))
        assert first.tobytes() == again.tobytes()
        assert np.all(first >= low)
        assert np.all(first <= high)
