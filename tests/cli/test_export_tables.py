"""`swarmnode export` + `swarmnode predict` on a table with a categorical column and missing
values imputed with the swarm's pooled means: every export format, in a fresh process,
reproduces the swarm's own test metrics exactly (same one-hot encoding from the genesis
categories, same pooled means), and the test file without its label column predicts the
same probabilities."""

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
import trio
import trio.testing

from crypto.identity import NodeIdentity
from swarmnode.cli import main
from swarmnode.config import NodeConfig
from swarmnode.net.memory import open_memory_network
from swarmnode.siterun import run_site

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(240)
SITES = (("a", 7361), ("b", 7362))


def table(rng: np.random.Generator, rows: int, *, labelled: bool = True) -> str:
    """age, bmi (some cells empty), sex (f/m, some empty), y: sepsis when age + bmi and sex say so."""
    lines = ["age,bmi,sex" + (",y" if labelled else "")]
    for _ in range(rows):
        age, bmi, sex = rng.normal(50, 10), rng.normal(25, 4), str(rng.choice(["f", "m"]))
        sick = age + bmi + (5 if sex == "m" else 0) + rng.normal(0, 4) > 78
        cells = [f"{age:.1f}", "" if rng.random() < 0.15 else f"{bmi:.1f}", "" if rng.random() < 0.1 else sex]
        lines.append(",".join(cells + (["sepsis" if sick else "healthy"] if labelled else [])))
    return "\n".join(lines) + "\n"


def run_sites(configs: list[NodeConfig]) -> None:
    async def main_() -> None:
        async with open_memory_network(seed=2) as network, trio.open_nursery() as nursery:
            for config in configs:
                identity = NodeIdentity.load(config.node.key_file)
                nursery.start_soon(
                    lambda c=config, i=identity: run_site(
                        c, transport=network.transport(i.node_id), identity=i, control=False,
                        inline_compute=True, timeout=600,
                    )
                )  # fmt: skip

    trio.run(main_, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sites trained with impute = "mean" and swarm standardisation, plaintext merges."""
    root = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(0)
    for name, _ in SITES:
        (root / f"{name}.csv").write_text(table(rng, 120))
    test_rows = table(rng, 80)
    (root / "test.csv").write_text(test_rows)
    with (root / "test.csv").open() as handle:  # the same rows without the label column
        rows = [row[:-1] for row in csv.reader(handle)]
    (root / "unlabelled.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    for name, port in SITES:
        argv = ["init", "--name", name, "--dir", str(root / name), "--port", str(port),
                "--data", str(root / f"{name}.csv"), "--label-column", "y",
                "--test-data", str(root / "test.csv")]  # fmt: skip
        assert main(argv) == 0
        config = root / name / "site.toml"
        text = config.read_text().replace("log1p = false", 'log1p = false\nimpute = "mean"')
        config.write_text(text.replace("lr = 0.001", "lr = 0.05"))
    members = [f"--member={n}={root / n / 'node.key'}@/ip4/127.0.0.1/tcp/{p}" for n, p in SITES]
    argv = ["genesis", "--name", "tables", "--no-secure", "--max-rounds", "3", *members]
    argv += ["--model-from", str(root / "a" / "site.toml"), "--out", str(root / "genesis.cbor")]
    assert main(argv) == 0
    for name, _ in SITES:
        shutil.copy(root / "genesis.cbor", root / name / "genesis.cbor")
    run_sites([NodeConfig.load(root / name / "site.toml") for name, _ in SITES])
    return root


def predict(model_dir: Path, data: Path, out: Path, *metrics: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "swarmnode", "predict", "--model", str(model_dir), "--data", str(data),
         "--out", str(out), *metrics],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("fmt", ["torch", "torchscript", "safetensors", "onnx"])
def test_categories_and_imputed_values_predict_as_the_swarm_evaluated(
    swarm: Path, tmp_path: Path, fmt: str
) -> None:
    if fmt in ("safetensors", "onnx"):
        pytest.importorskip(fmt)
    reported = json.loads((swarm / "a" / "state" / "metrics.json").read_text())
    out = tmp_path / "export"
    config = str(swarm / "a" / "site.toml")
    assert main(["export", "--config", config, "--format", fmt, "--out", str(out)]) == 0
    preprocess = json.loads((out / "preprocess.json").read_text())
    assert preprocess["categorical"] == [{"name": "sex", "categories": ["f", "m"]}]
    assert preprocess["impute"] == "mean"
    assert preprocess["feature_names"] == ["age", "bmi", "sex=f", "sex=m"]
    labelled, metrics_out = tmp_path / "p.csv", tmp_path / "m.json"
    predict(out, swarm / "test.csv", labelled, "--metrics-out", str(metrics_out))
    assert json.loads(metrics_out.read_text()) == reported["test"]  # exactly, every metric
    unlabelled = tmp_path / "u.csv"
    predict(out, swarm / "unlabelled.csv", unlabelled)
    with labelled.open() as a, unlabelled.open() as b:
        with_labels = [{k: v for k, v in row.items() if k != "true"} for row in csv.DictReader(a)]
        assert list(csv.DictReader(b)) == with_labels
