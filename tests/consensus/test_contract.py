"""The contract, one transaction kind at a time: each valid path and each rejection.

Every rejection is checked to leave the state exactly as an empty block would
(`Chain.rejected`), and `check_tx` to agree with `apply_block`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import pytest

from consensus.contract import (
    ABORTED,
    CONTRIBUTION_TIMEOUT,
    DECRYPTOR_TIMEOUT,
    LEADER_TIMEOUT,
    MERGED,
    VERIFIER_TIMEOUT,
    WRONG_AGGREGATE,
    WRONG_SHARE,
    Contract,
    Round,
)
from consensus.genesis import (
    DecryptionThreshold,
    FoundingMember,
    Genesis,
    JoinPolicy,
    PrivacyParams,
    StoppingRule,
    TrainingParams,
)
from consensus.transactions import (
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
    ShareMismatch,
    Stop,
    TxBody,
    TxSigner,
)
from crypto import cbor
from crypto.errors import ProtocolError
from crypto.identity import NodeId, NodeIdentity
from crypto.testing import placeholder_fingerprint
from swarmnode.testing.contract_chain import placeholder_epoch_blocks

IDENTITIES = [NodeIdentity.from_seed(hashlib.sha256(b"node %d" % i).digest()) for i in range(8)]
NODES = [i.node_id for i in IDENTITIES]
ADMIN = NodeIdentity.from_seed(b"\xad" * 32)


def digest(label: object) -> bytes:
    return hashlib.sha256(repr(label).encode()).digest()


def make_genesis(
    n: int = 4,
    *,
    min_peers: int = 2,
    max_rounds: int = 10,
    patience: int = 0,
    min_delta: float = 0.0,
    goal: str = "max",
    select: str = "last",
    policy: JoinPolicy | None = None,
    threshold: DecryptionThreshold | None = None,
    secure: bool = True,
) -> Genesis:
    return Genesis(
        name="contract-test",
        members=tuple(FoundingMember(name=f"site-{i}", node_id=NODES[i]) for i in range(n)),
        training=TrainingParams(
            model_spec_hash=digest("spec"),
            min_peers=min_peers,
            secure=secure,
            threshold=threshold or DecryptionThreshold(),
            stopping=StoppingRule(
                max_rounds=max_rounds, patience=patience, min_delta=min_delta, goal=goal, select=select
            ),
        ),
        join_policy=policy or JoinPolicy(),
    )


class Chain:
    """A contract fed one block per call, with a signer for every test identity."""

    def __init__(self, genesis: Genesis) -> None:
        self.contract = Contract(genesis)
        self.signers = {i.node_id: TxSigner(genesis.chain_id, i) for i in (*IDENTITIES, ADMIN)}
        self.blocks: list[tuple[bytes, ...]] = []  # everything applied, for replays

    def tx(self, who: NodeId, body: TxBody) -> bytes:
        return self.signers[who].sign(body)

    def block(self, *txs: bytes) -> tuple[str | None, ...]:
        checks = [self.contract.check_tx(tx) for tx in txs[:1]]
        reasons = self.contract.apply_block(self.contract.height + 1, txs)
        self.blocks.append(txs)
        assert checks == list(reasons[:1])  # the first tx sees the same state in both
        return reasons

    def ok(self, who: NodeId, body: TxBody) -> None:
        reasons = self.block(self.tx(who, body))
        assert reasons == (None,), reasons

    def rejected(self, who: NodeId, body: TxBody, match: str) -> str:
        before = self.contract.state
        reasons = self.block(self.tx(who, body))
        reason = reasons[0]
        assert reason is not None, f"{type(body).__name__} was accepted"
        assert match in reason, reason
        assert "internal error" not in reason
        assert self.contract.state == dataclasses.replace(before, height=before.height + 1)
        return reason

    @property
    def round(self) -> Round:
        return self.contract.round

    def complete_epoch(self) -> None:
        for block in placeholder_epoch_blocks(self.contract.key_epoch()):
            txs = [self.tx(node, body) for node, body in block]
            assert self.block(*txs) == (None,) * len(txs)
        assert self.contract.key_epoch().complete

    def all_ready(self, nodes: Sequence[NodeId] | None = None, metric: float | None = 0.5) -> None:
        number = self.round.number
        nodes = self.contract.state.member_ids if nodes is None else nodes
        txs = [self.tx(n, Ready(round=number, weight=10 + i, val_metric=metric)) for i, n in enumerate(nodes)]
        assert self.block(*txs) == (None,) * len(txs)

    def contribute(self, nodes: Sequence[NodeId] | None = None) -> None:
        r = self.round
        nodes = r.participants if nodes is None else nodes
        txs = [
            self.tx(n, Contribution(round=r.number, blob_hash=digest(("c", r.number, n)), blob_size=99))
            for n in nodes
        ]
        assert self.block(*txs) == (None,) * len(txs)

    def aggregate(self, value: bytes | None = None) -> bytes:
        r = self.round
        assert r.leader is not None
        value = value or digest(("agg", r.number))
        self.ok(
            r.leader,
            Aggregate(round=r.number, step=r.step, aggregate_hash=value, contributors=r.contributors),
        )
        return value

    def verify(self, recomputed: bytes | None = None) -> None:
        r = self.round
        assert r.verifier is not None
        assert r.aggregate_hash is not None
        body = AggregateVerdict(
            round=r.number,
            step=r.step,
            aggregate_hash=r.aggregate_hash,
            recomputed_hash=recomputed or r.aggregate_hash,
        )
        self.ok(r.verifier, body)

    def decrypt(self, nodes: Sequence[NodeId] | None = None) -> None:
        r = self.round
        nodes = r.decrypt_set if nodes is None else nodes
        txs = [
            self.tx(n, DecryptionShare(round=r.number, step=r.step, share_hash=digest(("d", n))))
            for n in nodes
        ]
        assert self.block(*txs) == (None,) * len(txs)

    def merge(self, nodes: Sequence[NodeId] | None = None, value: bytes | None = None) -> bytes:
        r = self.round
        value = value or digest(("merged", r.number))
        nodes = r.participants[: r.threshold] if nodes is None else nodes
        txs = [self.tx(n, MergedModel(round=r.number, step=r.step, params_hash=value)) for n in nodes]
        assert self.block(*txs) == (None,) * len(txs)
        return value

    def timeout(self, voters: Sequence[NodeId] | None = None) -> None:
        r = self.round
        if voters is None:  # just a majority: later votes would find the step moved on
            waiting = self.contract.timeout_voters()
            voters = waiting[: len(waiting) // 2 + 1]
        txs = [self.tx(n, PhaseTimeout(round=r.number, phase=r.phase, step=r.step)) for n in voters]
        assert self.block(*txs) == (None,) * len(txs)

    def full_round(self, metric: float | None = 0.5) -> bytes:
        self.all_ready(metric=metric)
        assert self.round.phase == Phase.CONTRIBUTE
        return self.finish_round()

    def finish_round(self) -> bytes:
        """The started round, every step honest: contributions through the merged model."""
        self.contribute()
        self.aggregate()
        self.verify()
        self.decrypt()
        return self.merge()


def started_chain(n: int = 4, **kwargs: object) -> Chain:
    chain = Chain(make_genesis(n, **kwargs))  # type: ignore[arg-type]
    chain.complete_epoch()
    return chain


# -- Application basics ---------------------------------------------------------------


def test_genesis_state_and_validators() -> None:
    chain = Chain(make_genesis(4))
    c = chain.contract
    assert c.height == 0
    assert set(c.validators(1)) == set(NODES[:4])
    assert list(c.validators(1)) == sorted(c.validators(1), key=lambda n: n.public_key)
    assert c.phase == Phase.READY
    assert c.round.number == 1
    assert c.key_epoch().number == 1
    assert c.key_epoch().threshold == 3
    assert not c.key_epoch().complete
    assert len(c.app_hash()) == 32
    assert c.required_ready() == 4  # max(min_peers, t + 1): t - 1 colluders face two honest updates


def test_blocks_apply_in_order_and_bad_bytes_are_rejected_without_change() -> None:
    chain = Chain(make_genesis(4))
    with pytest.raises(ValueError, match="apply in order"):
        chain.contract.apply_block(2, [])
    other = Chain(make_genesis(5))
    foreign = other.tx(NODES[0], Ready(round=1, weight=1))
    before = chain.contract.state
    reasons = chain.block(b"\x00", foreign, b"", cbor.dumps({"x": 1}))
    assert all(r is not None and r.startswith("undecodable transaction") for r in reasons)
    assert "another" in (reasons[1] or "") or "chain" in (reasons[1] or "")
    assert chain.contract.state == dataclasses.replace(before, height=1)


def test_check_tx_does_not_change_state() -> None:
    chain = Chain(make_genesis(4))
    before = chain.contract.app_hash()
    assert chain.contract.check_tx(chain.tx(NODES[0], Ready(round=1, weight=3))) is None
    assert chain.contract.check_tx(chain.tx(NODES[6], Ready(round=1, weight=3))) == "not a member"
    assert chain.contract.check_tx(b"junk") is not None
    assert chain.contract.app_hash() == before


def test_snapshot_restore_round_trip_and_foreign_snapshot() -> None:
    chain = started_chain()
    chain.full_round()
    restored = Contract(chain.contract.genesis)
    restored.restore(chain.contract.snapshot())
    assert restored.app_hash() == chain.contract.app_hash()
    assert restored.state == chain.contract.state
    with pytest.raises(ValueError, match="another chain"):
        Contract(make_genesis(5)).restore(chain.contract.snapshot())
    with pytest.raises(ProtocolError, match=r"CBOR|truncated"):
        restored.restore(chain.contract.snapshot()[:-1])
    # A snapshot whose closed rounds were rewritten no longer matches its hash chain.
    value = cbor.loads(chain.contract.snapshot())
    assert isinstance(value, dict)
    history = value["history"]
    assert isinstance(history, list)
    assert isinstance(history[0], dict)
    history[0]["merged_hash"] = digest("forged")
    with pytest.raises(ValueError, match="hash chain"):
        restored.restore(cbor.dumps(value))
    assert restored.app_hash() == chain.contract.app_hash()  # a refused restore changes nothing


def test_app_hash_commits_to_the_history() -> None:
    def one_round(weight: int) -> Contract:
        chain = started_chain()
        number = chain.round.number
        txs = [chain.tx(n, Ready(round=number, weight=weight, val_metric=0.5)) for n in NODES[:4]]
        assert chain.block(*txs) == (None,) * 4
        chain.finish_round()
        return chain.contract

    a, b = one_round(weight=10), one_round(weight=11)
    # The two states differ only inside the closed round (its Ready weights)...
    root = a.state.history_root
    assert dataclasses.replace(a.state, history=()) == dataclasses.replace(
        b.state, history=(), history_root=root
    )
    assert a.state.history != b.state.history
    # ...and the app hash, which sees the history only through its hash chain, still differs.
    assert a.app_hash() != b.app_hash()


# -- membership -------------------------------------------------------------------------


def join(chain: Chain, node: NodeId, name: str = "newcomer", last_left: int = 0) -> bytes:
    body = JoinRequest(name=name, addresses=("/ip4/127.0.0.1/tcp/4100",), last_left=last_left)
    chain.ok(node, body)
    return chain.signers[node].tx_id(body)


def test_join_and_single_approval_admits_with_validator_delay_and_new_epoch() -> None:
    chain = started_chain(4)
    newcomer = NODES[5]
    request = join(chain, newcomer)
    pending = chain.contract.pending_joins()
    assert [p.node_id for p in pending] == [newcomer]
    assert pending[0].request == request
    chain.rejected(newcomer, JoinRequest(name="again", addresses=()), "already pending")
    chain.rejected(NODES[6], JoinRequest(name="newcomer", addresses=()), "is taken")
    chain.rejected(NODES[6], Approve(joiner=newcomer, request=request), "only members approve")
    chain.rejected(NODES[0], Approve(joiner=NODES[6], request=request), "from another node")
    chain.rejected(NODES[0], Approve(joiner=newcomer, request=digest("nope")), "no pending join request")
    epoch_before = chain.contract.key_epoch().number
    chain.ok(NODES[0], Approve(joiner=newcomer, request=request))
    h = chain.contract.height
    record = chain.contract.member(newcomer)
    assert record is not None
    assert record.since == h
    assert record.approved_by == (NODES[0],)
    assert chain.contract.pending_joins() == ()
    assert newcomer not in chain.contract.validators(h + 1)
    assert newcomer in chain.contract.validators(h + 2)
    assert chain.contract.key_epoch().number == epoch_before + 1
    assert newcomer in chain.contract.key_epoch().members
    assert not chain.contract.key_epoch().complete
    chain.rejected(newcomer, JoinRequest(name="x", addresses=()), "already a member")
    chain.rejected(NODES[1], Approve(joiner=newcomer, request=request), "no pending join request")


def test_join_needs_k_distinct_member_approvals() -> None:
    chain = started_chain(4, policy=JoinPolicy(approvals=2))
    request = join(chain, NODES[5])
    chain.ok(NODES[0], Approve(joiner=NODES[5], request=request))
    chain.rejected(NODES[0], Approve(joiner=NODES[5], request=request), "already approved")
    assert not chain.contract.is_member(NODES[5])
    chain.ok(NODES[1], Approve(joiner=NODES[5], request=request))
    assert chain.contract.is_member(NODES[5])


def test_admin_join_policy() -> None:
    chain = started_chain(4, policy=JoinPolicy(mode="admin", admin=ADMIN.node_id))
    request = join(chain, NODES[5])
    chain.rejected(NODES[0], Approve(joiner=NODES[5], request=request), "requires the admin")
    chain.ok(ADMIN.node_id, Approve(joiner=NODES[5], request=request))
    assert chain.contract.is_member(NODES[5])
    assert not chain.contract.is_member(ADMIN.node_id)


def test_departure_lowers_the_approval_bar() -> None:
    chain = started_chain(3, policy=JoinPolicy(approvals=3))
    request = join(chain, NODES[5])
    chain.ok(NODES[0], Approve(joiner=NODES[5], request=request))
    chain.ok(NODES[1], Approve(joiner=NODES[5], request=request))
    assert not chain.contract.is_member(NODES[5])
    chain.ok(NODES[2], Leave(member_since=0))  # 2 members left, both approved
    assert chain.contract.is_member(NODES[5])


def test_leave_and_rejoin_replay_protection() -> None:
    chain = started_chain(4)
    chain.rejected(NODES[6], Leave(member_since=0), "not a member")
    chain.rejected(NODES[3], Leave(member_since=5), "stale leave")
    leave = chain.tx(NODES[3], Leave(member_since=0))
    assert chain.block(leave) == (None,)
    left_at = chain.contract.height
    former = chain.contract.former_members()
    assert [(f.node_id, f.left, f.how) for f in former] == [(NODES[3], left_at, "left")]
    assert NODES[3] in chain.contract.validators(left_at + 1)
    assert NODES[3] not in chain.contract.validators(left_at + 2)
    old_request_body = JoinRequest(name="back", addresses=(), last_left=0)
    chain.rejected(NODES[3], old_request_body, f"last_left must be {left_at}")
    request = join(chain, NODES[3], name="back", last_left=left_at)
    chain.ok(NODES[0], Approve(joiner=NODES[3], request=request))
    assert chain.contract.is_member(NODES[3])
    # The old Leave, replayed, is bound to the old membership.
    reasons = chain.block(leave)
    assert reasons[0] is not None
    assert "stale leave" in reasons[0]
    assert chain.contract.is_member(NODES[3])


def test_the_last_member_cannot_leave() -> None:
    chain = Chain(make_genesis(1, secure=False))  # a secure swarm needs t + 1 founders
    chain.rejected(NODES[0], Leave(member_since=0), "last member")


def test_eviction_by_majority_of_the_others() -> None:
    chain = started_chain(4)
    target = NODES[3]
    chain.rejected(NODES[6], Evict(target=target, target_since=0), "not a member")
    chain.rejected(NODES[0], Evict(target=NODES[6], target_since=0), "target is not a member")
    chain.rejected(NODES[0], Evict(target=NODES[0], target_since=0), "use Leave")
    chain.rejected(NODES[0], Evict(target=target, target_since=9), "stale eviction")
    chain.ok(NODES[0], Evict(target=target, target_since=0, reason="offline"))
    chain.rejected(NODES[0], Evict(target=target, target_since=0, reason="offline"), "already voted")
    assert chain.contract.is_member(target)  # 1 of 3 others
    chain.ok(NODES[1], Evict(target=target, target_since=0))
    assert not chain.contract.is_member(target)  # 2 of 3
    assert chain.contract.former_members()[0].how == "evicted"


# -- key epochs ---------------------------------------------------------------------------


def test_key_epoch_records_and_rejections() -> None:
    chain = Chain(make_genesis(3))
    e = chain.contract.key_epoch()
    chain.rejected(NODES[0], EpochPublicShare(epoch=2, share_hash=digest(1)), "stale key epoch 2")
    chain.rejected(NODES[6], EpochPublicShare(epoch=1, share_hash=digest(1)), "not a member of key epoch")
    chain.rejected(NODES[0], EpochComplete(epoch=1, collective_key_hash=digest("ck")), "incomplete")
    for n in e.members:
        chain.ok(n, EpochPublicShare(epoch=1, share_hash=digest(("pk", n))))
        chain.ok(n, EpochSealedShares(epoch=1, shares_hash=digest(("s", n))))
    chain.rejected(NODES[0], EpochPublicShare(epoch=1, share_hash=digest(2)), "public share already")
    chain.rejected(NODES[0], EpochSealedShares(epoch=1, shares_hash=digest(2)), "sealed shares already")
    for n in e.members:
        chain.ok(n, EpochFingerprint(epoch=1, fingerprint=placeholder_fingerprint(e.threshold)))
    chain.ok(NODES[0], EpochComplete(epoch=1, collective_key_hash=digest("ck")))
    chain.rejected(NODES[0], EpochComplete(epoch=1, collective_key_hash=digest("ck")), "completion already")
    chain.ok(NODES[1], EpochComplete(epoch=1, collective_key_hash=digest("other")))  # disagrees
    chain.ok(NODES[2], EpochComplete(epoch=1, collective_key_hash=digest("ck")))
    assert not chain.contract.key_epoch().complete  # every member must confirm the same key


def test_key_epoch_completes_and_is_then_closed() -> None:
    chain = Chain(make_genesis(3))
    chain.complete_epoch()
    e = chain.contract.key_epoch()
    assert e.collective_key_hash == digest(("ck", 1))
    assert e.complete_height == chain.contract.height
    chain.rejected(NODES[0], EpochPublicShare(epoch=1, share_hash=digest(1)), "already complete")
    # A membership change opens epoch 2 with a different public seed.
    chain.ok(NODES[2], Leave(member_since=0))
    assert chain.contract.key_epoch().number == 2
    assert chain.contract.key_epoch().seed != e.seed
    chain.rejected(NODES[0], EpochPublicShare(epoch=1, share_hash=digest(1)), "stale key epoch 1")


# -- rounds: ready and start --------------------------------------------------------------


def test_ready_rejections() -> None:
    chain = Chain(make_genesis(4))
    chain.rejected(NODES[6], Ready(round=1, weight=5), "not a member")
    chain.rejected(NODES[0], Ready(round=2, weight=5), "has not begun")
    chain.ok(NODES[0], Ready(round=1, weight=5))
    chain.rejected(NODES[0], Ready(round=1, weight=5), "already ready")


def test_round_waits_for_the_key_epoch_then_starts_when_everyone_is_ready() -> None:
    chain = Chain(make_genesis(4))
    chain.all_ready()
    assert chain.round.phase == Phase.READY  # no complete key epoch yet
    chain.complete_epoch()
    r = chain.round
    assert r.phase == Phase.CONTRIBUTE
    assert set(r.participants) == set(NODES[:4])
    assert r.epoch == 1
    assert r.threshold == 3
    assert r.leader == r.participants[0]
    assert r.verifier == r.participants[1]
    assert set(r.decrypt_set) == set(r.participants)  # a robust epoch: every participant decrypts
    chain.rejected(NODES[0], Ready(round=1, weight=5), "already started")
    assert r.ready_weight == sum(10 + i for i in range(4))


def test_leader_rotates_with_the_round_number() -> None:
    chain = started_chain(4)
    leaders = []
    for _ in range(4):
        chain.full_round()
        leaders.append(chain.contract.history()[-1].aggregator)
    assert len(set(leaders)) == 4


def test_every_round_gets_its_own_ledger_nonce_fixed_when_it_starts() -> None:
    """The nonce every contribution of a round is bound to (`crypto.ckks.RoundBinding`): 32
    bytes, fixed at the start for the whole round, different for every round and chain, and
    the same on every node replaying the blocks."""
    chain = started_chain(4)
    assert chain.round.nonce == b""  # not started yet
    nonces = []
    for _ in range(3):
        chain.all_ready()
        nonce = chain.round.nonce
        assert len(nonce) == 32
        chain.finish_round()
        assert chain.contract.history()[-1].nonce == nonce
        nonces.append(nonce)
    assert len(set(nonces)) == 3
    replay = Chain(make_genesis(4))
    for txs in list(chain.blocks):
        replay.block(*txs)
    assert [r.nonce for r in replay.contract.history()] == nonces
    elsewhere = Chain(dataclasses.replace(make_genesis(4), name="another swarm"))
    elsewhere.complete_epoch()
    elsewhere.all_ready()
    assert elsewhere.round.number == 1
    assert elsewhere.round.nonce not in nonces


def test_ready_timeout_starts_with_enough_ready_members() -> None:
    chain = started_chain(5)  # t = 3, min_peers = 2: t + 1 = four ready members are needed
    chain.all_ready(NODES[:3])
    chain.rejected(NODES[6], PhaseTimeout(round=1, phase="ready", step=0), "not a member")
    chain.timeout(NODES[2:5])  # a majority of the epoch's members, Ready or not
    assert chain.round.phase == Phase.READY
    assert chain.round.ready_timed_out
    chain.all_ready(NODES[3:4])  # the fourth one starts it without waiting for the rest
    r = chain.round
    assert r.phase == Phase.CONTRIBUTE
    assert set(r.participants) == set(NODES[:4])


def test_timeout_votes_need_a_majority_of_the_epoch_members() -> None:
    chain = started_chain(5)
    chain.all_ready(NODES[:4])
    chain.timeout(NODES[:2])
    assert chain.round.phase == Phase.READY
    chain.rejected(NODES[0], PhaseTimeout(round=1, phase="ready", step=0), "already reported")
    chain.rejected(NODES[1], PhaseTimeout(round=1, phase="contribute", step=0), "not contribute")
    chain.rejected(NODES[1], PhaseTimeout(round=1, phase="ready", step=7), "stale step")
    chain.timeout(NODES[4:5])  # not Ready itself: its clock counts all the same
    assert chain.round.phase == Phase.CONTRIBUTE


# -- rounds: the happy path and its rejections ---------------------------------------------


def test_a_full_round_and_its_rejections() -> None:
    chain = started_chain(4)
    chain.all_ready()
    r = chain.round
    outsider = NODES[6]
    chain.rejected(outsider, Contribution(round=1, blob_hash=digest(1), blob_size=5), "not a member")
    chain.rejected(r.participants[0], Contribution(round=2, blob_hash=digest(1), blob_size=5), "not begun")
    assert r.leader is not None
    assert r.verifier is not None
    chain.rejected(
        r.leader, Aggregate(round=1, step=r.step, aggregate_hash=digest(1), contributors=()), "phase"
    )
    chain.contribute(r.participants[:1])
    chain.rejected(
        r.participants[0], Contribution(round=1, blob_hash=digest(1), blob_size=5), "already recorded"
    )
    chain.contribute(r.participants[1:])
    r = chain.round
    assert r.phase == Phase.AGGREGATE
    assert r.contributors == tuple(sorted(r.participants, key=lambda n: n.public_key))
    assert r.leader is not None
    assert r.verifier is not None
    assert r.contribution(r.participants[0]) is not None
    good = Aggregate(round=1, step=r.step, aggregate_hash=digest("agg"), contributors=r.contributors)
    chain.rejected(r.verifier, good, "only the leader")
    chain.rejected(r.leader, dataclasses.replace(good, step=r.step - 1), "stale step")
    chain.rejected(
        r.leader, dataclasses.replace(good, contributors=r.contributors[:2]), "contributor set differs"
    )
    chain.ok(r.leader, good)
    r = chain.round
    assert r.phase == Phase.VERIFY
    assert r.verifier is not None
    verdict = AggregateVerdict(
        round=1, step=r.step, aggregate_hash=digest("agg"), recomputed_hash=digest("agg")
    )
    chain.rejected(r.participants[3], verdict, "only the verifier")
    wrong_claim = AggregateVerdict(
        round=1, step=r.step, aggregate_hash=digest("x"), recomputed_hash=digest("x")
    )
    chain.rejected(r.verifier, wrong_claim, "another aggregate")
    chain.ok(r.verifier, verdict)
    r = chain.round
    assert r.phase == Phase.DECRYPT
    assert set(r.decrypt_set) == set(r.participants)  # a robust epoch: every participant decrypts
    chain.rejected(r.decrypt_set[0], MergedModel(round=1, step=r.step, params_hash=digest(1)), "incomplete")
    chain.decrypt(r.decrypt_set[:1])
    chain.rejected(
        r.decrypt_set[0], DecryptionShare(round=1, step=r.step, share_hash=digest(1)), "already recorded"
    )
    chain.decrypt(r.decrypt_set[1:])
    chain.rejected(outsider, MergedModel(round=1, step=r.step, params_hash=digest(1)), "not a member")
    merged = digest("merged")
    chain.merge(r.participants[:2], merged)
    chain.merge(r.participants[2:3], digest("different"))  # a lying or broken combiner
    chain.rejected(
        r.participants[0], MergedModel(round=1, step=r.step, params_hash=merged), "already recorded"
    )
    assert chain.round.phase == Phase.DECRYPT  # 2 matching < t = 3
    chain.merge(r.participants[3:], merged)
    closed = chain.contract.history()[-1]
    assert closed.outcome == MERGED
    assert closed.merged_hash == merged
    assert chain.contract.last_merged_hash == merged
    assert chain.round.number == 2
    assert chain.round.phase == Phase.READY
    chain.rejected(r.participants[0], Ready(round=1, weight=5), "round 1 is over")
    summary = chain.contract.transparency()[-1]
    assert summary.merged_hash == merged
    assert summary.leader == closed.aggregator
    assert sorted(c.weight for c in summary.contributors) == [10, 11, 12, 13]


# -- faults ------------------------------------------------------------------------------


def test_wrong_aggregate_is_proven_and_the_verifier_takes_over() -> None:
    chain = started_chain(4)
    chain.all_ready()
    chain.contribute()
    r = chain.round
    bad_leader, verifier = r.leader, r.verifier
    chain.aggregate(digest("wrong"))
    chain.verify(digest("right"))
    r = chain.round
    assert r.phase == Phase.VERIFY
    assert r.aggregator == verifier
    assert r.leader == verifier
    assert r.aggregate_hash == digest("right")
    assert bad_leader in r.excluded
    assert r.verifier not in (bad_leader, verifier)
    assert bad_leader not in r.decrypt_set
    assert bad_leader in r.contributors  # its committed contribution stays in the sum
    (evidence,) = chain.contract.evidence()
    assert (evidence.kind, evidence.offender, evidence.detail) == (
        WRONG_AGGREGATE,
        bad_leader,
        digest("wrong"),
    )
    second_verifier = r.verifier
    chain.verify()
    chain.decrypt()
    chain.merge([p for p in r.participants if p != bad_leader])
    summary = chain.contract.transparency()[-1]
    assert summary.leader == verifier
    assert summary.verifier == second_verifier


def test_contributor_timeout_drops_the_missing_ones() -> None:
    chain = started_chain(5)
    chain.all_ready()
    r = chain.round
    missing = r.participants[4]
    chain.contribute(r.participants[:4])
    chain.rejected(NODES[6], PhaseTimeout(round=1, phase="contribute", step=r.step), "not a member")
    chain.timeout()
    r = chain.round
    assert r.phase == Phase.AGGREGATE
    assert missing in r.dropped
    assert missing not in r.contributors
    assert len(r.contributors) == 4
    chain.rejected(missing, Contribution(round=1, blob_hash=digest(1), blob_size=1), "phase")
    assert [(e.kind, e.offender) for e in chain.contract.evidence()] == [(CONTRIBUTION_TIMEOUT, missing)]


def test_never_decrypt_fewer_than_min_peers_contributions() -> None:
    chain = started_chain(4, min_peers=3)
    chain.all_ready()
    r = chain.round
    chain.contribute(r.participants[:2])
    chain.timeout()
    closed = chain.contract.history()[-1]
    assert closed.outcome == ABORTED
    assert "min_peers" in closed.note
    assert chain.round.number == 2
    assert chain.round.phase == Phase.READY
    assert chain.contract.state.merged_rounds == 0


def test_leader_timeout_replaces_the_leader() -> None:
    chain = started_chain(4)
    chain.all_ready()
    chain.contribute()
    r = chain.round
    silent = r.leader
    assert silent is not None
    chain.timeout([p for p in chain.contract.timeout_voters() if p != silent][:3])
    r2 = chain.round
    assert r2.phase == Phase.AGGREGATE
    assert r2.leader == r.verifier
    assert r2.step > r.step
    assert silent in r2.excluded
    stale = Aggregate(round=1, step=r.step, aggregate_hash=digest(1), contributors=r.contributors)
    chain.rejected(silent, stale, "stale step")
    assert chain.contract.evidence()[-1].kind == LEADER_TIMEOUT
    chain.aggregate()
    chain.verify()
    assert chain.round.phase == Phase.DECRYPT


def test_verifier_timeout_replaces_the_verifier() -> None:
    chain = started_chain(4)
    chain.all_ready()
    chain.contribute()
    chain.aggregate()
    r = chain.round
    chain.timeout()
    r2 = chain.round
    assert r2.phase == Phase.VERIFY
    assert r2.verifier not in (r.verifier, None)
    assert r2.aggregate_hash == r.aggregate_hash
    assert chain.contract.evidence()[-1].kind == VERIFIER_TIMEOUT
    chain.verify()
    assert chain.round.phase == Phase.DECRYPT


def test_decryptor_timeout_abandons_the_aggregate() -> None:
    chain = started_chain(5)
    chain.all_ready()
    chain.contribute()
    chain.aggregate()
    chain.verify()
    r = chain.round
    assert len(r.decrypt_set) == 5  # a robust epoch: every participant decrypts
    chain.decrypt(r.decrypt_set[:4])
    missing = r.decrypt_set[4]
    chain.timeout()
    closed = chain.contract.history()[-1]
    assert closed.outcome == ABORTED  # never a second decrypt set for one aggregate
    assert closed.decrypt_set == r.decrypt_set
    last = chain.contract.evidence()[-1]
    assert (last.kind, last.offender, last.detail) == (DECRYPTOR_TIMEOUT, missing, r.aggregate_hash)
    chain.full_round()  # the next round encrypts afresh and merges
    assert chain.contract.history()[-1].outcome == MERGED


def test_decrypt_timeout_with_all_shares_but_no_agreement_aborts() -> None:
    chain = started_chain(4)
    chain.all_ready()
    chain.contribute()
    chain.aggregate()
    chain.verify()
    chain.decrypt()
    chain.timeout()
    assert chain.contract.history()[-1].outcome == ABORTED
    assert chain.round.number == 2


def test_a_participant_leaving_mid_round_is_dropped_or_replaced() -> None:
    chain = started_chain(5)
    chain.all_ready()
    r = chain.round
    leaver = r.participants[4]
    chain.contribute(r.participants[:4])
    chain.ok(leaver, Leave(member_since=0))
    r2 = chain.round
    assert r2.phase == Phase.AGGREGATE  # the others had all contributed
    assert leaver in r2.dropped
    leader = r2.leader
    assert leader is not None
    chain.ok(leader, Leave(member_since=0))
    r3 = chain.round
    assert r3.leader not in (leader, None)
    assert leader in r3.contributors  # committed before leaving
    chain.aggregate()
    chain.verify()
    chain.decrypt()
    chain.merge(chain.round.active[:3])
    assert chain.contract.history()[-1].outcome == MERGED
    assert chain.contract.history()[-1].epoch == 1  # the round kept the key epoch it started with


def test_rounds_abort_when_too_few_remain_for_the_roles() -> None:
    chain = started_chain(4)
    chain.all_ready()
    chain.contribute()
    chain.timeout()  # leader out
    chain.timeout()  # next leader out: 2 eligible < t = 3
    assert chain.contract.history()[-1].outcome == ABORTED


# -- stopping ----------------------------------------------------------------------------


def test_max_rounds_stops_and_records_the_final_model() -> None:
    chain = started_chain(4, max_rounds=2)
    chain.full_round()
    last = chain.full_round()
    assert chain.contract.phase == Phase.STOPPED
    stop = chain.contract.stopped
    assert stop is not None
    assert stop.merged_rounds == 2
    assert chain.contract.final_model_hash == last
    assert "max_rounds" in stop.reason
    chain.rejected(NODES[0], Ready(round=3, weight=1), "training has stopped")


@pytest.mark.parametrize(
    ("goal", "metrics", "stops_after"),
    [
        ("max", [0.5, 0.6, 0.6, 0.61], 4),  # 0.6 and 0.61 do not beat 0.6 by > 0.05
        ("max", [0.5, 0.6, 0.7, 0.8, 0.8, 0.84], 6),
        ("min", [1.0, 0.9, 0.95, 0.91], 4),
    ],
)
def test_patience_on_the_median_metric(goal: str, metrics: list[float], stops_after: int) -> None:
    chain = started_chain(4, patience=2, min_delta=0.05, goal=goal)
    for i, metric in enumerate(metrics):
        assert chain.contract.stopped is None, f"stopped early, before round {i + 1}"
        chain.full_round(metric=metric)
    assert chain.contract.stopped is not None
    assert chain.contract.stopped.merged_rounds == stops_after
    assert "no improvement" in chain.contract.stopped.reason


def test_median_of_reported_metrics() -> None:
    chain = started_chain(4)
    number = chain.round.number
    txs = [
        chain.tx(n, Ready(round=number, weight=1, val_metric=m))
        for n, m in zip(NODES, [0.1, 0.9, 0.3, None], strict=False)
    ]
    assert chain.block(*txs) == (None,) * 4
    chain.finish_round()
    assert chain.contract.history()[-1].median_metric == 0.3


def test_select_best_scores_each_model_at_the_next_ready_quorum_and_stops_with_the_best() -> None:
    """stopping.select = "best": round k's Ready metrics score the model merged in round k-1;
    after max_rounds merges the next Ready quorum scores the last one and stops instead of
    starting a round; the final model is the best scored one, not the last."""
    chain = started_chain(4, max_rounds=3, select="best")
    first = chain.full_round(metric=None)  # the sites start from the initial model: nothing to score
    chain.full_round(metric=0.9)  # scores `first`
    chain.full_round(metric=0.7)  # scores the second model
    assert chain.contract.stopped is None  # the third model is not scored yet
    chain.all_ready(metric=0.8)  # scores it, then stops
    stop = chain.contract.stopped
    assert stop is not None
    assert stop.merged_rounds == 3
    assert "max_rounds" in stop.reason
    assert chain.contract.final_model_hash == first
    assert chain.contract.state.best_metric == pytest.approx(0.9)


def test_select_best_with_a_stop_vote_keeps_the_best_model() -> None:
    chain = started_chain(4, select="best")
    chain.full_round(metric=None)
    second = chain.full_round(metric=0.5)
    chain.full_round(metric=0.8)  # scores `second`
    chain.all_ready(metric=0.6)  # scores the third model: worse
    for node in NODES[:3]:
        chain.ok(node, Stop(round=chain.round.number))
    assert chain.contract.final_model_hash == second


def test_stop_vote_by_majority() -> None:
    chain = started_chain(4)
    chain.full_round()
    chain.all_ready()
    chain.rejected(NODES[6], Stop(round=2), "not a member")
    chain.rejected(NODES[0], Stop(round=1), "is over")
    chain.ok(NODES[0], Stop(round=2))
    chain.rejected(NODES[0], Stop(round=2), "already voted")
    chain.ok(NODES[1], Stop(round=2))
    assert chain.contract.stopped is None  # 2 of 4 is not a majority
    chain.ok(NODES[2], Stop(round=2, reason="enough"))
    assert chain.contract.phase == Phase.STOPPED
    assert chain.contract.final_model_hash == chain.contract.history()[0].merged_hash
    assert chain.contract.history()[-1].outcome == ABORTED


# -- a whole training run -----------------------------------------------------------------


def replay(genesis: Genesis, blocks: Sequence[tuple[bytes, ...]], start: Contract | None = None) -> Contract:
    contract = start or Contract(genesis)
    for txs in blocks[contract.height :]:
        contract.apply_block(contract.height + 1, txs)
    return contract


def test_scripted_training_run() -> None:
    """4 founders; round 2 has a cheating leader; a site joins after round 2 (new key
    epoch); round 3 drops a silent contributor; a founder leaves; training runs until
    the stopping rule; replays and snapshots agree on every byte."""
    genesis = make_genesis(4, max_rounds=5, patience=3)
    chain = Chain(genesis)
    founders = NODES[:4]
    chain.complete_epoch()

    # Round 1: everything goes right.
    first = chain.full_round(metric=0.70)
    assert chain.contract.transparency()[0].merged_hash == first

    # Round 2: the leader commits a wrong aggregate, the verifier proves it and leads.
    chain.all_ready(metric=0.75)
    chain.contribute()
    cheater = chain.round.leader
    chain.aggregate(digest("garbage"))
    chain.verify(digest(("agg", 2)))
    chain.verify()
    chain.decrypt()
    chain.merge([p for p in chain.round.participants if p != cheater][:3])
    round2 = chain.contract.transparency()[1]
    assert round2.outcome == MERGED
    assert round2.leader not in (cheater, None)
    assert [(e.kind, e.offender) for e in chain.contract.evidence()] == [(WRONG_AGGREGATE, cheater)]

    # A new site joins after round 2: validators change two heights later, epoch 2 runs.
    newcomer = NODES[4]
    request = join(chain, newcomer, name="late-site")
    chain.ok(founders[0], Approve(joiner=newcomer, request=request))
    joined_at = chain.contract.height
    assert newcomer not in chain.contract.validators(joined_at + 1)
    assert newcomer in chain.contract.validators(joined_at + 2)
    chain.all_ready(metric=0.8)  # everyone is ready, but round 3 waits for the key epoch
    assert chain.round.phase == Phase.READY
    chain.complete_epoch()
    assert chain.contract.key_epoch().number == 2
    r3 = chain.round
    assert r3.phase == Phase.CONTRIBUTE
    assert newcomer in r3.participants
    assert r3.epoch == 2
    assert r3.threshold == 3

    # Round 3: one participant never contributes and is dropped at the deadline.
    silent = r3.participants[-1]
    chain.contribute(r3.participants[:-1])
    chain.timeout()
    assert chain.round.phase == Phase.AGGREGATE
    chain.aggregate()
    chain.verify()
    chain.decrypt()
    chain.merge(chain.round.active[:3])
    round3 = chain.contract.transparency()[2]
    assert {c.node_id for c in round3.contributors} == set(r3.participants) - {silent}
    assert chain.contract.evidence()[-1].kind == CONTRIBUTION_TIMEOUT

    # A founder leaves; epoch 3 runs with the remaining four.
    leaver = founders[3]
    chain.ok(leaver, Leave(member_since=0))
    left_at = chain.contract.height
    assert leaver in chain.contract.validators(left_at + 1)
    assert leaver not in chain.contract.validators(left_at + 2)
    chain.complete_epoch()
    assert chain.contract.key_epoch().number == 3
    assert leaver not in chain.contract.key_epoch().members

    # Rounds 4 and 5 reach max_rounds = 5.
    chain.full_round(metric=0.81)
    assert chain.contract.stopped is None
    final = chain.full_round(metric=0.82)
    stop = chain.contract.stopped
    assert stop is not None
    assert stop.merged_rounds == 5
    assert chain.contract.final_model_hash == final
    summaries = chain.contract.transparency()
    assert [s.outcome for s in summaries] == [MERGED] * 5
    assert [s.epoch for s in summaries] == [1, 1, 2, 3, 3]
    assert leaver not in {c.node_id for c in summaries[-1].contributors}
    assert summaries[3].median_metric == 0.81

    # Every node replaying the blocks holds the same bytes; so does one restored mid-way.
    assert replay(genesis, chain.blocks).app_hash() == chain.contract.app_hash()
    halfway = replay(genesis, chain.blocks[: len(chain.blocks) // 2])
    restored = Contract(genesis)
    restored.restore(halfway.snapshot())
    assert replay(genesis, chain.blocks, start=restored).snapshot() == chain.contract.snapshot()


def test_pending_join_requests_are_capped() -> None:
    from consensus.contract import MAX_PENDING_JOINS

    chain = Chain(make_genesis(2, secure=False))  # a secure swarm needs t + 1 founders
    strangers = [
        NodeIdentity.from_seed(hashlib.sha256(b"stranger %d" % i).digest())
        for i in range(MAX_PENDING_JOINS + 1)
    ]
    for identity in strangers:
        chain.signers[identity.node_id] = TxSigner(chain.contract.chain_id, identity)
    txs = [chain.tx(i.node_id, JoinRequest(name=f"s{n}", addresses=())) for n, i in enumerate(strangers)]
    reasons = chain.block(*txs)
    assert reasons[:-1] == (None,) * MAX_PENDING_JOINS
    assert "too many pending join requests" in (reasons[-1] or "")


# -- evidence from the ledger engine ---------------------------------------------------------


def test_vote_equivocation_evidence() -> None:
    from consensus.contract import EQUIVOCATION
    from consensus.messages import CONSENSUS_MESSAGES, Precommit, Prevote
    from consensus.transactions import VoteEquivocation
    from crypto.envelope import EnvelopeCodec

    chain = started_chain(4)
    votes = EnvelopeCodec(chain.contract.chain_id, CONSENSUS_MESSAGES)
    cheat = IDENTITIES[2]
    a = votes.seal(cheat, Prevote(height=1, round=0, block_hash=digest("a")))
    b = votes.seal(cheat, Prevote(height=1, round=0, block_hash=None))
    other_round = votes.seal(cheat, Prevote(height=1, round=1, block_hash=None))
    precommit = votes.seal(cheat, Precommit(height=1, round=0, block_hash=None))
    by_other = votes.seal(IDENTITIES[1], Prevote(height=1, round=0, block_hash=None))
    stranger = votes.seal(IDENTITIES[6], Prevote(height=1, round=0, block_hash=None))
    stranger2 = votes.seal(IDENTITIES[6], Prevote(height=1, round=0, block_hash=digest("a")))
    foreign = EnvelopeCodec(digest("other chain"), CONSENSUS_MESSAGES).seal(
        cheat, Prevote(height=1, round=0, block_hash=None)
    )
    chain.rejected(NODES[6], VoteEquivocation(first=a, second=b), "not a member")
    chain.rejected(NODES[0], VoteEquivocation(first=a, second=b"junk"), "invalid evidence")
    chain.rejected(NODES[0], VoteEquivocation(first=a, second=foreign), "invalid evidence")
    chain.rejected(NODES[0], VoteEquivocation(first=a, second=other_round), "one height and round")
    chain.rejected(NODES[0], VoteEquivocation(first=a, second=by_other), "one height and round")
    chain.rejected(NODES[0], VoteEquivocation(first=a, second=precommit), "same step")
    chain.rejected(NODES[0], VoteEquivocation(first=stranger, second=stranger2), "not a validator")
    chain.ok(NODES[0], VoteEquivocation(first=a, second=b))
    (evidence,) = chain.contract.evidence()
    assert (evidence.kind, evidence.offender) == (EQUIVOCATION, cheat.node_id)
    chain.rejected(NODES[1], VoteEquivocation(first=b, second=a), "already recorded")
    conflicting_nil = votes.seal(cheat, Prevote(height=1, round=0, block_hash=digest("c")))
    chain.rejected(NODES[1], VoteEquivocation(first=conflicting_nil, second=b), "already recorded")


# -- Robust decryption (point shares, consensus.decrypt_phase) -------------------------


def decrypted_chain(n: int) -> Chain:
    chain = started_chain(n)
    chain.all_ready()
    chain.contribute()
    chain.aggregate()
    chain.verify()
    chain.decrypt()
    return chain


def test_a_named_wrong_share_is_recorded_and_left_out_of_later_decrypt_sets() -> None:
    """Issue 20 attack 3 at the contract: the combiners name the member whose point share is
    off the polynomial; t matching (hash, culprits) votes close the round with WRONG_SHARE
    evidence carrying its committed share hash, and the culprit decrypts no more this epoch."""
    chain = decrypted_chain(5)
    r = chain.round
    culprit = r.decrypt_set[1]
    merged = digest("honest merge")
    outsider_vote = MergedModel(round=1, step=r.step, params_hash=merged, culprits=(NODES[7],))
    chain.rejected(r.participants[0], outsider_vote, "not in the decrypt set")
    named = MergedModel(round=1, step=r.step, params_hash=merged, culprits=(culprit,))
    chain.ok(r.participants[0], named)
    chain.ok(r.participants[1], named)
    chain.merge(r.participants[2:3], merged)  # same hash, no culprit named: does not match
    assert chain.round.phase == Phase.DECRYPT
    chain.ok(r.participants[3], named)
    closed = chain.contract.history()[-1]
    assert (closed.outcome, closed.merged_hash) == (MERGED, merged)
    evidence = chain.contract.evidence()[-1]
    assert (evidence.kind, evidence.offender, evidence.detail) == (
        WRONG_SHARE,
        culprit,
        digest(("d", culprit)),
    )
    for _ in range(2):
        chain.all_ready()
        chain.contribute()
        chain.aggregate()
        chain.verify()
        assert culprit in chain.round.participants
        assert culprit not in chain.round.decrypt_set
        chain.decrypt()
        chain.merge()


def test_share_mismatch_votes_abort_the_round() -> None:
    """Four points at t = 3: a wrong share is detected but nobody can be named; t
    `ShareMismatch` votes abort the round (no merge) and the next round starts."""
    chain = started_chain(4)
    chain.all_ready()
    chain.contribute()
    chain.aggregate()
    chain.verify()
    r = chain.round
    chain.rejected(r.participants[0], ShareMismatch(round=1, step=r.step), "incomplete")
    chain.decrypt()
    chain.ok(r.participants[0], ShareMismatch(round=1, step=r.step))
    chain.rejected(r.participants[0], ShareMismatch(round=1, step=r.step), "already recorded")
    chain.ok(r.participants[1], ShareMismatch(round=1, step=r.step))
    assert chain.round.phase == Phase.DECRYPT
    chain.ok(r.participants[2], ShareMismatch(round=1, step=r.step))
    closed = chain.contract.history()[-1]
    assert closed.outcome == ABORTED
    assert "no wrong one can be named" in closed.note
    assert len(closed.decryption_shares) == 4  # every share hash kept for inspection
    assert chain.round.number == 2


# -- differential privacy (genesis training.privacy) -------------------------------------------


def test_privacy_refuses_any_weight_but_one_and_stops_before_the_epsilon_budget() -> None:
    """A member claiming a huge sample count cannot weight the equal-weight DP merge, and the
    ledger stops once one more round would spend more than the budget: at sigma 1.3 and
    delta 1e-5, 4 rounds spend epsilon 7.82 and a 5th 8.94 > 8."""
    base = make_genesis(4, max_rounds=10)
    privacy = PrivacyParams(clip_norm=1.0, noise_multiplier=1.3, delta=1e-5, epsilon_budget=8.0)
    chain = Chain(dataclasses.replace(base, training=dataclasses.replace(base.training, privacy=privacy)))
    chain.complete_epoch()
    chain.rejected(NODES[0], Ready(round=1, weight=10**9), "equal weights (weight 1)")
    for _ in range(4):
        assert chain.contract.stopped is None
        txs = [chain.tx(n, Ready(round=chain.round.number, weight=1)) for n in NODES[:4]]
        assert chain.block(*txs) == (None,) * 4
        chain.finish_round()
    stop = chain.contract.stopped
    assert stop is not None
    assert stop.merged_rounds == 4
    assert "privacy budget: epsilon 7.82 spent of 8 (delta 1e-05)" in stop.reason
