"""Preprocessing: feature selection and log1p (local, no statistics needed) and
standardisation with either the swarm's pooled statistics (``"swarm"``: every site
shares only a securely merged per-feature mean and mean of squares, see
`FeatureMoments` and `PooledMoments`), this site's own (``"local"``) or none.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final, Literal, final, get_args

import numpy as np
import numpy.typing as npt

from .data import Dataset, DatasetError, FloatMatrix, FloatVector, MissingValueError, missing_report

Standardize = Literal["swarm", "local", "none"]
STANDARDIZE_MODES: Final[tuple[str, ...]] = get_args(Standardize)
Impute = Literal["none", "mean"]
IMPUTE_MODES: Final[tuple[str, ...]] = get_args(Impute)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PreprocessConfig:
    """What each site does to its data before training.

    genes:       if set, keep exactly these features in this order (a list all sites
                 agreed on, e.g. from ``agree_on_genes``); missing ones are an error.
    log1p:       apply log(1 + x) (expression counts; negative values are an error).
    standardize: subtract a per-feature mean and divide by a standard deviation:
                 ``"swarm"`` (default): the swarm's pooled statistics, agreed through
                 secure merges before training (`FeatureMoments`; a site on its own,
                 e.g. a local baseline, uses its own until they are set);
                 ``"local"``: this site's own training rows; ``"none"``: no scaling.
                 ``true`` / ``false`` (older site.toml files) mean ``"local"`` / ``"none"``.
    impute:      ``"none"`` (default): a missing value (an empty or NaN cell) is refused,
                 counted per column; ``"mean"``: it is replaced by its feature's
                 standardisation mean (with ``"swarm"`` the swarm's pooled mean of the
                 values present, identical at every site; with ``"local"`` this site's),
                 i.e. it is 0 after standardising. Needs standardize ``"swarm"`` or ``"local"``.
    """

    genes: tuple[str, ...] | None = None
    log1p: bool = False
    standardize: Standardize | bool = "swarm"
    impute: Impute = "none"

    def __post_init__(self) -> None:
        if isinstance(self.standardize, bool):
            object.__setattr__(self, "standardize", "local" if self.standardize else "none")
        if self.standardize not in STANDARDIZE_MODES:
            raise ValueError(
                f"standardize must be one of {', '.join(STANDARDIZE_MODES)}, got {self.standardize!r}"
            )
        if self.impute not in IMPUTE_MODES:
            raise ValueError(f"impute must be one of {', '.join(IMPUTE_MODES)}, got {self.impute!r}")
        if self.impute == "mean" and self.standardize == "none":
            raise ValueError(
                'impute = "mean" takes the standardisation means: set standardize = "swarm" or "local"'
            )

    @property
    def mode(self) -> Standardize:
        """The standardisation mode (never a bool: those are mapped in ``__post_init__``)."""
        assert not isinstance(self.standardize, bool)
        return self.standardize


# Why the pooled statistics take two merges. The secure merge bounds every input by 2^20 in
# absolute value, has an absolute error of ~2e-6, and its output is float32. Raw moments break
# that: breast_cancer's "worst area" has E[x^2] ~ 1.1e6 > 2^20, while a small feature's variance
# (~5e-5) would drown in 2e-6. So the first merge agrees on a public power-of-two scale per
# feature (the weighted mean of the sites' log2 root mean square, rounded), and the second
# merges mean / 2^s and E[x^2] / 2^2s, which are then O(1) at every site whose scale is within
# ~2^10 of the others'.
SCALE_SLOTS_PER_FEATURE: Final = 1
MOMENT_SLOTS_PER_FEATURE: Final = 2  # mean and mean of squares
MAX_SCALED_MOMENT: Final = float(2**20)  # the secure merge's input bound
# A pooled variance below this share of the mean square is not resolved by the merge's
# precision: the feature is treated as constant (centred, not scaled), as for a constant one.
RELATIVE_VARIANCE_FLOOR: Final = 1e-6
_LOG2_RMS_RANGE: Final = 120.0


@final
@dataclass(frozen=True, eq=False)
class FeatureMoments:
    """Per-feature first and second moments of ``count`` rows (float64).

    ``pool`` combines sites exactly as the swarm's weighted mean does (weight = rows),
    so the pooled moments equal those of the concatenated rows.
    """

    count: int
    mean: npt.NDArray[np.float64]
    mean_sq: npt.NDArray[np.float64]

    @classmethod
    def of(
        cls, features: npt.NDArray[np.floating], *, names: Sequence[str] | None = None, source: str = "site"
    ) -> FeatureMoments:
        """The moments of the values present: a NaN (missing) value is left out of its
        feature's mean and mean square. A feature with no value present is refused."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 1:
            raise DatasetError(f"moments need a non-empty 2-D array, got shape {x.shape}")
        present = ~np.isnan(x)
        if present.all():
            return cls(count=int(x.shape[0]), mean=x.mean(axis=0), mean_sq=(x * x).mean(axis=0))
        empty = np.flatnonzero(~present.any(axis=0))
        if empty.size:
            j = int(empty[0])
            column = names[j] if names is not None else f"column {j}"
            raise MissingValueError(
                f"{source}: feature {column!r} has no value in any of the {x.shape[0]} rows "
                f"({empty.size} such feature(s)): nothing to contribute to the swarm's statistics"
            )
        counts = present.sum(axis=0)
        filled = np.where(present, x, 0.0)
        return cls(
            count=int(x.shape[0]),
            mean=filled.sum(axis=0) / counts,
            mean_sq=(filled * filled).sum(axis=0) / counts,
        )

    @classmethod
    def pool(cls, parts: Sequence[FeatureMoments]) -> FeatureMoments:
        """The moments of all parts' rows together (a row-weighted mean of the parts')."""
        if not parts:
            raise ValueError("cannot pool zero sites' moments")
        total = sum(p.count for p in parts)
        mean = np.sum([p.mean * p.count for p in parts], axis=0) / total
        mean_sq = np.sum([p.mean_sq * p.count for p in parts], axis=0) / total
        return cls(count=total, mean=mean, mean_sq=mean_sq)

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    def standardization(self) -> tuple[FloatMatrix, FloatMatrix]:
        """(mean, scale) as 1 x d float32 rows: scale = sqrt(E[x^2] - mean^2), or 1 where
        that variance is below the merge's resolution (`RELATIVE_VARIANCE_FLOOR`) or 0."""
        variance = self.mean_sq - self.mean * self.mean
        resolved = variance > np.maximum(RELATIVE_VARIANCE_FLOOR * self.mean_sq, 1e-24)
        scale = np.where(resolved, np.sqrt(np.maximum(variance, 0.0)), 1.0)
        return self.mean[None, :].astype(np.float32), scale[None, :].astype(np.float32)


def _vectors_for(n_values: int, vector_size: int) -> int:
    return -(-n_values // vector_size)


def statistics_rounds(n_features: int, vector_size: int, n_classes: int = 0) -> int:
    """How many merge vectors of ``vector_size`` (the model's parameter count) agreeing on
    the pooled statistics of ``n_features`` features (0: none, only class frequencies) and,
    with ``n_classes``, the pooled class frequencies takes: the scale merge's ceil(d / size)
    plus the moment merge's ceil((2 d + n_classes) / size)."""
    if n_features < 0 or n_classes < 0 or n_features + n_classes < 1 or vector_size < 1:
        raise ValueError("vector_size and n_features or n_classes must be >= 1")
    return _vectors_for(n_features * SCALE_SLOTS_PER_FEATURE, vector_size) + _vectors_for(
        n_features * MOMENT_SLOTS_PER_FEATURE + n_classes, vector_size
    )


def _pack(values: npt.NDArray[np.float64], vector_size: int) -> list[FloatVector]:
    count = _vectors_for(values.size, vector_size)
    padded = np.zeros(count * vector_size, dtype=np.float32)
    padded[: values.size] = values.astype(np.float32)
    return [padded[i * vector_size : (i + 1) * vector_size].copy() for i in range(count)]


def _unpack(vectors: Sequence[npt.ArrayLike], n_values: int) -> npt.NDArray[np.float64]:
    flat = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in vectors])
    if flat.size < n_values:
        raise ValueError(f"{flat.size} merged statistics values, need {n_values}")
    return flat[:n_values]


@final
class PooledMoments:
    """One site's side of agreeing on the swarm's pooled moments (sans-I/O).

    ::

        agreement = PooledMoments(site_moments, vector_size=n_params)
        while not agreement.done:
            merged = swarm_weighted_mean(agreement.next_vector(), weight=rows)  # the merge
            agreement.merged(merged)
        pooled = agreement.result()            # == FeatureMoments.pool(all sites' moments)

    ``rounds`` merges in all (`statistics_rounds`): first the per-feature scale exponents
    (each site's log2 root mean square; their weighted mean, rounded, is the public scale
    s), then mean / 2^s and mean square / 2^2s. Every vector has exactly ``vector_size``
    values (zero padded). What the merges reveal: the pooled per-feature mean, mean square
    and mean log2 scale, never one site's.

    ``class_counts`` (this site's training rows per class), if given, ride along after the
    moments as class frequencies (counts / rows, in [0, 1]): their row-weighted mean is the
    class frequency of the union of the sites' rows (`class_frequencies`), what pooled
    class weights are computed from. ``moments`` may then have no features (class
    frequencies alone: one merge while the model has at least K parameters).
    """

    def __init__(
        self,
        moments: FeatureMoments,
        vector_size: int,
        *,
        source: str = "site",
        class_counts: npt.ArrayLike | None = None,
    ) -> None:
        if vector_size < 1:
            raise ValueError("vector_size must be >= 1")
        self.moments: Final = moments
        self.vector_size: Final = vector_size
        self.source: Final = source
        d = moments.n_features
        counts = np.zeros(0) if class_counts is None else np.asarray(class_counts, dtype=np.float64)
        if counts.size and (counts.ndim != 1 or counts.size < 2 or np.any(counts < 0) or counts.sum() <= 0):
            raise DatasetError(f"{source}: class counts must be >= 2 non-negative values, got {counts}")
        self._frequencies = counts / counts.sum() if counts.size else counts
        self.rounds: Final = statistics_rounds(d, vector_size, self._frequencies.size)
        self._scale_vectors = _vectors_for(d * SCALE_SLOTS_PER_FEATURE, vector_size)
        rms = np.sqrt(np.maximum(moments.mean_sq, 0.0))
        log2_rms = np.where(rms > 0, np.log2(np.where(rms > 0, rms, 1.0)), 0.0)
        self._queue: list[FloatVector] = _pack(
            np.clip(log2_rms, -_LOG2_RMS_RANGE, _LOG2_RMS_RANGE), vector_size
        )
        self._merged: list[FloatVector] = []
        self._exponents: npt.NDArray[np.float64] | None = None
        if self._scale_vectors == 0:  # no features: the class frequencies are all there is
            self._exponents = np.zeros(0)
            self._queue = _pack(self._scaled_moments(self._exponents), vector_size)

    @property
    def done(self) -> bool:
        return len(self._merged) == self.rounds

    @property
    def index(self) -> int:
        """How many of the ``rounds`` merges are done (the next vector's index)."""
        return len(self._merged)

    def next_vector(self) -> FloatVector:
        """The vector to offer to the next merge (the same one until `merged` is called)."""
        if self.done:
            raise RuntimeError("the pooled moments are already agreed")
        return self._queue[0]

    def merged(self, vector: npt.ArrayLike) -> None:
        """The merge's result for the offered vector (bit-identical at every site)."""
        if self.done:
            raise RuntimeError("the pooled moments are already agreed")
        merged = np.asarray(vector, dtype=np.float32).reshape(-1)
        if merged.size != self.vector_size:
            raise ValueError(f"merged vector has {merged.size} values, expected {self.vector_size}")
        self._merged.append(merged.copy())
        self._queue.pop(0)
        if len(self._merged) == self._scale_vectors:
            self._exponents = np.rint(_unpack(self._merged, self.moments.n_features))
            self._queue = _pack(self._scaled_moments(self._exponents), self.vector_size)

    def _scaled_moments(self, exponents: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        mean = np.ldexp(self.moments.mean, (-exponents).astype(np.int64))
        mean_sq = np.ldexp(self.moments.mean_sq, (-2 * exponents).astype(np.int64))
        for name, values in (("mean", mean), ("mean of squares", mean_sq)):
            big = np.flatnonzero(~(np.abs(values) < MAX_SCALED_MOMENT))
            if big.size:
                j = int(big[0])
                raise DatasetError(
                    f"{self.source}: feature column {j}'s {name} is {values[j]:.3g} times the swarm's "
                    f"scale for it (2^{int(exponents[j])}), beyond what the secure merge carries "
                    f"({MAX_SCALED_MOMENT:.3g}): this site's values differ from the others' by orders of "
                    "magnitude (different units?); apply log1p or rescale the feature"
                )
        return np.concatenate([mean, mean_sq, self._frequencies])

    def result(self) -> FeatureMoments:
        """The pooled moments (count is unknown to a site and reported as 0)."""
        if not self.done or self._exponents is None:
            raise RuntimeError("the pooled moments are not agreed yet")
        d = self.moments.n_features
        scaled = _unpack(self._merged[self._scale_vectors :], 2 * d)
        e = self._exponents.astype(np.int64)
        return FeatureMoments(count=0, mean=np.ldexp(scaled[:d], e), mean_sq=np.ldexp(scaled[d:], 2 * e))

    def class_frequencies(self) -> npt.NDArray[np.float64] | None:
        """The pooled class frequencies (those of the union of the sites' training rows, up to
        the merge's float32 precision), or None if this agreement carries no class counts.
        Bit-identical at every site: a function of the merged vectors only."""
        if not self.done:
            raise RuntimeError("the pooled statistics are not agreed yet")
        k = self._frequencies.size
        if k == 0:
            return None
        d = self.moments.n_features
        return _unpack(self._merged[self._scale_vectors :], 2 * d + k)[2 * d :].copy()


@final
@dataclass(frozen=True, eq=False)
class Preprocessor:
    """Preprocessing with fixed statistics; apply it to any split.

    `fit` takes the statistics from one site's (training) data; `with_moments` from
    pooled ones (the swarm's)."""

    config: PreprocessConfig
    feature_names: tuple[str, ...]
    mean: FloatMatrix
    scale: FloatMatrix

    @classmethod
    def fit(cls, data: Dataset, config: PreprocessConfig | None = None) -> Preprocessor:
        config = PreprocessConfig() if config is None else config
        selected = _select_and_log(data, config)
        x = selected.features.astype(np.float64)
        if config.mode != "none":
            FeatureMoments.of(x, names=selected.feature_names, source=selected.source)  # no empty feature
            # The values present: a missing one is NaN and left out.
            mean_of, std_of = (np.nanmean, np.nanstd) if np.isnan(x).any() else (np.mean, np.std)
            mean = mean_of(x, axis=0, keepdims=True)
            std = std_of(x, axis=0, keepdims=True)
            # A constant feature at this site (common with few samples) is centred, not divided by 0.
            scale = np.where(std > 1e-12, std, 1.0)
        else:
            mean = np.zeros((1, x.shape[1]))
            scale = np.ones((1, x.shape[1]))
        return cls(
            config=config,
            feature_names=selected.feature_names,
            mean=mean.astype(np.float32),
            scale=scale.astype(np.float32),
        )

    @staticmethod
    def moments(data: Dataset, config: PreprocessConfig | None = None) -> FeatureMoments:
        """This data's per-feature moments after the statistics-free steps (genes, log1p):
        what a site contributes to the swarm's pooled statistics."""
        config = PreprocessConfig() if config is None else config
        selected = _select_and_log(data, config)
        return FeatureMoments.of(selected.features, names=selected.feature_names, source=selected.source)

    def with_moments(self, pooled: FeatureMoments) -> Preprocessor:
        """The same preprocessing, standardised with ``pooled`` (e.g. the swarm's) statistics."""
        if pooled.n_features != len(self.feature_names):
            raise ValueError(f"{pooled.n_features} pooled features for {len(self.feature_names)}")
        mean, scale = pooled.standardization()
        return Preprocessor(config=self.config, feature_names=self.feature_names, mean=mean, scale=scale)

    def transform(self, data: Dataset) -> Dataset:
        selected = _select_and_log(data, self.config)
        if selected.feature_names != self.feature_names:
            raise DatasetError(f"{data.source}: features differ from those the preprocessor was fitted on")
        x = ((selected.features - self.mean) / self.scale).astype(np.float32)
        missing = np.isnan(x)
        if missing.any():
            if self.config.impute != "mean":
                raise MissingValueError(
                    f"{data.source}: {missing_report(selected.features, selected.feature_names, None)}; fill "
                    'them in, or set [data.preprocess] impute = "mean"'
                )
            x[missing] = 0.0  # the feature's (pooled) mean, standardised
        return Dataset(
            features=x,
            labels=selected.labels,
            feature_names=selected.feature_names,
            class_names=selected.class_names,
            source=selected.source,
        )


def _select_and_log(data: Dataset, config: PreprocessConfig) -> Dataset:
    if config.genes is not None:
        data = data.select_features(config.genes)
    if config.log1p:
        negative = data.features < 0
        if negative.any():
            i, j = (int(v) for v in np.argwhere(negative)[0])
            raise DatasetError(
                f"{data.source}: log1p needs non-negative values; column {data.feature_names[j]!r} row {i} "
                f"is {data.features[i, j]}"
            )
        data = Dataset(
            features=np.log1p(data.features),
            labels=data.labels,
            feature_names=data.feature_names,
            class_names=data.class_names,
            source=data.source,
        )
    return data


def highly_variable_genes(data: Dataset, n_top: int, *, log1p: bool = True) -> tuple[str, ...]:
    """This site's ``n_top`` most variable features (variance of log1p values if
    ``log1p``), most variable first, ties broken by name. Only names leave the site."""
    if n_top < 1:
        raise ValueError("n_top must be >= 1")
    selected = _select_and_log(data, PreprocessConfig(log1p=log1p, standardize="none"))
    variance = selected.features.astype(np.float64).var(axis=0)
    order = sorted(range(data.n_features), key=lambda j: (-float(variance[j]), data.feature_names[j]))
    return tuple(data.feature_names[j] for j in order[:n_top])


def agree_on_genes(
    site_rankings: Sequence[Sequence[str]],
    n_top: int,
    *,
    common_genes: Collection[str] | None = None,
) -> tuple[str, ...]:
    """Deterministically merge the sites' ranked gene lists into one list of ``n_top``.

    A gene scores by how many sites rank it (more is better), then by its mean rank
    (a site that does not list it counts it at rank len(its list)), then by name.
    ``common_genes`` restricts the result to genes every site measured. The result is
    independent of the order of ``site_rankings``.
    """
    if not site_rankings:
        raise ValueError("need at least one site's ranking")
    if n_top < 1:
        raise ValueError("n_top must be >= 1")
    candidates = set().union(*site_rankings)
    if common_genes is not None:
        candidates &= set(common_genes)
    ranks = [{gene: r for r, gene in enumerate(ranking)} for ranking in site_rankings]

    def score(gene: str) -> tuple[int, float, str]:
        votes = sum(gene in r for r in ranks)
        mean_rank = math.fsum(r.get(gene, len(r)) for r in ranks) / len(ranks)
        return (-votes, mean_rank, gene)

    agreed = tuple(sorted(candidates, key=score)[:n_top])
    if len(agreed) < n_top:
        raise ValueError(f"only {len(agreed)} candidate genes for n_top={n_top}")
    return agreed
