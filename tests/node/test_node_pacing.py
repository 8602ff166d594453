"""Idle block pacing lets the first transaction after a quiet spell into the very next block.

Three nodes on MemoryTransport in virtual time. While the ledger idles, the next height's
proposer holds back its start (up to ``idle_block_interval``) instead of proposing an empty
block and holding that: a transaction arriving meanwhile goes into the next block, not the
one after (every round phase starts with such a transaction).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
import trio.testing

from consensus.contract import Contract
from consensus.transactions import Ready
from models import logistic_regression
from swarmnode.net.memory import open_memory_network
from swarmnode.node import Node, open_swarm_node
from swarmnode.simswarm import SwarmPlan

SPEC = logistic_regression(30, 2)
pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("sender", [0, 1, 2])
async def test_a_transaction_after_an_idle_spell_lands_in_the_next_block(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, sender: int
) -> None:
    plan = SwarmPlan.create(tmp_path, SPEC, founders=3, max_rounds=2)
    async with open_memory_network(seed=3) as net, AsyncExitStack() as stack:
        nodes: list[Node] = []
        for i in range(3):
            nodes.append(
                await stack.enter_async_context(
                    open_swarm_node(
                        plan.configs[i],
                        transport=net.transport(plan.ids[i]),
                        identity=plan.identities[i],
                        genesis=plan.genesis,
                        inline_compute=True,
                    )
                )
            )
        node = nodes[sender]
        with trio.fail_after(300):
            await node.wait_for(lambda c: c.key_epoch().complete)
            for _ in range(3):  # some idle heights (whoever proposes them)
                height = node.contract.height
                await node.wait_for(lambda c, h=height: c.height > h)  # type: ignore[misc]
            await trio.sleep(0.2)  # inside the idle spell after the last commit
            before = node.contract.height
            landed: list[int] = []

            def ready_committed(c: Contract) -> bool:
                if c.round.ready_record(node.node_id) is None:
                    return False
                landed.append(c.height)
                return True

            await node.submit(Ready(round=node.contract.round.number, weight=1, val_metric=None))
            await node.wait_for(ready_committed)
        assert landed == [before + 1]
