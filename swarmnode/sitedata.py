"""Each site's own data for `swarmnode.api.create_local_swarm`, and the table they agree on.

A site's data is a bundled dataset name, a file (.csv, .h5ad, .npz), a `models.Dataset` or
an ``(x, y)`` pair of arrays; in-memory data is written to ``<site dir>/data.npz`` so that
the site's config names it like any file. The swarm's genesis then records the table all
sites share (`models.tables.DataSchema`): the first site's feature columns, every site's
classes (a site may hold only some of them) and every site's categories of each CSV
categorical column.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from models.data import SKLEARN_DATASETS, Dataset, DatasetError, MissingFileError, save_npz
from models.preprocess import PreprocessConfig
from models.schema import CategoricalColumn, DataSchema
from models.spec import ModelSpec
from models.tables import csv_categories, infer_schema

from .trainer import statistics_rounds_for

SiteData = str | Path | Dataset | tuple[npt.NDArray[Any], npt.NDArray[Any]]


def plan_site_data(
    data: SiteData | Sequence[SiteData] | None,
    directories: Sequence[Path],
    model: ModelSpec,
    preprocess: PreprocessConfig,
    *,
    label_column: str | None,
    positive_class: str | None,
) -> tuple[tuple[str | None, ...], DataSchema | None, int]:
    """Each site's data source, the table genesis records and its statistics rounds
    (`swarmnode.trainer.statistics_rounds_for`); for ``data=None`` (the sites bring their own
    data and training loop, e.g. `SwarmNode.merge`) no source, no table, no statistics rounds."""
    if data is None:
        return (None,) * len(directories), None, 0
    sources = site_sources(data, directories)
    schema = agreed_schema(sources, model, label_column=label_column, positive_class=positive_class)
    return sources, schema, statistics_rounds_for(model, preprocess)


def site_sources(data: SiteData | Sequence[SiteData], directories: Sequence[Path]) -> tuple[str, ...]:
    """One data source per site directory: `data` for all, or a sequence with one per site."""
    if isinstance(data, str | Path | Dataset) or (isinstance(data, tuple) and _is_array_pair(data)):
        return tuple(_source(data, d, shared=True) for d in directories)
    items = list(cast(Sequence[SiteData], data))
    if len(items) != len(directories):
        raise ValueError(f"data must list one entry per site ({len(directories)}), got {len(items)}")
    return tuple(_source(item, d, shared=False) for item, d in zip(items, directories, strict=True))


def _is_array_pair(data: tuple[object, ...]) -> bool:
    return len(data) == 2 and all(isinstance(part, np.ndarray) for part in data)


def _source(data: SiteData, directory: Path, *, shared: bool) -> str:
    if isinstance(data, Dataset):
        return str(save_npz(data, directory / "data.npz"))
    if isinstance(data, tuple):
        x, y = (np.asarray(part) for part in data)
        with (directory / "data.npz").open("wb") as f:
            np.savez(f, X=x, y=y)
        return str(directory / "data.npz")
    text = str(data)
    if text in SKLEARN_DATASETS and not Path(text).exists():
        return text
    path = Path(text).resolve()
    if not path.is_file():
        raise MissingFileError(f"{path}: no such dataset file{'' if shared else f' (for {directory.name})'}")
    return str(path)


def agreed_schema(
    sources: Sequence[str],
    model: ModelSpec,
    *,
    label_column: str | None,
    positive_class: str | None,
) -> DataSchema:
    """The table the sites' data shares, checked against `model`'s inputs and outputs."""
    categories: dict[str, set[str]] = {}
    for source in sources:
        if Path(source).suffix.lower() == ".csv" and label_column is not None:
            for column, values in csv_categories(source, label_column).items():
                categories.setdefault(column, set()).update(values)
    agreed = {column: tuple(sorted(values)) for column, values in categories.items()}
    schemas = [
        infer_schema(s, label_column=label_column, positive_class=positive_class, categories=agreed)[0]
        for s in sources
    ]
    classes = tuple(dict.fromkeys(c for schema in schemas for c in schema.class_names))
    schema = DataSchema(
        feature_names=schemas[0].feature_names,
        class_names=classes,
        categorical=tuple(CategoricalColumn(name=n, categories=c) for n, c in agreed.items()),
    )
    if schema.n_features != model.n_features or len(classes) != model.n_classes:
        raise DatasetError(
            f"{sources[0]}: the sites' data has {schema.n_features} model inputs and {len(classes)} classes "
            f"({', '.join(classes)}), but the model has n_features = {model.n_features} and "
            f"n_classes = {model.n_classes}"
        )
    return schema
