"""Swarm-agreed standardisation, the sans-I/O side: per-feature moments, their pooling and
the two-merge agreement (`PooledMoments`) with the merge simulated as the swarm computes it
(row-weighted mean, float32 result, plus the secure merge's ~2e-6 absolute noise)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
import torch

from models.data import Dataset, DatasetError
from models.preprocess import FeatureMoments, PooledMoments, PreprocessConfig, Preprocessor, statistics_rounds
from models.spec import logistic_regression
from models.training import LocalTrainer, TrainConfig

Array = npt.NDArray[np.float64]


def swarm_mean(vectors: Sequence[npt.NDArray[np.float32]], weights: Sequence[int], noise: float) -> Array:
    """What every site gets back from one merge: the weighted mean as float32 (+ CKKS-like noise)."""
    w = np.asarray(weights, dtype=np.float64)
    mean = np.sum([wi * v.astype(np.float64) for wi, v in zip(w, vectors, strict=True)], axis=0) / w.sum()
    rng = np.random.default_rng(len(vectors))
    return (mean + rng.uniform(-noise, noise, mean.shape)).astype(np.float32).astype(np.float64)


def agree(parts: Sequence[Array], vector_size: int, noise: float = 0.0) -> tuple[FeatureMoments, int]:
    """Run the agreement among sites holding `parts`; returns the pooled moments and merge count."""
    sites = [PooledMoments(FeatureMoments.of(p), vector_size) for p in parts]
    weights = [p.shape[0] for p in parts]
    merges = 0
    while not sites[0].done:
        offers = [s.next_vector() for s in sites]
        assert all(o.shape == (vector_size,) and o.dtype == np.float32 for o in offers)
        merged = swarm_mean(offers, weights, noise)
        for s in sites:
            s.merged(merged)
        merges += 1
    results = [s.result() for s in sites]
    for r in results[1:]:  # every site computes the same pooled statistics from the same merges
        np.testing.assert_array_equal(r.mean, results[0].mean)
        np.testing.assert_array_equal(r.mean_sq, results[0].mean_sq)
    return results[0], merges


def uneven_sites(rng: np.random.Generator) -> list[Array]:
    # Breast-cancer-like magnitudes: areas ~1e3 (squares ~1e6 > the merge's 2^20 input bound),
    # fractal dimensions ~0.06 with std ~0.007, and a signed feature.
    scale = np.array([600.0, 0.06, 15.0, 1.0])
    spread = np.array([350.0, 0.007, 3.5, 2.0])
    shift = np.array([0.0, 0.0, 0.0, -3.0])
    return [rng.normal(scale + shift + k * spread, spread, (n, 4)) for k, n in enumerate((7, 60, 311))]


def test_pooled_moments_equal_those_of_the_concatenated_rows() -> None:
    parts = uneven_sites(np.random.default_rng(1))
    everything = FeatureMoments.of(np.concatenate(parts))
    exact = FeatureMoments.pool([FeatureMoments.of(p) for p in parts])
    assert exact.count == everything.count == 378
    np.testing.assert_allclose(exact.mean, everything.mean, rtol=1e-12)
    np.testing.assert_allclose(exact.mean_sq, everything.mean_sq, rtol=1e-12)

    for noise in (0.0, 2e-6):  # the secure merge's absolute error on its O(1) inputs
        pooled, merges = agree(parts, vector_size=100, noise=noise)
        assert merges == statistics_rounds(4, 100) == 2
        np.testing.assert_allclose(pooled.mean, everything.mean, rtol=1e-5)
        np.testing.assert_allclose(pooled.mean_sq, everything.mean_sq, rtol=1e-5)
        mean, scale = pooled.standardization()
        x = np.concatenate(parts)
        np.testing.assert_allclose(mean[0], x.mean(axis=0), rtol=1e-5)
        np.testing.assert_allclose(scale[0], x.std(axis=0), rtol=1e-3)


def test_a_site_with_a_constant_feature_and_a_feature_constant_everywhere() -> None:
    rng = np.random.default_rng(2)
    parts = [rng.normal(10.0, 2.0, (n, 3)) for n in (5, 40, 90)]
    parts[0][:, 1] = 7.5  # constant at one (small) site only
    for p in parts:
        p[:, 2] = 3.25  # constant at every site
    pooled, _ = agree(parts, vector_size=64, noise=2e-6)
    x = np.concatenate(parts)
    np.testing.assert_allclose(pooled.mean, x.mean(axis=0), rtol=1e-5)
    mean, scale = pooled.standardization()
    np.testing.assert_allclose(scale[0, :2], x.std(axis=0)[:2], rtol=1e-3)
    assert scale[0, 2] == 1.0  # no variance: centred, not divided by (almost) zero
    assert abs(mean[0, 2] - 3.25) < 1e-5


def test_packing_spans_several_vectors_when_the_model_is_small() -> None:
    rng = np.random.default_rng(3)
    d, size = 10, 7  # 2 d = 20 moments > 7 values per merge vector
    parts = [rng.normal(rng.uniform(-50, 50, d), rng.uniform(0.1, 20, d), (n, d)) for n in (3, 17, 80)]
    assert statistics_rounds(d, size) == 2 + 3  # ceil(10 / 7) scale vectors + ceil(20 / 7) moment vectors
    pooled, merges = agree(parts, vector_size=size, noise=2e-6)
    assert merges == 5
    x = np.concatenate(parts)
    np.testing.assert_allclose(pooled.mean, x.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pooled.standardization()[1][0], x.std(axis=0), rtol=1e-3)
    # and one value per vector is the extreme case
    pooled, merges = agree(parts, vector_size=1)
    assert merges == 3 * d
    np.testing.assert_allclose(pooled.mean, x.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_agreement_steps_and_misuse() -> None:
    site = PooledMoments(FeatureMoments.of(np.ones((4, 3))), vector_size=5)
    assert (site.rounds, site.index, site.done) == (1 + 2, 0, False)  # ceil(3 / 5) + ceil(6 / 5)
    with pytest.raises(RuntimeError, match="not agreed"):
        site.result()
    with pytest.raises(ValueError, match="expected 5"):
        site.merged(np.zeros(4, dtype=np.float32))
    for _ in range(3):
        site.merged(site.next_vector())
    assert site.done
    np.testing.assert_allclose(site.result().mean, [1.0, 1.0, 1.0])
    with pytest.raises(RuntimeError, match="already agreed"):
        site.next_vector()
    with pytest.raises(ValueError, match="must be >= 1"):
        statistics_rounds(0, 5)


def test_a_site_in_other_units_is_refused_with_the_feature_named() -> None:
    # The public scale is the mean of the sites' log2 magnitudes; a site whose values are
    # 2^30 times larger (e.g. another unit) would overflow the secure merge's input bound.
    small = PooledMoments(FeatureMoments.of(np.full((10, 2), 1.0)), vector_size=8, source="site-a")
    huge = PooledMoments(FeatureMoments.of(np.full((10, 2), 2.0**60)), vector_size=8, source="site-b")
    merged = swarm_mean([small.next_vector(), huge.next_vector()], [10, 10], 0.0)
    small.merged(merged)
    with pytest.raises(DatasetError, match=r"site-b: feature column 0's mean .* apply log1p or rescale"):
        huge.merged(merged)


def test_preprocess_config_modes() -> None:
    assert PreprocessConfig().mode == "swarm"
    assert PreprocessConfig(standardize=True).mode == "local"  # older site.toml files
    assert PreprocessConfig(standardize=False).mode == "none"
    with pytest.raises(ValueError, match="standardize must be one of swarm, local, none, got 'global'"):
        PreprocessConfig(standardize="global")  # type: ignore[arg-type]


def test_local_trainer_switches_to_pooled_statistics() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(100.0, 10.0, (60, 3)).astype(np.float32)
    data = Dataset(
        features=x,
        labels=(x[:, 0] > 100).astype(np.int64),
        feature_names=("a", "b", "c"),
        class_names=("lo", "hi"),
        source="synthetic",
    )
    trainer = LocalTrainer(
        logistic_regression(3, 2),
        data,
        TrainConfig(validation_fraction=0.0),
        generator=torch.Generator().manual_seed(0),
    )
    np.testing.assert_allclose(trainer.preprocessor.mean[0], x.mean(axis=0), rtol=1e-5)  # own, until pooled
    own = trainer.feature_moments()
    assert own.count == 60
    pooled = FeatureMoments(
        count=0, mean=np.array([90.0, 100.0, 110.0]), mean_sq=np.array([8200.0, 1e4, 12200.0])
    )
    trainer.standardize_with(pooled)
    np.testing.assert_allclose(trainer.preprocessor.mean[0], [90.0, 100.0, 110.0])
    np.testing.assert_allclose(trainer.preprocessor.scale[0], [10.0, 1.0, 10.0])  # var 0 -> 1
    expected = Preprocessor.fit(data, PreprocessConfig(standardize="none")).transform(data).features
    expected = (expected - np.array([90.0, 100.0, 110.0])) / np.array([10.0, 1.0, 10.0])
    assert trainer.evaluate(data).n_samples == 60
    np.testing.assert_allclose(trainer._x.numpy(), expected, rtol=1e-5, atol=1e-5)
