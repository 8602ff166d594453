"""Peers started with different genesis files: each node says so once per peer (WARNING,
both chain ids), instead of an INFO line for every dropped message while it waits forever."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from models import logistic_regression
from swarmnode.net.memory import open_memory_network
from swarmnode.simswarm import SwarmPlan

pytestmark = pytest.mark.timeout(120)


async def test_a_peer_on_another_chain_is_named_once_with_both_chain_ids(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    plan = SwarmPlan.create(tmp_path, logistic_regression(4, 2), founders=2, max_rounds=1)
    other = dataclasses.replace(plan.genesis, nonce=b"organiser ran genesis again")
    ours, theirs = plan.genesis.chain_id, other.chain_id
    assert ours != theirs
    caplog.set_level(logging.INFO, logger="swarmnode")
    async with (
        open_memory_network(seed=3) as net,
        plan.open_node(0, net),
        plan.open_node(1, net, genesis=other),
    ):
        await trio.sleep(60)  # many proposal and vote rounds go by on both chains
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "runs chain" in r.getMessage()]
    seen_by_0 = [r.getMessage() for r in warnings if plan.ids[1].peer_id in r.getMessage()]
    seen_by_1 = [r.getMessage() for r in warnings if plan.ids[0].peer_id in r.getMessage()]
    assert seen_by_0 == [f"peer {plan.ids[1].peer_id} runs chain {theirs.hex()} while ours is {ours.hex()}"
                         ": it was started with another genesis file; its messages are dropped "
                         "(compare `swarmnode genesis-show` at both sites)"]  # fmt: skip
    assert len(seen_by_1) == 1
    assert theirs.hex() in seen_by_1[0].split("while ours is ")[1]
    assert not [r for r in caplog.records if "dropped a bad consensus message" in r.getMessage()]
