"""A secure swarm under genesis ``training.privacy`` (real nodes, threshold CKKS, in-memory
network, virtual time): every node offers weight 1 whatever its sample count, each merged
mean is the previous global model plus the mean of the clipped updates plus the noise the
accountant assumes, and the ledger stops once one more round would overspend the budget,
after which a node contributes no more."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import trio
import trio.testing

from consensus.genesis import PrivacyParams
from consensus.privacy_budget import gaussian_epsilon
from models import LocalTrainer, TrainConfig, load_sklearn, logistic_regression
from models.preprocess import PreprocessConfig
from models.privacy import clip_update, site_noise_std
from swarmnode.learners import SwarmSetupError
from swarmnode.net.memory import open_memory_network
from swarmnode.node import MergeResult, Node, SwarmStopped
from swarmnode.simswarm import SwarmPlan
from swarmnode.trainer import SwarmTrainer, initial_parameters, statistics_rounds_for

SPEC = logistic_regression(1000, 2)  # 2002 parameters: enough coordinates to measure a variance
SITES = 3
CLIP, SIGMA = 0.5, 2.0
PRIVACY = PrivacyParams(clip_norm=CLIP, noise_multiplier=SIGMA, delta=1e-5, epsilon_budget=4.5)
pytestmark = pytest.mark.timeout(600)


def update(i: int, size: int) -> np.ndarray:
    """Site i's update: far longer than C, so clipping shapes what it contributes."""
    return np.random.default_rng(100 + i).normal(0.0, 1.0, size).astype(np.float32)


async def offer_until_stopped(i: int, node: Node, start: np.ndarray) -> list[MergeResult]:
    results: list[MergeResult] = []
    model = start
    while True:
        try:
            result = await node.merge(model + update(i, model.size), 10**6 * (i + 1), timeout=900)
        except SwarmStopped:
            return results
        results.append(result)
        if result.stopped:
            return results
        model = result.parameters


async def test_private_swarm_merges_clipped_noised_updates_with_equal_weights_and_stops_at_budget(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    assert gaussian_epsilon(SIGMA, 3, 1e-5) <= 4.5 < gaussian_epsilon(SIGMA, 4, 1e-5)
    plan = SwarmPlan.create(tmp_path, SPEC, founders=SITES, max_rounds=10)
    genesis = replace(plan.genesis, training=replace(plan.genesis.training, privacy=PRIVACY))
    start = initial_parameters(genesis, plan.configs[0])
    received: dict[int, list[MergeResult]] = {}
    async with open_memory_network(seed=5) as net:

        async def site(i: int) -> None:
            async with plan.open_node(i, net, genesis=genesis) as node:
                received[i] = await offer_until_stopped(i, node, start)
                stopped = await node.wait_stopped()
                if i == 0:
                    assert "privacy budget" in stopped.reason
                    merged = [r for r in node.contract.history() if r.outcome == "merged"]
                    assert [r.contributor_weight for r in merged] == [3] * 3  # 3 sites of weight 1
                    with pytest.raises(SwarmStopped):
                        await node.merge(start, 10)

        with trio.fail_after(3000):
            async with trio.open_nursery() as nursery:
                for i in range(SITES):
                    nursery.start_soon(site, i)

    assert [len(received[i]) for i in range(SITES)] == [3] * SITES
    reference, noise = start.astype(np.float64), []
    for result in received[0]:
        clipped = [clip_update(update(i, start.size).astype(np.float64), CLIP) for i in range(SITES)]
        expected = reference + np.mean(clipped, axis=0)
        noise.append(result.parameters.astype(np.float64) - expected)
        reference = result.parameters.astype(np.float64)
    # 3 honest sites, sized for the 2 honest of the smallest mergeable round (t = 2, m = 3):
    # the mean carries 3 x (sigma·C / sqrt 2)² / 3² of variance.
    expected_variance = SITES * site_noise_std(CLIP, SIGMA, 2) ** 2 / SITES**2
    assert float(np.var(np.concatenate(noise))) == pytest.approx(expected_variance, rel=0.1)


def test_a_private_swarm_refuses_swarm_standardisation_at_setup(tmp_path: Path) -> None:
    """Swarm standardisation's feature moments are not model updates: clipped against a
    model they would be noise, and released outside the budget."""
    spec = logistic_regression(30, 2)
    plan = SwarmPlan.create(tmp_path, spec, founders=SITES)
    genesis = replace(plan.genesis, training=replace(plan.genesis.training, privacy=PRIVACY))
    data = load_sklearn("breast_cancer")

    def trainer(standardize: str) -> LocalTrainer:
        preprocess = PreprocessConfig(standardize=standardize)  # type: ignore[arg-type]
        config = TrainConfig(epochs=1)
        return LocalTrainer(spec, data, config, generator=torch.Generator(), preprocess=preprocess)

    with pytest.raises(SwarmSetupError, match=r'training\.privacy.*standardize = "local"'):
        SwarmTrainer.from_local_trainer(trainer("swarm"), genesis)
    SwarmTrainer.from_local_trainer(trainer("local"), genesis)
    # Without DP it is fine (a genesis that records swarm standardisation's statistics rounds).
    rounds = statistics_rounds_for(spec, PreprocessConfig(standardize="swarm"))
    stopping = replace(plan.genesis.training.stopping, statistics_rounds=rounds)
    standardizing = replace(plan.genesis, training=replace(plan.genesis.training, stopping=stopping))
    SwarmTrainer.from_local_trainer(trainer("swarm"), standardizing)
