"""Image data through the CLI: `swarmnode testnet --dataset digits-images` (scikit-learn's
digits as PNG class folders, MONAI's resnet18, secure merges), then `swarmnode export` and
`swarmnode predict` on the test image folder in a fresh process, reproducing the swarm's
test metrics exactly. Nothing is downloaded."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from consensus.genesis import Genesis
from swarmnode.cli import main
from swarmnode.config import ConfigError, NodeConfig

REPO = Path(__file__).resolve().parents[2]
DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-site in-memory image testnet: 16 x 16 digits, a narrow resnet18."""
    workdir = tmp_path_factory.mktemp("images") / "tn"
    assert main(["testnet", "--sim", "--dataset", "digits-images", "--model", "resnet18",
                 "--image-size", "16", "--widths", "8,16,32,64", "--augment", "affine",
                 "--nodes", "3", "--rounds", "2", "--scenario", "even", "--workdir", str(workdir),
                 "--plain", "--timeout", "400"]) == 0  # fmt: skip
    return workdir


def test_image_testnet_sites_read_class_folders_and_genesis_records_the_classes(testnet: Path) -> None:
    site = testnet / "site1"
    config = NodeConfig.load(site / "site.toml")
    assert config.data.kind == "image_folder"
    assert config.data.augment == "affine"
    assert config.model.kind == "resnet18"
    assert config.model.image_shape == (1, 16, 16)
    assert sorted(p.name for p in Path(config.data.source).iterdir()) == DIGITS
    assert next((Path(config.data.source) / "3").glob("*.png")).is_file()
    genesis = Genesis.load(testnet / "genesis.cbor")
    assert genesis.data is not None
    assert genesis.data.class_names == tuple(DIGITS)
    assert genesis.training.secure
    metrics = json.loads((site / "state" / "metrics.json").read_text())
    assert [r["kind"] for r in metrics["rounds"]] == ["training", "training"]  # standardize = "none"
    assert metrics["test"]["n_samples"] > 0


def test_export_then_predict_on_the_test_image_folder_reproduces_the_swarms_test_metrics(
    testnet: Path, tmp_path: Path
) -> None:
    site = testnet / "site0"
    reported = json.loads((site / "state" / "metrics.json").read_text())
    out = tmp_path / "export"
    assert main(["export", "--config", str(site / "site.toml"), "--out", str(out)]) == 0
    preprocess = json.loads((out / "preprocess.json").read_text())
    assert preprocess["class_names"] == DIGITS
    assert preprocess["feature_names"][:2] == ["c0y0x0", "c0y0x1"]
    assert json.loads((out / "card.json").read_text())["final_model_hash"] == reported["final_hash"]

    predictions, metrics_out = tmp_path / "pred.csv", tmp_path / "metrics.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    test_folder = str(testnet / "data" / "test")
    done = subprocess.run(
        [sys.executable, "-m", "swarmnode", "predict", "--model", str(out), "--data", test_folder,
         "--out", str(predictions), "--metrics-out", str(metrics_out)],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(metrics_out.read_text()) == reported["test"]  # exactly, every metric
    with predictions.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == reported["test"]["n_samples"]

    # a folder of loose images (no class folders) is predicted without labels
    loose = tmp_path / "loose"
    loose.mkdir()
    for i, image in enumerate(sorted((testnet / "data" / "test" / "7").glob("*.png"))[:3]):
        (loose / f"{i}.png").write_bytes(image.read_bytes())
    assert main(["predict", "--model", str(out), "--data", str(loose), "--out", str(tmp_path / "l.csv")]) == 0
    with (tmp_path / "l.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3


def test_image_settings_that_do_not_fit_the_model_are_refused(testnet: Path) -> None:
    path = testnet / "site2" / "site.toml"
    with pytest.raises(
        ConfigError, match=r"image_size, channels and augment are for kind = \"image_folder\""
    ):
        NodeConfig.load(path, overrides=['data.kind="table"'])
    config = NodeConfig.load(path, overrides=["data.image_size=[32, 32]"])
    with pytest.raises(
        ValueError, match=r"images of \[1, 32, 32\], but the model's image_shape is \[1, 16, 16\]"
    ):
        config.data.image_shape(config.model)


def test_testnet_refuses_a_table_model_for_images_and_a_too_small_densenet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["testnet", "--sim", "--dataset", "digits-images", "--workdir", str(tmp_path / "x"), "--plain"]
    assert main([*base, "--model", "logreg"]) == 2
    assert "image datasets train resnet18 or densenet121" in capsys.readouterr().err
    assert main([*base, "--model", "densenet121", "--image-size", "16"]) == 2
    assert "densenet121 needs images of at least 32 x 32 pixels" in capsys.readouterr().err
    assert main(["testnet", "--sim", "--model", "resnet18", "--workdir", str(tmp_path / "y"), "--plain"]) == 2
    assert "breast_cancer trains logreg or mlp" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_table_whose_classes_are_not_the_genesis_classes_is_refused(testnet: Path) -> None:
    from models.data import DatasetError, load_dataset
    from models.schema import DataSchema
    from swarmnode.siteinput import load_site_data

    path = testnet / "site0" / "site.toml"
    config = NodeConfig.load(path, overrides=['data.kind="table"', 'data.augment="none"'])
    assert load_site_data(config, None, "breast_cancer").class_names == ("malignant", "benign")
    swarm = DataSchema(feature_names=load_dataset("breast_cancer").feature_names, class_names=("0", "1"))
    with pytest.raises(DatasetError, match=r"malignant.* are not among the swarm's classes \(0, 1\)"):
        load_site_data(config, swarm, "breast_cancer")
