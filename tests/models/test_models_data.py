"""Dataset loaders, their error messages, and site-local preprocessing."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest

from models.data import (
    Dataset,
    DatasetError,
    MissingColumnError,
    MissingFileError,
    MissingValueError,
    NonNumericFeatureError,
    UnknownDatasetError,
    load_csv,
    load_dataset,
    load_h5ad,
    load_npz,
    load_sklearn,
)
from models.preprocess import PreprocessConfig, Preprocessor, agree_on_genes, highly_variable_genes

# ------------------------------------------------------------------ CSV


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_loads_features_labels_and_names(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "a,diagnosis,b\n1,AML,2.5\n3,ALL,4\n5, AML ,6e-1\n")
    data = load_dataset(path, label_column="diagnosis")
    assert data.feature_names == ("a", "b")
    assert data.class_names == ("ALL", "AML")
    assert data.labels.tolist() == [1, 0, 1]
    assert data.features.dtype == np.float32
    assert data.features.tolist() == [[1.0, 2.5], [3.0, 4.0], [5.0, np.float32(0.6)]]
    binary = load_csv(path, "diagnosis", positive_class="ALL")
    assert binary.class_names == ("not ALL", "ALL")
    assert binary.labels.tolist() == [0, 1, 0]


def test_csv_numeric_labels_sort_numerically(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "x,y\n1,10\n2,2\n3,2\n")
    assert load_csv(path, "y").class_names == ("2", "10")


def test_csv_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(MissingFileError, match=r"nope\.csv"):
        load_csv(missing, "y")
    with pytest.raises(FileNotFoundError):
        load_dataset(missing, label_column="y")


def test_csv_missing_label_column_names_file_column_and_available_ones(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "gene1,gene2,condition\n1,2,x\n3,4,y\n")
    with pytest.raises(MissingColumnError) as info:
        load_csv(path, "diagnosis")
    message = str(info.value)
    assert "d.csv" in message
    assert "'diagnosis'" in message
    assert "gene1, gene2, condition" in message


def test_csv_non_numeric_feature_names_the_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "age,sex,y\n40,1,a\n\n50,female,b\n")
    with pytest.raises(NonNumericFeatureError, match=r"d\.csv.*'sex'.*line 4.*'female'"):
        load_csv(path, "y")


@pytest.mark.parametrize("cell", ["", "NaN", "nan", "NA"])
def test_csv_nan_names_column_and_line(tmp_path: Path, cell: str) -> None:
    path = _write(tmp_path / "d.csv", f"a,b,y\n1,2,p\n3,{cell},q\n")
    with pytest.raises(MissingValueError, match=r"d\.csv.*column 'b'.*line 3"):
        load_csv(path, "y")


def test_csv_infinite_value_and_missing_label_and_ragged_row(tmp_path: Path) -> None:
    with pytest.raises(MissingValueError, match=r"non-finite.*'a'"):
        load_csv(_write(tmp_path / "inf.csv", "a,y\ninf,p\n1,q\n"), "y")
    with pytest.raises(MissingValueError, match=r"missing label.*'y'.*line 2"):
        load_csv(_write(tmp_path / "lab.csv", "a,y\n1,\n2,q\n"), "y")
    with pytest.raises(DatasetError, match="line 3 has 1 fields"):
        load_csv(_write(tmp_path / "rag.csv", "a,y\n1,p\n2\n"), "y")
    with pytest.raises(DatasetError, match="only one class"):
        load_csv(_write(tmp_path / "one.csv", "a,y\n1,p\n2,p\n"), "y")


# ------------------------------------------------------------------ h5ad


def _write_h5ad(path: Path, x: np.ndarray, labels: list[object] | None = None) -> Path:
    n, d = x.shape
    obs = pd.DataFrame(
        {"disease": labels if labels is not None else ["AML", "ALL", "CLL", "AML"][:n], "batch": ["b"] * n},
        index=[f"cell{i}" for i in range(n)],
    )
    var = pd.DataFrame(index=[f"GENE{j}" for j in range(d)])
    anndata.AnnData(X=x, obs=obs, var=var).write_h5ad(path)
    return path


def test_h5ad_loads_with_one_vs_rest_binarisation(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = _write_h5ad(tmp_path / "blood.h5ad", x)
    data = load_h5ad(path, "disease", positive_class="AML")
    assert data.class_names == ("not AML", "AML")
    assert data.labels.tolist() == [1, 0, 0, 1]
    assert data.feature_names == ("GENE0", "GENE1", "GENE2")
    assert np.array_equal(data.features, x)
    assert load_dataset(path, label_column="disease").class_names == ("ALL", "AML", "CLL")


def test_h5ad_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"missing\.h5ad"):
        load_h5ad(tmp_path / "missing.h5ad", "disease")
    path = _write_h5ad(tmp_path / "blood.h5ad", np.ones((4, 3), dtype=np.float32))
    with pytest.raises(MissingColumnError, match=r"blood\.h5ad.*'diagnosis'.*obs columns: disease, batch"):
        load_h5ad(path, "diagnosis")
    with pytest.raises(MissingColumnError, match="layer 'counts'"):
        load_h5ad(path, "disease", layer="counts")
    with pytest.raises(DatasetError, match="positive class 'CML' not found; classes: ALL, AML, CLL"):
        load_h5ad(path, "disease", positive_class="CML")
    x = np.ones((4, 3), dtype=np.float32)
    x[2, 1] = np.nan
    nan_path = _write_h5ad(tmp_path / "nan.h5ad", x)
    with pytest.raises(MissingValueError, match=r"nan\.h5ad.*'GENE1'.*'cell2'"):
        load_h5ad(nan_path, "disease")
    lab_path = _write_h5ad(
        tmp_path / "lab.h5ad", np.ones((4, 3), dtype=np.float32), ["AML", None, "ALL", "AML"]
    )
    with pytest.raises(MissingValueError, match=r"missing label.*'cell1'"):
        load_h5ad(lab_path, "disease")


def test_h5ad_non_numeric_matrix_names_the_gene(tmp_path: Path) -> None:
    # AnnData refuses to write string X, so write a valid file and corrupt X via h5py.
    import h5py  # type: ignore[import-untyped]

    path = _write_h5ad(tmp_path / "str.h5ad", np.ones((4, 3), dtype=np.float32))
    with h5py.File(path, "r+") as f:
        del f["X"]
        values = np.array([["1", "2", "3"], ["4", "x", "6"], ["7", "8", "9"], ["1", "1", "1"]], dtype="S")
        dataset = f.create_dataset("X", data=values)
        dataset.attrs["encoding-type"] = "array"
        dataset.attrs["encoding-version"] = "0.2.0"
    with pytest.raises(NonNumericFeatureError, match=r"str\.h5ad.*'GENE1'.*'cell1'"):
        load_h5ad(path, "disease")


# ------------------------------------------------------------------ npz


def test_npz_loads_with_names(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(
        path,
        X=np.eye(3),
        y=np.array([0, 1, 1]),
        feature_names=np.array(["f", "g", "h"]),
        class_names=np.array(["healthy", "sick"]),
    )
    data = load_npz(path)
    assert data.class_names == ("healthy", "sick")
    assert data.feature_names == ("f", "g", "h")
    assert data.labels.tolist() == [0, 1, 1]
    string_labels = tmp_path / "s.npz"
    np.savez(string_labels, X=np.eye(2), y=np.array(["b", "a"]))
    assert load_dataset(string_labels).class_names == ("a", "b")


def test_npz_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"none\.npz"):
        load_npz(tmp_path / "none.npz")
    wrong_key = tmp_path / "k.npz"
    np.savez(wrong_key, features=np.eye(2), target=np.array([0, 1]))
    with pytest.raises(MissingColumnError, match=r"label array 'y'.*available arrays: features, target"):
        load_npz(wrong_key, features_key="features")
    text = tmp_path / "t.npz"
    np.savez(
        text, X=np.array([["1", "a"], ["2", "3"]]), y=np.array([0, 1]), feature_names=np.array(["age", "sex"])
    )
    with pytest.raises(NonNumericFeatureError, match="'sex'"):
        load_npz(text)
    nan = tmp_path / "n.npz"
    np.savez(nan, X=np.array([[1.0, 2.0], [np.nan, 3.0]]), y=np.array([0, 1]))
    with pytest.raises(MissingValueError, match=r"NaN.*'column 0'.*row 1"):
        load_npz(nan)
    obj = tmp_path / "o.npz"
    np.savez(obj, X=np.array([[1, None]], dtype=object), y=np.array([0]))
    with pytest.raises(NonNumericFeatureError, match="array 'X'"):
        load_npz(obj)


# ------------------------------------------------------------------ bundled and dispatch


def test_bundled_datasets_and_unknown_name() -> None:
    cancer = load_sklearn("breast_cancer", positive_class="malignant")
    assert (cancer.n_samples, cancer.n_features) == (569, 30)
    assert cancer.class_counts() == (357, 212)
    assert load_dataset("digits").class_names == tuple(str(i) for i in range(10))
    assert load_dataset("wine").n_classes == 3
    with pytest.raises(UnknownDatasetError, match="breast_cancer, digits, wine"):
        load_dataset("iris")
    with pytest.raises(UnknownDatasetError, match=r"\.csv, \.h5ad or \.npz"):
        load_dataset("data.parquet")
    with pytest.raises(DatasetError, match="label_column is required"):
        load_dataset("data.csv")


def test_dataset_arrays_are_read_only_and_validated() -> None:
    data = load_sklearn("wine")
    with pytest.raises(ValueError, match="read-only"):
        data.features[0, 0] = 1.0
    with pytest.raises(MissingValueError, match="'b'"):
        Dataset(
            features=np.array([[0.0, np.inf]], dtype=np.float32),
            labels=np.array([0]),
            feature_names=("a", "b"),
            class_names=("x", "y"),
            source="t",
        )
    with pytest.raises(DatasetError, match="outside range"):
        Dataset(
            features=np.zeros((1, 1), dtype=np.float32),
            labels=np.array([2]),
            feature_names=("a",),
            class_names=("x", "y"),
            source="t",
        )


# ------------------------------------------------------------------ preprocessing


def _expression() -> Dataset:
    rng = np.random.default_rng(0)
    counts = rng.poisson(lam=[1.0, 50.0, 5.0, 200.0], size=(40, 4)).astype(np.float32)
    counts[:20, 2] *= 10  # GENE2 varies most after log1p
    return Dataset(
        features=counts,
        labels=np.array([0, 1] * 20),
        feature_names=("G0", "G1", "G2", "G3"),
        class_names=("rest", "AML"),
        source="expr",
    )


def test_preprocessor_uses_only_the_fitting_sites_statistics() -> None:
    data = _expression()
    site_a, site_b = data.subset(np.arange(0, 20)), data.subset(np.arange(20, 40))
    config = PreprocessConfig(genes=("G3", "G2"), log1p=True)
    fitted = Preprocessor.fit(site_a, config)
    out_a = fitted.transform(site_a)
    assert out_a.feature_names == ("G3", "G2")
    assert np.allclose(out_a.features.mean(axis=0), 0.0, atol=1e-5)
    assert np.allclose(out_a.features.std(axis=0), 1.0, atol=1e-4)
    # Site B transformed with site A's statistics is not standardised (different distribution).
    assert not np.allclose(fitted.transform(site_b).features.mean(axis=0), 0.0, atol=0.1)
    expected = (np.log1p(site_b.features[:, [3, 2]]) - fitted.mean) / fitted.scale
    assert np.allclose(fitted.transform(site_b).features, expected)


def test_preprocessing_errors_name_what_is_wrong() -> None:
    data = _expression()
    with pytest.raises(MissingColumnError, match="1 requested features not found: TP53"):
        Preprocessor.fit(data, PreprocessConfig(genes=("G0", "TP53")))
    negative = Dataset(
        features=np.array([[1.0, -2.0], [0.0, 1.0]], dtype=np.float32),
        labels=np.array([0, 1]),
        feature_names=("a", "b"),
        class_names=("x", "y"),
        source="neg",
    )
    with pytest.raises(DatasetError, match=r"log1p.*'b'"):
        Preprocessor.fit(negative, PreprocessConfig(log1p=True))


def test_highly_variable_genes_and_agreement_are_deterministic() -> None:
    data = _expression()
    ranking = highly_variable_genes(data, 2)
    assert ranking[0] == "G2"
    site_lists = [("G2", "G1", "G0"), ("G1", "G2", "G3"), ("G2", "G3", "G1")]
    agreed = agree_on_genes(site_lists, 2)
    assert agreed == ("G2", "G1")
    assert agree_on_genes(list(reversed(site_lists)), 2) == agreed
    assert agree_on_genes(site_lists, 2, common_genes={"G1", "G3"}) == ("G1", "G3")
    with pytest.raises(ValueError, match="only 1 candidate"):
        agree_on_genes([("G1",)], 2)
