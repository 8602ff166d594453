"""Real-world tables: the swarm's agreed columns and classes, and aligning a site's table to them.

Genesis records a `DataSchema` (`consensus.genesis.Genesis.data`): the feature columns by
name in the model's input order, the class names in output order, and for each categorical
column its categories. Every site's table is then

- aligned by name (`align`): reordered columns are put in the agreed order; a table that
  lacks agreed columns or has others is refused with both lists (`ColumnMismatchError`);
- labelled by name: a site holding only some of the classes takes part (its labels index
  the agreed class list); a class the swarm did not agree on is refused (`UnknownClassError`);
- one-hot encoded with the agreed categories (`models.data.load_csv` with ``categories``):
  the features of column ``sex`` with categories (f, m) are ``sex=f`` and ``sex=m``; a value
  that is not an agreed category is refused (`models.data.UnseenCategoryError`), never mapped
  to another category or silently dropped, since its rows would train as something they are not.

`infer_schema` reads the founding site's table for `swarmnode genesis`: a CSV column whose
cells are not all numbers is categorical, with its sorted distinct values as categories.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .data import (
    MISSING_MARKERS,
    SKLEARN_DATASETS,
    Dataset,
    DatasetError,
    MissingFileError,
    MissingPolicy,
    UnknownClassError,
    is_number,
    load_dataset,
)
from .schema import CategoricalColumn, DataSchema, one_hot_name


class ColumnMismatchError(DatasetError):
    """A site's feature columns are not the ones genesis agreed on (missing or extra names)."""


def _listed(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def align(data: Dataset, schema: DataSchema, *, select: bool = False) -> Dataset:
    """`data` with the agreed columns in the agreed order and labels indexing the agreed
    classes; a `ColumnMismatchError` listing the missing and extra columns (with `select`,
    e.g. for an agreed gene list, other columns are dropped, not refused), or an
    `UnknownClassError` naming the classes genesis does not have."""
    expected = schema.encoded_feature_names()
    present = set(data.feature_names)
    missing = [n for n in expected if n not in present]
    extra = [] if select else [n for n in data.feature_names if n not in set(expected)]
    if missing or extra:
        parts = [f"missing {len(missing)}: {_listed(missing)}"] if missing else []
        parts += [f"extra {len(extra)}: {_listed(extra)}"] if extra else []
        raise ColumnMismatchError(
            f"{data.source}: the feature columns differ from the swarm's genesis ({len(expected)} agreed): "
            + "; ".join(parts)
        )
    unknown = [c for c in data.class_names if c not in schema.class_names]
    if unknown:
        raise UnknownClassError(
            f"{data.source}: label class(es) {_listed(unknown)} are not among the swarm's classes "
            f"({', '.join(schema.class_names)}) that genesis records"
        )
    aligned = data if data.feature_names == expected else data.select_features(expected)
    index = np.array([schema.class_names.index(c) for c in data.class_names], dtype=np.int64)
    return Dataset(
        features=aligned.features,
        labels=index[aligned.labels] if aligned.labels.size else aligned.labels,
        feature_names=expected,
        class_names=schema.class_names,
        source=data.source,
    )


def load_aligned(
    source: str | Path,
    schema: DataSchema | None,
    *,
    label_column: str | None = None,
    positive_class: str | None = None,
    missing: MissingPolicy = "refuse",
    select: bool = False,
) -> Dataset:
    """Load a site's data (`models.data.load_dataset`) and, under a genesis schema, one-hot
    encode its categorical columns with the agreed categories and `align` it (`select`: keep
    only the agreed columns, e.g. genes, instead of refusing others)."""
    categories = None if schema is None or not schema.categorical else schema.categories()
    data = load_dataset(
        source,
        label_column=label_column,
        positive_class=positive_class,
        categories=categories,
        missing=missing,
        class_names=None if schema is None else schema.class_names,
    )
    return data if schema is None else align(data, schema, select=select)


def csv_categories(
    path: str | Path, label_column: str, *, delimiter: str = ","
) -> dict[str, tuple[str, ...]]:
    """The CSV columns (other than the label) holding a cell that is neither a number nor a
    missing marker, each with its sorted distinct non-missing values."""
    if not Path(path).is_file():
        raise MissingFileError(f"{path}: no such dataset file")
    with Path(path).open(newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f, delimiter=delimiter) if row]
    if not rows:
        return {}
    header = [h.strip() for h in rows[0]]
    found: dict[str, tuple[str, ...]] = {}
    for j, column in enumerate(header):
        if column == label_column:
            continue
        cells = {row[j].strip() for row in rows[1:] if j < len(row)}
        values = {c for c in cells if c.lower() not in MISSING_MARKERS}
        if any(not is_number(v) for v in values):
            found[column] = tuple(sorted(values))
    return found


def infer_schema(
    source: str | Path,
    *,
    label_column: str | None = None,
    positive_class: str | None = None,
    categories: Mapping[str, Sequence[str]] | None = None,
) -> tuple[DataSchema, Dataset]:
    """The schema of one (the founding) site's data and that data, encoded with it.

    Categorical columns are `categories` if given, else those `csv_categories` finds in a
    CSV file. Missing values are kept (the schema does not depend on them)."""
    text = str(source)
    if categories is None:
        is_csv = text not in SKLEARN_DATASETS and Path(text).suffix.lower() == ".csv"
        categories = csv_categories(text, label_column) if is_csv and label_column is not None else {}
    agreed = {name: tuple(values) for name, values in categories.items()}
    data = load_dataset(
        source,
        label_column=label_column,
        positive_class=positive_class,
        categories=agreed or None,
        missing="keep",
    )
    columns = _unencoded_columns(data.feature_names, agreed)
    try:
        schema = DataSchema(
            feature_names=columns,
            class_names=data.class_names,
            categorical=tuple(CategoricalColumn(name=n, categories=c) for n, c in agreed.items()),
        )
    except ValueError as exc:
        raise DatasetError(f"{data.source}: {exc}") from None
    return schema, data


def _unencoded_columns(encoded: Sequence[str], categories: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    indicator = {one_hot_name(column, c): column for column, values in categories.items() for c in values}
    return tuple(dict.fromkeys(indicator.get(name, name) for name in encoded))
