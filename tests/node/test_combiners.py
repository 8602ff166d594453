"""Bytes of the decrypt phase in a robust key epoch: only t decryptors combine at once.

Every active participant makes a point share (15 bytes per parameter) and a combiner fetches
all the others', but t matching votes close the round: the other decryptors load the merged
model (4 bytes per parameter) instead. Before, all m of them combined, so each point share
crossed the wire m - 1 times instead of t (at 1M parameters and 4 sites: 45 MB per site and
round instead of 34 MB; at 8 sites 106 MB instead of 66 MB).

A first combiner that never votes only delays the round by the grace: the outsiders combine
then and complete the quorum.

Virtual time (trio's MockClock), in-memory network, synthetic parameters, 4 sites (t = 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from consensus.contract import MERGED
from consensus.genesis import Timeouts
from consensus.round_history import RoundSummary
from crypto.epoch_spec import default_threshold
from models import logistic_regression
from swarmnode.behaviour import HONEST, Behaviour
from swarmnode.net.memory import open_memory_network
from swarmnode.node import MergeResult, Node, NodeOptions, open_swarm_node
from swarmnode.simswarm import SwarmPlan
from swarmnode.testing.merge_loop import merge_until_stopped

SPEC = logistic_regression(30, 2)
N_PARAMS = 62
SITES = 4
ROUNDS = 2
SILENT = 0
# The others' grace (decrypt / 8 = 25 s) outlasts the t combiners' votes in virtual time, as
# the real default (120 s / 8) outlasts a LAN or WAN round's combine.
TIMEOUTS = Timeouts(ready_wait=300.0, contribute=200.0, aggregate=200.0, verify=200.0, decrypt=200.0)
pytestmark = pytest.mark.timeout(300)


@dataclass
class Swarm:
    results: dict[int, list[MergeResult]]
    histories: list[tuple[RoundSummary, ...]]
    point_share_reads: set[tuple[int, int, bytes]]  # (site, the round open at the site, share hash)


async def run_swarm(
    tmp_path: Path, behaviours: dict[int, Behaviour] | None = None, *, virtual_seconds: float = 10_000
) -> Swarm:
    plan = SwarmPlan.create(tmp_path, SPEC, founders=SITES, max_rounds=ROUNDS, timeouts=TIMEOUTS)
    swarm = Swarm({i: [] for i in range(SITES)}, [], set())

    async def run_site(i: int, transport: Any) -> None:
        fetch = transport.get_blob
        opened: list[Node] = []

        async def counted(digest: bytes, **kw: Any) -> bytes:
            data: bytes = await fetch(digest, **kw)
            if data.startswith(b"SNP1"):  # crypto.pointshare's wire magic
                # A share prefetched as it was committed is read again from the store to combine.
                swarm.point_share_reads.add((i, opened[0].contract.round.number, digest))
            return data

        transport.get_blob = counted
        behaviour = (behaviours or {}).get(i, HONEST)
        async with open_swarm_node(
            plan.configs[i], transport=transport, identity=plan.identities[i], genesis=plan.genesis,
            options=NodeOptions(inline_compute=True, behaviour=behaviour),
        ) as node:  # fmt: skip
            opened.append(node)
            await merge_until_stopped(
                node,
                np.full(N_PARAMS, float(1 + i), np.float32),
                10 * (i + 1),
                results=swarm.results[i],
                next_params=lambda result: np.full(N_PARAMS, float(result.round + 1 + i), np.float32),
                val_metric=0.5,
            )
            await node.wait_stopped()
            swarm.histories.append(node.contract.history())

    async with open_memory_network(seed=5) as net:
        with trio.move_on_after(virtual_seconds):
            async with trio.open_nursery() as nursery:
                for i in range(SITES):
                    nursery.start_soon(run_site, i, net.transport(plan.ids[i]))
    return swarm


async def test_only_t_decryptors_fetch_the_point_shares(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    swarm = await run_swarm(tmp_path)
    results, point_share_reads = swarm.results, swarm.point_share_reads
    history = swarm.histories[0]
    assert [r.outcome for r in history] == [MERGED] * ROUNDS
    assert all(len(r.decrypt_set) == SITES for r in history)  # robust: every participant decrypts
    threshold = default_threshold(SITES)
    for i in range(SITES):
        assert [r.round for r in results[i]] == list(range(1, ROUNDS + 1))
    for k in range(ROUNDS):
        assert len({results[i][k].params_hash for i in range(SITES)}) == 1  # one merged model
    for number in range(1, ROUNDS + 1):
        readers = [i for i, r, _ in point_share_reads if r == number]
        # t combiners, not all m decryptors; each reads the m points (its own from its store),
        # so the others' m - 1 cross the wire t times instead of m times.
        assert len(set(readers)) == threshold
        assert len(readers) == threshold * SITES


class SilentCombiner(Behaviour):
    """Makes its point share but never combines nor votes a merged model."""

    def __init__(self) -> None:
        self.asked = 0

    def combines(self) -> bool:
        self.asked += 1
        return False


async def test_a_silent_first_combiner_is_replaced_by_the_outsiders_after_the_grace(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The attacker's move against the t-combiner saving: one of the first t combiners (in
    rotation order) keeps quiet, so only t - 1 votes come from them and the round cannot
    close on those alone. The outsider combines after the grace (decrypt timeout / 8) and
    its vote completes the quorum: every round merges, with the same model on every site,
    the silent one included (it loads the certified model). Without the outsiders' fallback
    every round with the silent member among the first t would time out and abort."""
    silent = SilentCombiner()
    # Long enough for both rounds with a grace each; a round left to time out aborts sooner.
    swarm = await run_swarm(tmp_path, {SILENT: silent}, virtual_seconds=1_000)
    for history in swarm.histories:
        assert [r.outcome for r in history] == [MERGED] * ROUNDS
        assert all(len(r.decrypt_set) == SITES for r in history)
    for i in range(SITES):
        assert [r.round for r in swarm.results[i]] == list(range(1, ROUNDS + 1))
    for k in range(ROUNDS):
        assert len({swarm.results[i][k].params_hash for i in range(SITES)}) == 1  # one merged model
    # Asked to combine at once as one of the first t (an outsider is asked only after the
    # grace, when honest first combiners have closed the round): it kept quiet.
    assert silent.asked >= 1
