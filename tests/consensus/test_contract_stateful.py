"""Hypothesis drives the contract with random blocks of valid and invalid transactions.

Transactions are drawn against the current state, mostly well aimed (the right
signer, round and step, so training actually progresses through joins,
leaves, key epochs, faults and merges) and often not (strangers, stale rounds
and steps, wrong hashes, junk bytes, another chain, an unknown kind). After
every block the invariants below are checked; at teardown the whole chain is
replayed and snapshot-restored.
"""

from __future__ import annotations

import dataclasses
import hashlib

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from consensus.contract import MERGED, Contract
from consensus.genesis import FoundingMember, Genesis, JoinPolicy, StoppingRule, TrainingParams
from consensus.transactions import (
    TX_MESSAGES,
    Aggregate,
    AggregateVerdict,
    Approve,
    Contribution,
    DecryptionShare,
    EpochComplete,
    EpochFingerprint,
    EpochPublicShare,
    EpochSealedShares,
    Evict,
    JoinRequest,
    Leave,
    MergedModel,
    Phase,
    PhaseTimeout,
    Ready,
    Stop,
    TxBody,
    TxSigner,
)
from crypto.envelope import EnvelopeCodec, MessageTypes
from crypto.identity import NodeId, NodeIdentity
from crypto.testing import placeholder_fingerprint

POOL = [NodeIdentity.from_seed(hashlib.sha256(b"stateful %d" % i).digest()) for i in range(7)]
NODES = [i.node_id for i in POOL]
FOUNDERS = 4
HASHES = [hashlib.sha256(b"h%d" % i).digest() for i in range(3)]
GENESIS = Genesis(
    name="stateful",
    members=tuple(FoundingMember(name=f"f{i}", node_id=NODES[i]) for i in range(FOUNDERS)),
    training=TrainingParams(
        model_spec_hash=HASHES[0], min_peers=2, stopping=StoppingRule(max_rounds=40, patience=0)
    ),
    join_policy=JoinPolicy(approvals=2),
)
OTHER_CHAIN = hashlib.sha256(b"another chain").digest()


@dataclasses.dataclass(frozen=True)
class Bogus:
    """A well-signed envelope of a kind the contract does not list."""

    round: int


BOGUS_TYPES = MessageTypes()
BOGUS_TYPES.register("tx.bogus", Bogus, max_size=512)
BOGUS_CODEC = EnvelopeCodec(GENESIS.chain_id, BOGUS_TYPES)

# Anything at all, 30% of the time; membership changes and Stop votes rarer, as in life.
KINDS = (
    ["join", "approve", "leave", "evict", "timeout", "timeout", "junk", "junk"]
    + ["epoch", "ready", "contribute", "aggregate", "verdict", "share", "merged"] * 2
    + ["stop"]
)


class ContractMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.contract = Contract(GENESIS)
        self.signers = {i.node_id: TxSigner(GENESIS.chain_id, i) for i in POOL}
        self.foreign = {i.node_id: TxSigner(OTHER_CHAIN, i) for i in POOL}
        self.blocks: list[tuple[bytes, ...]] = []
        # Member set after each block; index 0 is genesis.
        self.members_after: list[frozenset[NodeId]] = [frozenset(NODES[:FOUNDERS])]
        self.merged_seen = 0

    # -- drawing transactions ----------------------------------------------------------

    def _who(self, data: st.DataObject, preferred: tuple[NodeId, ...]) -> NodeId:
        if preferred and data.draw(st.integers(0, 9)) < 8:
            return data.draw(st.sampled_from(preferred))
        return data.draw(st.sampled_from(NODES))

    def _near(self, data: st.DataObject, value: int) -> int:
        return max(value + data.draw(st.sampled_from([0, 0, 0, 0, -1, 1])), 1)

    def _step(self, data: st.DataObject, value: int) -> int:
        return max(value + data.draw(st.sampled_from([0, 0, 0, 0, -1])), 0)

    def _hash(self, data: st.DataObject) -> bytes:
        return HASHES[data.draw(st.sampled_from([0, 0, 0, 1, 2]))]

    def _aimed_kind(self) -> str:
        """The transaction the current state is waiting for."""
        s = self.contract.state
        if not s.epoch.complete:
            return "epoch"
        return {
            Phase.READY: "ready",
            Phase.CONTRIBUTE: "contribute",
            Phase.AGGREGATE: "aggregate",
            Phase.VERIFY: "verdict",
            Phase.DECRYPT: "share" if len(s.round.decryption_shares) < s.round.threshold else "merged",
        }.get(Phase(s.round.phase), "ready")

    def _intent(self, data: st.DataObject) -> bytes:
        s = self.contract.state
        r = s.round
        members = s.member_ids
        # Mostly what the state waits for (so rounds complete), otherwise anything at all.
        kind = self._aimed_kind() if data.draw(st.integers(0, 9)) < 7 else data.draw(st.sampled_from(KINDS))
        body: TxBody
        who: NodeId
        if kind == "join":
            who = self._who(data, tuple(n for n in NODES if n not in members))
            former = next((f for f in s.former if f.node_id == who), None)
            last_left = former.left if former is not None and data.draw(st.booleans()) else 0
            body = JoinRequest(name=f"n{NODES.index(who)}", addresses=(), last_left=last_left)
        elif kind == "approve":
            pending = s.pending[data.draw(st.integers(0, len(s.pending) - 1))] if s.pending else None
            who = self._who(data, members)
            if pending is None:
                body = Approve(joiner=who, request=self._hash(data))
            else:
                body = Approve(joiner=pending.node_id, request=pending.request)
        elif kind == "leave":
            who = self._who(data, members)
            record = s.member(who)
            since = record.since if record is not None and data.draw(st.booleans()) else 0
            body = Leave(member_since=since)
        elif kind == "evict":
            who = self._who(data, members)
            target = data.draw(st.sampled_from(members))
            record = s.member(target)
            assert record is not None
            body = Evict(target=target, target_since=record.since)
        elif kind == "epoch":
            e = s.epoch
            due = tuple(
                x.node_id
                for x in e.records
                if x.public_share_hash is None
                or x.sealed_shares_hash is None
                or x.collective_key_hash is None
            )
            who = self._who(data, due or e.members)
            number = self._near(data, e.number)
            epoch_record = e.record(who)
            if epoch_record is not None and data.draw(st.integers(0, 4)):
                step = (
                    "public"
                    if epoch_record.public_share_hash is None
                    else "sealed"
                    if epoch_record.sealed_shares_hash is None
                    else "fingerprint"
                    if epoch_record.fingerprint is None
                    else "complete"
                )
            else:
                step = data.draw(st.sampled_from(["public", "sealed", "fingerprint", "complete"]))
            if step == "public":
                body = EpochPublicShare(epoch=number, share_hash=self._hash(data))
            elif step == "sealed":
                body = EpochSealedShares(epoch=number, shares_hash=self._hash(data))
            elif step == "fingerprint":
                body = EpochFingerprint(epoch=number, fingerprint=placeholder_fingerprint(e.threshold))
            else:
                body = EpochComplete(
                    epoch=number, collective_key_hash=HASHES[data.draw(st.sampled_from([0] * 9 + [1]))]
                )
        elif kind == "ready":
            who = self._who(data, tuple(n for n in members if r.ready_record(n) is None))
            metric = data.draw(st.sampled_from([None, 0.5, 0.7, 0.9]))
            body = Ready(
                round=self._near(data, r.number), weight=data.draw(st.integers(1, 100)), val_metric=metric
            )
        elif kind == "contribute":
            who = self._who(data, tuple(n for n in r.participants if r.contribution(n) is None))
            body = Contribution(round=self._near(data, r.number), blob_hash=self._hash(data), blob_size=10)
        elif kind == "aggregate":
            who = self._who(data, (r.leader,) if r.leader else ())
            contributors = r.contributors if data.draw(st.integers(0, 9)) else r.contributors[1:]
            body = Aggregate(
                round=r.number,
                step=self._step(data, r.step),
                aggregate_hash=self._hash(data),
                contributors=contributors,
            )
        elif kind == "verdict":
            who = self._who(data, (r.verifier,) if r.verifier else ())
            claimed = r.aggregate_hash or HASHES[0]
            recomputed = claimed if data.draw(st.integers(0, 4)) else self._hash(data)
            body = AggregateVerdict(
                round=r.number,
                step=self._step(data, r.step),
                aggregate_hash=claimed,
                recomputed_hash=recomputed,
            )
        elif kind == "share":
            who = self._who(data, tuple(n for n in r.decrypt_set if r.decryption_share(n) is None))
            body = DecryptionShare(round=r.number, step=self._step(data, r.step), share_hash=self._hash(data))
        elif kind == "merged":
            voted = {v.node_id for v in r.merged_votes}
            who = self._who(data, tuple(n for n in r.participants if n not in voted))
            params_hash = HASHES[0] if data.draw(st.integers(0, 9)) else HASHES[1]
            body = MergedModel(round=r.number, step=self._step(data, r.step), params_hash=params_hash)
        elif kind == "timeout":
            who = self._who(data, self.contract.timeout_voters())
            phase = r.phase if r.phase != Phase.STOPPED else "ready"
            body = PhaseTimeout(round=r.number, phase=phase, step=self._step(data, r.step))
        elif kind == "stop":
            who = self._who(data, members) if data.draw(st.integers(0, 3)) == 0 else NODES[-1]
            body = Stop(round=self._near(data, r.number))
        else:
            junk = data.draw(st.sampled_from(["bytes", "chain", "bogus"]))
            who = data.draw(st.sampled_from(NODES))
            if junk == "bytes":
                return data.draw(st.binary(max_size=40))
            if junk == "chain":
                return self.foreign[who].sign(Ready(round=r.number, weight=1))
            return BOGUS_CODEC.seal(POOL[NODES.index(who)], Bogus(round=r.number))
        return self.signers[who].sign(body)

    # -- the one rule: commit a block -----------------------------------------------------

    @rule(data=st.data())
    def commit_block(self, data: st.DataObject) -> None:
        txs = tuple(self._intent(data) for _ in range(data.draw(st.integers(0, 4))))
        before_snapshot = self.contract.snapshot()
        before_state = self.contract.state
        height = self.contract.height + 1
        reasons = self.contract.apply_block(height, txs)
        self.blocks.append(txs)
        assert len(reasons) == len(txs)
        assert not any(r is not None and "internal error" in r for r in reasons), reasons
        # Only listed kinds can be accepted.
        for tx, reason in zip(txs, reasons, strict=True):
            if reason is None:
                assert self.contract.decode(tx).type in {t.name for t in TX_MESSAGES}
        # Rejected transactions change nothing: the accepted ones alone give the same state.
        shadow = Contract(GENESIS)
        shadow.restore(before_snapshot)
        accepted = tuple(tx for tx, reason in zip(txs, reasons, strict=True) if reason is None)
        assert shadow.apply_block(height, accepted) == (None,) * len(accepted)
        assert shadow.app_hash() == self.contract.app_hash()
        if not accepted:
            assert self.contract.state == dataclasses.replace(before_state, height=height)
        self.members_after.append(frozenset(self.contract.state.member_ids))

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def membership_is_never_empty(self) -> None:
        assert self.contract.members()

    @invariant()
    def validator_changes_take_effect_exactly_two_heights_later(self) -> None:
        h = self.contract.height
        for height in range(max(1, h - 3), h + 3):
            expected = self.members_after[max(height - 2, 0)]
            assert set(self.contract.validators(height)) == expected, height
            assert list(self.contract.validators(height)) == sorted(expected, key=lambda n: n.public_key)

    @invariant()
    def rounds_are_safe(self) -> None:
        s = self.contract.state
        r = s.round
        min_peers = GENESIS.training.min_peers
        if r.phase in (Phase.AGGREGATE, Phase.VERIFY, Phase.DECRYPT):
            assert len(r.contributors) >= min_peers  # never decrypt fewer than min_peers
            assert set(r.decrypt_set) <= set(r.active)
            # Robust epochs: every active participant decrypts (at least t of them).
            assert len(r.decrypt_set) >= r.threshold if r.robust else len(r.decrypt_set) == r.threshold
            assert r.leader != r.verifier
        if r.phase == Phase.CONTRIBUTE:
            assert set(r.participants) <= set(s.epoch.members) or r.epoch < s.epoch.number
        for closed in s.history:
            if closed.outcome == MERGED:
                assert len(closed.contributors) >= min_peers
                votes = [v for v in closed.merged_votes if v.value == closed.merged_hash]
                assert len(votes) >= closed.threshold
        assert s.merged_rounds == sum(1 for c in s.history if c.outcome == MERGED)
        self.merged_seen = max(self.merged_seen, s.merged_rounds)

    @invariant()
    def epoch_members_are_the_members_when_complete(self) -> None:
        s = self.contract.state
        if s.epoch.complete:
            assert s.epoch.members == s.member_ids

    def teardown(self) -> None:
        replayed = Contract(GENESIS)
        for i, txs in enumerate(self.blocks, start=1):
            replayed.apply_block(i, txs)
        assert replayed.app_hash() == self.contract.app_hash()
        restored = Contract(GENESIS)
        restored.restore(self.contract.snapshot())
        assert restored.snapshot() == self.contract.snapshot()
        assert restored.app_hash() == self.contract.app_hash()


ContractMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestContractMachine = ContractMachine.TestCase
