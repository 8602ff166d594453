"""A node that was down comes back from its storage directory and catches up; the
stopping rule's patience on the median validation metric ends training early."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from consensus.genesis import DecryptionThreshold
from models import logistic_regression
from swarmnode.net.memory import open_memory_network
from swarmnode.node import MergeResult, Node, SwarmStopped, open_swarm_node
from swarmnode.simswarm import SwarmPlan

SPEC = logistic_regression(30, 2)
N_PARAMS = 62
pytestmark = pytest.mark.timeout(300)


async def test_node_down_for_two_rounds_catches_up_and_rejoins(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # t = 2 of 4: the 3 nodes up are t + 1, enough for rounds while the fourth is down.
    plan = SwarmPlan.create(
        tmp_path, SPEC, founders=4, max_rounds=6, threshold=DecryptionThreshold(numerator=1, denominator=3)
    )
    finals: dict[int, bytes] = {}
    rounds: dict[int, list[int]] = {i: [] for i in range(4)}
    up = trio.Event()

    async def merge_loop(i: int, start: np.ndarray, node: Node) -> MergeResult | None:
        params = start
        last = None
        while True:
            try:
                result = await node.merge(params, 10, val_metric=0.5, timeout=900)
            except SwarmStopped as stopped:
                return stopped.final or last
            rounds[i].append(result.round)
            last = result
            if result.stopped:
                return result
            params = result.parameters + 1.0

    async with open_memory_network(seed=9) as net:

        async def steady(i: int) -> None:
            async with plan.open_node(i, net) as node:
                if i == 0:
                    nodes.append(node)
                    up.set()
                final = await merge_loop(i, np.full(N_PARAMS, float(i), np.float32), node)
                assert final is not None
                info = await node.wait_stopped()
                assert info.final_model_hash == final.params_hash
                finals[i] = final.params_hash

        async def flaky() -> None:
            transport = net.transport(plan.ids[3])
            async with open_swarm_node(
                plan.configs[3], transport=transport, identity=plan.identities[3], genesis=plan.genesis,
                inline_compute=True,
            ) as node:  # fmt: skip
                first = await node.merge(np.full(N_PARAMS, 3.0, np.float32), 10, timeout=900)
                rounds[3].append(first.round)
                height_when_down = node.contract.height
            await transport.aclose()  # the process is gone: no gossip, no blobs
            await up.wait()
            await nodes[0].wait_for(lambda c: c.state.merged_rounds >= 3)
            async with plan.open_node(3, net) as node:
                # Restarted from its own store, then caught up through block sync.
                assert node.contract.height == height_when_down
                await node.wait_for(lambda c: c.state.merged_rounds >= 3)
                latest = await node.latest_model()
                assert latest is not None
                assert latest.round >= 3
                final = await merge_loop(3, latest.parameters, node)
                assert final is not None
                await node.wait_stopped()
                finals[3] = final.params_hash

        nodes: list[Node] = []
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(steady, i)
            nursery.start_soon(flaky)

    assert len(set(finals.values())) == 1
    assert sorted(finals) == [0, 1, 2, 3]
    assert rounds[3][0] == 1
    assert len(rounds[3]) >= 2, "the restarted node took part in no round after coming back"
    assert rounds[3][1] >= 4
    saved = np.load(plan.configs[3].node.storage_dir / "final_model.npy")
    assert saved.tobytes() == np.load(plan.configs[0].node.storage_dir / "final_model.npy").tobytes()


async def test_patience_on_the_median_metric_stops_training(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A metric that never improves after round 1 stops the swarm after 1 + patience rounds."""
    plan = SwarmPlan.create(tmp_path, SPEC, founders=3, max_rounds=50, patience=2)
    results: dict[int, list[MergeResult]] = {i: [] for i in range(3)}
    async with open_memory_network(seed=4) as net:

        async def site(i: int) -> None:
            async with plan.open_node(i, net) as node:
                params = np.zeros(N_PARAMS, np.float32)
                while True:
                    try:
                        result = await node.merge(params, 5, val_metric=0.7)
                    except SwarmStopped:
                        break
                    results[i].append(result)
                    if result.stopped:
                        break
                    params = result.parameters
                info = await node.wait_stopped()
                assert "no improvement" in info.reason
                assert info.merged_rounds == 3

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(site, i)
    for i in range(3):
        assert [r.round for r in results[i]] == [1, 2, 3]
        assert results[i][-1].stopped
