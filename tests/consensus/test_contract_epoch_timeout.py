"""The key-epoch deadline in the contract: `EpochTimeout` and `EpochRejoin`.

A member that did its part of the current epoch stage and whose local deadline
passed votes `EpochTimeout`; a majority of those waiting abandons the epoch and a
new one starts over the members that did their part, if at least
``max(min_peers, t)`` remain (t from the whole membership); otherwise the swarm
waits and the contract names who it waits for. A left-out member comes back with
`EpochRejoin` once the current epoch is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import pytest

from consensus.contract import EPOCH_TIMEOUT, Contract
from consensus.genesis import DecryptionThreshold, FoundingMember, Genesis, TrainingParams
from consensus.transactions import (
    EpochComplete,
    EpochFingerprint,
    EpochPublicShare,
    EpochRejoin,
    EpochSealedShares,
    EpochStage,
    EpochTimeout,
    Phase,
    Ready,
    TxBody,
    TxSigner,
)
from crypto import cbor
from crypto.identity import NodeId, NodeIdentity
from crypto.testing import placeholder_fingerprint

IDENTITIES = [NodeIdentity.from_seed(hashlib.sha256(b"epoch node %d" % i).digest()) for i in range(7)]
NODES = sorted((i.node_id for i in IDENTITIES), key=lambda n: n.public_key)
OUTSIDER = NODES[6]


def digest(label: object) -> bytes:
    return hashlib.sha256(repr(label).encode()).digest()


def make_genesis(n: int, min_peers: int = 2, threshold: DecryptionThreshold | None = None) -> Genesis:
    return Genesis(
        name="epoch-timeout-test",
        members=tuple(FoundingMember(name=f"site-{i}", node_id=NODES[i]) for i in range(n)),
        training=TrainingParams(
            model_spec_hash=digest("spec"), min_peers=min_peers, threshold=threshold or DecryptionThreshold()
        ),
    )


class Chain:
    def __init__(self, genesis: Genesis) -> None:
        self.contract = Contract(genesis)
        self.signers = {i.node_id: TxSigner(genesis.chain_id, i) for i in IDENTITIES}

    def block(self, who: Sequence[NodeId], make: object) -> tuple[str | None, ...]:
        assert callable(make)
        txs = [self.signers[n].sign(make(n)) for n in who]
        first = self.contract.check_tx(txs[0]) if txs else None
        reasons = self.contract.apply_block(self.contract.height + 1, txs)
        assert not txs or reasons[0] == first
        return reasons

    def ok(self, who: Sequence[NodeId], make: object) -> None:
        reasons = self.block(who, make)
        assert reasons == (None,) * len(who), reasons

    def rejected(self, who: NodeId, body: TxBody, match: str) -> None:
        before = self.contract.state
        (reason,) = self.block([who], lambda _n: body)
        assert reason is not None
        assert match in reason, reason
        assert "internal error" not in reason
        assert self.contract.state == dataclasses.replace(before, height=before.height + 1)

    @property
    def epoch(self) -> int:
        return self.contract.key_epoch().number

    def commit(self, who: Sequence[NodeId]) -> None:
        e = self.epoch
        self.ok(who, lambda n: EpochPublicShare(epoch=e, share_hash=digest(("pk", e, n))))

    def reveal(self, who: Sequence[NodeId]) -> None:
        e = self.epoch
        self.ok(who, lambda n: EpochSealedShares(epoch=e, shares_hash=digest(("sealed", e, n))))

    def fingerprint(self, who: Sequence[NodeId]) -> None:
        e, t = self.epoch, self.contract.key_epoch().threshold
        self.ok(who, lambda _n: EpochFingerprint(epoch=e, fingerprint=placeholder_fingerprint(t)))

    def confirm(self, who: Sequence[NodeId], key: object = "ck") -> None:
        e = self.epoch
        self.ok(who, lambda _n: EpochComplete(epoch=e, collective_key_hash=digest((key, e))))

    def run_until(self, stage: EpochStage, who: Sequence[NodeId]) -> None:
        """Every member in `who` does its part of each stage before `stage` and of `stage`."""
        self.commit(who)
        if stage == EpochStage.COMMIT:
            return
        self.reveal(who)
        if stage == EpochStage.REVEAL:
            return
        self.fingerprint(who)
        if stage == EpochStage.CHECK:
            return
        self.confirm(who)

    def vote(self, who: Sequence[NodeId]) -> None:
        e, stage = self.epoch, self.contract.key_epoch().stage.value
        self.ok(who, lambda _n: EpochTimeout(epoch=e, stage=stage))


# -- refusals ---------------------------------------------------------------------------------


def commit_stage_with_a_silent_member(threshold: DecryptionThreshold | None = None) -> Chain:
    chain = Chain(make_genesis(4, threshold=threshold))
    chain.commit(NODES[:3])  # NODES[3] never commits
    return chain


REFUSALS: list[tuple[str, NodeId, EpochTimeout, str]] = [
    ("non-member", OUTSIDER, EpochTimeout(epoch=1, stage="commit"), "not a member"),
    ("early: the silent one itself", NODES[3], EpochTimeout(epoch=1, stage="commit"), "not waiting"),
    ("early: a stage not reached", NODES[0], EpochTimeout(epoch=1, stage="reveal"), "not reveal"),
    ("early: the last stage", NODES[0], EpochTimeout(epoch=1, stage="confirm"), "not confirm"),
    ("stale epoch", NODES[0], EpochTimeout(epoch=2, stage="commit"), "stale key epoch 2"),
]


@pytest.mark.parametrize(("who", "body", "match"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_epoch_timeout_refusals(who: NodeId, body: EpochTimeout, match: str) -> None:
    commit_stage_with_a_silent_member().rejected(who, body, match)


def test_a_duplicate_vote_is_refused_and_changes_nothing() -> None:
    chain = commit_stage_with_a_silent_member()
    chain.vote(NODES[:1])
    assert chain.contract.key_epoch().timeout_votes == (NODES[0],)
    chain.rejected(NODES[0], EpochTimeout(epoch=1, stage="commit"), "already reported")
    assert chain.epoch == 1


def test_a_timeout_for_a_complete_epoch_is_refused() -> None:
    chain = Chain(make_genesis(3))
    chain.run_until(EpochStage.CONFIRM, NODES[:3])
    assert chain.contract.key_epoch().complete
    chain.rejected(NODES[0], EpochTimeout(epoch=1, stage="confirm"), "already complete")
    assert chain.contract.epoch_timeout_voters() == ()


def test_a_new_stage_clears_the_votes() -> None:
    chain = commit_stage_with_a_silent_member()
    chain.vote(NODES[:1])
    chain.commit(NODES[3:4])  # the late one shows up: reveal stage, fresh deadline
    epoch = chain.contract.key_epoch()
    assert (epoch.number, epoch.stage, epoch.timeout_votes) == (1, EpochStage.REVEAL, ())


# -- outcomes ---------------------------------------------------------------------------------

# (name, members, min_peers, silent members, stage they fall silent in, votes,
#  expected epoch members afterwards (indices) or None if the swarm must wait)
OUTCOMES = [
    ("one silent at commit", 4, 2, (3,), EpochStage.COMMIT, (0, 1), (0, 1, 2)),
    ("one silent at reveal", 4, 2, (1,), EpochStage.REVEAL, (0, 2), (0, 2, 3)),
    ("one silent at confirm", 4, 2, (0,), EpochStage.CONFIRM, (1, 2), (1, 2, 3)),
    ("a minority of votes waits", 5, 2, (4,), EpochStage.COMMIT, (0, 1), None),
    ("two of five silent", 5, 2, (3, 4), EpochStage.REVEAL, (0, 1), (0, 1, 2)),
    ("too few left for t", 4, 2, (2, 3), EpochStage.COMMIT, (0, 1), None),
    ("too few left for min_peers", 5, 4, (3, 4), EpochStage.COMMIT, (0, 1), None),
    ("min_peers still met", 5, 4, (4,), EpochStage.COMMIT, (0, 1, 2), (0, 1, 2, 3)),
]


@pytest.mark.parametrize(
    ("n", "min_peers", "silent", "stage", "voters", "expected"),
    [o[1:] for o in OUTCOMES],
    ids=[o[0] for o in OUTCOMES],
)
def test_epoch_timeout_outcomes(
    n: int,
    min_peers: int,
    silent: tuple[int, ...],
    stage: EpochStage,
    voters: tuple[int, ...],
    expected: tuple[int, ...] | None,
) -> None:
    chain = Chain(make_genesis(n, min_peers))
    everyone = NODES[:n]
    active = [m for i, m in enumerate(everyone) if i not in silent]
    # Everyone does the stages before `stage`; the silent ones stop there.
    stages = list(EpochStage)
    step = {
        EpochStage.COMMIT: chain.commit,
        EpochStage.REVEAL: chain.reveal,
        EpochStage.CHECK: chain.fingerprint,
        EpochStage.CONFIRM: chain.confirm,
    }
    for earlier in stages[: stages.index(stage)]:
        step[earlier](everyone)
    step[stage](active)
    assert chain.contract.key_epoch().stage == stage
    assert chain.contract.epoch_waiting_for() == tuple(everyone[i] for i in silent)
    assert set(chain.contract.epoch_timeout_voters()) == set(active)
    chain.vote([everyone[i] for i in voters])
    epoch = chain.contract.key_epoch()
    if expected is None:
        assert epoch.number == 1  # waits, and says for whom
        assert not epoch.complete
        assert chain.contract.epoch_waiting_for() == tuple(everyone[i] for i in silent)
        assert not [e for e in chain.contract.evidence() if e.kind == EPOCH_TIMEOUT]
        return
    assert epoch.number == 2
    assert epoch.members == tuple(everyone[i] for i in expected)
    assert epoch.threshold == n // 2 + 1  # t of the whole membership: exclusion never lowers it
    assert epoch.start_height == chain.contract.height
    assert chain.contract.epoch_left_out() == tuple(everyone[i] for i in silent)
    evidence = chain.contract.evidence()
    blamed = [(e.offender, cbor.loads(e.detail)) for e in evidence if e.kind == EPOCH_TIMEOUT]
    assert blamed == [(everyone[i], [1, stage.value]) for i in silent]
    assert set(chain.contract.state.member_ids) == set(everyone)  # still members (and validators)
    # The new epoch runs over the rest; left-out members cannot take part in it.
    late = EpochPublicShare(epoch=2, share_hash=digest(1))
    chain.rejected(everyone[silent[0]], late, "not a member of key")
    chain.run_until(EpochStage.CONFIRM, epoch.members)
    assert chain.contract.key_epoch().complete


def test_waiting_swarm_moves_on_when_a_missing_member_does_its_part() -> None:
    chain = Chain(make_genesis(4))
    chain.commit(NODES[:2])
    chain.vote(NODES[:2])
    assert chain.epoch == 1
    assert chain.contract.epoch_waiting_for() == (NODES[2], NODES[3])
    chain.commit(NODES[2:3])  # one comes back: three remain, enough for t = 3
    chain.vote(NODES[2:3])  # its own deadline passes too
    epoch = chain.contract.key_epoch()
    assert (epoch.number, epoch.members) == (2, tuple(NODES[:3]))


def test_conflicting_confirmations_start_over_with_everyone() -> None:
    chain = Chain(make_genesis(3))
    chain.commit(NODES[:3])
    chain.reveal(NODES[:3])
    chain.fingerprint(NODES[:3])
    e = chain.epoch
    chain.ok(NODES[:3], lambda n: EpochComplete(epoch=e, collective_key_hash=digest(("ck", n))))
    assert not chain.contract.key_epoch().complete
    assert chain.contract.epoch_waiting_for() == ()
    chain.vote(NODES[:2])
    epoch = chain.contract.key_epoch()
    assert (epoch.number, epoch.members) == (2, tuple(NODES[:3]))
    assert not [x for x in chain.contract.evidence() if x.kind == EPOCH_TIMEOUT]  # nobody was silent


# -- rounds and rejoin ----------------------------------------------------------------------------


def test_rounds_run_over_the_new_epoch_and_a_left_out_member_rejoins() -> None:
    # t = 2 of 4: three members left in the epoch are t + 1, enough for a round.
    chain = commit_stage_with_a_silent_member(DecryptionThreshold(numerator=1, denominator=3))
    chain.vote(NODES[:2])
    assert chain.epoch == 2
    # Rejoin refusals while epoch 2 runs, and for members of it.
    chain.rejected(NODES[3], EpochRejoin(epoch=2), "still running")
    chain.run_until(EpochStage.CONFIRM, NODES[:3])
    chain.rejected(NODES[0], EpochRejoin(epoch=2), "already a member")
    chain.rejected(NODES[3], EpochRejoin(epoch=1), "stale key epoch 1")
    chain.rejected(OUTSIDER, EpochRejoin(epoch=2), "not a member")
    # A round starts with the epoch's members only, and without waiting for the left-out one.
    r = chain.contract.round.number
    chain.ok([NODES[3], *NODES[:2]], lambda _n: Ready(round=r, weight=10))
    assert chain.contract.round.phase == Phase.READY
    chain.ok(NODES[2:3], lambda _n: Ready(round=r, weight=10))  # epoch 2's last member: start
    rnd = chain.contract.round
    assert rnd.phase == Phase.CONTRIBUTE
    assert (rnd.epoch, set(rnd.participants), rnd.threshold) == (2, set(NODES[:3]), 2)
    # Back: a new epoch over epoch 2's members and the returning one (the round goes on).
    chain.ok(NODES[3:4], lambda _n: EpochRejoin(epoch=2))
    epoch = chain.contract.key_epoch()
    assert (epoch.number, epoch.members, epoch.threshold) == (3, tuple(NODES[:4]), 2)
    assert chain.contract.round.phase == Phase.CONTRIBUTE
    chain.rejected(NODES[3], EpochRejoin(epoch=3), "already a member")


def test_the_node_state_snapshot_round_trips_with_votes() -> None:
    chain = commit_stage_with_a_silent_member()
    chain.vote(NODES[:1])
    other = Contract(chain.contract.genesis)
    other.restore(chain.contract.snapshot())
    assert other.state == chain.contract.state
    assert other.app_hash() == chain.contract.app_hash()
