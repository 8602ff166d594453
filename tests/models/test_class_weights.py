"""Balanced class weights, and the pooled class frequencies they come from in a swarm
(`models.preprocess.PooledMoments` with ``class_counts``; a real swarm:
tests/node/test_learning_swarm.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from models.preprocess import FeatureMoments, PooledMoments, statistics_rounds
from models.training import MIN_CLASS_FREQUENCY, balanced_class_weights


def swarm_mean(vectors: list[np.ndarray], weights: list[int]) -> np.ndarray:
    """What the secure merge returns: the weighted mean, as float32."""
    total = sum(w * v.astype(np.float64) for v, w in zip(vectors, weights, strict=True))
    return (total / sum(weights)).astype(np.float32)


def agree(sites: list[PooledMoments], weights: list[int]) -> None:
    while not sites[0].done:
        merged = swarm_mean([s.next_vector() for s in sites], weights)
        for s in sites:
            s.merged(merged)


def test_balanced_weights_are_scikit_learns() -> None:
    labels = np.array([0] * 90 + [1] * 7 + [2] * 3)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(balanced_class_weights(np.bincount(labels)), expected)
    assert balanced_class_weights([5, 0])[1] == 0.0  # an absent class weighs nothing
    assert balanced_class_weights([1.0, MIN_CLASS_FREQUENCY / 2])[1] == 0.0  # nor one below resolution
    with pytest.raises(ValueError, match="class frequencies"):
        balanced_class_weights([0.0, 0.0])


def test_pooled_class_frequencies_are_the_unions_and_identical_at_every_site() -> None:
    rng = np.random.default_rng(3)
    counts = [np.array([90.0, 2.0]), np.array([40.0, 35.0]), np.array([5.0, 60.0])]
    features = [rng.normal(size=(int(c.sum()), 4)) * 10 for c in counts]
    sites = [
        PooledMoments(FeatureMoments.of(x), 9, class_counts=c) for x, c in zip(features, counts, strict=True)
    ]
    assert sites[0].rounds == statistics_rounds(4, 9, 2) == 1 + 2  # ceil(4/9) + ceil((8 + 2)/9)
    agree(sites, [int(c.sum()) for c in counts])
    union = sum(counts)
    pooled = [s.class_frequencies() for s in sites]
    for p in pooled:
        assert p is not None
        np.testing.assert_array_equal(p, pooled[0])  # a function of the merged vectors alone
    assert pooled[0] is not None
    np.testing.assert_allclose(pooled[0], union / union.sum(), atol=1e-6)
    np.testing.assert_allclose(balanced_class_weights(pooled[0]), balanced_class_weights(union), rtol=1e-5)
    # The moments riding in the same vectors are still those of the union.
    expected = FeatureMoments.pool([FeatureMoments.of(x) for x in features])
    np.testing.assert_allclose(sites[0].result().mean, expected.mean, rtol=1e-5, atol=1e-5)


def test_class_frequencies_alone_take_one_merge() -> None:
    """standardize != "swarm" with class_weights = "balanced": no feature moments."""
    none = FeatureMoments(count=0, mean=np.zeros(0), mean_sq=np.zeros(0))
    sites = [PooledMoments(none, 5, class_counts=c) for c in ([3.0, 1.0], [1.0, 3.0])]
    assert sites[0].rounds == 1
    agree(sites, [4, 12])
    frequencies = sites[0].class_frequencies()
    assert frequencies is not None
    np.testing.assert_allclose(frequencies, [6 / 16, 10 / 16], atol=1e-6)
    assert sites[0].result().n_features == 0
