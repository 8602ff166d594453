"""`swarmnode export` + `swarmnode predict`: the swarm's final model used afterwards, from the
exported files alone, in a fresh process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.training import classification_metrics
from swarmnode.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-site in-memory testnet with secure merges and swarm standardisation."""
    workdir = tmp_path_factory.mktemp("export") / "tn"
    assert main(["testnet", "--sim", "--nodes", "3", "--rounds", "2", "--workdir", str(workdir), "--plain",
                 "--scenario", "even", "--timeout", "300"]) == 0  # fmt: skip
    return workdir


def _predict(model_dir: Path, data: Path, out: Path, metrics_out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "swarmnode", "predict", "--model", str(model_dir), "--data", str(data),
         "--out", str(out), "--metrics-out", str(metrics_out)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("fmt", ["torch", "torchscript"])
def test_export_then_predict_in_a_fresh_process_reproduces_the_swarms_test_metrics(
    testnet: Path, tmp_path: Path, fmt: str
) -> None:
    site = testnet / "site0"
    reported = json.loads((site / "state" / "metrics.json").read_text())
    out = tmp_path / "export"
    assert main(["export", "--config", str(site / "site.toml"), "--format", fmt, "--out", str(out)]) == 0
    model_json = json.loads((out / "model.json").read_text())
    assert (out / model_json["file"]).stat().st_size > 0
    preprocess = json.loads((out / "preprocess.json").read_text())
    assert preprocess["standardize"] == "swarm"
    assert len(preprocess["mean"]) == len(preprocess["feature_names"]) == model_json["n_features"]
    assert preprocess["class_names"] == ["benign", "malignant"] or len(preprocess["class_names"]) == 2
    card = json.loads((out / "card.json").read_text())
    assert card["final_model_hash"] == reported["final_hash"]
    assert card["statistics_rounds"] >= 1
    training = [r for r in card["rounds"] if r["kind"] == "training"]
    assert len(training) == 2
    assert all(len(r["contributors"]) == 3 for r in training)
    assert {c["name"] for c in training[0]["contributors"]} == {"site0", "site1", "site2"}
    assert reported["final_hash"] in (out / "MODEL_CARD.md").read_text()

    predictions, metrics_out = tmp_path / "pred.csv", tmp_path / "metrics.json"
    done = _predict(out, testnet / "data" / "test.npz", predictions, metrics_out)
    assert done.returncode == 0, done.stderr
    assert json.loads(metrics_out.read_text()) == reported["test"]  # exactly, every metric
    with predictions.open() as handle:
        rows = list(csv.DictReader(handle))
    names = preprocess["class_names"]
    probabilities = np.array([[float(r[f"p_{c}"]) for c in names] for r in rows])
    labels = np.array([names.index(r["true"]) for r in rows])
    from_csv = classification_metrics(labels, probabilities, len(names))
    assert from_csv.roc_auc == reported["test"]["roc_auc"]
    assert from_csv.accuracy == reported["test"]["accuracy"]


def test_export_refuses_a_format_whose_package_is_missing_and_an_unknown_format(
    testnet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(testnet / "site0" / "site.toml")
    assert main(["export", "--config", config, "--format", "pickle", "--out", str(tmp_path / "x")]) == 2
    assert "format must be one of torch, torchscript, safetensors, onnx" in capsys.readouterr().err
    for fmt, package in (("safetensors", "safetensors"), ("onnx", "onnx")):
        code = main(["export", "--config", config, "--format", fmt, "--out", str(tmp_path / fmt)])
        try:
            __import__(package)
        except ImportError:
            assert code == 2
            assert f"needs the Python package {package!r}" in capsys.readouterr().err
        else:
            assert code == 0


def test_predict_refuses_a_directory_that_is_no_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.csv"
    data.write_text("a,y\n1,0\n2,1\n")
    assert main(["predict", "--model", str(tmp_path), "--data", str(data)]) == 2
    assert "model.json: not found" in capsys.readouterr().err
