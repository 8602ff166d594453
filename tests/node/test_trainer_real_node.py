"""run_site with real nodes: three breast-cancer sites (uneven classes) on a MemoryNetwork,
secure mean merges, in trio virtual time (inline compute). The sites standardise with
the swarm's pooled statistics (the default): merged rounds 1-2 carry them (30 features,
a 62-parameter model: one scale vector, one moments vector), rounds 3-5 train."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from crypto.identity import NodeIdentity
from models.data import Dataset, load_dataset
from models.spec import logistic_regression, mlp
from models.splits import preset_scenario, split_sites
from models.training import TrainConfig
from swarmnode.api import create_local_swarm
from swarmnode.config import NodeConfig
from swarmnode.liveview import SiteView
from swarmnode.net.memory import open_memory_network
from swarmnode.node import params_hash
from swarmnode.simswarm import SIM_TIMEOUTS
from swarmnode.siterun import SiteReport, run_site
from swarmnode.trainer import RoundRecord, SwarmSetupError, TrainingSummary

pytestmark = pytest.mark.timeout(300)

SPEC = logistic_regression(30, 2)


def save_npz(data: Dataset, path: Path) -> str:
    np.savez(
        path,
        X=data.features,
        y=data.labels,
        feature_names=np.array(data.feature_names),
        class_names=np.array(data.class_names),
    )
    return str(path)


class Progress:
    """A `SiteObserver` keeping every merged round it hears of."""

    def __init__(self, seen: list[RoundRecord]) -> None:
        self.seen = seen

    def on_status(self, status: Mapping[str, Any]) -> None:
        pass

    def on_round(self, record: RoundRecord) -> None:
        self.seen.append(record)

    def on_stopped(self, summary: TrainingSummary) -> None:
        pass


def site_configs(tmp_path: Path, n_sites: int, training_rounds: int) -> tuple[NodeConfig, ...]:
    data = load_dataset("breast_cancer", positive_class="malignant")
    split = split_sites(data.labels, preset_scenario("uneven_class", n_sites), seed=0)
    test = save_npz(split.test_data(data), tmp_path / "test.npz")
    configs = create_local_swarm(
        tmp_path / "swarm",
        n_sites,
        model=SPEC,
        data=[save_npz(split.site_data(data, i), tmp_path / f"site{i}.npz") for i in range(n_sites)],
        max_rounds=training_rounds,  # after the genesis's 2 statistics rounds
        timeouts=SIM_TIMEOUTS,
        training=TrainConfig(batch_size=32, lr=0.01),
        secure=n_sites >= 3,  # a secure swarm needs t + 1 = 3 sites
    )
    return tuple(
        dataclasses.replace(config, data=dataclasses.replace(config.data, test_source=test))
        for config in configs
    )


async def test_three_sites_train_to_the_same_final_model(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    configs = site_configs(tmp_path, 3, training_rounds=3)
    reports: dict[int, SiteReport] = {}
    seen: list[RoundRecord] = []
    async with open_memory_network(seed=3) as network, trio.open_nursery() as nursery:
        for i, config in enumerate(configs):
            identity = NodeIdentity.load(config.node.key_file)

            async def site(
                i: int = i, config: NodeConfig = config, identity: NodeIdentity = identity
            ) -> None:
                reports[i] = await run_site(
                    config,
                    transport=network.transport(identity.node_id),
                    identity=identity,
                    observers=[Progress(seen)],
                    inline_compute=True,
                    timeout=600,
                )

            nursery.start_soon(site)
    finals = {report.summary.final_hash for report in reports.values()}
    assert len(finals) == 1
    (final_hash,) = finals
    assert final_hash is not None
    for report in reports.values():
        summary = report.summary
        assert [r.round for r in summary.rounds] == [1, 2, 3, 4, 5]
        assert [r.kind for r in summary.rounds] == ["statistics"] * 2 + ["training"] * 3
        assert params_hash(summary.parameters) == final_hash  # every site holds the final model
        assert all(r.participants == 3 for r in summary.rounds)
        assert summary.test is not None
        assert summary.test.roc_auc > 0.9  # the swarm model on the held-out test set (0.95-0.99 seen)
        saved = np.load(Path(report.metrics_path).parent / "final_model.npy")
        np.testing.assert_array_equal(saved, summary.parameters)
        written = json.loads(report.metrics_path.read_text())
        assert written["final_hash"] == final_hash.hex()
        assert [r["round"] for r in written["rounds"]] == [1, 2, 3, 4, 5]
        assert [r["kind"] for r in written["rounds"]] == ["statistics"] * 2 + ["training"] * 3
        assert written["test"]["roc_auc"] == summary.test.roc_auc
        assert all(r["merged"] is None and r["val_metric"] is None for r in written["rounds"][:2])
        assert all(r["merged"]["n_samples"] > 0 for r in written["rounds"][2:])
    assert len(seen) == 15  # progress: every site, every round
    # the merge is weighted by local sample counts: the merged model is the same on all sites,
    # their reported local validation metrics differ
    assert len({r.params_hash for r in seen}) == 5


async def test_a_site_with_another_model_is_refused_before_starting(tmp_path: Path) -> None:
    config = site_configs(tmp_path, 2, training_rounds=1)[0]
    other = dataclasses.replace(config, model=mlp(30, 2, hidden=(8,)))
    with pytest.raises(SwarmSetupError, match="not the model"):
        await run_site(other)
    assert not (Path(config.node.storage_dir) / "ledger.sqlite").exists()


class Heard:
    """A `SiteObserver` keeping everything it hears."""

    def __init__(self) -> None:
        self.statuses: list[Mapping[str, Any]] = []
        self.rounds: list[RoundRecord] = []
        self.stops: list[TrainingSummary] = []

    def on_status(self, status: Mapping[str, Any]) -> None:
        self.statuses.append(status)

    def on_round(self, record: RoundRecord) -> None:
        self.rounds.append(record)

    def on_stopped(self, summary: TrainingSummary) -> None:
        self.stops.append(summary)


async def test_observers_hear_each_status_round_and_the_stop_and_metrics_json_has_timings(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    configs = site_configs(tmp_path, 3, training_rounds=1)  # 2 statistics rounds, 1 training round
    heard = [Heard() for _ in configs]
    views = [SiteView(config.node.name, "roc_auc") for config in configs]
    reports: dict[int, SiteReport] = {}
    async with open_memory_network(seed=5) as network, trio.open_nursery() as nursery:
        for i, config in enumerate(configs):
            identity = NodeIdentity.load(config.node.key_file)

            async def site(
                i: int = i, config: NodeConfig = config, identity: NodeIdentity = identity
            ) -> None:
                reports[i] = await run_site(
                    config,
                    transport=network.transport(identity.node_id),
                    identity=identity,
                    observers=(heard[i], views[i]),
                    inline_compute=True,
                    timeout=600,
                )

            nursery.start_soon(site)
    for i, report in reports.items():
        observer, view = heard[i], views[i]
        assert [r.kind for r in observer.rounds] == ["statistics", "statistics", "training"]
        assert observer.stops == [report.summary]
        assert len({(s["round"], s["phase"]) for s in observer.statuses}) > 1  # it saw the phases move
        assert observer.statuses[-1]["stopped"] is True  # the status once more after training ended
        assert view.stopped
        assert view.rounds == [r.to_dict() for r in observer.rounds]
        assert view.row("done").phase == "stopped"
        timings = json.loads(report.metrics_path.read_text())["timings"]
        assert [(r["round"], r["kind"]) for r in timings["rounds"]] == [
            (1, "statistics"),
            (2, "statistics"),
            (3, "training"),
        ]
        assert [r["train_s"] is None for r in timings["rounds"]] == [True, True, False]
        assert timings["rounds"][2]["train_s"] >= 0
        assert all(r["merge_s"] >= 0 for r in timings["rounds"])
        assert timings["phases"]
        assert all(p["seconds"] >= 0 for p in timings["phases"])
