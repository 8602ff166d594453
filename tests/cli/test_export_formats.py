"""Every export format for a user's own model (`model.factory`) with a 1-logit binary head:
predicted from the files in a fresh process, reproducing the trainer's test metrics; ONNX
also with onnx's reference evaluator; a tampered ONNX file is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from models.data import load_dataset
from models.spec import factory_model
from models.training import LocalTrainer, TrainConfig
from swarmnode.export import ExportError, FinalModel, load_export, write_export

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("safetensors")
onnx = pytest.importorskip("onnx")

FACTORY = """
from torch import nn

def binary_net(n_features, n_classes):
    return nn.Sequential(nn.Linear(n_features, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[FinalModel, Path, dict[str, object], Path]:
    """(the final model, the factory's directory, the trainer's test metrics, the test CSV)."""
    root = tmp_path_factory.mktemp("formats")
    (root / "user_nets.py").write_text(textwrap.dedent(FACTORY))
    sys.path.insert(0, str(root))
    try:
        data = load_dataset("breast_cancer")
        train, test = data.subset(np.arange(0, 400)), data.subset(np.arange(400, data.n_samples))
        spec = factory_model("user_nets:binary_net", data.n_features, 2)
        trainer = LocalTrainer(spec, train, TrainConfig(epochs=3), generator=torch.Generator().manual_seed(3))
        trainer.fit()
        metrics = trainer.evaluate(test).to_dict()
        model = FinalModel(
            spec=spec,
            parameters=trainer.parameters(),
            preprocessor=trainer.preprocessor,
            class_names=trainer.class_names,
            label_column="label",
        )
    finally:
        sys.path.remove(str(root))
    csv_path = root / "test.csv"
    lines = [",".join([*test.feature_names, "label"])]
    lines += [
        ",".join([*(repr(float(v)) for v in row), test.class_names[int(y)]])
        for row, y in zip(test.features, test.labels, strict=True)
    ]
    csv_path.write_text("\n".join(lines) + "\n")
    return model, root, metrics, csv_path


def _predict(model_dir: Path, data: Path, tmp_path: Path, pythonpath: str) -> dict[str, object]:
    metrics_out = tmp_path / "metrics.json"
    done = subprocess.run(
        [sys.executable, "-m", "swarmnode", "predict", "--model", str(model_dir), "--data", str(data),
         "--out", str(tmp_path / "p.csv"), "--metrics-out", str(metrics_out)],
        env={**os.environ, "PYTHONPATH": pythonpath}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    loaded: dict[str, object] = json.loads(metrics_out.read_text())
    return loaded


@pytest.mark.parametrize("fmt", ["torch", "safetensors", "torchscript", "onnx"])
def test_a_factory_model_with_a_binary_head_predicts_from_every_format_in_a_fresh_process(
    trained: tuple[FinalModel, Path, dict[str, object], Path], tmp_path: Path, fmt: str
) -> None:
    model, factory_dir, metrics, data = trained
    sys.path.insert(0, str(factory_dir))
    try:
        write_export(tmp_path / "export", model, fmt)
    finally:
        sys.path.remove(str(factory_dir))
    # torch and safetensors rebuild the network by its factory; torchscript and onnx carry it
    needs_factory = fmt in ("torch", "safetensors")
    path = os.pathsep.join([str(REPO), *([str(factory_dir)] if needs_factory else [])])
    predicted = _predict(tmp_path / "export", data, tmp_path, path)
    assert predicted["accuracy"] == metrics["accuracy"]
    assert predicted["roc_auc"] == metrics["roc_auc"]
    assert predicted["f1"] == metrics["f1"]
    assert predicted["loss"] == pytest.approx(metrics["loss"], rel=1e-5)


def test_onnx_runs_with_the_reference_evaluator_when_onnxruntime_is_absent(
    trained: tuple[FinalModel, Path, dict[str, object], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, factory_dir, _, _ = trained
    monkeypatch.syspath_prepend(str(factory_dir))
    write_export(tmp_path, model, "onnx")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a)
    )
    exported = load_export(tmp_path)
    x = torch.randn(5, model.spec.n_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.module()(x)
    assert torch.allclose(exported.module(x), expected, atol=1e-5)


def test_an_onnx_file_with_changed_weights_is_refused(
    trained: tuple[FinalModel, Path, dict[str, object], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights inside the ONNX graph are checked against the final model hash, as the
    torch formats are: an edited initializer is refused, not run."""
    model, factory_dir, _, _ = trained
    monkeypatch.syspath_prepend(str(factory_dir))
    write_export(tmp_path, model, "onnx")
    from swarmnode.results import params_hash

    card = {"final_model_hash": params_hash(model.parameters).hex()}
    (tmp_path / "card.json").write_text(json.dumps(card))
    load_export(tmp_path)  # the untouched export loads
    proto = onnx.load(str(tmp_path / "model.onnx"))
    weight = next(init for init in proto.graph.initializer if init.name == "0.weight")
    array = onnx.numpy_helper.to_array(weight).copy()
    array[0, 0] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(array, name="0.weight"))
    onnx.save(proto, str(tmp_path / "model.onnx"))
    with pytest.raises(ExportError, match="the model file was changed after the export"):
        load_export(tmp_path)
