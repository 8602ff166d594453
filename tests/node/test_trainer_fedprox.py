"""FedProx end to end: a swarm whose genesis says ``merge_method = "fedprox"`` trains with
the proximal term in every site's local training (its mu from genesis ``merge_params``) and
merges by the secure weighted mean. The term acts: with a large mu each site's local update
stays measurably closer to the merged model it started from than with mu = 0."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import trio
import trio.testing

from consensus.genesis import Genesis, MergeParam
from models import LocalTrainer, TrainConfig, load_sklearn, logistic_regression, preset_scenario, split_sites
from models.flatten import FloatVector
from models.preprocess import PreprocessConfig
from models.training import LocalObjective, Metrics
from swarmnode.api import create_local_swarm
from swarmnode.learners import SpecLearner
from swarmnode.net.memory import open_memory_network
from swarmnode.simswarm import SwarmPlan
from swarmnode.trainer import SwarmTrainer, TrainingSummary

SITES = 3
ROUNDS = 2
pytestmark = pytest.mark.timeout(300)


class DriftRecorder:
    """A `LocalLearner` around a site's learner: how far each local training moved the model."""

    def __init__(self, inner: SpecLearner) -> None:
        self.inner = inner
        self.drifts: list[float] = []

    @property
    def num_samples(self) -> int:
        return self.inner.num_samples

    def train(self, amount: int, unit: str, objective: LocalObjective | None = None) -> float:
        start = self.inner.parameters()
        loss = self.inner.train(amount, unit, objective)
        self.drifts.append(float(np.linalg.norm(self.inner.parameters() - start)))
        return loss

    def parameters(self) -> FloatVector:
        return self.inner.parameters()

    def load(self, parameters: FloatVector) -> None:
        self.inner.load(parameters)

    def validate(self) -> Metrics | None:
        return self.inner.validate()

    def test(self) -> Metrics | None:
        return self.inner.test()


async def run_swarm(tmp_path: Path, mu: float) -> tuple[list[TrainingSummary], list[float]]:
    data = load_sklearn("breast_cancer", positive_class="malignant")
    split = split_sites(data.labels, preset_scenario("uneven_class", SITES), 0)
    config = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0, batch_size=32)
    spec = logistic_regression(data.n_features, data.n_classes)
    plan = SwarmPlan.create(tmp_path / f"mu{mu}", spec, founders=SITES, max_rounds=ROUNDS, train=config)
    training = replace(
        plan.genesis.training, merge_method="fedprox", merge_params=(MergeParam(name="mu", value=mu),)
    )
    genesis: Genesis = replace(plan.genesis, training=training)
    learners = [
        DriftRecorder(
            SpecLearner(
                LocalTrainer(
                    spec,
                    split.site_data(data, i),
                    config,
                    generator=torch.Generator().manual_seed(i),
                    preprocess=PreprocessConfig(standardize="local"),
                ),
                None,
            )
        )
        for i in range(SITES)
    ]
    summaries: list[TrainingSummary] = []
    async with open_memory_network(seed=1) as net:

        async def site(i: int) -> None:
            trainer = SwarmTrainer(learners[i], genesis, sync_every=3)
            assert trainer.local_objective is not None
            async with plan.open_node(i, net, genesis=genesis) as node:
                summaries.append(await trainer.arun(node, inline_compute=True))

        with trio.fail_after(3000):
            async with trio.open_nursery() as nursery:
                for i in range(SITES):
                    nursery.start_soon(site, i)
    return summaries, [d for learner in learners for d in learner.drifts[1:]]  # after the first merge


async def test_fedprox_swarm_keeps_local_updates_near_the_merged_model(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    torch.set_num_threads(1)
    free, free_drifts = await run_swarm(tmp_path, mu=0.0)
    prox, prox_drifts = await run_swarm(tmp_path, mu=5.0)
    for summaries in (free, prox):
        assert len(summaries) == SITES
        assert len({s.final_hash for s in summaries}) == 1  # one merged model, by the secure mean
        assert all(len(s.rounds) == ROUNDS for s in summaries)
    assert len(prox_drifts) == len(free_drifts) == SITES * (ROUNDS - 1)
    print(f"mean drift mu=0: {np.mean(free_drifts):.4f}, mu=5: {np.mean(prox_drifts):.4f}")
    assert np.mean(prox_drifts) < 0.5 * np.mean(free_drifts)  # measured: 0.18 vs 0.58


def test_create_local_swarm_writes_the_rule_and_its_parameters(tmp_path: Path) -> None:
    spec = logistic_regression(30, 2)
    configs = create_local_swarm(tmp_path, 3, model=spec, merge_method="fedprox", merge_params={"mu": 0.1})
    training = Genesis.load(configs[0].ledger.genesis).training
    assert (training.merge_method, training.merge_settings()) == ("fedprox", {"mu": 0.1})
