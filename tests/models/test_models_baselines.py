"""scripts/baselines.py end to end (small settings) and an expression-data pipeline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.data import Dataset
from models.preprocess import PreprocessConfig, agree_on_genes, highly_variable_genes
from models.spec import mlp
from models.splits import Scenario, split_sites
from models.training import LocalTrainer, TrainConfig

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "baselines.py"


def test_baselines_script_writes_json_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("swarmnode_baselines_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = [
        "--dataset",
        "breast_cancer",
        "--scenario",
        "uneven_class",
        "--sites",
        "3",
        "--repeats",
        "1",
        "--epochs",
        "15",
        "--out",
        str(tmp_path),
    ]
    assert module.main(argv) == 0
    report = json.loads((tmp_path / "baselines_breast_cancer_uneven_class_3sites.json").read_text())
    assert (tmp_path / "baselines_breast_cancer_uneven_class_3sites.png").stat().st_size > 10_000
    assert set(report["summary"]) == {"site_0", "site_1", "site_2", "central"}
    assert report["positive_class"] == "malignant"
    run = report["runs"][0]
    # The central model trains on exactly the union of the sites.
    site_rows = [run["results"][f"site_{i}"]["rows"] for i in range(3)]
    assert run["results"]["central"]["rows"] == sum(site_rows)
    assert 0.5 < report["summary"]["central"]["roc_auc"]["mean"] <= 1.0
    assert "central" in capsys.readouterr().out


def test_expression_pipeline_with_agreed_gene_list() -> None:
    """Sites rank genes locally, agree on one list, and train on log1p-standardised counts."""
    rng = np.random.default_rng(0)
    n, genes = 300, 50
    labels = (rng.random(n) < 0.3).astype(np.int64)
    counts = rng.poisson(5.0, size=(n, genes)).astype(np.float64)
    counts[:, :5] += labels[:, None] * rng.poisson(20.0, size=(n, 5))  # five marker genes
    data = Dataset(
        features=counts.astype(np.float32),
        labels=labels,
        feature_names=tuple(f"G{j}" for j in range(genes)),
        class_names=("rest", "AML"),
        source="synthetic",
    )
    split = split_sites(labels, Scenario(kind="even", n_sites=2), seed=1)
    sites = [split.site_data(data, i) for i in range(2)]
    agreed = agree_on_genes([highly_variable_genes(s, 10) for s in sites], 8)
    assert {f"G{j}" for j in range(5)} <= set(agreed)
    spec = mlp(len(agreed), 2, hidden=(16,), dropout=0.1)
    trainer = LocalTrainer(
        spec,
        sites[0],
        TrainConfig(epochs=30, lr=1e-2),
        generator=torch.Generator().manual_seed(0),
        preprocess=PreprocessConfig(genes=agreed, log1p=True),
    )
    trainer.fit()
    assert trainer.preprocessor.feature_names == agreed
    assert trainer.evaluate(split.test_data(data)).roc_auc > 0.95
