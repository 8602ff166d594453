"""Site splits: deterministic, disjoint, covering, with the requested ratios."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data import load_sklearn
from models.splits import SCENARIO_KINDS, Scenario, SiteSplit, apportion, preset_scenario, split_sites

CANCER = load_sklearn("breast_cancer", positive_class="malignant")
DIGITS = load_sklearn("digits")


def _assert_partition(split: SiteSplit, n: int) -> None:
    parts = [split.test, *split.sites, split.unused]
    joined = np.concatenate(parts)
    assert joined.size == n, "test + sites + unused must cover every row exactly once"
    assert np.array_equal(np.sort(joined), np.arange(n))
    for part in parts:
        assert np.array_equal(part, np.sort(part))


@pytest.mark.parametrize("name", SCENARIO_KINDS)
@pytest.mark.parametrize("n_sites", [2, 3, 5])
def test_presets_are_deterministic_disjoint_and_covering(name: str, n_sites: int) -> None:
    scenario = preset_scenario(name, n_sites)
    first = split_sites(CANCER.labels, scenario, seed=11)
    again = split_sites(CANCER.labels, scenario, seed=11)
    other = split_sites(CANCER.labels, scenario, seed=12)
    _assert_partition(first, CANCER.n_samples)
    assert len(first.sites) == n_sites
    for a, b in zip(
        (first.test, *first.sites, first.unused), (again.test, *again.sites, again.unused), strict=True
    ):
        assert np.array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first.sites, other.sites, strict=True))
    # Only the class-ratio scenario may leave rows unused.
    if name != "uneven_class":
        assert first.unused.size == 0


def test_held_out_test_set_is_stratified_with_the_requested_fraction() -> None:
    split = split_sites(DIGITS.labels, preset_scenario("dirichlet", 4, test_fraction=0.25), seed=3)
    assert abs(split.test.size - 0.25 * DIGITS.n_samples) <= DIGITS.n_classes
    test_counts = np.bincount(DIGITS.labels[split.test], minlength=10)
    all_counts = np.bincount(DIGITS.labels, minlength=10)
    assert np.all(np.abs(test_counts - 0.25 * all_counts) <= 0.5)


def test_even_and_uneven_sizes_follow_the_requested_proportions() -> None:
    even = split_sites(CANCER.labels, preset_scenario("even", 4), seed=0)
    sizes = [s.size for s in even.sites]
    assert max(sizes) - min(sizes) <= 2  # one rounding step per class
    uneven = split_sites(
        CANCER.labels, Scenario(kind="uneven_size", n_sites=3, sizes=(5.0, 3.0, 2.0)), seed=0
    )
    pool = sum(s.size for s in uneven.sites)
    for site, share in zip(uneven.sites, (0.5, 0.3, 0.2), strict=True):
        assert abs(site.size - share * pool) <= 2
        # IID: each site keeps the pool's class ratio.
        assert abs(CANCER.labels[site].mean() - CANCER.labels[np.concatenate(uneven.sites)].mean()) < 0.02


def test_uneven_class_ratios_are_met_exactly_up_to_one_sample() -> None:
    scenario = Scenario(
        kind="uneven_class", n_sites=3, sizes=(0.4, 0.4, 0.2), positive_fractions=(0.8, 0.3, 0.05)
    )
    split = split_sites(CANCER.labels, scenario, seed=5)
    _assert_partition(split, CANCER.n_samples)
    for site, fraction in zip(split.sites, (0.8, 0.3, 0.05), strict=True):
        positives = int(CANCER.labels[site].sum())
        assert abs(positives - fraction * site.size) <= 1.0, (positives, site.size, fraction)
    total = sum(s.size for s in split.sites)
    for site, share in zip(split.sites, (0.4, 0.4, 0.2), strict=True):
        assert abs(site.size - share * total) <= 2
    # The class in short supply is used up completely.
    pool_pos = int(CANCER.labels[np.concatenate([*split.sites, split.unused])].sum())
    used_pos = sum(int(CANCER.labels[s].sum()) for s in split.sites)
    pool_neg = split.unused.size + total - pool_pos
    assert used_pos == pool_pos or total - used_pos == pool_neg


def test_preset_uneven_class_has_one_small_site_with_almost_no_positives() -> None:
    split = split_sites(CANCER.labels, preset_scenario("uneven_class", 3), seed=0)
    counts = split.class_counts(CANCER.labels, 2)
    (a_neg, a_pos), (b_neg, b_pos), (c_neg, c_pos), _test = counts
    assert a_pos / (a_neg + a_pos) == pytest.approx(0.90, abs=0.01)
    assert b_pos / (b_neg + b_pos) == pytest.approx(0.15, abs=0.01)
    assert 1 <= c_pos <= 3
    assert c_neg + c_pos < min(a_neg + a_pos, b_neg + b_pos)


def test_few_positives_keeps_exactly_k_positives_at_the_last_site() -> None:
    split = split_sites(CANCER.labels, Scenario(kind="few_positives", n_sites=4, few_positives=2), seed=9)
    _assert_partition(split, CANCER.n_samples)
    assert int(CANCER.labels[split.sites[-1]].sum()) == 2
    assert all(int(CANCER.labels[s].sum()) > 30 for s in split.sites[:-1])


def test_dirichlet_small_alpha_skews_labels_more_than_large_alpha() -> None:
    def skew(alpha: float) -> float:
        split = split_sites(DIGITS.labels, Scenario(kind="dirichlet", n_sites=5, alpha=alpha), seed=4)
        _assert_partition(split, DIGITS.n_samples)
        shares = np.array([np.bincount(DIGITS.labels[s], minlength=10) / s.size for s in split.sites])
        return float(np.abs(shares - 0.1).sum())

    assert skew(0.1) > 2 * skew(100.0)


def test_dirichlet_that_cannot_fill_every_site_says_so() -> None:
    labels = np.array([0, 1] * 5)
    scenario = Scenario(kind="dirichlet", n_sites=4, alpha=0.01, min_site_samples=3, test_fraction=0.1)
    with pytest.raises(ValueError, match="raise alpha"):
        split_sites(labels, scenario, seed=0)


def test_invalid_scenarios_are_refused() -> None:
    with pytest.raises(ValueError, match="positive_fractions"):
        Scenario(kind="uneven_class", n_sites=2, sizes=(1.0, 1.0))
    with pytest.raises(ValueError, match="sizes"):
        Scenario(kind="uneven_size", n_sites=2, sizes=(1.0,))
    with pytest.raises(ValueError, match="test_fraction"):
        Scenario(kind="even", n_sites=2, test_fraction=1.0)
    with pytest.raises(ValueError, match="unknown scenario"):
        preset_scenario("iid", 3)


@settings(max_examples=60, deadline=None)
@given(total=st.integers(0, 10_000), weights=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=8))
def test_apportion_sums_to_total_and_is_within_one_of_exact(total: int, weights: list[float]) -> None:
    counts = apportion(total, weights)
    assert sum(counts) == total
    exact = [total * w / sum(weights) for w in weights]
    assert all(abs(c - e) < 1.0 + 1e-9 for c, e in zip(counts, exact, strict=True))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_sites=st.integers(1, 6), kind=st.sampled_from(["even", "dirichlet"]))
def test_random_seeds_always_partition(seed: int, n_sites: int, kind: str) -> None:
    scenario = preset_scenario(kind, n_sites)
    _assert_partition(split_sites(CANCER.labels, scenario, seed=seed), CANCER.n_samples)
