"""Datasets: loaders for CSV, AnnData .h5ad, .npz and scikit-learn's bundled sets,
plus preprocessing: feature selection and log1p (local, no statistics needed) and
standardisation with either the swarm's pooled statistics (``"swarm"``: every site
shares only a securely merged per-feature mean and mean of squares, see
`FeatureMoments` and `PooledMoments`), this site's own (``"local"``) or none.

Every loader returns a ``Dataset`` (float32 features, int64 labels in
``range(n_classes)``, feature and class names) and raises a ``DatasetError``
subclass that names the file, the column and what was wrong: a missing file, a
missing label column (listing the available ones), a non-numeric feature column,
or a missing / non-finite value (naming column and row).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, final, get_args

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]
LabelVector = npt.NDArray[np.int64]

SKLEARN_DATASETS: Final[tuple[str, ...]] = ("breast_cancer", "digits", "wine")
_MISSING_MARKERS: Final = frozenset({"", "nan", "na", "n/a", "null", "none", "?"})


class DatasetError(ValueError):
    """A dataset cannot be loaded or used; the message names file, column and row."""


class MissingFileError(DatasetError, FileNotFoundError):
    """The dataset file does not exist."""


class MissingColumnError(DatasetError):
    """A requested column / obs key / array / feature is not in the dataset."""


class NonNumericFeatureError(DatasetError):
    """A feature column holds values that are not numbers."""


class MissingValueError(DatasetError):
    """A feature or label is missing (empty, NaN) or a feature is infinite."""


class UnknownDatasetError(DatasetError):
    """A dataset name is neither a bundled dataset nor a supported file type."""


@final
@dataclass(frozen=True, eq=False)
class Dataset:
    """Features (n x d float32), labels (n int64 in range(n_classes)) and names.

    The arrays are read-only views; ``source`` says where the data came from (used in
    error messages).
    """

    features: FloatMatrix
    labels: LabelVector
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        x, y = self.features, self.labels
        if x.dtype != np.float32 or x.ndim != 2:
            raise DatasetError(
                f"{self.source}: features must be a 2-D float32 array, got {x.dtype} {x.shape}"
            )
        if y.dtype != np.int64 or y.shape != (x.shape[0],):
            raise DatasetError(f"{self.source}: labels must be int64 of shape ({x.shape[0]},), got {y.shape}")
        if len(self.feature_names) != x.shape[1]:
            raise DatasetError(
                f"{self.source}: {len(self.feature_names)} feature names for {x.shape[1]} columns"
            )
        if len(self.class_names) < 2:
            raise DatasetError(f"{self.source}: need at least 2 classes, got {self.class_names}")
        if y.size and (int(y.min()) < 0 or int(y.max()) >= len(self.class_names)):
            raise DatasetError(f"{self.source}: labels outside range({len(self.class_names)})")
        _check_finite(x, self.source, self.feature_names, None)
        for name, array in (("features", x), ("labels", y)):
            view = array.view()
            view.flags.writeable = False
            object.__setattr__(self, name, view)

    @property
    def n_samples(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> tuple[int, ...]:
        """Number of samples of each class, in class order."""
        counts = np.bincount(self.labels, minlength=self.n_classes)
        return tuple(int(c) for c in counts)

    def subset(self, indices: npt.NDArray[np.int64]) -> Dataset:
        """The rows at ``indices`` (same names and classes)."""
        return Dataset(
            features=self.features[indices],
            labels=self.labels[indices],
            feature_names=self.feature_names,
            class_names=self.class_names,
            source=self.source,
        )

    def one_vs_rest(self, positive_class: str) -> Dataset:
        """Binarise: label 1 for ``positive_class`` (e.g. "AML"), 0 for every other class."""
        if positive_class not in self.class_names:
            raise DatasetError(
                f"{self.source}: positive class {positive_class!r} not found; classes: "
                + ", ".join(self.class_names)
            )
        positive = self.class_names.index(positive_class)
        return Dataset(
            features=self.features,
            labels=(self.labels == positive).astype(np.int64),
            feature_names=self.feature_names,
            class_names=(f"not {positive_class}", positive_class),
            source=self.source,
        )

    def select_features(self, names: Sequence[str]) -> Dataset:
        """Columns ``names`` in that order (e.g. a gene list all sites agreed on)."""
        index = {name: i for i, name in enumerate(self.feature_names)}
        missing = [n for n in names if n not in index]
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise MissingColumnError(f"{self.source}: {len(missing)} requested features not found: {shown}")
        columns = np.array([index[n] for n in names], dtype=np.int64)
        return Dataset(
            features=np.ascontiguousarray(self.features[:, columns]),
            labels=self.labels,
            feature_names=tuple(names),
            class_names=self.class_names,
            source=self.source,
        )

    @staticmethod
    def concatenate(parts: Sequence[Dataset]) -> Dataset:
        """Rows of all parts (same features and classes), e.g. the union for central training."""
        if not parts:
            raise DatasetError("cannot concatenate zero datasets")
        first = parts[0]
        for part in parts[1:]:
            if part.feature_names != first.feature_names or part.class_names != first.class_names:
                raise DatasetError(f"{part.source}: features or classes differ from {first.source}")
        return Dataset(
            features=np.concatenate([p.features for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            feature_names=first.feature_names,
            class_names=first.class_names,
            source=first.source,
        )


def _check_finite(
    x: npt.NDArray[np.floating], source: str, columns: Sequence[str], rows: Sequence[str] | None
) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        what = "missing value (NaN)" if math.isnan(float(x[i, j])) else f"non-finite value ({x[i, j]})"
        row = f"row {rows[i]!r}" if rows is not None else f"row {i}"
        raise MissingValueError(f"{source}: {what} in column {columns[j]!r} at {row}")


def _class_names_and_labels(values: Sequence[str]) -> tuple[tuple[str, ...], LabelVector]:
    unique = set(values)
    # Numeric-looking labels sort numerically ("2" before "10"); others sort as text.
    try:
        names = tuple(sorted(unique, key=lambda v: (float(v), v)))
    except ValueError:
        names = tuple(sorted(unique))
    index = {name: i for i, name in enumerate(names)}
    return names, np.array([index[v] for v in values], dtype=np.int64)


def _finish(
    x: FloatMatrix,
    label_values: Sequence[str],
    feature_names: Sequence[str],
    source: str,
    positive_class: str | None,
) -> Dataset:
    class_names, labels = _class_names_and_labels(label_values)
    if len(class_names) < 2:
        raise DatasetError(f"{source}: only one class present ({class_names[0] if class_names else 'none'})")
    data = Dataset(
        features=x, labels=labels, feature_names=tuple(feature_names), class_names=class_names, source=source
    )
    return data if positive_class is None else data.one_vs_rest(positive_class)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise MissingFileError(f"{path}: no such dataset file")


def _strings_to_floats(
    cells: npt.NDArray[np.str_], source: str, columns: Sequence[str], rows: Sequence[str] | None
) -> FloatMatrix:
    try:
        values = cells.astype(np.float64)
    except ValueError:
        # Slow path only to name the first offending cell.
        for j, column in enumerate(columns):
            for i, cell in enumerate(cells[:, j]):
                text = str(cell).strip()
                row = f"row {rows[i]!r}" if rows is not None else f"row {i}"
                if text.lower() in _MISSING_MARKERS:
                    raise MissingValueError(
                        f"{source}: missing value in column {column!r} at {row}"
                    ) from None
                try:
                    float(text)
                except ValueError:
                    raise NonNumericFeatureError(
                        f"{source}: feature column {column!r} is not numeric ({row}: {text!r})"
                    ) from None
        raise
    _check_finite(values, source, columns, rows)
    return values.astype(np.float32)


def load_csv(
    path: str | Path,
    label_column: str,
    *,
    positive_class: str | None = None,
    feature_columns: Sequence[str] | None = None,
    delimiter: str = ",",
) -> Dataset:
    """A CSV file with a header row; every column except ``label_column`` is a feature
    (or only ``feature_columns``). Rows are reported by file line number."""
    path = Path(path)
    _require_file(path)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    if not rows:
        raise DatasetError(f"{path}: empty file (a header row is required)")
    header = [h.strip() for h in rows[0]]
    # (file line number, fields); blank lines are skipped but keep later line numbers right.
    body = [(line, row) for line, row in enumerate(rows[1:], start=2) if row]
    if label_column not in header:
        raise MissingColumnError(
            f"{path}: label column {label_column!r} not found; available columns: " + ", ".join(header)
        )
    if feature_columns is None:
        feature_columns = [h for h in header if h != label_column]
    else:
        missing = [c for c in feature_columns if c not in header]
        if missing:
            raise MissingColumnError(
                f"{path}: feature columns {missing} not found; available columns: " + ", ".join(header)
            )
    if not body:
        raise DatasetError(f"{path}: no data rows")
    for line, row in body:
        if len(row) != len(header):
            raise DatasetError(f"{path}: line {line} has {len(row)} fields, header has {len(header)}")
    line_names = [f"line {line}" for line, _ in body]
    table = np.array([row for _, row in body], dtype=np.str_)
    label_index = header.index(label_column)
    labels = [cell.strip() for cell in table[:, label_index].tolist()]
    for line_name, value in zip(line_names, labels, strict=True):
        if value.lower() in _MISSING_MARKERS:
            raise MissingValueError(f"{path}: missing label in column {label_column!r} at {line_name}")
    columns = np.array([header.index(c) for c in feature_columns], dtype=np.int64)
    x = _strings_to_floats(np.char.strip(table[:, columns]), str(path), list(feature_columns), line_names)
    return _finish(x, labels, feature_columns, str(path), positive_class)


def load_h5ad(
    path: str | Path,
    label_column: str,
    *,
    positive_class: str | None = None,
    layer: str | None = None,
) -> Dataset:
    """An AnnData file: features from ``X`` (or ``layers[layer]``), one row per cell /
    sample, feature names from ``var_names``, labels from ``obs[label_column]``."""
    path = Path(path)
    _require_file(path)
    import anndata  # imported here: it is slow to import and only this loader needs it

    try:
        adata = anndata.read_h5ad(path)
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{path}: not a readable .h5ad file ({exc})") from None
    obs_columns = [str(c) for c in adata.obs.columns]
    if label_column not in obs_columns:
        raise MissingColumnError(
            f"{path}: label column {label_column!r} not found in obs; available obs columns: "
            + (", ".join(obs_columns) or "(none)")
        )
    if layer is None:
        matrix = adata.X
    elif layer in adata.layers:
        matrix = adata.layers[layer]
    else:
        raise MissingColumnError(
            f"{path}: layer {layer!r} not found; available layers: "
            + (", ".join(adata.layers.keys()) or "(none)")
        )
    if matrix is None:
        raise DatasetError(f"{path}: AnnData has no X matrix")
    if hasattr(matrix, "toarray"):
        matrix = matrix.toarray()
    dense = np.asarray(matrix)
    genes = [str(v) for v in adata.var_names]
    cells = [str(v) for v in adata.obs_names]
    if not np.issubdtype(dense.dtype, np.number) or np.issubdtype(dense.dtype, np.complexfloating):
        x = _strings_to_floats(dense.astype(np.str_), str(path), genes, cells)
    else:
        x64 = dense.astype(np.float64)
        _check_finite(x64, str(path), genes, cells)
        x = x64.astype(np.float32)
    raw_labels = adata.obs[label_column]
    missing = raw_labels.isna().to_numpy()
    if missing.any():
        cell = cells[int(np.flatnonzero(missing)[0])]
        raise MissingValueError(f"{path}: missing label in obs column {label_column!r} for {cell!r}")
    labels = [str(v) for v in raw_labels.tolist()]
    return _finish(x, labels, genes, str(path), positive_class)


def load_npz(
    path: str | Path,
    *,
    features_key: str = "X",
    labels_key: str = "y",
    feature_names_key: str = "feature_names",
    class_names_key: str = "class_names",
    positive_class: str | None = None,
) -> Dataset:
    """A ``.npz`` archive with a 2-D feature array and a 1-D label array. Optional
    arrays name the features and (for integer labels 0..k-1) the classes."""
    path = Path(path)
    _require_file(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz archive ({exc})") from None
    with archive:
        available = list(archive.files)

        def get(key: str) -> npt.NDArray[np.generic]:
            try:
                return np.asarray(archive[key])
            except ValueError as exc:  # object arrays refuse to load without pickle
                raise NonNumericFeatureError(f"{path}: array {key!r} cannot be loaded ({exc})") from None

        for key, role in ((features_key, "feature"), (labels_key, "label")):
            if key not in available:
                raise MissingColumnError(
                    f"{path}: {role} array {key!r} not found; available arrays: " + ", ".join(available)
                )
        raw_x = get(features_key)
        raw_y = get(labels_key)
        names = [str(v) for v in get(feature_names_key)] if feature_names_key in available else None
        classes = [str(v) for v in get(class_names_key)] if class_names_key in available else None
    source = f"{path}[{features_key}]"
    if raw_x.ndim != 2:
        raise DatasetError(f"{source}: features must be 2-D, got shape {raw_x.shape}")
    if raw_y.shape != (raw_x.shape[0],):
        raise DatasetError(
            f"{path}[{labels_key}]: labels must have shape ({raw_x.shape[0]},), got {raw_y.shape}"
        )
    if names is None:
        names = [f"column {j}" for j in range(raw_x.shape[1])]
    elif len(names) != raw_x.shape[1]:
        raise DatasetError(f"{path}: {len(names)} feature names for {raw_x.shape[1]} feature columns")
    if np.issubdtype(raw_x.dtype, np.number) and not np.issubdtype(raw_x.dtype, np.complexfloating):
        x64 = raw_x.astype(np.float64)
        _check_finite(x64, source, names, None)
        x = x64.astype(np.float32)
    elif np.issubdtype(raw_x.dtype, np.bool_):
        x = raw_x.astype(np.float32)
    else:
        x = _strings_to_floats(raw_x.astype(np.str_), source, names, None)
    if np.issubdtype(raw_y.dtype, np.floating) and not np.isfinite(raw_y).all():
        row = int(np.flatnonzero(~np.isfinite(raw_y))[0])
        raise MissingValueError(f"{path}[{labels_key}]: missing label at row {row}")
    if classes is not None and np.issubdtype(raw_y.dtype, np.integer):
        if raw_y.size and (raw_y.min() < 0 or raw_y.max() >= len(classes)):
            raise DatasetError(f"{path}[{labels_key}]: integer labels outside range({len(classes)})")
        data = Dataset(
            features=x,
            labels=raw_y.astype(np.int64),
            feature_names=tuple(names),
            class_names=tuple(classes),
            source=source,
        )
        return data if positive_class is None else data.one_vs_rest(positive_class)
    label_values = [str(v.item()) if isinstance(v, np.generic) else str(v) for v in raw_y]
    return _finish(x, label_values, names, source, positive_class)


def load_sklearn(name: str, *, positive_class: str | None = None) -> Dataset:
    """One of scikit-learn's bundled datasets (no download): breast_cancer, digits, wine.

    breast_cancer's classes are ("malignant", "benign"); pass
    ``positive_class="malignant"`` for the usual disease-vs-rest task.
    """
    from sklearn import datasets as sk  # imported here: scikit-learn import is slow

    loaders = {"breast_cancer": sk.load_breast_cancer, "digits": sk.load_digits, "wine": sk.load_wine}
    if name not in loaders:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; bundled datasets: " + ", ".join(SKLEARN_DATASETS)
        )
    bunch = loaders[name]()
    data = Dataset(
        features=np.asarray(bunch.data, dtype=np.float32),
        labels=np.asarray(bunch.target, dtype=np.int64),
        feature_names=tuple(str(f) for f in bunch.feature_names),
        class_names=tuple(str(c) for c in bunch.target_names),
        source=f"sklearn:{name}",
    )
    return data if positive_class is None else data.one_vs_rest(positive_class)


def load_dataset(
    source: str | Path,
    *,
    label_column: str | None = None,
    positive_class: str | None = None,
) -> Dataset:
    """Load by bundled name ("breast_cancer", "digits", "wine") or by file suffix
    (.csv and .h5ad need ``label_column``; .npz uses arrays X and y)."""
    text = str(source)
    if text in SKLEARN_DATASETS and not Path(text).exists():
        return load_sklearn(text, positive_class=positive_class)
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".h5ad"):
        if label_column is None:
            raise DatasetError(f"{path}: label_column is required for {suffix} files")
        loader = load_csv if suffix == ".csv" else load_h5ad
        return loader(path, label_column, positive_class=positive_class)
    if suffix == ".npz":
        return load_npz(path, positive_class=positive_class)
    raise UnknownDatasetError(
        f"unknown dataset {text!r}: not one of {', '.join(SKLEARN_DATASETS)} "
        "and not a .csv, .h5ad or .npz file"
    )


# ---------------------------------------------------------------- preprocessing


Standardize = Literal["swarm", "local", "none"]
STANDARDIZE_MODES: Final[tuple[str, ...]] = get_args(Standardize)


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
    """

    genes: tuple[str, ...] | None = None
    log1p: bool = False
    standardize: Standardize | bool = "swarm"

    def __post_init__(self) -> None:
        if isinstance(self.standardize, bool):
            object.__setattr__(self, "standardize", "local" if self.standardize else "none")
        if self.standardize not in STANDARDIZE_MODES:
            raise ValueError(
                f"standardize must be one of {', '.join(STANDARDIZE_MODES)}, got {self.standardize!r}"
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
    def of(cls, features: npt.NDArray[np.floating]) -> FeatureMoments:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 1:
            raise DatasetError(f"moments need a non-empty 2-D array, got shape {x.shape}")
        return cls(count=int(x.shape[0]), mean=x.mean(axis=0), mean_sq=(x * x).mean(axis=0))

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


def statistics_rounds(n_features: int, vector_size: int) -> int:
    """How many merge vectors of ``vector_size`` (the model's parameter count) agreeing on
    the pooled statistics of ``n_features`` features takes: the scale merge's ceil(d / size)
    plus the moment merge's ceil(2 d / size)."""
    if n_features < 1 or vector_size < 1:
        raise ValueError("n_features and vector_size must be >= 1")
    return _vectors_for(n_features * SCALE_SLOTS_PER_FEATURE, vector_size) + _vectors_for(
        n_features * MOMENT_SLOTS_PER_FEATURE, vector_size
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
    """

    def __init__(self, moments: FeatureMoments, vector_size: int, *, source: str = "site") -> None:
        if vector_size < 1:
            raise ValueError("vector_size must be >= 1")
        self.moments: Final = moments
        self.vector_size: Final = vector_size
        self.source: Final = source
        d = moments.n_features
        self.rounds: Final = statistics_rounds(d, vector_size)
        self._scale_vectors = _vectors_for(d * SCALE_SLOTS_PER_FEATURE, vector_size)
        rms = np.sqrt(np.maximum(moments.mean_sq, 0.0))
        log2_rms = np.where(rms > 0, np.log2(np.where(rms > 0, rms, 1.0)), 0.0)
        self._queue: list[FloatVector] = _pack(
            np.clip(log2_rms, -_LOG2_RMS_RANGE, _LOG2_RMS_RANGE), vector_size
        )
        self._merged: list[FloatVector] = []
        self._exponents: npt.NDArray[np.float64] | None = None

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
        return np.concatenate([mean, mean_sq])

    def result(self) -> FeatureMoments:
        """The pooled moments (count is unknown to a site and reported as 0)."""
        if not self.done or self._exponents is None:
            raise RuntimeError("the pooled moments are not agreed yet")
        d = self.moments.n_features
        scaled = _unpack(self._merged[self._scale_vectors :], 2 * d)
        e = self._exponents.astype(np.int64)
        return FeatureMoments(count=0, mean=np.ldexp(scaled[:d], e), mean_sq=np.ldexp(scaled[d:], 2 * e))


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
            mean = x.mean(axis=0, keepdims=True)
            std = x.std(axis=0, keepdims=True)
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
        return FeatureMoments.of(_select_and_log(data, config).features)

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
