"""Seeded non-IID site splits in the style of Warnat-Herresthal et al. (2021).

First a stratified held-out global test set is taken that no site ever trains
on; the rest (the pool) is divided among the sites according to a Scenario:

- ``even``:          IID, stratified, equal sizes.
- ``uneven_size``:   IID, stratified, sizes proportional to ``sizes``.
- ``uneven_class``:  site i gets relative size ``sizes[i]`` and a fraction
                     ``positive_fractions[i]`` of positives (label
                     ``positive_class``). The largest split with exactly those
                     ratios is used; pool samples that do not fit (of the class in
                     surplus) are reported as ``unused``.
- ``few_positives``: IID and even, then one site (the last) keeps only
                     ``few_positives`` positives; its other positives go to the
                     other sites in turn.
- ``dirichlet``:     label skew: for each class, site shares ~ Dirichlet(alpha).

Every split is a pure function of (labels, scenario, seed): test, sites and unused
are disjoint and together cover every sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, final, get_args

import numpy as np
import numpy.typing as npt

from .data import Dataset, LabelVector

IndexVector = npt.NDArray[np.int64]
ScenarioKind = Literal["even", "uneven_size", "uneven_class", "few_positives", "dirichlet"]
SCENARIO_KINDS: Final[tuple[str, ...]] = get_args(ScenarioKind)
_MAX_DIRICHLET_DRAWS: Final = 1000


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """How to divide data among ``n_sites`` sites (see the module docstring)."""

    kind: ScenarioKind
    n_sites: int
    test_fraction: float = 0.2
    sizes: tuple[float, ...] | None = None
    positive_fractions: tuple[float, ...] | None = None
    positive_class: int = 1
    few_positives: int = 3
    alpha: float = 0.5
    min_site_samples: int = 4

    def __post_init__(self) -> None:
        if self.kind not in SCENARIO_KINDS:
            raise ValueError(f"scenario kind must be one of {SCENARIO_KINDS}, got {self.kind!r}")
        if self.n_sites < 1:
            raise ValueError("n_sites must be >= 1")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError("test_fraction must be in (0, 1)")
        if self.sizes is not None and (len(self.sizes) != self.n_sites or any(not s > 0 for s in self.sizes)):
            raise ValueError(f"sizes must be {self.n_sites} positive numbers, got {self.sizes}")
        if self.kind == "uneven_size" and self.sizes is None:
            raise ValueError("uneven_size needs sizes")
        if self.kind == "uneven_class":
            fractions = self.positive_fractions
            if fractions is None or len(fractions) != self.n_sites or any(not 0 <= p <= 1 for p in fractions):
                raise ValueError(
                    f"uneven_class needs {self.n_sites} positive_fractions in [0, 1], got {fractions}"
                )
        elif self.positive_fractions is not None:
            raise ValueError("positive_fractions is only for uneven_class")
        if self.few_positives < 0:
            raise ValueError("few_positives must be >= 0")
        if not self.alpha > 0:
            raise ValueError("alpha must be > 0")
        if self.min_site_samples < 1:
            raise ValueError("min_site_samples must be >= 1")


def preset_scenario(name: str, n_sites: int, *, test_fraction: float = 0.2) -> Scenario:
    """Named, paper-style scenarios for ``n_sites`` sites.

    ``uneven_class``: sites go from positive-rich to almost positive-free, as in the
    Nature paper's scenarios where one hospital sees mostly cases and a small one
    hardly any. For 3 sites: relative sizes (0.30, 0.50, 0.20) with 90 %, 15 % and
    2 % positives; for n sites the fractions go linearly from 90 % to 2 % and the
    sizes from 1.0 to 0.4.
    """
    if name == "even":
        return Scenario(kind="even", n_sites=n_sites, test_fraction=test_fraction)
    if name == "uneven_size":
        halving = tuple(float(2 ** (n_sites - 1 - i)) for i in range(n_sites))
        return Scenario(kind="uneven_size", n_sites=n_sites, test_fraction=test_fraction, sizes=halving)
    if name == "uneven_class":
        if n_sites == 3:
            sizes: tuple[float, ...] = (0.30, 0.50, 0.20)
            fractions: tuple[float, ...] = (0.90, 0.15, 0.02)
        elif n_sites == 1:
            sizes, fractions = (1.0,), (0.5,)
        else:
            step = 1.0 / (n_sites - 1)
            fractions = tuple(round(0.90 - (0.90 - 0.02) * i * step, 4) for i in range(n_sites))
            sizes = tuple(round(1.0 - 0.6 * i * step, 4) for i in range(n_sites))
        return Scenario(
            kind="uneven_class",
            n_sites=n_sites,
            test_fraction=test_fraction,
            sizes=sizes,
            positive_fractions=fractions,
        )
    if name == "few_positives":
        return Scenario(kind="few_positives", n_sites=n_sites, test_fraction=test_fraction, few_positives=3)
    if name == "dirichlet":
        return Scenario(kind="dirichlet", n_sites=n_sites, test_fraction=test_fraction, alpha=0.5)
    raise ValueError(f"unknown scenario {name!r}; presets: {', '.join(SCENARIO_KINDS)}")


@final
@dataclass(frozen=True, eq=False)
class SiteSplit:
    """Sorted, disjoint row indices: the held-out test set, each site's rows, and
    pool rows no site received (only ``uneven_class`` leaves any)."""

    scenario: Scenario
    seed: int
    test: IndexVector
    sites: tuple[IndexVector, ...]
    unused: IndexVector = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def site_data(self, data: Dataset, site: int) -> Dataset:
        return data.subset(self.sites[site])

    def test_data(self, data: Dataset) -> Dataset:
        return data.subset(self.test)

    def union_data(self, data: Dataset) -> Dataset:
        """All sites' rows together: what central training may use."""
        return data.subset(np.sort(np.concatenate(self.sites)))

    def class_counts(self, labels: LabelVector, n_classes: int) -> tuple[tuple[int, ...], ...]:
        """Per site (then the test set last) the number of samples of each class."""
        return tuple(
            tuple(int(c) for c in np.bincount(labels[part], minlength=n_classes))
            for part in (*self.sites, self.test)
        )


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder,
    ties to the lower index); the parts sum to ``total``."""
    w = np.asarray(weights, dtype=np.float64)
    if total < 0 or w.size == 0 or (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"cannot apportion {total} by weights {list(weights)}")
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    remainder = total - int(counts.sum())
    order = sorted(range(w.size), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:remainder]:
        counts[i] += 1
    return [int(c) for c in counts]


def _shuffled(rng: np.random.Generator, indices: IndexVector) -> IndexVector:
    return rng.permutation(indices).astype(np.int64)


def _stratified_parts(
    rng: np.random.Generator, labels: LabelVector, pool: IndexVector, weights: Sequence[float]
) -> list[IndexVector]:
    parts: list[list[IndexVector]] = [[] for _ in weights]
    for cls in np.unique(labels[pool]):
        members = _shuffled(rng, pool[labels[pool] == cls])
        start = 0
        for site, count in enumerate(apportion(members.size, weights)):
            parts[site].append(members[start : start + count])
            start += count
    return [np.concatenate(p) if p else np.zeros(0, dtype=np.int64) for p in parts]


def split_sites(labels: LabelVector, scenario: Scenario, seed: int) -> SiteSplit:
    """Split rows ``0..len(labels)-1`` into a held-out test set and per-site sets."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n_sites = scenario.n_sites
    test_parts: list[IndexVector] = []
    pool_parts: list[IndexVector] = []
    for cls in np.unique(labels):
        members = _shuffled(rng, np.flatnonzero(labels == cls).astype(np.int64))
        n_test = round(scenario.test_fraction * members.size)
        test_parts.append(members[:n_test])
        pool_parts.append(members[n_test:])
    test = np.sort(np.concatenate(test_parts))
    pool = _shuffled(rng, np.sort(np.concatenate(pool_parts)))
    unused = np.zeros(0, dtype=np.int64)

    if scenario.kind in ("even", "few_positives"):
        sites = _stratified_parts(rng, labels, pool, [1.0] * n_sites)
        if scenario.kind == "few_positives" and n_sites > 1:
            sites = _limit_positives(labels, sites, scenario.positive_class, scenario.few_positives)
    elif scenario.kind == "uneven_size":
        assert scenario.sizes is not None
        sites = _stratified_parts(rng, labels, pool, scenario.sizes)
    elif scenario.kind == "uneven_class":
        sites, unused = _class_ratio_parts(rng, labels, pool, scenario)
    else:
        sites = _dirichlet_parts(rng, labels, pool, scenario)

    for i, site in enumerate(sites):
        if site.size == 0:
            raise ValueError(f"scenario {scenario.kind} leaves site {i} empty with {labels.size} samples")
    return SiteSplit(
        scenario=scenario,
        seed=seed,
        test=test,
        sites=tuple(np.sort(s) for s in sites),
        unused=np.sort(unused),
    )


def _limit_positives(
    labels: LabelVector, sites: list[IndexVector], positive: int, keep: int
) -> list[IndexVector]:
    last = sites[-1]
    is_positive = labels[last] == positive
    positives, negatives = last[is_positive], last[~is_positive]
    moved = positives[keep:]
    result = [list(s) for s in sites[:-1]]
    for k, index in enumerate(moved):
        result[k % len(result)].append(int(index))
    return [np.array(s, dtype=np.int64) for s in result] + [np.concatenate([negatives, positives[:keep]])]


def _class_ratio_parts(
    rng: np.random.Generator, labels: LabelVector, pool: IndexVector, scenario: Scenario
) -> tuple[list[IndexVector], IndexVector]:
    assert scenario.sizes is not None
    assert scenario.positive_fractions is not None
    sizes = np.asarray(scenario.sizes, dtype=np.float64)
    sizes /= sizes.sum()
    frac = np.asarray(scenario.positive_fractions, dtype=np.float64)
    positives = _shuffled(rng, pool[labels[pool] == scenario.positive_class])
    negatives = _shuffled(rng, pool[labels[pool] != scenario.positive_class])
    want_pos, want_neg = float((sizes * frac).sum()), float((sizes * (1 - frac)).sum())
    # The largest total size c for which every site gets exactly its ratio.
    limits = []
    if want_pos > 0:
        limits.append(positives.size / want_pos)
    if want_neg > 0:
        limits.append(negatives.size / want_neg)
    scale = min(limits)
    n_pos = min(positives.size, int(np.floor(scale * want_pos + 1e-9)))
    n_neg = min(negatives.size, int(np.floor(scale * want_neg + 1e-9)))
    pos_counts = apportion(n_pos, list(sizes * frac)) if n_pos else [0] * len(sizes)
    neg_counts = apportion(n_neg, list(sizes * (1 - frac))) if n_neg else [0] * len(sizes)
    sites: list[IndexVector] = []
    p_start = n_start = 0
    for p_count, n_count in zip(pos_counts, neg_counts, strict=True):
        sites.append(
            np.concatenate([positives[p_start : p_start + p_count], negatives[n_start : n_start + n_count]])
        )
        p_start += p_count
        n_start += n_count
    unused = np.concatenate([positives[p_start:], negatives[n_start:]])
    return sites, unused


def _dirichlet_parts(
    rng: np.random.Generator, labels: LabelVector, pool: IndexVector, scenario: Scenario
) -> list[IndexVector]:
    classes = [_shuffled(rng, pool[labels[pool] == cls]) for cls in np.unique(labels[pool])]
    for _ in range(_MAX_DIRICHLET_DRAWS):
        parts: list[list[IndexVector]] = [[] for _ in range(scenario.n_sites)]
        for members in classes:
            shares = rng.dirichlet(np.full(scenario.n_sites, scenario.alpha))
            start = 0
            for site, count in enumerate(apportion(members.size, list(shares))):
                parts[site].append(members[start : start + count])
                start += count
        sites = [np.concatenate(p) for p in parts]
        if min(s.size for s in sites) >= scenario.min_site_samples:
            return sites
    raise ValueError(
        f"no Dirichlet(alpha={scenario.alpha}) draw in {_MAX_DIRICHLET_DRAWS} gave every one of "
        f"{scenario.n_sites} sites >= {scenario.min_site_samples} samples from {pool.size}; "
        "raise alpha or lower min_site_samples"
    )
