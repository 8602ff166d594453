"""A user's own metrics as a dict (`models.training.MetricsFn`, site.toml ``training.metrics``):
reported beside the built-in ones in every evaluation, in metrics.json and the report, and
usable as the stopping rule's metric through the embedding API."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
import trio
import trio.testing

from consensus.genesis import Genesis
from crypto.identity import NodeIdentity
from models.data import load_dataset
from models.preprocess import PreprocessConfig
from models.spec import SpecError, logistic_regression
from models.splits import preset_scenario, split_sites
from models.training import LocalTrainer, TrainConfig, classification_metrics
from swarmnode.api import create_local_swarm
from swarmnode.net.memory import open_memory_network
from swarmnode.report import write_site_report
from swarmnode.simswarm import SIM_TIMEOUTS
from swarmnode.siterun import SiteReport, run_site
from swarmnode.trainer import SwarmSetupError, SwarmTrainer, initial_parameters

pytestmark = pytest.mark.timeout(120)

SPEC = logistic_regression(30, 2)
USER_METRICS = """
import numpy as np

def clinical(labels, probabilities):
    predicted = probabilities.argmax(axis=1)
    positives = labels == 1
    return {"sensitivity": float((predicted[positives] == 1).mean()) if positives.any() else float("nan"),
            "n_positive": int(positives.sum())}
"""


def sensitivity(labels: npt.NDArray[np.int64], probabilities: npt.NDArray[np.float64]) -> dict[str, float]:
    predicted = probabilities.argmax(axis=1)
    positives = labels == 1
    return {"sensitivity": float((predicted[positives] == 1).mean()), "n_positive": float(positives.sum())}


def test_classification_metrics_carry_the_users_dict() -> None:
    labels = np.array([0, 1, 1, 0])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    metrics = classification_metrics(labels, probabilities, 2, metrics_fn=sensitivity)
    assert metrics.get("sensitivity") == 0.5
    assert metrics.get("accuracy") == 0.5
    assert metrics.get("missing") is None
    assert metrics.to_dict()["sensitivity"] == 0.5
    assert metrics.to_dict()["n_positive"] == 2.0


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (0.5, "not a dict of metrics"),
        ({"accuracy": 1.0}, "not one of the built-in metrics"),
        ({"": 1.0}, "non-empty string"),
        ({"ppv": "high"}, "'ppv' is 'high', not a number"),
    ],
)
def test_a_metrics_function_returning_other_than_new_numbers_is_refused(
    returned: object, message: str
) -> None:
    def bad(_labels: object, _probabilities: object) -> object:
        return returned

    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        classification_metrics(np.array([0, 1]), np.eye(2), 2, metrics_fn=bad)  # type: ignore[arg-type]


def test_an_unimportable_training_metrics_setting_names_the_key(tmp_path: Path) -> None:
    data = load_dataset("breast_cancer")
    with pytest.raises(SpecError, match=re.escape("training.metrics 'no_such_module:f': cannot import")):
        LocalTrainer(SPEC, data, TrainConfig(metrics="no_such_module:f"), generator=torch.Generator())


def test_the_stopping_metric_may_be_one_of_the_users(tmp_path: Path) -> None:
    configs = create_local_swarm(tmp_path, 3, model=SPEC, preprocess=PreprocessConfig(standardize="local"))
    genesis = Genesis.load(configs[0].ledger.genesis)
    data = load_dataset("breast_cancer", positive_class="malignant")

    def trainer(metrics_fn: object = None) -> LocalTrainer:
        return LocalTrainer(
            SPEC,
            data,
            TrainConfig(lr=0.01),
            generator=torch.Generator().manual_seed(0),
            preprocess=PreprocessConfig(standardize="local"),
            initial_parameters=initial_parameters(genesis, configs[0]),
            metrics_fn=metrics_fn,  # type: ignore[arg-type]
        )

    swarm = SwarmTrainer.from_local_trainer(trainer(sensitivity), genesis, metric="sensitivity")
    offer = swarm.next_sync()
    validation = swarm.learner.validate()
    assert validation is not None
    assert offer.val_metric == validation.get("sensitivity")
    assert offer.val_metric is not None
    assert 0 < offer.val_metric <= 1
    with pytest.raises(SwarmSetupError, match="or one your metrics function returns"):
        SwarmTrainer.from_local_trainer(trainer(), genesis, metric="sensitivity")
    absent = re.escape("returned no such metric (it returned sensitivity, n_positive)")
    with pytest.raises(SwarmSetupError, match=absent):
        SwarmTrainer.from_local_trainer(trainer(sensitivity), genesis, metric="specificity").next_sync()


async def test_training_metrics_reach_metrics_json_and_the_report(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mymetrics.py").write_text(USER_METRICS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_dataset("breast_cancer", positive_class="malignant")
    split = split_sites(data.labels, preset_scenario("even", 2), seed=0)
    configs = create_local_swarm(
        tmp_path / "swarm",
        2,
        model=SPEC,
        data=[split.site_data(data, i) for i in range(2)],
        max_rounds=2,
        timeouts=SIM_TIMEOUTS,
        training=TrainConfig(lr=0.01, metrics="mymetrics:clinical"),
        preprocess=PreprocessConfig(standardize="local"),
        secure=False,
    )
    test_file = tmp_path / "test.npz"
    test = split.test_data(data)
    np.savez(test_file, X=test.features, y=test.labels, feature_names=np.array(test.feature_names),
             class_names=np.array(test.class_names))  # fmt: skip
    configs = tuple(
        dataclasses.replace(c, data=dataclasses.replace(c.data, test_source=str(test_file))) for c in configs
    )
    reports: dict[int, SiteReport] = {}
    async with open_memory_network(seed=1) as network, trio.open_nursery() as nursery:
        for i, config in enumerate(configs):
            identity = NodeIdentity.load(config.node.key_file)

            async def site(i: int = i, config: object = config, identity: NodeIdentity = identity) -> None:
                reports[i] = await run_site(
                    config,  # type: ignore[arg-type]
                    transport=network.transport(identity.node_id),
                    identity=identity,
                    control=False,
                    inline_compute=True,
                    timeout=600,
                )

            nursery.start_soon(site)
    for report in reports.values():
        summary_test = report.summary.test
        assert summary_test is not None
        written = json.loads(report.metrics_path.read_text())
        assert written["test"]["sensitivity"] == summary_test.get("sensitivity")
        assert written["test"]["n_positive"] == float((test.labels == 1).sum())
        assert all("sensitivity" in r["merged"] and "sensitivity" in r["local"] for r in written["rounds"])
    site_toml = tmp_path / "swarm" / "site-0" / "site.toml"
    site_toml.write_text(
        f'[node]\nname = "site-0"\nstorage_dir = "state"\n[ledger]\ngenesis = "{configs[0].ledger.genesis}"\n'
        '[data]\n[model]\nkind = "logreg"\nn_features = 30\nn_classes = 2\n',
        encoding="utf-8",
    )
    files = write_site_report(site_toml)
    summary = json.loads(files.summary.read_text())
    reported = summary["test_metrics"][configs[0].node.name]
    assert reported["sensitivity"] == written_test(reports[0])
    assert not math.isnan(reported["sensitivity"])
    assert "<th>sensitivity</th>" in files.html.read_text(encoding="utf-8")


def written_test(report: SiteReport) -> float | None:
    test = report.summary.test
    return None if test is None else test.get("sensitivity")
