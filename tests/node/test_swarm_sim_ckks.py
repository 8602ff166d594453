"""A whole secure swarm under the N = 16384 CKKS parameter set, chosen in genesis.

The contract gives every key epoch the genesis's set (`KeyEpoch.ckks_params`) and nodes deal,
encrypt, decrypt and combine under it: the merged models are the weighted means to the set's
finer precision (scale 2^94). Before the set registry a node refused any genesis set but the
default one ("unsupported CKKS parameter set").

Virtual time (trio's MockClock), in-memory network, synthetic parameters: site i submits
``round + i + noise`` with weight ``10 (i + 1)``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from consensus.contract import MERGED
from models import logistic_regression
from swarmnode.net.memory import MemoryNetwork, open_memory_network
from swarmnode.node import MergeResult, Node
from swarmnode.simswarm import SwarmPlan
from swarmnode.testing.merge_loop import merge_until_stopped

SPEC = logistic_regression(30, 2)
N_PARAMS = 62
N16384 = "ckks-n16384-q60x3-coeff-s94"
FOUNDERS = 4
ROUNDS = 2
OFFSETS = np.random.default_rng(94).uniform(-0.5, 0.5, N_PARAMS)
pytestmark = pytest.mark.timeout(300)


def submitted(round_number: int, i: int) -> np.ndarray:
    return (round_number + i + OFFSETS).astype(np.float32)


async def test_a_swarm_merges_under_the_n16384_set(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    plan = SwarmPlan.create(tmp_path, SPEC, founders=FOUNDERS, max_rounds=ROUNDS)
    genesis = dataclasses.replace(
        plan.genesis, training=dataclasses.replace(plan.genesis.training, ckks_params=N16384)
    )
    nodes: list[Node] = []
    results: list[list[MergeResult]] = [[] for _ in range(FOUNDERS)]

    async def run_site(i: int, network: MemoryNetwork) -> None:
        async with plan.open_node(i, network, genesis=genesis) as node:
            nodes.append(node)
            await merge_until_stopped(
                node,
                submitted(1, i),
                10 * (i + 1),
                results=results[i],
                next_params=lambda result: submitted(result.round + 1, i),
                val_metric=0.5,
            )
            await node.wait_stopped()

    async with open_memory_network(seed=5) as net:
        with trio.move_on_after(10_000):
            async with trio.open_nursery() as nursery:
                for i in range(FOUNDERS):
                    nursery.start_soon(run_site, i, net)

    weights = np.array([10.0 * (i + 1) for i in range(FOUNDERS)])
    merged: dict[int, set[bytes]] = {}
    for site in results:
        assert [r.round for r in site] == list(range(1, ROUNDS + 1))
        for result in site:
            merged.setdefault(result.round, set()).add(result.parameters.tobytes())
            expected = (
                sum(w * submitted(result.round, i).astype(np.float64) for i, w in enumerate(weights))
                / weights.sum()
            )
            # float32 rounding of values below 4 is at most 2^-22; the crypto adds ~1e-7.
            np.testing.assert_allclose(result.parameters, expected, rtol=0, atol=1e-6)
    assert all(len(v) == 1 for v in merged.values())  # bit-identical on every node
    for node in nodes:
        assert node.contract.key_epoch().ckks_params == N16384
        assert [r.outcome for r in node.contract.history()] == [MERGED] * ROUNDS
        assert node.epochs.params.degree == 16384
