"""Datasets: loaders for CSV, AnnData .h5ad, .npz and scikit-learn's bundled sets
(their preprocessing is `models.preprocess`).

Every loader returns a ``Dataset`` (float32 features, int64 labels in
``range(n_classes)``, feature and class names) and raises a ``DatasetError``
subclass that names the file, the column and what was wrong: a missing file, a
missing label column (listing the available ones), a non-numeric feature column,
an infinite value (naming column and row), or missing values: empty / NaN cells are
refused with their count per column (``missing="refuse"``, the default) or kept as NaN
(``missing="keep"``) for `models.preprocess` to impute (``impute = "mean"``).
CSV columns named in ``categories`` are one-hot encoded (`models.tables` explains the
swarm's agreed categories); a value outside them is an `UnseenCategoryError`.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, final

import numpy as np
import numpy.typing as npt

from .schema import one_hot_name

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]
LabelVector = npt.NDArray[np.int64]
MissingPolicy = Literal["refuse", "keep"]

SKLEARN_DATASETS: Final[tuple[str, ...]] = ("breast_cancer", "digits", "wine")
MISSING_MARKERS: Final = frozenset({"", "nan", "na", "n/a", "null", "none", "?"})


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


class UnseenCategoryError(DatasetError):
    """A categorical column holds a value that is not one of the agreed categories."""


class UnknownClassError(DatasetError):
    """A label names a class that is not among the agreed ones (e.g. the genesis's)."""


class UnknownDatasetError(DatasetError):
    """A dataset name is neither a bundled dataset nor a supported file type."""


@final
@dataclass(frozen=True, eq=False)
class Dataset:
    """Features (n x d float32), labels (n int64 in range(n_classes)) and names.

    A NaN feature is a missing value (`models.preprocess` refuses or imputes it); infinite
    values are refused here. The arrays are read-only views; ``source`` says where the data came from (used in
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
        _check_values(x, self.source, self.feature_names, None, "keep")
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


def _row_name(rows: Sequence[str] | None, i: int) -> str:
    return f"row {rows[i]!r}" if rows is not None else f"row {i}"


def missing_report(x: npt.NDArray[np.floating], columns: Sequence[str], rows: Sequence[str] | None) -> str:
    """The NaN count of each column that has any, with its first row (e.g. for a refusal)."""
    missing = np.isnan(x)
    parts = [
        f"column {columns[j]!r}: {int(missing[:, j].sum())} "
        f"(first at {_row_name(rows, int(np.flatnonzero(missing[:, j])[0]))})"
        for j in (int(k) for k in np.flatnonzero(missing.any(axis=0)))
    ]
    return f"{int(missing.sum())} missing value(s) (NaN or empty) in {len(parts)} column(s): " + ", ".join(
        parts
    )


def _check_values(
    x: npt.NDArray[np.floating],
    source: str,
    columns: Sequence[str],
    rows: Sequence[str] | None,
    missing: MissingPolicy,
) -> None:
    infinite = np.isinf(x)
    if infinite.any():
        i, j = (int(v) for v in np.argwhere(infinite)[0])
        raise MissingValueError(
            f"{source}: non-finite value ({x[i, j]}) in column {columns[j]!r} at {_row_name(rows, i)}"
        )
    if missing == "refuse" and np.isnan(x).any():
        raise MissingValueError(
            f"{source}: {missing_report(x, columns, rows)}; fill them in, or set "
            '[data.preprocess] impute = "mean" to replace them by the swarm\'s per-feature means'
        )


def _class_names_and_labels(values: Sequence[str]) -> tuple[tuple[str, ...], LabelVector]:
    unique = set(values)
    # Numeric-looking labels sort numerically ("2" before "10"); others sort as text.
    try:
        names = tuple(sorted(unique, key=lambda v: (float(v), v)))
    except ValueError:
        names = tuple(sorted(unique))
    index = {name: i for i, name in enumerate(names)}
    return names, np.array([index[v] for v in values], dtype=np.int64)


def _codes_as_names(label_values: Sequence[str], class_names: Sequence[str]) -> Sequence[str]:
    """Integer-coded labels (0 .. k-1) as the agreed class names they stand for (e.g. named by
    ``swarmnode genesis --class-names``), in order; labels that already are names, or any
    other value, are kept as they are."""
    present = set(label_values)
    if present & set(class_names) or not all(v.isdigit() and int(v) < len(class_names) for v in present):
        return label_values
    return [class_names[int(v)] for v in label_values]


def _finish(
    x: FloatMatrix,
    label_values: Sequence[str],
    feature_names: Sequence[str],
    source: str,
    positive_class: str | None,
    class_names: Sequence[str] | None = None,
) -> Dataset:
    if class_names is not None and positive_class is None:
        # The agreed classes (e.g. the genesis's): a site may hold only some of them, even one.
        index = {name: i for i, name in enumerate(class_names)}
        label_values = _codes_as_names(label_values, class_names)
        unknown = sorted(set(label_values) - set(index))
        if unknown:
            raise UnknownClassError(
                f"{source}: label class(es) {', '.join(map(repr, unknown))} are not among the swarm's "
                f"classes ({', '.join(class_names)}) that genesis records"
            )
        labels = np.array([index[v] for v in label_values], dtype=np.int64)
        names = tuple(class_names)
    else:
        names, labels = _class_names_and_labels(label_values)
        if len(names) < 2:
            raise DatasetError(f"{source}: only one class present ({names[0] if names else 'none'})")
    data = Dataset(
        features=x, labels=labels, feature_names=tuple(feature_names), class_names=names, source=source
    )
    return data if positive_class is None else data.one_vs_rest(positive_class)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise MissingFileError(f"{path}: no such dataset file")


def is_number(text: str) -> bool:
    """Whether `text` parses as a float (e.g. "1e-3", "nan")."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _strings_to_floats(
    cells: npt.NDArray[np.str_],
    source: str,
    columns: Sequence[str],
    rows: Sequence[str] | None,
    missing: MissingPolicy = "refuse",
) -> FloatMatrix:
    text = np.char.strip(cells.astype(np.str_))
    absent = np.isin(np.char.lower(text), list(MISSING_MARKERS))
    try:
        values = np.where(absent, "nan", text).astype(np.float64)
    except ValueError:
        # Slow path only to name the first offending cell.
        for j, column in enumerate(columns):
            for i, cell in enumerate(text[:, j].tolist()):
                if not absent[i, j] and not is_number(cell):
                    raise NonNumericFeatureError(
                        f"{source}: feature column {column!r} is not numeric ({_row_name(rows, i)}: {cell!r})"
                    ) from None
        raise
    _check_values(values, source, columns, rows, missing)
    return values.astype(np.float32)


def one_hot(
    cells: Sequence[str], column: str, categories: Sequence[str], source: str, rows: Sequence[str]
) -> FloatMatrix:
    """Indicator columns of ``categories`` (in that order) for a categorical column's cells; a
    missing cell is NaN in all of them, a value outside ``categories`` an `UnseenCategoryError`."""
    if not categories:
        raise DatasetError(f"{source}: categorical column {column!r} needs at least one category")
    index = {c: k for k, c in enumerate(categories)}
    encoded = np.zeros((len(cells), len(categories)), dtype=np.float32)
    for i, cell in enumerate(cells):
        if cell.lower() in MISSING_MARKERS and cell not in index:
            encoded[i, :] = np.nan
        elif cell in index:
            encoded[i, index[cell]] = 1.0
        else:
            raise UnseenCategoryError(
                f"{source}: column {column!r} has {cell!r} at {rows[i]}, not one of the swarm's agreed "
                f"categories ({', '.join(categories)}); a value genesis does not list is refused, not "
                "guessed (recode it to an agreed category, or leave the cell empty to impute it)"
            )
    return encoded


def load_csv(
    path: str | Path,
    label_column: str,
    *,
    positive_class: str | None = None,
    feature_columns: Sequence[str] | None = None,
    delimiter: str = ",",
    categories: Mapping[str, Sequence[str]] | None = None,
    missing: MissingPolicy = "refuse",
    class_names: Sequence[str] | None = None,
) -> Dataset:
    """A CSV file with a header row; every column except ``label_column`` is a feature
    (or only ``feature_columns``). Rows are reported by file line number. A column named
    in ``categories`` is one-hot encoded with those categories (`one_hot`), in its place."""
    path = Path(path)
    header, body = _csv_rows(path, delimiter)
    if label_column not in header:
        raise MissingColumnError(
            f"{path}: label column {label_column!r} not found; available columns: " + ", ".join(header)
        )
    if feature_columns is None:
        feature_columns = [h for h in header if h != label_column]
    else:
        absent = [c for c in feature_columns if c not in header]
        if absent:
            raise MissingColumnError(
                f"{path}: feature columns {absent} not found; available columns: " + ", ".join(header)
            )
    line_names, table = _csv_table(path, header, body)
    label_index = header.index(label_column)
    labels = [cell.strip() for cell in table[:, label_index].tolist()]
    for line_name, value in zip(line_names, labels, strict=True):
        if value.lower() in MISSING_MARKERS:
            raise MissingValueError(f"{path}: missing label in column {label_column!r} at {line_name}")
    cells = {c: table[:, header.index(c)] for c in feature_columns}
    x, names = _csv_features(cells, categories or {}, str(path), line_names, missing)
    return _finish(x, labels, names, str(path), positive_class, class_names)


def load_unlabelled_csv(
    path: str | Path,
    class_names: Sequence[str],
    *,
    delimiter: str = ",",
    categories: Mapping[str, Sequence[str]] | None = None,
    missing: MissingPolicy = "refuse",
) -> Dataset:
    """A CSV of features only (data to predict has no labels): every column is a feature,
    read as `load_csv` reads its features (`categories` one-hot encoded, missing values per
    `missing`). Its labels are all 0 and mean nothing; `class_names` are the model's."""
    path = Path(path)
    header, body = _csv_rows(path, delimiter)
    line_names, table = _csv_table(path, header, body)
    cells = {c: table[:, j] for j, c in enumerate(header)}
    x, names = _csv_features(cells, categories or {}, str(path), line_names, missing)
    labels = np.zeros(x.shape[0], dtype=np.int64)
    return Dataset(
        features=x,
        labels=labels,
        feature_names=tuple(names),
        class_names=tuple(class_names),
        source=str(path),
    )


def _csv_rows(path: Path, delimiter: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A CSV's stripped header and its non-blank rows with their file line numbers."""
    _require_file(path)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    if not rows:
        raise DatasetError(f"{path}: empty file (a header row is required)")
    header = [h.strip() for h in rows[0]]
    # (file line number, fields); blank lines are skipped but keep later line numbers right.
    return header, [(line, row) for line, row in enumerate(rows[1:], start=2) if row]


def _csv_table(
    path: Path, header: Sequence[str], body: Sequence[tuple[int, list[str]]]
) -> tuple[list[str], npt.NDArray[np.str_]]:
    """The rows' names ("line N") and cells, every row as wide as the header."""
    if not body:
        raise DatasetError(f"{path}: no data rows")
    for line, row in body:
        if len(row) != len(header):
            raise DatasetError(f"{path}: line {line} has {len(row)} fields, header has {len(header)}")
    return [f"line {line}" for line, _ in body], np.array([row for _, row in body], dtype=np.str_)


def _csv_features(
    cells: Mapping[str, npt.NDArray[np.str_]],
    categories: Mapping[str, Sequence[str]],
    source: str,
    rows: Sequence[str],
    missing: MissingPolicy,
) -> tuple[FloatMatrix, list[str]]:
    """The feature matrix and names of a CSV's feature columns (in order), categorical ones
    one-hot encoded; missing values are counted per table column, as the file has them."""
    unknown = [c for c in categories if c not in cells]
    if unknown:
        raise MissingColumnError(f"{source}: categorical column(s) {unknown} not found among the features")
    blocks: list[FloatMatrix] = []
    names: list[str] = []
    for column, values in cells.items():
        if column in categories:
            stripped = [str(v).strip() for v in values.tolist()]
            blocks.append(one_hot(stripped, column, categories[column], source, rows))
            names += [one_hot_name(column, c) for c in categories[column]]
        else:
            blocks.append(_strings_to_floats(values[:, None], source, [column], rows, "keep"))
            names.append(column)
    x = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(rows), 0), dtype=np.float32)
    # One representative (first) matrix column per table column: a categorical cell counts once.
    firsts = np.cumsum([0] + [b.shape[1] for b in blocks[:-1]])
    _check_values(x[:, firsts], source, list(cells), rows, missing)
    return x, names


def load_h5ad(
    path: str | Path,
    label_column: str,
    *,
    positive_class: str | None = None,
    layer: str | None = None,
    missing: MissingPolicy = "refuse",
    class_names: Sequence[str] | None = None,
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
        x = _strings_to_floats(dense.astype(np.str_), str(path), genes, cells, missing)
    else:
        x64 = dense.astype(np.float64)
        _check_values(x64, str(path), genes, cells, missing)
        x = x64.astype(np.float32)
    raw_labels = adata.obs[label_column]
    unlabelled = raw_labels.isna().to_numpy()
    if unlabelled.any():
        cell = cells[int(np.flatnonzero(unlabelled)[0])]
        raise MissingValueError(f"{path}: missing label in obs column {label_column!r} for {cell!r}")
    labels = [str(v) for v in raw_labels.tolist()]
    return _finish(x, labels, genes, str(path), positive_class, class_names)


def load_npz(
    path: str | Path,
    *,
    features_key: str = "X",
    labels_key: str = "y",
    feature_names_key: str = "feature_names",
    class_names_key: str = "class_names",
    positive_class: str | None = None,
    missing: MissingPolicy = "refuse",
    class_names: Sequence[str] | None = None,
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
        _check_values(x64, source, names, None, missing)
        x = x64.astype(np.float32)
    elif np.issubdtype(raw_x.dtype, np.bool_):
        x = raw_x.astype(np.float32)
    else:
        x = _strings_to_floats(raw_x.astype(np.str_), source, names, None, missing)
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
    return _finish(x, label_values, names, source, positive_class, class_names)


def save_npz(data: Dataset, path: str | Path) -> Path:
    """Write `data` as a ``.npz`` archive `load_npz` reads back (features, labels, names)."""
    target = Path(path)
    with target.open("wb") as f:
        np.savez(
            f,
            X=data.features,
            y=data.labels,
            feature_names=np.array(data.feature_names, dtype=np.str_),
            class_names=np.array(data.class_names, dtype=np.str_),
        )
    return target


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
    categories: Mapping[str, Sequence[str]] | None = None,
    missing: MissingPolicy = "refuse",
    class_names: Sequence[str] | None = None,
) -> Dataset:
    """Load by bundled name ("breast_cancer", "digits", "wine") or by file suffix
    (.csv and .h5ad need ``label_column``; .npz uses arrays X and y). ``categories``
    (categorical columns, one-hot encoded) apply to CSV files only. ``class_names``: the
    classes labels may name, in output order (a file may hold only some of them); None:
    its distinct labels, sorted."""
    text = str(source)
    path = Path(source)
    suffix = path.suffix.lower()
    if categories and suffix != ".csv":
        raise DatasetError(
            f"{text}: categorical columns ({', '.join(categories)}) are read from CSV files only"
        )
    if text in SKLEARN_DATASETS and not Path(text).exists():
        return load_sklearn(text, positive_class=positive_class)
    if suffix == ".csv":
        if label_column is None:
            raise DatasetError(f"{path}: label_column is required for {suffix} files")
        return load_csv(
            path,
            label_column,
            positive_class=positive_class,
            categories=categories,
            missing=missing,
            class_names=class_names,
        )
    if suffix == ".h5ad":
        if label_column is None:
            raise DatasetError(f"{path}: label_column is required for {suffix} files")
        return load_h5ad(
            path, label_column, positive_class=positive_class, missing=missing, class_names=class_names
        )
    if suffix == ".npz":
        return load_npz(path, positive_class=positive_class, missing=missing, class_names=class_names)
    raise UnknownDatasetError(
        f"unknown dataset {text!r}: not one of {', '.join(SKLEARN_DATASETS)} "
        "and not a .csv, .h5ad or .npz file"
    )
