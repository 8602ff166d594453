"""Real-world tables (`models.tables`): columns aligned by name against the genesis's table,
sites with only some of the classes, missing values refused per column or imputed, and
categorical columns one-hot encoded with the agreed categories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.data import MissingValueError, UnseenCategoryError, load_csv
from models.preprocess import FeatureMoments, PreprocessConfig, Preprocessor
from models.schema import CategoricalColumn, DataSchema
from models.spec import logistic_regression
from models.tables import (
    ColumnMismatchError,
    UnknownClassError,
    align,
    infer_schema,
    load_aligned,
)
from models.training import LocalTrainer, TrainConfig


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


SCHEMA = DataSchema(feature_names=("age", "bmi", "crp"), class_names=("healthy", "sepsis", "sirs"))


def test_reordered_columns_are_aligned_by_name(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "crp,y,age,bmi\n1.5,sepsis,40,22\n0.5,healthy,50,30\n2.5,sirs,60,25\n")
    data = load_aligned(path, SCHEMA, label_column="y")
    assert data.feature_names == ("age", "bmi", "crp")
    np.testing.assert_array_equal(data.features, [[40, 22, 1.5], [50, 30, 0.5], [60, 25, 2.5]])
    assert [data.class_names[y] for y in data.labels] == ["sepsis", "healthy", "sirs"]


def test_missing_and_extra_columns_are_refused_naming_them(tmp_path: Path) -> None:
    path = _write(tmp_path / "b.csv", "age,weight,y,height\n40,80,sepsis,170\n50,70,healthy,160\n")
    with pytest.raises(ColumnMismatchError) as info:
        load_aligned(path, SCHEMA, label_column="y")
    message = str(info.value)
    assert "b.csv" in message
    assert "missing 2: 'bmi', 'crp'" in message
    assert "extra 2: 'weight', 'height'" in message
    # A site naming the agreed columns (e.g. an agreed gene list) may select them from more.
    path = _write(tmp_path / "c.csv", "crp,weight,age,y,bmi\n1,80,40,sepsis,2\n2,70,50,healthy,3\n")
    assert load_aligned(path, SCHEMA, label_column="y", select=True).feature_names == SCHEMA.feature_names


def test_a_site_with_only_some_of_the_classes_takes_part(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "d.csv", "age,bmi,crp,y\n40,22,1,sirs\n50,30,2,healthy\n41,23,1,sirs\n52,29,3,healthy\n"
    )
    spec = logistic_regression(3, 3)
    local = load_csv(path, "y")
    with pytest.raises(ValueError, match="2 classes, but the spec has 3"):  # without the genesis's names
        LocalTrainer(spec, local, TrainConfig(validation_fraction=0.0), generator=torch.Generator())
    data = load_aligned(path, SCHEMA, label_column="y")
    assert data.class_names == SCHEMA.class_names
    assert data.class_counts() == (2, 0, 2)
    trainer = LocalTrainer(spec, data, TrainConfig(validation_fraction=0.0), generator=torch.Generator())
    assert trainer.class_names == ("healthy", "sepsis", "sirs")
    one = _write(tmp_path / "one.csv", "age,bmi,crp,y\n40,22,1,sirs\n50,30,2,sirs\n")
    assert load_aligned(one, SCHEMA, label_column="y").class_counts() == (0, 0, 2)  # even one class
    unknown = _write(tmp_path / "e.csv", "age,bmi,crp,y\n40,22,1,shock\n50,30,2,healthy\n")
    with pytest.raises(UnknownClassError, match=r"e\.csv.*'shock'.*healthy, sepsis, sirs"):
        load_aligned(unknown, SCHEMA, label_column="y")


def test_missing_values_are_refused_with_a_count_per_column(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "f.csv", "age,bmi,crp,y\n40,,1,sirs\n50,NA,2,healthy\n,23,,sirs\n52,29,3,healthy\n"
    )
    with pytest.raises(MissingValueError) as info:
        load_aligned(path, SCHEMA, label_column="y")
    message = str(info.value)
    assert "4 missing value(s)" in message
    assert "column 'age': 1 (first at row 'line 4')" in message
    assert "column 'bmi': 2 (first at row 'line 2')" in message
    assert "column 'crp': 1 (first at row 'line 4')" in message
    assert 'impute = "mean"' in message
    # In-memory data with NaNs is refused the same way when it is preprocessed.
    kept = load_aligned(path, SCHEMA, label_column="y", missing="keep")
    with pytest.raises(MissingValueError, match=r"column 'bmi': 2"):
        Preprocessor.fit(kept, PreprocessConfig(standardize="local")).transform(kept)


def test_moments_leave_missing_values_out() -> None:
    x = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, 8.0]])
    moments = FeatureMoments.of(x)
    np.testing.assert_array_equal(moments.mean, [2.0, 6.0])
    np.testing.assert_array_equal(moments.mean_sq, [5.0, 40.0])
    with pytest.raises(MissingValueError, match=r"feature 'b' has no value in any of the 2 rows"):
        FeatureMoments.of(np.array([[1.0, np.nan], [2.0, np.nan]]), names=("a", "b"))


def test_impute_needs_a_standardisation_mean() -> None:
    with pytest.raises(ValueError, match="impute"):
        PreprocessConfig(standardize="none", impute="mean")


def test_categorical_columns_are_one_hot_encoded_with_the_genesis_categories(tmp_path: Path) -> None:
    schema = DataSchema(
        feature_names=("age", "sex", "ward"),
        class_names=("no", "yes"),
        categorical=(
            CategoricalColumn(name="sex", categories=("f", "m")),
            CategoricalColumn(name="ward", categories=("icu", "med", "surg")),
        ),
    )
    assert schema.encoded_feature_names() == ("age", "sex=f", "sex=m", "ward=icu", "ward=med", "ward=surg")
    # This site never saw ward "surg" and lists its columns in another order.
    path = _write(tmp_path / "g.csv", "ward,age,y,sex\nicu,40,yes,m\nmed,50,no,f\n,60,no,f\n")
    data = load_aligned(path, schema, label_column="y", missing="keep")
    assert data.feature_names == schema.encoded_feature_names()
    np.testing.assert_array_equal(
        data.features,
        [[40, 0, 1, 1, 0, 0], [50, 1, 0, 0, 1, 0], [60, 1, 0, np.nan, np.nan, np.nan]],
    )
    unseen = _write(tmp_path / "h.csv", "age,sex,ward,y\n40,m,icu,yes\n50,x,med,no\n")
    with pytest.raises(UnseenCategoryError, match=r"h\.csv: column 'sex' has 'x' at line 3.*\(f, m\)"):
        load_aligned(unseen, schema, label_column="y")


def test_the_founding_site_s_schema_finds_categorical_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "i.csv", "age,sex,y\n40,m,yes\n50,f,no\n,NA,no\n")
    schema, data = infer_schema(path, label_column="y")
    assert schema == DataSchema(
        feature_names=("age", "sex"),
        class_names=("no", "yes"),
        categorical=(CategoricalColumn(name="sex", categories=("f", "m")),),
    )
    assert data.feature_names == ("age", "sex=f", "sex=m")
    assert align(data, schema).n_features == schema.n_features == 3


def test_a_schema_refuses_repeated_or_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"data.feature_names: listed more than once: a"):
        DataSchema(feature_names=("a", "a"), class_names=("x", "y"))
    with pytest.raises(ValueError, match=r"data.categorical: not among data.feature_names: b"):
        DataSchema(
            feature_names=("a",),
            class_names=("x", "y"),
            categorical=(CategoricalColumn(name="b", categories=("u",)),),
        )
