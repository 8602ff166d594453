"""A swarm with genesis ``server_optimizer = "fedadam"`` (secure merge, in-memory network,
virtual time): the ledger records the merged means, every node hands its trainer the same
FedAdam global model bit for bit (the optimizer replayed by hand over the ledger's means),
and a restarted node, with or without its saved optimizer state, recomputes it bit for bit,
as does a node joining late (replaying the means it fetches from its peers).
With ``merge_method = "fedprox"`` as well, `SwarmTrainer` trains every site from that same
global model (FedProx's anchor)."""

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
from models.optimizers import optimizer_named
from models.optimizers.fedadam import fedadam_step
from models.optimizers.state import first_state
from models.preprocess import PreprocessConfig
from models.training import LocalObjective, Metrics
from swarmnode.api import create_local_swarm
from swarmnode.global_models import STATE_FILE
from swarmnode.learners import SpecLearner
from swarmnode.net.memory import open_memory_network
from swarmnode.node import MergeResult, Node, SwarmStopped
from swarmnode.simswarm import SwarmPlan
from swarmnode.trainer import SwarmTrainer

SPEC = logistic_regression(30, 2)
N_PARAMS = 62
SITES = 3
ROUNDS = 4
pytestmark = pytest.mark.timeout(300)


async def merge_until_stopped(i: int, node: Node) -> list[MergeResult]:
    """Contribute what a site's training might: the model received, moved by a site offset."""
    results: list[MergeResult] = []
    params = np.linspace(-1.0, 1.0, N_PARAMS, dtype=np.float32) * (i + 1)
    while True:
        try:
            result = await node.merge(params, 10 + i, timeout=900)
        except SwarmStopped:
            return results
        results.append(result)
        if result.stopped:
            return results
        params = result.parameters + np.float32(0.05 * (i + 1))


async def test_fedadam_swarm_hands_every_node_the_same_global_model_and_a_restart_replays_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    plan = SwarmPlan.create(tmp_path, SPEC, founders=SITES, max_rounds=ROUNDS)
    server_params = (MergeParam(name="server_lr", value=0.1), MergeParam(name="tau", value=0.01))
    training = replace(plan.genesis.training, server_optimizer="fedadam", server_params=server_params)
    genesis = replace(plan.genesis, training=training)
    received: dict[int, list[MergeResult]] = {}
    means: list[np.ndarray] = []
    async with open_memory_network(seed=3) as net:

        async def site(i: int) -> None:
            async with plan.open_node(i, net, genesis=genesis) as node:
                received[i] = await merge_until_stopped(i, node)
                await node.wait_stopped()
                if i == 0:
                    for result in received[0]:
                        means.append(np.array(await node.merged_parameters(result.params_hash)))

        with trio.fail_after(3000):
            async with trio.open_nursery() as nursery:
                for i in range(SITES):
                    nursery.start_soon(site, i)

        rounds = [r.round for r in received[0]]
        assert len(rounds) == ROUNDS
        for i in range(1, SITES):  # every node: the same rounds, means and global models, bit for bit
            assert [r.round for r in received[i]] == rounds
            assert [r.params_hash for r in received[i]] == [r.params_hash for r in received[0]]
            assert [r.parameters.tobytes() for r in received[i]] == [
                r.parameters.tobytes() for r in received[0]
            ]
        # What nodes got is FedAdam over the ledger's means, replayed by hand.
        settings = optimizer_named("fedadam").settings({p.name: p.value for p in server_params})
        state = first_state(means[0])
        expected = [state.global_model()]
        for mean in means[1:]:
            state = fedadam_step(state, mean, settings)
            expected.append(state.global_model())
        assert [r.parameters.tobytes() for r in received[0]] == [e.tobytes() for e in expected]
        assert received[0][0].parameters.tobytes() == means[0].tobytes()  # the first round: its mean
        for result, mean in zip(received[0][1:], means[1:], strict=True):
            assert not np.array_equal(result.parameters, mean)  # the optimizer moved it

    final = received[0][-1]
    state_file = plan.configs[0].node.storage_dir / STATE_FILE
    # Restarted alone (nobody to ask: its own ledger and disk), from its saved optimizer
    # state, then without it: replaying every merged round.
    for keep_state in (True, False):
        if not keep_state:
            state_file.unlink()
        async with (
            open_memory_network(seed=4) as alone,
            plan.open_node(0, alone, genesis=genesis) as restarted,
        ):
            latest = await restarted.latest_model()
        assert latest is not None
        assert latest.params_hash == final.params_hash
        assert latest.parameters.tobytes() == final.parameters.tobytes()
    assert state_file.exists()  # written again by the replay


class LoadRecorder:
    """A `LocalLearner` around a site's learner: every model the trainer loads into it."""

    def __init__(self, inner: SpecLearner) -> None:
        self.inner = inner
        self.loaded: list[bytes] = []

    @property
    def num_samples(self) -> int:
        return self.inner.num_samples

    def train(self, amount: int, unit: str, objective: LocalObjective | None = None) -> float:
        assert objective is not None  # FedProx's term, anchored at the model loaded last
        return self.inner.train(amount, unit, objective)

    def parameters(self) -> FloatVector:
        return self.inner.parameters()

    def load(self, parameters: FloatVector) -> None:
        self.loaded.append(np.asarray(parameters, dtype="<f4").tobytes())
        self.inner.load(parameters)

    def validate(self) -> Metrics | None:
        return self.inner.validate()

    def test(self) -> Metrics | None:
        return self.inner.test()


async def test_fedprox_with_fedadam_trains_every_site_from_the_same_global_model(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    torch.set_num_threads(1)
    data = load_sklearn("breast_cancer", positive_class="malignant")
    split = split_sites(data.labels, preset_scenario("uneven_class", SITES), 0)
    config = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0, batch_size=32)
    spec = logistic_regression(data.n_features, data.n_classes)
    plan = SwarmPlan.create(tmp_path, spec, founders=SITES, max_rounds=3, train=config)
    training = replace(
        plan.genesis.training,
        merge_method="fedprox",
        merge_params=(MergeParam(name="mu", value=0.1),),
        server_optimizer="fedadam",
        server_params=(MergeParam(name="server_lr", value=0.05),),
    )
    genesis = replace(plan.genesis, training=training)
    learners = [
        LoadRecorder(
            SpecLearner(
                LocalTrainer(
                    spec, split.site_data(data, i), config, generator=torch.Generator().manual_seed(i),
                    preprocess=PreprocessConfig(standardize="local"),
                ),
                None,
            )
        )
        for i in range(SITES)
    ]  # fmt: skip
    final_means: list[bytes] = []
    async with open_memory_network(seed=5) as net:

        async def site(i: int) -> None:
            async with plan.open_node(i, net, genesis=genesis) as node:
                trainer = SwarmTrainer(learners[i], genesis, sync_every=2)
                summary = await trainer.arun(node, inline_compute=True)
                assert summary.final_hash is not None
                final_means.append((await node.merged_parameters(summary.final_hash)).tobytes())

        with trio.fail_after(3000):
            async with trio.open_nursery() as nursery:
                for i in range(SITES):
                    nursery.start_soon(site, i)
    assert len(learners[0].loaded) >= 3
    assert all(learner.loaded == learners[0].loaded for learner in learners)  # bit for bit
    assert learners[0].loaded[-1] != final_means[0]  # the global model, not the ledger's mean


def test_create_local_swarm_writes_the_server_optimizer_and_its_parameters(tmp_path: Path) -> None:
    configs = create_local_swarm(
        tmp_path, 3, model=SPEC, server_optimizer="fedyogi", server_params={"tau": 0.01}
    )
    training = Genesis.load(configs[0].ledger.genesis).training
    assert (training.server_optimizer, training.server_settings()["tau"]) == ("fedyogi", 0.01)


async def test_a_late_joiner_replays_the_optimizer_from_its_peers_and_agrees_bit_for_bit(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    plan = SwarmPlan.create(tmp_path, SPEC, founders=SITES, joiners=1, max_rounds=5)
    training = replace(plan.genesis.training, server_optimizer="fedyogi")
    genesis = replace(plan.genesis, training=training)
    joiner_id = plan.ids[SITES]
    received: dict[int, list[MergeResult]] = {}
    nodes: dict[int, Node] = {}
    up = trio.Event()
    joined_with: list[MergeResult] = []

    async def founder(i: int) -> None:
        async with plan.open_node(i, net, genesis=genesis) as node:
            nodes[i] = node
            up.set()
            received[i] = await merge_until_stopped(i, node)
            await node.wait_stopped()

    async def joiner() -> None:
        async with plan.open_node(SITES, net, genesis=genesis) as node:
            member = nodes[0]
            await member.submit_transaction(node.join_request())
            await member.wait_for(lambda c: any(p.node_id == joiner_id for p in c.pending_joins()))
            await member.approve(joiner_id)
            await node.wait_for(lambda c: c.member(joiner_id) is not None and c.key_epoch().complete)
            latest = await node.latest_model()  # its disk is empty: every mean comes from peers
            assert latest is not None
            joined_with.append(latest)
            received[SITES] = await merge_until_stopped(SITES, node)
            await node.wait_stopped()

    async with open_memory_network(seed=6) as net:
        with trio.fail_after(3000):
            async with trio.open_nursery() as nursery:
                for i in range(SITES):
                    nursery.start_soon(founder, i)
                await up.wait()
                await nodes[0].wait_for(lambda c: c.state.merged_rounds >= 2)
                nursery.start_soon(joiner)

    by_round = {r.round: r.parameters.tobytes() for r in received[0]}
    assert joined_with[0].round >= 2
    assert joined_with[0].parameters.tobytes() == by_round[joined_with[0].round]
    assert received[SITES], "the joiner took part in no round"
    for result in received[SITES]:
        assert result.parameters.tobytes() == by_round[result.round]
