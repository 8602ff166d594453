"""Class imbalance, model selection and step budgets in a real swarm: 3 `swarmnode` nodes on
MemoryTransport in virtual time (the secure merge, the ledger), each running `SwarmTrainer`
with ``class_weights = "balanced"``, ``stopping.select = "best"`` and a budget in steps."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import trio
import trio.testing

from consensus.genesis import Genesis, StoppingRule
from consensus.selection import pooled_metric
from models import LocalTrainer, TrainConfig, load_dataset, logistic_regression, preset_scenario, split_sites
from models.preprocess import PreprocessConfig
from models.training import balanced_class_weights
from swarmnode.net.memory import open_memory_network
from swarmnode.simswarm import SwarmPlan
from swarmnode.trainer import TRAINING, SwarmTrainer, TrainingSummary, swarm_statistics_rounds

pytestmark = pytest.mark.timeout(400)
SITES = 3
ROUNDS = 4
STEPS = 7
SPEC = logistic_regression(30, 2)


def learning_genesis(plan: SwarmPlan, stats_rounds: int) -> Genesis:
    training = dataclasses.replace(
        plan.genesis.training,
        class_weights="balanced",
        sync_unit="steps",
        sync_every=STEPS,
        # Validation loss (continuous, unlike a small validation set's ROC AUC): no ties.
        stopping=StoppingRule(
            max_rounds=ROUNDS,
            statistics_rounds=stats_rounds,
            select="best",
            goal="min",
            metric_low=0.0,
            metric_high=10.0,
        ),
    )
    return dataclasses.replace(plan.genesis, training=training)


async def test_pooled_class_weights_selection_and_step_budget_agree_on_every_node(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    torch.set_num_threads(1)
    data = load_dataset("breast_cancer", positive_class="malignant")
    split = split_sites(data.labels, preset_scenario("uneven_class", SITES), 0)  # 90 % .. 2 % positives
    config = TrainConfig(validation_fraction=0.25, patience=0, lr=0.05)
    sites = [
        LocalTrainer(
            SPEC,
            split.site_data(data, i),
            config,
            generator=torch.Generator().manual_seed(i),
            preprocess=PreprocessConfig(standardize="swarm"),
        )
        for i in range(SITES)
    ]
    plan = SwarmPlan.create(tmp_path, SPEC, founders=SITES, max_rounds=ROUNDS, train=config)
    stats = swarm_statistics_rounds(
        learning_genesis(plan, 0), data.n_features, sites[0].parameters().size, 2, swarm_standardize=True
    )
    genesis = learning_genesis(plan, stats)
    summaries: dict[int, TrainingSummary] = {}
    best: dict[int, bytes | None] = {}
    scored: dict[int, list[float | None]] = {}

    async def site(i: int, network: object) -> None:
        trainer = SwarmTrainer.from_local_trainer(sites[i], genesis)
        async with plan.open_node(i, network, genesis=genesis) as node:  # type: ignore[arg-type]
            summaries[i] = await trainer.arun(node, inline_compute=True)
            best[i] = node.contract.state.best_model_hash
            rule = genesis.training.stopping
            records = [r.ready for r in node.contract.history()] + [node.contract.round.ready]
            scored[i] = [pooled_metric(rs, rule) for rs in records]

    async with open_memory_network(seed=0) as network, trio.open_nursery() as nursery:
        for i in range(SITES):
            nursery.start_soon(site, i, network)

    # Class weights: bit-identical on every node, and those of the union of the sites' rows.
    union = sum(s.class_counts() for s in sites)
    for s in sites:
        assert s.class_weights is not None
        np.testing.assert_array_equal(s.class_weights, sites[0].class_weights)
    np.testing.assert_allclose(sites[0].class_weights, balanced_class_weights(union), rtol=1e-4)
    own = [balanced_class_weights(s.class_counts()) for s in sites]
    assert all(not np.allclose(w, sites[0].class_weights, rtol=1e-2) for w in own)  # pooled != any site's

    # Selection: one best model for all, the one the ledger's pooled metrics rank first.
    finals = {s.final_hash for s in summaries.values()}
    assert len(finals) == 1
    assert len(set(best.values())) == 1
    assert finals == set(best.values())
    assert len({tuple(v) for v in scored.values()}) == 1
    summary = summaries[0]
    assert summary.final_hash is not None
    assert hashlib.sha256(summary.parameters.tobytes()).digest() == summary.final_hash
    training = [r for r in summary.rounds if r.kind == TRAINING]
    assert len(training) == ROUNDS
    # Round k's Ready records (after the statistics rounds) score training round k-1's model;
    # the round after the last (never started) scores the last one.
    scores = scored[0][stats + 1 :]
    assert len(scores) == ROUNDS
    assert all(v is not None for v in scores)
    top = min(range(ROUNDS), key=lambda k: (scores[k], -k))  # the lowest loss (the last of equal ones)
    assert bytes.fromhex(training[top].params_hash) == summary.final_hash
    assert summary.selected_round == training[top].round

    # The step budget: STEPS optimiser steps per training round (and one more round's worth,
    # trained before the Ready that scored the last model).
    assert [r.local_epochs for r in training] == [STEPS * k for k in range(1, ROUNDS + 1)]
