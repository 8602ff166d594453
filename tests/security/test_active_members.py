"""Colluding members that deviate from the protocol against the secure merge.

Each test plays the colluders' best move with the project's own contract and crypto:

* ready-timeout isolation: t - 1 colluders Ready and voting the ready deadline start a
  round with one honest victim and read its update from the merge (n = 5, t = 3);
* a re-asked decryption share: a colluder in the decrypt set withholds, hoping the
  honest members are asked for a second share of the same aggregate under another
  decrypt set (two Lagrange coefficients of one sum: a hidden-number problem);
* withholding for ever: a member that withholds again and again must not stall the swarm.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from consensus.contract import ABORTED, DECRYPTOR_TIMEOUT, MERGED, ContributionRecord, Round
from consensus.genesis import DecryptionThreshold, FoundingMember, Genesis, TrainingParams
from consensus.transactions import (
    Aggregate,
    AggregateVerdict,
    Contribution,
    DecryptionShare,
    MergedModel,
    Phase,
    PhaseTimeout,
    Ready,
    TxBody,
)
from crypto import secure_merge as sm
from crypto.ckks_params import DEFAULT_PARAMS
from crypto.identity import NodeId, NodeIdentity
from crypto.testing import round_binding, run_key_epoch
from models import logistic_regression
from swarmnode.net.memory import open_memory_network
from swarmnode.node import Node
from swarmnode.round import MakeDecryptionShare
from swarmnode.sharelog import ShareLog
from swarmnode.simswarm import SwarmPlan
from swarmnode.testing.contract_chain import ContractChain

IDENTITIES = [NodeIdentity.from_seed(hashlib.sha256(b"active member %d" % i).digest()) for i in range(5)]
NODES = sorted((i.node_id for i in IDENTITIES), key=lambda n: n.public_key)  # the rotation order


def sha(label: object) -> bytes:
    return hashlib.sha256(repr(label).encode()).digest()


def make_genesis(n: int = 5, *, min_peers: int = 2, withhold_limit: int = 2) -> Genesis:
    return Genesis(
        name="active-members",
        members=tuple(FoundingMember(name=f"site-{i}", node_id=NODES[i]) for i in range(n)),
        training=TrainingParams(
            model_spec_hash=sha("spec"), min_peers=min_peers, withhold_limit=withhold_limit
        ),
    )


class Chain(ContractChain):
    """The contract fed one block per call; every state after a block is kept for audits."""

    def __init__(self, genesis: Genesis) -> None:
        super().__init__(genesis, IDENTITIES)
        self.rounds: list[Round] = []  # the open round after every block

    @property
    def round(self) -> Round:
        return self.contract.round

    def block(self, txs: Sequence[tuple[NodeId, TxBody]]) -> tuple[str | None, ...]:
        reasons = super().block(txs)
        self.rounds.append(self.contract.round)
        return reasons

    def ready(self, nodes: Sequence[NodeId]) -> None:
        self.ok([(n, Ready(round=self.round.number, weight=10, val_metric=0.5)) for n in nodes])

    def timeout(self, nodes: Sequence[NodeId]) -> None:
        r = self.round
        self.ok([(n, PhaseTimeout(round=r.number, phase=r.phase, step=r.step)) for n in nodes])

    def to_decrypt(self) -> Round:
        """Every member Ready, contributing; the leader's aggregate verified."""
        self.ready(self.contract.state.member_ids)
        r = self.round
        self.ok(
            [
                (n, Contribution(round=r.number, blob_hash=sha(("c", r.number, n)), blob_size=9))
                for n in r.participants
            ]
        )
        r = self.round
        assert r.leader is not None
        agg = sha(("agg", r.number))
        self.ok(
            [
                (
                    r.leader,
                    Aggregate(round=r.number, step=r.step, aggregate_hash=agg, contributors=r.contributors),
                )
            ]
        )
        r = self.round
        verdict = AggregateVerdict(round=r.number, step=r.step, aggregate_hash=agg, recomputed_hash=agg)
        assert r.verifier is not None
        self.ok([(r.verifier, verdict)])
        assert self.round.phase == Phase.DECRYPT
        return self.round

    def withhold(self, withholders: Sequence[NodeId]) -> Round:
        """The decrypt set shares, but for `withholders`; a majority then votes the deadline."""
        r = self.round
        honest = [p for p in r.decrypt_set if p not in withholders]
        self.ok([(p, DecryptionShare(round=r.number, step=r.step, share_hash=sha(("d", p)))) for p in honest])
        self.timeout(self.contract.timeout_voters()[:3])
        return r


def started_chain(**kwargs: int) -> Chain:
    chain = Chain(make_genesis(**kwargs))
    chain.complete_epoch()
    return chain


# -- attack 1: ready-timeout isolation ------------------------------------------------------------


def test_colluders_cannot_start_a_round_with_one_honest_victim() -> None:
    """n = 5, t = 3, min_peers = 2: two colluders Ready and voting the ready deadline, then the
    first honest member Ready. Before: the colluders alone decided the deadline and the round
    started with them and the victim (the merge minus their updates is the victim's)."""
    chain = started_chain()
    colluders, victim, others = NODES[:2], NODES[2], NODES[3:]
    chain.ready(colluders)
    chain.block([(c, PhaseTimeout(round=1, phase="ready", step=0)) for c in colluders])
    chain.ready([victim])
    assert chain.round.phase == Phase.READY  # their votes are 2 of 5: no deadline decided
    assert not chain.round.ready_timed_out
    # Even once a majority's clocks passed the deadline, three Ready members are too few:
    # t + 1 = 4 are needed, so the colluders always face two honest updates.
    chain.timeout([victim])  # the third of 5 votes
    assert chain.round.ready_timed_out
    assert chain.round.phase == Phase.READY
    assert chain.contract.required_ready() == 4
    chain.ready(others[:1])
    assert chain.round.phase == Phase.CONTRIBUTE
    assert len(chain.round.participants) == 4


def test_decryption_share_refuses_an_aggregate_of_t_contributions() -> None:
    """The colluders' own decryption code refuses too: an aggregate of t contributions (two
    colluders and a victim at t = 3) is never decrypted, whatever min_peers says."""
    spec, _identities, keys = run_key_epoch(5, threshold=3)
    decrypt_set = spec.members[:3]
    values = np.linspace(-1.0, 1.0, 16)
    binding = round_binding(spec.epoch_id)
    blobs = {spec.members[k]: sm.encrypt_update(keys[k], values, 1.0, 5.0, binding=binding) for k in range(4)}
    three = sm.aggregate_contributions(
        dict(list(blobs.items())[:3]), length=16, binding=binding, params=DEFAULT_PARAMS
    )
    with pytest.raises(sm.DecryptionRefused, match="at least 4"):
        sm.decryption_share(keys[0], three, decrypt_set, contributions=3, min_peers=2, binding=binding)
    four = sm.aggregate_contributions(blobs, length=16, binding=binding, params=DEFAULT_PARAMS)
    shares = [
        sm.decryption_share(keys[k], four, decrypt_set, contributions=4, min_peers=2, binding=binding)
        for k in range(3)
    ]
    merged = sm.combine(spec, four, shares, params=DEFAULT_PARAMS)
    np.testing.assert_allclose(merged.mean, values, atol=1e-4)


def test_a_secure_genesis_needs_t_plus_one_founders() -> None:
    """A secure swarm of 2 (t = 2) cannot protect anyone: one member reads the other's update."""
    with pytest.raises(ValueError, match=r"members: a secure swarm needs at least t\+1 = 3 founding"):
        make_genesis(2)
    two_thirds = TrainingParams(
        model_spec_hash=sha("spec"), threshold=DecryptionThreshold(numerator=2, denominator=3)
    )
    founders = tuple(FoundingMember(name=f"s{i}", node_id=NODES[i]) for i in range(3))
    with pytest.raises(ValueError, match=r"training.threshold 2/3 gives t = 3 of 3"):
        Genesis(name="three", members=founders, training=two_thirds)
    plaintext = TrainingParams(model_spec_hash=sha("spec"), secure=False)
    Genesis(name="two", members=founders[:2], training=plaintext)  # hides nothing: allowed


# -- attack 2: a second share of one aggregate ----------------------------------------------------


def test_a_withheld_share_abandons_the_aggregate_and_is_never_re_asked() -> None:
    """A colluder in the decrypt set withholds. The contract never names a second decrypt set
    for the aggregate (the honest decryptors would owe a second share of it): the round aborts
    with nothing merged and the withholder is on the ledger."""
    chain = started_chain()
    r = chain.to_decrypt()
    colluder = r.decrypt_set[0]
    chain.withhold([colluder])
    closed = chain.contract.history()[-1]
    assert (closed.number, closed.outcome, closed.merged_hash) == (1, ABORTED, None)
    assert "abandoned" in closed.note
    (evidence,) = chain.contract.evidence()
    assert (evidence.kind, evidence.offender, evidence.detail) == (
        DECRYPTOR_TIMEOUT,
        colluder,
        r.aggregate_hash,
    )
    sets: dict[bytes, set[tuple[NodeId, ...]]] = {}
    for seen in chain.rounds:
        if seen.aggregate_hash is not None and seen.phase == Phase.DECRYPT:
            sets.setdefault(seen.aggregate_hash, set()).add(seen.decrypt_set)
    assert sets == {r.aggregate_hash: {r.decrypt_set}}
    assert (chain.round.number, chain.round.phase) == (2, Phase.READY)


def test_a_repeated_withholder_is_left_out_of_later_decrypt_sets() -> None:
    """withhold_limit = 2: after withholding in rounds 1 and 2 the colluder still contributes
    to round 3 but holds no place in its decrypt set, so the swarm merges again."""
    chain = started_chain(withhold_limit=2)
    colluder = NODES[2]  # in the decrypt sets of rounds 1 (NODES[0:3]) and 2 (NODES[1:4])
    for number in (1, 2):
        r = chain.to_decrypt()
        assert r.number == number
        assert colluder in r.decrypt_set
        chain.withhold([colluder])
        assert chain.contract.history()[-1].outcome == ABORTED
    r = chain.to_decrypt()
    assert colluder in r.contributors
    assert colluder not in r.decrypt_set
    # A robust epoch (n = 5): every active participant but the barred one publishes a point.
    assert set(r.decrypt_set) == set(r.active) - {colluder}
    assert r.barred == (colluder,)
    chain.ok([(p, DecryptionShare(round=3, step=r.step, share_hash=sha(("d", p)))) for p in r.decrypt_set])
    chain.ok([(p, MergedModel(round=3, step=r.step, params_hash=sha("m3"))) for p in r.decrypt_set[:3]])
    assert chain.contract.history()[-1].outcome == MERGED


# -- the node: one share per aggregate, across restarts ---------------------------------------------

SPEC = logistic_regression(30, 2)
N_PARAMS = 62


async def test_the_node_never_makes_two_shares_of_one_aggregate_even_after_a_restart(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Asked for a share of one aggregate for decrypt set T1, then for T2 (as a redrawn set
    would), the node makes one share: the second request is refused, also by the node that
    restarts from the same storage directory, and T1 gets the identical share again."""
    plan = SwarmPlan.create(tmp_path, SPEC, founders=3, max_rounds=2)
    spec, _ids, keys = run_key_epoch(list(plan.identities), threshold=2)
    me = plan.ids[0]
    binding = round_binding(spec.epoch_id, chain_id=plan.genesis.chain_id)
    blobs = [
        sm.encrypt_update(keys[k], np.full(N_PARAMS, float(k), np.float32), 10, 30, binding=binding)
        for k in range(3)
    ]
    aggregate = sm.aggregate_contributions(
        dict(zip(spec.members, blobs, strict=True)), length=N_PARAMS, binding=binding, params=DEFAULT_PARAMS
    )
    committed = tuple(
        sorted(
            (
                ContributionRecord(
                    node_id=n, blob_hash=hashlib.sha256(b).digest(), blob_size=len(b), height=1
                )
                for n, b in zip(spec.members, blobs, strict=True)
            ),
            key=lambda c: c.node_id.public_key,
        )
    )

    def job(step: int, decrypt_set: tuple[NodeId, ...]) -> MakeDecryptionShare:
        return MakeDecryptionShare(
            round=1,
            step=step,
            epoch=1,
            aggregate_hash=hashlib.sha256(aggregate).digest(),
            aggregator=me,  # the contributions are read from our own store
            decrypt_set=decrypt_set,
            threshold=2,
            contributions=3,
            committed=committed,
        )

    first_set = tuple(sorted((me, plan.ids[1]), key=lambda n: n.public_key))
    second_set = tuple(sorted((me, plan.ids[2]), key=lambda n: n.public_key))
    shared: list[bytes] = []

    async def ask(node: Node, step: int, decrypt_set: tuple[NodeId, ...]) -> None:
        node.epochs.keys[1] = keys[0]
        node.epochs.binding = lambda _round: binding  # type: ignore[method-assign]  # no round 1 on this ledger
        for blob in blobs:
            node.transport.put_blob(blob)

        async def capture(body: TxBody) -> None:
            if isinstance(body, DecryptionShare):  # the node's own key-epoch steps go nowhere
                shared.append(body.share_hash)

        node.jobs.submit = capture
        await node.jobs._decryption_share(job(step, decrypt_set))

    async with open_memory_network(seed=4) as net:
        async with plan.open_node(0, net) as node:
            await ask(node, 5, first_set)
            await ask(node, 6, second_set)  # a redrawn decrypt set: refused
            await ask(node, 7, first_set)  # same set, later step: the same share
        await node.transport.aclose()
        assert shared == [shared[0]] * 2
        record = ShareLog(plan.configs[0].node.storage_dir).get(1, hashlib.sha256(aggregate).digest())
        assert record is not None
        assert (record.decrypt_set, record.share_hash) == (first_set, shared[0])
        async with plan.open_node(0, net) as node:  # a restart: only the storage directory is left
            await ask(node, 8, second_set)
            await ask(node, 9, first_set)
    assert shared == [shared[0]] * 3


def test_barred_members_fill_the_decrypt_set_only_when_too_few_others_remain() -> None:
    """Three of round 1's decrypt set withhold (withhold_limit = 1): three of five are barred,
    two are not. Round 2 (a robust epoch: point shares) takes both and the first two barred
    members in rotation order: t + 1 points, so one checks the others and the swarm can
    still merge if they cooperate, instead of stalling for certain."""
    chain = started_chain(withhold_limit=1)
    r = chain.to_decrypt()
    chain.withhold(r.decrypt_set[:3])
    r2 = chain.to_decrypt()
    assert set(r2.barred) == set(r.decrypt_set[:3])
    free = [p for p in r2.active if p not in r2.barred]
    fillers = [p for p in r2.active if p in r2.barred][:2]
    assert len(r2.decrypt_set) == r2.threshold + 1
    assert set(r2.decrypt_set) == {*free, *fillers}
