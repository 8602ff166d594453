"""Joins and removals with whole nodes on MemoryTransport (virtual time, trio's MockClock).

* A joiner that is admitted and then falls behind (never does its part of the key epoch
  its admission started) holds the founders up for at most the genesis deadline
  `timeouts.key_epoch`: they leave it out and go on merging over the next key epoch.
* A member removed by a vote of a majority of the others has no place in the key epoch
  dealt after its removal, and the rest train on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from consensus.genesis import DecryptionThreshold, Timeouts
from consensus.transactions import Evict
from models import logistic_regression
from swarmnode.net.memory import open_memory_network
from swarmnode.node import MergeResult, Node, NodeClosed, open_swarm_node
from swarmnode.simswarm import SIM_TIMEOUTS, SwarmPlan
from swarmnode.testing.merge_loop import merge_until_stopped

SPEC = logistic_regression(30, 2)
N_PARAMS = 62
KEY_EPOCH_DEADLINE = 40.0
TIMEOUTS = Timeouts(
    ready_wait=SIM_TIMEOUTS.ready_wait,
    contribute=SIM_TIMEOUTS.contribute,
    aggregate=SIM_TIMEOUTS.aggregate,
    verify=SIM_TIMEOUTS.verify,
    decrypt=SIM_TIMEOUTS.decrypt,
    key_epoch=KEY_EPOCH_DEADLINE,
)
T_OF_4 = DecryptionThreshold(numerator=1, denominator=3)  # t + 1 = 3 of 4: rounds go on with 3
pytestmark = pytest.mark.timeout(300)


async def merge_loop(i: int, node: Node, results: list[MergeResult]) -> MergeResult | None:
    try:
        params = np.full(N_PARAMS, float(i), np.float32)
        return await merge_until_stopped(node, params, 10 * (i + 1), results=results, val_metric=0.5)
    except NodeClosed:
        return None


async def test_an_admitted_joiner_that_falls_behind_stalls_the_founders_only_until_the_deadline(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    plan = SwarmPlan.create(
        tmp_path, SPEC, founders=4, joiners=1, max_rounds=4, timeouts=TIMEOUTS, threshold=T_OF_4
    )
    joiner_id = plan.ids[4]
    nodes: dict[int, Node] = {}
    results: dict[int, list[MergeResult]] = {i: [] for i in range(4)}
    finals: dict[int, MergeResult] = {}
    admitted_at: list[float] = []
    epoch_over_founders_at: list[float] = []

    async with open_memory_network(seed=7) as net:

        async def run(i: int) -> None:
            async with plan.open_node(i, net) as node:
                nodes[i] = node
                final = await merge_loop(i, node, results[i])
                assert final is not None
                await node.wait_stopped()
                finals[i] = final

        async def admit_a_joiner_that_goes_quiet() -> None:
            async with open_swarm_node(
                plan.configs[4], transport=net.transport(joiner_id), identity=plan.identities[4],
                genesis=plan.genesis, inline_compute=True,
            ) as joiner:  # fmt: skip
                request = joiner.join_request()
            # the joiner is gone before its admission: it never deals its part of the keys
            member = nodes[0]
            await member.wait_for(lambda c: c.state.merged_rounds >= 1)
            await member.submit_transaction(request)
            await member.wait_for(lambda c: any(p.node_id == joiner_id for p in c.pending_joins()))
            await member.approve(joiner_id)
            await member.wait_for(lambda c: c.is_member(joiner_id))
            admitted_at.append(trio.current_time())
            await member.wait_for(lambda c: c.key_epoch().complete and joiner_id in c.epoch_left_out())
            epoch_over_founders_at.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(run, i)
            await trio.testing.wait_all_tasks_blocked()
            while 0 not in nodes:
                await trio.sleep(0.1)
            nursery.start_soon(admit_a_joiner_that_goes_quiet)

    assert sorted(finals) == [0, 1, 2, 3]
    assert len({f.params_hash for f in finals.values()}) == 1
    contract = nodes[0].contract
    assert contract.is_member(joiner_id)
    assert joiner_id not in contract.key_epoch().members
    assert [r.outcome for r in contract.history()] == ["merged"] * 4
    # virtual time: the founders waited for the joiner's keys one deadline, plus the
    # deadline's own reporting and the next epoch's dealing, not longer
    stalled = epoch_over_founders_at[0] - admitted_at[0]
    assert stalled <= 2 * KEY_EPOCH_DEADLINE


async def test_a_member_removed_by_vote_has_no_place_in_the_next_key_epoch(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    plan = SwarmPlan.create(tmp_path, SPEC, founders=4, max_rounds=4, timeouts=TIMEOUTS, threshold=T_OF_4)
    target = plan.ids[3]
    nodes: dict[int, Node] = {}
    results: dict[int, list[MergeResult]] = {i: [] for i in range(4)}
    finals: dict[int, MergeResult] = {}

    async with open_memory_network(seed=8) as net:

        async def run(i: int) -> None:
            async with plan.open_node(i, net) as node:
                nodes[i] = node
                if i == 3:
                    await node.wait_for(lambda c: not c.is_member(target))
                    return  # removed: this site's node shuts down
                final = await merge_loop(i, node, results[i])
                assert final is not None
                await node.wait_stopped()
                finals[i] = final

        async def vote_out(i: int) -> None:
            node = nodes[i]
            await node.wait_for(lambda c: c.state.merged_rounds >= 1)
            record = node.contract.member(target)
            assert record is not None
            await node.submit(Evict(target=target, target_since=record.since, reason="test"))

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(run, i)
            while len(nodes) < 4:
                await trio.sleep(0.1)
            nursery.start_soon(vote_out, 0)
            nursery.start_soon(vote_out, 1)

    assert sorted(finals) == [0, 1, 2]
    assert len({f.params_hash for f in finals.values()}) == 1
    contract = nodes[0].contract
    assert not contract.is_member(target)
    epoch = contract.key_epoch()
    assert epoch.number >= 2
    assert target not in epoch.members
    last = contract.history()[-1]
    assert last.outcome == "merged"
    assert last.epoch == epoch.number
    assert target not in last.participants
