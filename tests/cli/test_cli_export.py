"""`swarmnode export` + `swarmnode predict`: the swarm's final model used afterwards, from the
exported files alone, in a fresh process."""

from __future__ import annotations

import csv
import json
import os
import shutil
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


@pytest.mark.parametrize("fmt", ["torch", "torchscript", "safetensors", "onnx"])
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


def _exported(testnet: Path, out: Path) -> Path:
    assert main(["export", "--config", str(testnet / "site0" / "site.toml"), "--out", str(out)]) == 0
    return out


def _probabilities(path: Path) -> list[list[str]]:
    with path.open() as handle:
        return [[v for k, v in row.items() if k.startswith("p_")] for row in csv.DictReader(handle)]


def test_predict_aligns_csv_columns_by_name_and_lists_missing_ones(
    testnet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.data import load_dataset

    out = _exported(testnet, tmp_path / "export")
    test = load_dataset(testnet / "data" / "test.npz")
    reference = tmp_path / "reference.csv"
    assert main(["predict", "--model", str(out), "--data", str(testnet / "data" / "test.npz"),
                 "--out", str(reference)]) == 0  # fmt: skip
    reversed_csv = tmp_path / "reversed.csv"  # no label column, columns in reverse order
    with reversed_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(test.feature_names[::-1])
        writer.writerows([repr(float(v)) for v in row[::-1]] for row in test.features)
    predicted = tmp_path / "reversed.predictions.csv"
    assert main(["predict", "--model", str(out), "--data", str(reversed_csv), "--out", str(predicted)]) == 0
    assert "no labels in the data: no metrics" in capsys.readouterr().out
    assert _probabilities(predicted) == _probabilities(reference)

    short = tmp_path / "short.csv"
    with short.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(test.feature_names[1:])
        writer.writerows([repr(float(v)) for v in row[1:]] for row in test.features)
    assert main(["predict", "--model", str(out), "--data", str(short), "--out", str(tmp_path / "s.csv")]) == 2
    assert f"missing {test.feature_names[0]!r}, unexpected none" in capsys.readouterr().err


def test_predict_refuses_a_model_file_changed_after_the_export(
    testnet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An attacker (or an accident) swaps the exported weights for others: card.json names the
    ledger's final model hash, and predict refuses weights that do not hash to it."""
    import torch

    out = _exported(testnet, tmp_path / "export")
    state = torch.load(out / "model.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 0.01
    torch.save(state, out / "model.pt")
    data = str(testnet / "data" / "test.npz")
    assert main(["predict", "--model", str(out), "--data", data, "--out", str(tmp_path / "p.csv")]) == 2
    assert "the model file was changed after the export" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_export_refuses_a_stored_final_model_that_does_not_match_the_ledger(
    testnet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "tn"
    shutil.copytree(testnet, copy)
    final = json.loads((copy / "site0" / "state" / "metrics.json").read_text())["final_hash"]
    stored = copy / "site0" / "state" / "models" / f"{final}.f32"
    data = bytearray(stored.read_bytes())
    data[0] ^= 1
    stored.write_bytes(bytes(data))
    assert main(["export", "--config", str(copy / "site0" / "site.toml"), "--out", str(tmp_path / "x")]) == 2
    assert "contents do not match the ledger's hash" in capsys.readouterr().err
    assert not (tmp_path / "x" / "model.pt").exists()
