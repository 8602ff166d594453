"""The swarm's agreed table as genesis records it (`DataSchema`): pure Python, so that the
genesis (and the command line building its parser) loads without numpy.

Aligning a site's table to it is `models.tables`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, final

MAX_SCHEMA_NAME: Final = 256
MAX_SCHEMA_NAMES: Final = 100_000


def _check_names(names: tuple[str, ...], path: str, *, at_least: int) -> None:
    if not isinstance(names, tuple) or not at_least <= len(names) <= MAX_SCHEMA_NAMES:
        raise ValueError(f"{path}: must list {at_least}-{MAX_SCHEMA_NAMES} names")
    for name in names:
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_SCHEMA_NAME:
            raise ValueError(f"{path}: every name must be 1-{MAX_SCHEMA_NAME} characters, got {name!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{path}: listed more than once: {', '.join(repeated)}")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CategoricalColumn:
    """A categorical feature column and its agreed categories, in one-hot order."""

    name: str
    categories: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_names(self.categories, f"data.categorical[{self.name}].categories", at_least=1)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class DataSchema:
    """The table every site trains on, as genesis records it.

    feature_names: the feature columns, in the model's input order (before one-hot encoding).
    class_names:   the classes, in the order of the model's outputs.
    categorical:   the categorical columns among `feature_names` and their categories.
    """

    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    categorical: tuple[CategoricalColumn, ...] = ()

    def __post_init__(self) -> None:
        _check_names(self.feature_names, "data.feature_names", at_least=1)
        _check_names(self.class_names, "data.class_names", at_least=2)
        names = tuple(c.name for c in self.categorical)
        if names:
            _check_names(names, "data.categorical", at_least=1)
        unknown = [n for n in names if n not in self.feature_names]
        if unknown:
            raise ValueError(f"data.categorical: not among data.feature_names: {', '.join(unknown)}")

    def categories(self) -> dict[str, tuple[str, ...]]:
        """Each categorical column's categories, by column name."""
        return {c.name: c.categories for c in self.categorical}

    def encoded_feature_names(self) -> tuple[str, ...]:
        """The model's input columns: each numeric column, and ``column=category`` for each
        category of a categorical one (`models.data.one_hot_name`)."""
        categories = self.categories()
        names: list[str] = []
        for column in self.feature_names:
            if column in categories:
                names += [one_hot_name(column, c) for c in categories[column]]
            else:
                names.append(column)
        return tuple(names)

    @property
    def n_features(self) -> int:
        """Length of one model input row (after one-hot encoding)."""
        return len(self.encoded_feature_names())


def one_hot_name(column: str, category: str) -> str:
    """The feature name of one category's indicator column."""
    return f"{column}={category}"
