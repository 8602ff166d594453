"""Fault handling of the secure round (README, Architecture, step 6) with whole nodes on MemoryTransport.

Each test runs a 4-node swarm in virtual time (trio's MockClock, autojump) with
synthetic parameters (the merge arithmetic is what is checked, not learning):
site i submits ``params = round + i`` with weight ``10 (i + 1)``. A fault is
injected into one node; every live node must finish training with the same
final model, equal to the ledger's final hash and to the weighted mean of the
contributions that the ledger says were merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from consensus.contract import CONTRIBUTION_TIMEOUT, DECRYPTOR_TIMEOUT, LEADER_TIMEOUT, WRONG_AGGREGATE
from consensus.genesis import DecryptionThreshold
from crypto.identity import NodeId
from models import logistic_regression
from swarmnode.faults import Faults
from swarmnode.net.memory import NO_FAULTS, LinkFaults, open_memory_network
from swarmnode.node import MergeResult, Node, NodeClosed, NodeOptions, open_swarm_node
from swarmnode.simswarm import SwarmPlan
from swarmnode.testing.merge_loop import merge_until_stopped

ONE_THIRD = DecryptionThreshold(numerator=1, denominator=3)  # t = 2 of 4

SPEC = logistic_regression(30, 2)
N_PARAMS = 62
pytestmark = pytest.mark.timeout(300)


@dataclass
class Site:
    index: int
    node: Node | None = None
    results: list[MergeResult] = field(default_factory=list)
    final: MergeResult | None = None
    crashed: bool = False


def by_key(ids: Sequence[NodeId]) -> list[NodeId]:
    return sorted(ids, key=lambda n: n.public_key)


async def run_swarm(
    tmp_path: Path,
    *,
    faults: dict[int, Faults],
    max_rounds: int = 3,
    founders: int = 4,
    link_faults: LinkFaults = NO_FAULTS,
    seed: int = 3,
    threshold: DecryptionThreshold | None = None,
) -> tuple[SwarmPlan, list[Site]]:
    plan = SwarmPlan.create(tmp_path, SPEC, founders=founders, max_rounds=max_rounds, threshold=threshold)
    sites = [Site(i) for i in range(founders)]

    async def run_site(site: Site, net_transport: object) -> None:
        i = site.index
        options = NodeOptions(inline_compute=True, behaviour=faults.get(i, Faults()))
        async with open_swarm_node(
            plan.configs[i],
            transport=net_transport,  # type: ignore[arg-type]
            identity=plan.identities[i],
            genesis=plan.genesis,
            options=options,
        ) as node:
            site.node = node
            try:
                site.final = await merge_until_stopped(
                    node,
                    np.full(N_PARAMS, float(i), np.float32),
                    10 * (i + 1),
                    results=site.results,
                    next_params=lambda result: result.parameters + 1.0 + i,
                    val_metric=0.5,
                )
            except NodeClosed:
                site.crashed = True
                return
            await node.wait_stopped()

    async with open_memory_network(seed=3) as net, trio.open_nursery() as nursery:
        for site in sites:
            nursery.start_soon(run_site, site, net.transport(plan.ids[site.index]))
    return plan, sites


def check_outcome(sites: list[Site], *, crashed: frozenset[int] = frozenset()) -> list[Site]:
    live = [s for s in sites if s.index not in crashed]
    assert {s.index for s in sites if s.crashed} == set(crashed)
    finals = {s.final.params_hash for s in live if s.final is not None}
    assert len(finals) == 1, "live nodes disagree on the final model"
    assert all(s.final is not None for s in live)
    for site in live:
        assert site.node is not None
        assert site.node.contract.final_model_hash in finals
        saved = np.load(site.node.storage_dir / "final_model.npy")
        assert saved.tobytes() == live[0].final.parameters.tobytes()  # type: ignore[union-attr]
    # Bit-identical parameters per round on every node that received the round.
    by_round: dict[int, set[bytes]] = {}
    for site in live:
        for r in site.results:
            by_round.setdefault(r.round, set()).add(r.parameters.tobytes())
    assert all(len(v) == 1 for v in by_round.values())
    return live


def evidence_kinds(node: Node) -> set[tuple[str, NodeId]]:
    return {(e.kind, e.offender) for e in node.contract.evidence()}


async def test_leader_crash_in_aggregate_phase(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ids = SwarmPlan.create(tmp_path, SPEC, founders=4).ids
    leader_id = by_key(ids)[0]  # round 1's leader: first in key order
    leader = ids.index(leader_id)
    # t = 2 of 4: the 3 nodes left are t + 1, enough for the rounds after the crash.
    crash = {leader: Faults(crash_before=frozenset({"aggregate"}))}
    _plan, sites = await run_swarm(tmp_path, faults=crash, threshold=ONE_THIRD)
    live = check_outcome(sites, crashed=frozenset({leader}))
    node = live[0].node
    assert node is not None
    assert (LEADER_TIMEOUT, leader_id) in evidence_kinds(node)
    first = node.contract.round_record(1)
    assert first is not None
    assert first.outcome == "merged"
    assert leader_id in first.contributors  # its committed update survived its crash
    assert first.aggregator != leader_id
    assert node.contract.stopped is not None


async def test_leader_publishing_a_wrong_aggregate_is_proven_wrong(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # t = 2 of 4: the three members left after excluding the leader are t + 1 checked points
    # (at t = 3 they would be exactly t, which a robust epoch never decrypts: the round aborts).
    plan = SwarmPlan.create(tmp_path, SPEC, founders=4, threshold=ONE_THIRD)
    leader_id = by_key(plan.ids)[0]
    leader = plan.ids.index(leader_id)
    plan, sites = await run_swarm(
        tmp_path, faults={leader: Faults(wrong_aggregate=True)}, threshold=ONE_THIRD
    )
    live = check_outcome(sites)
    node = live[0].node
    assert node is not None
    assert (WRONG_AGGREGATE, leader_id) in evidence_kinds(node)
    first = node.contract.round_record(1)
    assert first is not None
    assert first.outcome == "merged"
    assert leader_id in first.excluded
    # The merge is the true weighted mean of round 1's updates (params i, weights 10(i+1)).
    weights = np.array([10 * (i + 1) for i in range(4)], dtype=np.float64)
    expected = float(np.dot(weights, np.arange(4)) / weights.sum())
    r1 = next(r for r in live[0].results if r.round == 1)
    np.testing.assert_allclose(r1.parameters, expected, atol=1e-4)


async def test_decryptor_crash(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A decryptor dies before its share: the aggregate is abandoned (never a second decrypt
    set for it, see consensus/contract.py) and the swarm trains on without it (t = 2 of 4)."""
    plan = SwarmPlan.create(tmp_path, SPEC, founders=4, threshold=ONE_THIRD)
    rotation = by_key(plan.ids)
    # Round 1: leader rotation[0], verifier rotation[1], decrypt set sorted(rotation[:2]).
    decryptor_id = rotation[1]
    victim = plan.ids.index(decryptor_id)
    plan, sites = await run_swarm(
        tmp_path, faults={victim: Faults(crash_before=frozenset({"decryption-share"}))}, threshold=ONE_THIRD
    )
    live = check_outcome(sites, crashed=frozenset({victim}))
    node = live[0].node
    assert node is not None
    assert (DECRYPTOR_TIMEOUT, decryptor_id) in evidence_kinds(node)
    first = node.contract.round_record(1)
    assert first is not None
    assert first.outcome == "aborted"
    assert decryptor_id in first.decrypt_set
    assert all(s.results[0].round == 2 for s in live)  # the next round merged, without it


async def test_contributor_vanishing_mid_round(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    plan = SwarmPlan.create(tmp_path, SPEC, founders=4)
    vanishing_id = by_key(plan.ids)[3]  # holds no role in round 1
    victim = plan.ids.index(vanishing_id)
    crash = {victim: Faults(crash_before=frozenset({"contribute"}))}
    plan, sites = await run_swarm(tmp_path, faults=crash, threshold=ONE_THIRD)  # 3 left are t + 1
    live = check_outcome(sites, crashed=frozenset({victim}))
    node = live[0].node
    assert node is not None
    assert (CONTRIBUTION_TIMEOUT, vanishing_id) in evidence_kinds(node)
    first = node.contract.round_record(1)
    assert first is not None
    assert first.outcome == "merged"
    assert vanishing_id in first.dropped
    assert vanishing_id not in first.contributors
    # The mean is over the three remaining contributions only.
    kept = [i for i in range(4) if i != victim]
    weights = np.array([10 * (i + 1) for i in kept], dtype=np.float64)
    expected = float(np.dot(weights, np.array(kept, dtype=np.float64)) / weights.sum())
    r1 = next(r for r in live[0].results if r.round == 1)
    np.testing.assert_allclose(r1.parameters, expected, atol=1e-4)


async def test_node_joining_after_round_two(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A fifth site asks to join once round 2 merged; one member approves (policy: 1 approval).
    A new key epoch runs with five members, the joiner downloads the latest merged model by
    its ledger hash, then takes part in the following rounds."""
    plan = SwarmPlan.create(tmp_path, SPEC, founders=4, joiners=1, max_rounds=5)
    sites = [Site(i) for i in range(5)]
    joiner_id = plan.ids[4]
    first_model: list[MergeResult] = []
    ready = trio.Event()

    async def run_site(site: Site, transport: object) -> None:
        i = site.index
        async with open_swarm_node(
            plan.configs[i],
            transport=transport,  # type: ignore[arg-type]
            identity=plan.identities[i],
            genesis=plan.genesis,
            inline_compute=True,
        ) as node:
            site.node = node
            if i == 0:
                ready.set()
            params = np.full(N_PARAMS, float(i), np.float32)
            site.final = await merge_until_stopped(node, params, 10 * (i + 1), results=site.results)
            await node.wait_stopped()

    async def run_joiner(transport: object) -> None:
        site = sites[4]
        async with open_swarm_node(
            plan.configs[4],
            transport=transport,  # type: ignore[arg-type]
            identity=plan.identities[4],
            genesis=plan.genesis,
            inline_compute=True,
        ) as joiner:
            site.node = joiner
            member = sites[0].node
            assert member is not None
            await member.submit_transaction(joiner.join_request())
            await member.wait_for(lambda c: any(p.node_id == joiner_id for p in c.pending_joins()))
            await member.approve(joiner_id)
            await joiner.wait_for(lambda c: c.member(joiner_id) is not None and c.key_epoch().complete)
            latest = await joiner.latest_model()
            assert latest is not None
            first_model.append(latest)
            site.final = await merge_until_stopped(joiner, latest.parameters + 1.0, 25, results=site.results)
            await joiner.wait_stopped()

    async with open_memory_network(seed=5) as net, trio.open_nursery() as nursery:
        for site in sites[:4]:
            nursery.start_soon(run_site, site, net.transport(plan.ids[site.index]))
        await ready.wait()
        node0 = sites[0].node
        assert node0 is not None
        await node0.wait_for(lambda c: c.state.merged_rounds >= 2)
        nursery.start_soon(run_joiner, net.transport(joiner_id))

    live = check_outcome(sites)
    node = live[0].node
    assert node is not None
    assert node.contract.member(joiner_id) is not None
    assert node.contract.key_epoch().number == 2
    assert joiner_id in node.contract.key_epoch().members
    assert first_model[0].round >= 2
    assert sites[4].results, "the joiner took part in no round"
    joined_round = node.contract.round_record(sites[4].results[0].round)
    assert joined_round is not None
    assert joiner_id in joined_round.contributors
    assert joined_round.epoch == 2


@pytest.mark.parametrize("seed", [11, 12])
async def test_lossy_reordering_duplicating_links(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """5 % of all messages lost, 5 % duplicated, delays 1-50 ms (so reordered)."""
    faults = LinkFaults(drop=0.05, duplicate=0.05, min_delay=0.001, max_delay=0.05)
    _plan, sites = await run_swarm(tmp_path, faults={}, link_faults=faults, seed=seed)
    live = check_outcome(sites)
    for site in live:
        assert [r.round for r in site.results] == [1, 2, 3]


async def test_colluding_leader_and_verifier_get_nothing_decrypted(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Round 1's leader commits a wrong aggregate (the last contribution left out) and its
    verifier approves it unchecked; both would also decrypt it (their own crypto refuses:
    the sum names fewer contributors than the ledger committed). The honest decrypt-set
    members recompute the sum from the committed contributions, refuse, and are timed out
    (the colluders too) one after the other until round 1 aborts: nothing is ever merged from the bogus
    aggregate, and the following rounds (other leaders) complete training."""
    plan = SwarmPlan.create(tmp_path, SPEC, founders=4)
    rotation = by_key(plan.ids)
    leader, verifier = plan.ids.index(rotation[0]), plan.ids.index(rotation[1])
    faults = {
        leader: Faults(wrong_aggregate=True, trust_aggregate=True),
        verifier: Faults(wrong_verdict=True, trust_aggregate=True),
    }
    _plan, sites = await run_swarm(tmp_path, faults=faults)
    live = check_outcome(sites)
    node = live[0].node
    assert node is not None
    first = node.contract.round_record(1)
    assert first is not None
    assert first.outcome == "aborted"
    assert first.merged_hash is None
    assert first.aggregator == rotation[0]  # the bogus claim was never proven wrong ...
    timed_out = {n for kind, n in evidence_kinds(node) if kind == DECRYPTOR_TIMEOUT}
    assert timed_out & {rotation[2], rotation[3]}  # ... but the honest decryptors would not decrypt it
    assert not first.decryption_shares  # nor would the colluders' own crypto
    for site in live:
        assert 1 not in [r.round for r in site.results]
        assert site.results, "training did not complete"
    merged = [r for r in node.contract.history() if r.outcome == "merged"]
    assert len(merged) == 3
    assert all(r.number > 1 for r in merged)


async def test_decryptor_dying_after_its_share_does_not_take_the_combiners_down(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A decryptor commits its share and dies before anyone fetched it: the other
    combiners' concurrent fetches fail (the blob is gone with it). That is a retried job
    failure (a TransportError, not an ExceptionGroup escaping the job), then the decrypt
    deadline; the survivors finish training on one model."""
    # Five (t = 3): the four left after the crash are t + 1, enough to train on.
    plan = SwarmPlan.create(tmp_path, SPEC, founders=5)
    rotation = by_key(plan.ids)
    victim = plan.ids.index(rotation[2])  # in round 1's decrypt set, neither leader nor verifier
    crash = {victim: Faults(crash_before=frozenset({"combine"}))}
    _plan, sites = await run_swarm(tmp_path, faults=crash, founders=5)
    live = check_outcome(sites, crashed=frozenset({victim}))
    node = live[0].node
    assert node is not None
    first = node.contract.round_record(1)
    assert first is not None
    assert rotation[2] in {v.node_id for v in first.decryption_shares} or first.outcome == "merged"
    for site in live:
        assert site.results, "training did not complete"
