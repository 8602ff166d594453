"""Byzantine members and outsiders: detected, refused, and recorded on the ledger where that applies.

- A non-member with a valid key sends well-formed, signed consensus votes, a proposal
  and transactions: the transport drops its traffic, and even relayed to a validator
  the core ignores it and the contract refuses every transaction but a join request.
- Replays: messages and transactions signed for another chain are refused by the
  envelope layer (`WrongChain`); round-1 transactions replayed in round 2 and a
  committed transaction replayed to the mempool are rejected with a reason, leaving
  the state unchanged.
- An equivocating validator: the core reports it (`ReportEvidence`), the evidence as a
  `VoteEquivocation` transaction is recorded by the contract once, and the seeded
  simulator's schedules with Byzantine equivocators keep agreement.
- A leader that drops a contribution, replays a contributor's update of an earlier
  round, or counts one update twice, with real CKKS blobs: the verifier's recomputation
  differs, the contract records `wrong_aggregate` against the leader and decrypts the
  verifier's (true) sum; an `Aggregate` naming fewer contributors is refused outright.
  Ciphertext headers name their contributors, so a dropped update also leaves an
  aggregate every honest decryptor refuses (it sums fewer contributors than committed);
  a replayed update still names its contributor, so only the recomputation catches it.
  The `Aggregator` refuses a contributor twice, and a hand-made sum counting one update
  twice in place of another leaves two masks in: it decrypts to garbage, never to a mean.
- Decryption refusals: an honest member refuses a decryption share for fewer than
  `min_peers` contributions, a single contribution, an aggregate summing another number
  of contributors than the ledger committed, an aggregate of another key epoch or naming
  a non-member, a decrypt set below the threshold or without itself; the contract
  refuses shares outside the decrypt phase and never enters it with fewer than
  `min_peers` contributions.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pytest
import trio
import trio.testing

from consensus.blocks import Block, EnvelopeOpener
from consensus.contract import ABORTED, EQUIVOCATION, MERGED, WRONG_AGGREGATE, Contract
from consensus.core import Commit, MessageReceived, PersistSigned, ReportEvidence, TendermintCore, TxSubmitted
from consensus.genesis import Genesis
from consensus.messages import CONSENSUS_MESSAGES, Precommit, Prevote, Proposal
from consensus.simulator import run_schedule
from consensus.transactions import (
    Aggregate,
    AggregateVerdict,
    Approve,
    Contribution,
    DecryptionShare,
    EpochPublicShare,
    Evict,
    JoinRequest,
    MergedModel,
    Phase,
    PhaseTimeout,
    Ready,
    Stop,
    TxBody,
    VoteEquivocation,
    tx_codec,
)
from crypto import ckks
from crypto import secure_merge as sm
from crypto.ckks_params import DEFAULT_PARAMS
from crypto.envelope import EnvelopeCodec
from crypto.errors import InvalidAggregate, InvalidCiphertext, WrongChain
from crypto.identity import NodeId, NodeIdentity
from crypto.rns import add_mod_into
from crypto.testing import round_binding, run_key_epoch
from crypto.threshold import THRESHOLD_MESSAGES, DecryptionRefused, EpochKeys, PublicKeyShare
from swarmnode.net.memory import open_memory_network
from swarmnode.testing.contract_chain import placeholder_epoch_blocks

if TYPE_CHECKING:  # the fixtures' types; conftest is not importable at run time
    from conftest import ContractKit


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Ledger:
    """The contract fed one block per call, signing as any member or outsider."""

    def __init__(self, kit: ContractKit, genesis: Genesis | None = None) -> None:
        self.kit = kit
        self.genesis = genesis or kit.genesis
        self.contract = Contract(self.genesis)
        self.ids = {i.node_id: i for i in (*kit.members, *kit.outsiders)}

    def tx(self, who: NodeId | NodeIdentity, body: TxBody) -> bytes:
        identity = who if isinstance(who, NodeIdentity) else self.ids[who]
        return tx_codec(self.genesis.chain_id).seal(identity, body)

    def block(self, *txs: bytes) -> tuple[str | None, ...]:
        return self.contract.apply_block(self.contract.height + 1, txs)

    def ok(self, *txs: bytes) -> None:
        assert self.block(*txs) == (None,) * len(txs)

    def refused(self, tx: bytes) -> str:
        """Apply `tx` alone; it must be rejected and change nothing but the height."""
        before = self.contract.state
        checked = self.contract.check_tx(tx)
        (reason,) = self.block(tx)
        assert reason is not None
        assert reason == checked
        assert "internal error" not in reason
        assert self.contract.state == dataclasses.replace(before, height=before.height + 1)
        return reason

    def complete_epoch(self) -> None:
        for block in placeholder_epoch_blocks(self.contract.key_epoch()):
            self.ok(*(self.tx(n, body) for n, body in block))

    def all_ready(self, weight: int = 10) -> None:
        number = self.contract.round.number
        self.ok(
            *(
                self.tx(n, Ready(round=number, weight=weight, val_metric=0.5))
                for n in self.contract.state.member_ids
            )
        )


@pytest.fixture
def ledger(contract_kit: ContractKit) -> Ledger:
    chain = Ledger(contract_kit)
    chain.complete_epoch()
    return chain


# -- a non-member -------------------------------------------------------------------------------


async def test_the_transport_drops_a_non_members_signed_votes(
    contract_kit: ContractKit, autojump_clock: trio.testing.MockClock
) -> None:
    codec = EnvelopeCodec(contract_kit.genesis.chain_id, CONSENSUS_MESSAGES)
    members = {m.node_id for m in contract_kit.members}
    outsider = contract_kit.outsiders[0]
    vote = codec.seal(outsider, Precommit(height=1, round=0, block_hash=bytes(32)))
    async with open_memory_network(seed=5) as network:
        member = network.transport(contract_kit.members[0].node_id, allowed_peers=members)
        other = network.transport(contract_kit.members[1].node_id, allowed_peers=members)
        intruder = network.transport(outsider.node_id)
        inbox = await member.subscribe("consensus")
        await intruder.publish("consensus", vote)
        await other.publish(
            "consensus", codec.seal(contract_kit.members[1], Prevote(height=1, round=0, block_hash=None))
        )
        await trio.sleep(2)
        received = []
        while True:
            try:
                received.append(inbox.receive_nowait())
            except trio.WouldBlock:
                break
        assert [m.sender for m in received] == [contract_kit.members[1].node_id]
        assert outsider.node_id not in member.peers()


def test_the_core_ignores_a_non_members_quorum_and_proposal(contract_kit: ContractKit) -> None:
    """Even relayed past the transport, a non-member's signed messages move nothing."""
    genesis = contract_kit.genesis
    opener = EnvelopeOpener(EnvelopeCodec(genesis.chain_id, CONSENSUS_MESSAGES))
    core = TendermintCore(identity=contract_kit.members[0], opener=opener, app=Contract(genesis))
    core.start()
    before = (core.height, core.state, core.evidence)
    forged = Block(
        height=1,
        prev_hash=bytes(32),
        proposer=contract_kit.outsiders[0].node_id,
        txs=(),
        app_hash=core.app.app_hash(),
        last_commit=None,
    )
    messages = [
        opener.codec.seal(contract_kit.outsiders[0], Proposal(height=1, round=0, block=forged, pol_round=-1))
    ]
    for intruder in (
        *contract_kit.outsiders,
        NodeIdentity.from_seed(b"\x07" * 32),
        NodeIdentity.from_seed(b"\x08" * 32),
    ):
        for cls in (Prevote, Precommit):
            messages.append(opener.codec.seal(intruder, cls(height=1, round=0, block_hash=forged.hash)))
        messages.append(
            opener.codec.seal(intruder, Precommit(height=1, round=7, block_hash=None))
        )  # round skip
    actions = []
    for wire in messages:
        actions += core.handle(MessageReceived(opener.open(wire)))
    assert actions == []
    assert (core.height, core.state, core.evidence) == before


def test_the_contract_refuses_every_non_member_transaction_but_a_join_request(ledger: Ledger) -> None:
    outsider = ledger.kit.outsiders[0]
    member = ledger.kit.members[1].node_id
    ledger.all_ready()
    r = ledger.contract.round
    bodies: list[TxBody] = [
        Ready(round=r.number, weight=10, val_metric=0.5),
        Contribution(round=r.number, blob_hash=sha(b"c"), blob_size=10),
        Aggregate(round=r.number, step=r.step, aggregate_hash=sha(b"a"), contributors=r.contributors),
        AggregateVerdict(round=r.number, step=r.step, aggregate_hash=sha(b"a"), recomputed_hash=sha(b"a")),
        DecryptionShare(round=r.number, step=r.step, share_hash=sha(b"d")),
        MergedModel(round=r.number, step=r.step, params_hash=sha(b"m")),
        PhaseTimeout(round=r.number, phase=r.phase, step=r.step),
        Stop(round=r.number, reason="let me stop you"),
        Evict(target=member, target_since=0, reason="outsider says so"),
        EpochPublicShare(epoch=1, share_hash=sha(b"x")),
    ]
    reasons = {type(b).__name__: ledger.refused(ledger.tx(outsider, b)) for b in bodies}
    # Key-epoch transactions, while an epoch is open (a fresh chain): refused too.
    fresh = Ledger(ledger.kit)
    share = EpochPublicShare(epoch=fresh.contract.key_epoch().number, share_hash=sha(b"x"))
    reasons["EpochPublicShare"] = fresh.refused(fresh.tx(outsider, share))
    print(reasons)
    # Asking to join is the one thing an outsider may do (and it is recorded as pending).
    ledger.ok(ledger.tx(outsider, JoinRequest(name="newcomer", addresses=(), last_left=0)))
    (pending,) = ledger.contract.pending_joins()
    assert pending.node_id == outsider.node_id
    # ... but it cannot approve itself, nor can another outsider approve it.
    approve = Approve(joiner=outsider.node_id, request=pending.request)
    for approver in ledger.kit.outsiders:
        assert "only members approve" in ledger.refused(ledger.tx(approver, approve))
    assert not ledger.contract.is_member(outsider.node_id)
    for name, reason in reasons.items():
        assert "member" in reason or "participant" in reason or "not" in reason, (name, reason)


# -- replays ---------------------------------------------------------------------------------------


def test_messages_and_transactions_of_another_chain_are_refused(ledger: Ledger) -> None:
    other = dataclasses.replace(ledger.genesis, name="another-swarm")  # same members, other chain id
    assert other.chain_id != ledger.genesis.chain_id
    member = ledger.kit.members[0]
    ours = ledger.genesis.chain_id
    # A consensus vote and a key-epoch message signed for the other chain.
    vote = EnvelopeCodec(other.chain_id, CONSENSUS_MESSAGES).seal(
        member, Prevote(height=1, round=0, block_hash=None)
    )
    with pytest.raises(WrongChain):
        EnvelopeOpener(EnvelopeCodec(ours, CONSENSUS_MESSAGES)).open(vote)
    share = EnvelopeCodec(other.chain_id, THRESHOLD_MESSAGES).seal(
        member, PublicKeyShare(epoch=bytes(32), share=b"x", prss_commitments=b"")
    )
    with pytest.raises(WrongChain):
        EnvelopeCodec(ours, THRESHOLD_MESSAGES).open(share)
    # A transaction of the other chain: valid there, refused here with the reason.
    foreign = Ledger(ledger.kit, other)
    tx = foreign.tx(member, Ready(round=1, weight=10, val_metric=0.5))
    assert foreign.contract.check_tx(tx) is None
    reason = ledger.refused(tx)
    assert "WrongChain" in reason or "chain" in reason, reason


def run_round(ledger: Ledger) -> list[bytes]:
    """One merged round with stand-in hashes; returns every transaction it committed."""
    committed: list[bytes] = []

    def ok(*txs: bytes) -> None:
        ledger.ok(*txs)
        committed.extend(txs)

    c = ledger.contract
    number = c.round.number
    ok(*(ledger.tx(n, Ready(round=number, weight=10, val_metric=0.5)) for n in c.state.member_ids))
    r = c.round
    ok(
        *(
            ledger.tx(n, Contribution(round=number, blob_hash=sha(n.public_key), blob_size=99))
            for n in r.participants
        )
    )
    r = c.round
    assert r.leader is not None
    ok(
        ledger.tx(
            r.leader,
            Aggregate(round=number, step=r.step, aggregate_hash=sha(b"agg"), contributors=r.contributors),
        )
    )
    r = c.round
    assert r.verifier is not None
    ok(
        ledger.tx(
            r.verifier,
            AggregateVerdict(
                round=number, step=r.step, aggregate_hash=sha(b"agg"), recomputed_hash=sha(b"agg")
            ),
        )
    )
    r = c.round
    ok(
        *(
            ledger.tx(n, DecryptionShare(round=number, step=r.step, share_hash=sha(b"d" + n.public_key)))
            for n in r.decrypt_set
        )
    )
    r = c.round
    ok(
        *(
            ledger.tx(n, MergedModel(round=number, step=r.step, params_hash=sha(b"m")))
            for n in r.participants[: r.threshold]
        )
    )
    assert c.round_record(number) is not None
    assert c.round_record(number).outcome == MERGED  # type: ignore[union-attr]
    return committed


def test_old_round_transactions_replayed_are_rejected_with_a_reason(ledger: Ledger) -> None:
    round_one = run_round(ledger)
    assert ledger.contract.round.number == 2
    reasons = [ledger.refused(tx) for tx in round_one]  # byte-identical replays, in round 2
    assert all(reasons), reasons
    assert any("round" in r for r in reasons), reasons
    # The consensus mempool refuses a committed transaction outright.
    opener = EnvelopeOpener(EnvelopeCodec(ledger.genesis.chain_id, CONSENSUS_MESSAGES))
    core = TendermintCore(identity=ledger.kit.members[0], opener=opener, app=ledger.contract)
    core.start()
    core.mempool.update(round_one)  # what the core does with every committed block
    rejected = core.handle(TxSubmitted(round_one[0]))
    assert len(core.mempool) == 0
    assert rejected, "a replayed committed transaction was admitted"


# -- an equivocating validator ---------------------------------------------------------------------


def test_equivocation_is_reported_by_the_core_and_recorded_once_by_the_contract(ledger: Ledger) -> None:
    genesis = ledger.genesis
    opener = EnvelopeOpener(EnvelopeCodec(genesis.chain_id, CONSENSUS_MESSAGES))
    me, cheat = ledger.kit.members[0], ledger.kit.members[2]
    core = TendermintCore(identity=me, opener=opener, app=Contract(genesis))
    core.start()
    height = core.height
    first = opener.codec.seal(cheat, Prevote(height=height, round=0, block_hash=sha(b"one")))
    second = opener.codec.seal(cheat, Prevote(height=height, round=0, block_hash=sha(b"two")))
    core.handle(MessageReceived(opener.open(first)))
    actions = core.handle(MessageReceived(opener.open(second)))
    reports = [a.evidence for a in actions if isinstance(a, ReportEvidence)]
    assert [(e.validator, e.step) for e in reports] == [(cheat.node_id, "prevote")]
    assert not any(isinstance(a, PersistSigned | Commit) for a in actions)
    # The report, as a transaction by an honest member, lands on the ledger once.
    evidence = VoteEquivocation(first=reports[0].first, second=reports[0].second)
    ledger.ok(ledger.tx(me, evidence))
    recorded = [(e.kind, e.offender) for e in ledger.contract.evidence()]
    assert recorded == [(EQUIVOCATION, cheat.node_id)]
    assert "already recorded" in ledger.refused(ledger.tx(ledger.kit.members[1], evidence))
    # Forged evidence (two votes of different validators) is refused.
    other = opener.codec.seal(
        ledger.kit.members[3], Prevote(height=height, round=0, block_hash=sha(b"three"))
    )
    assert "invalid evidence" in ledger.refused(ledger.tx(me, VoteEquivocation(first=first, second=other)))


@pytest.mark.parametrize("seed", [3, 8])
def test_simulated_equivocators_are_reported_and_never_break_agreement(seed: int) -> None:
    # run_schedule raises InvariantViolation on any disagreement or uncertified commit.
    result = run_schedule(7, seed, fault_time=1.0, max_time=40.0)
    if result.byzantine:
        assert result.evidence > 0, result
    else:
        pytest.skip(f"seed {seed} drew no Byzantine validator")


# -- a leader that drops, replays or double-counts a contribution (real CKKS blobs) ---------------

CryptoRound = tuple[list[EpochKeys], list[bytes], list[bytes]]


def round_two(keys: list[EpochKeys]) -> ckks.RoundBinding:
    """The round the tests below decrypt (its blobs are `crypto_round`'s second list)."""
    return round_binding(keys[0].spec.epoch_id, 2)


@pytest.fixture(scope="module")
def crypto_round(contract_kit: ContractKit) -> CryptoRound:
    """The four members' keys and their contribution blobs for round 1 and round 2."""
    _, _, keys = run_key_epoch(list(contract_kit.members))
    length = 16
    weights = [10.0, 20.0, 30.0, 40.0]
    r1 = [
        sm.encrypt_update(
            k, np.full(length, float(i), np.float32), w, 100.0, binding=round_binding(k.spec.epoch_id, 1)
        )
        for i, (k, w) in enumerate(zip(keys, weights, strict=True))
    ]
    r2 = [
        sm.encrypt_update(k, np.full(length, 10.0 + i, np.float32), w, 100.0, binding=round_two(keys))
        for i, (k, w) in enumerate(zip(keys, weights, strict=True))
    ]
    return keys, r1, r2


def hand_made_sum(named: dict[NodeId, bytes], summed: dict[NodeId, bytes]) -> bytes:
    """What a leader bypassing the `Aggregator` could build: the residues of the `summed` blobs
    under a well-formed header naming each contributor of `named` with its blob's seed (and the
    first named blob's round binding)."""
    ctx = ckks.context()
    vectors = {n: ckks.EncryptedVector.from_bytes(ctx, blob) for n, blob in named.items()}
    first = next(iter(vectors.values()))
    total = np.zeros((first.chunks, ctx.params.degree), dtype=np.uint64)
    for blob in summed.values():
        add_mod_into(
            total, ckks.EncryptedVector.from_bytes(ctx, blob).batch(0, first.chunks), ctx.rescaled_col
        )
    seeds = {n: v.header.seeds[0] for n, v in vectors.items()}
    return ckks.EncryptedVector.from_residues(ctx, first.length, first.binding, seeds, [total]).to_bytes()


@pytest.mark.parametrize("attack", ["drop", "replay-old-round", "count-twice"])
def test_a_leader_dropping_or_replaying_a_contribution_is_caught_by_the_verifier(
    ledger: Ledger, crypto_round: CryptoRound, attack: str
) -> None:
    keys, round_one_blobs, blobs = crypto_round
    members = list(ledger.kit.members)
    blob_of = {m.node_id: blob for m, blob in zip(members, blobs, strict=True)}
    old_blob_of = {m.node_id: blob for m, blob in zip(members, round_one_blobs, strict=True)}
    by_id = {m.node_id: k for m, k in zip(members, keys, strict=True)}
    spec = keys[0].spec
    c = ledger.contract
    ledger.all_ready()
    r = c.round
    ledger.ok(
        *(
            ledger.tx(n, Contribution(round=r.number, blob_hash=sha(blob_of[n]), blob_size=len(blob_of[n])))
            for n in r.participants
        )
    )
    r = c.round
    leader, verifier = r.leader, r.verifier
    assert leader is not None
    assert verifier is not None
    victim = next(n for n in r.contributors if n not in (leader, verifier))
    committed = {n: blob_of[n] for n in r.contributors}
    # The leader must name every committed contributor: a shorter list is refused outright.
    fewer = tuple(n for n in r.contributors if n != victim)
    short = Aggregate(round=r.number, step=r.step, aggregate_hash=sha(b"x"), contributors=fewer)
    assert "contributor set" in ledger.refused(ledger.tx(leader, short))
    # So it names all of them but sums something else.
    if attack == "drop":
        forged = sm.aggregate_contributions(
            {n: b for n, b in committed.items() if n != victim},
            length=16,
            binding=round_two(keys),
            params=DEFAULT_PARAMS,
        )
    elif attack == "replay-old-round":
        # The victim's round-1 blob is refused by the honest code path: it is bound to round 1.
        with pytest.raises(InvalidAggregate, match="two rounds"):
            sm.aggregate_contributions(
                {**committed, victim: old_blob_of[victim]},
                length=16,
                binding=round_two(keys),
                params=DEFAULT_PARAMS,
            )
        forged = hand_made_sum(committed, {**committed, victim: old_blob_of[victim]})
    else:
        # The honest code path refuses a contributor twice, and a blob under another's name.
        builder = sm.AggregateBuilder(16, DEFAULT_PARAMS, binding=round_two(keys))
        builder.add(blob_of[victim], victim)
        with pytest.raises(InvalidAggregate, match="already in the sum"):
            builder.add(blob_of[victim], victim)
        other = next(n for n in r.contributors if n != victim)
        with pytest.raises(InvalidCiphertext, match="not its own contribution"):
            builder.add(blob_of[victim], other)
        assert builder.count == 1
        forged = hand_made_sum(committed, {**committed, other: committed[victim]})
    ledger.ok(
        ledger.tx(
            leader,
            Aggregate(round=r.number, step=r.step, aggregate_hash=sha(forged), contributors=r.contributors),
        )
    )
    # The verifier fetches the committed contributions by hash and recomputes the sum.
    r = c.round
    true_sum = sm.aggregate_contributions(
        {n: blob_of[n] for n in r.contributors}, length=16, binding=round_two(keys), params=DEFAULT_PARAMS
    )
    assert sha(true_sum) != sha(forged)
    # What honest decryptors would do with the forged sum, had the verifier not caught it.
    ctx = ckks.context()
    named = ckks.EncryptedVector.from_bytes(ctx, forged).contributors
    true_names = ckks.EncryptedVector.from_bytes(ctx, true_sum).contributors
    decrypt_set = list(spec.members[: spec.threshold])
    if attack == "drop":  # it sums fewer contributors than the ledger committed: refused
        assert victim not in named
        with pytest.raises(DecryptionRefused, match="the ledger committed"):
            sm.decryption_share(
                by_id[decrypt_set[0]],
                forged,
                decrypt_set,
                contributions=len(r.contributors),
                min_peers=3,
                binding=round_two(keys),
            )
    else:  # names match, but two masks stay in (the old blob's is bound to round 1, a double's
        # to its contributor): garbage, never the victim's update counted twice or an old one
        assert named == true_names
        shares = [
            sm.decryption_share(
                by_id[n],
                forged,
                decrypt_set,
                contributions=len(r.contributors),
                min_peers=3,
                binding=round_two(keys),
            )
            for n in decrypt_set
        ]
        try:
            garbled = sm.combine(spec, forged, shares, params=DEFAULT_PARAMS)
        except InvalidAggregate:
            pass
        else:
            assert float(np.abs(garbled.mean).max()) > 1e3
    bad_leader = r.aggregator
    assert r.verifier is not None
    ledger.ok(
        ledger.tx(
            r.verifier,
            AggregateVerdict(
                round=r.number, step=r.step, aggregate_hash=sha(forged), recomputed_hash=sha(true_sum)
            ),
        )
    )
    assert [(e.kind, e.offender) for e in c.evidence()] == [(WRONG_AGGREGATE, bad_leader)]
    r = c.round
    assert r.aggregate_hash == sha(true_sum)
    assert bad_leader in r.excluded
    assert bad_leader not in r.decrypt_set
    # The next verifier agrees with the recomputed sum; decrypting it gives the true mean.
    assert r.verifier is not None
    ledger.ok(
        ledger.tx(
            r.verifier,
            AggregateVerdict(
                round=r.number, step=r.step, aggregate_hash=sha(true_sum), recomputed_hash=sha(true_sum)
            ),
        )
    )
    r = c.round
    assert r.phase == Phase.DECRYPT
    decrypt_set = [n for n in spec.members if n in r.decrypt_set]
    shares = [
        sm.decryption_share(
            by_id[n],
            true_sum,
            decrypt_set,
            contributions=len(r.contributors),
            min_peers=3,
            binding=round_two(keys),
        )
        for n in decrypt_set
    ]
    merged = sm.combine(spec, true_sum, shares, params=DEFAULT_PARAMS)
    expected = sum(w * (10.0 + i) for i, w in enumerate([10.0, 20.0, 30.0, 40.0])) / 100.0
    np.testing.assert_allclose(merged.mean, expected, atol=1e-4)


# -- decryption refusals ----------------------------------------------------------------------


def test_an_honest_member_refuses_to_decrypt_too_few_contributions(crypto_round: CryptoRound) -> None:
    keys, _, blobs = crypto_round
    key = keys[0]
    spec = key.spec
    members = list(spec.members)
    by_contributor = {k.me: blob for k, blob in zip(keys, blobs, strict=True)}
    full = sm.aggregate_contributions(
        by_contributor, length=16, binding=round_two(keys), params=DEFAULT_PARAMS
    )
    t = spec.threshold
    with pytest.raises(DecryptionRefused, match="contributions"):  # fewer than min_peers
        sm.decryption_share(key, full, members[:t], contributions=2, min_peers=3, binding=round_two(keys))
    with pytest.raises(DecryptionRefused, match="contributions"):  # a single update is never decrypted
        sm.decryption_share(key, blobs[0], members[:t], contributions=1, min_peers=1, binding=round_two(keys))
    # ... not even when the ledger is made to claim more: the blob names its one contributor.
    with pytest.raises(DecryptionRefused, match="sums 1 contributors"):
        sm.decryption_share(key, blobs[0], members[:t], contributions=4, min_peers=3, binding=round_two(keys))
    # An aggregate of three passed off as the four committed contributions (and vice versa).
    three = sm.aggregate_contributions(
        dict(list(by_contributor.items())[:3]), length=16, binding=round_two(keys), params=DEFAULT_PARAMS
    )
    with pytest.raises(DecryptionRefused, match="sums 3 contributors, the ledger committed 4"):
        sm.decryption_share(key, three, members[:t], contributions=4, min_peers=3, binding=round_two(keys))
    # (the other way round, 3 committed, is now refused before: 3 < t + 1 = 4)
    with pytest.raises(DecryptionRefused, match="at least 4 needed"):
        sm.decryption_share(key, full, members[:t], contributions=3, min_peers=3, binding=round_two(keys))
    with pytest.raises(DecryptionRefused, match="threshold"):  # a decrypt set below t
        sm.decryption_share(
            key, full, members[: t - 1], contributions=4, min_peers=3, binding=round_two(keys)
        )
    me = key.me
    without_me = [m for m in members if m != me][:t]
    with pytest.raises(DecryptionRefused, match="not in the decrypt set"):
        sm.decryption_share(key, full, without_me, contributions=4, min_peers=3, binding=round_two(keys))
    with pytest.raises(DecryptionRefused, match="distinct"):
        sm.decryption_share(
            key, full, [me, me, *without_me[:1]], contributions=4, min_peers=3, binding=round_two(keys)
        )
    stranger = NodeIdentity.from_seed(b"\x31" * 32).node_id
    with pytest.raises(DecryptionRefused, match="members of the epoch"):
        sm.decryption_share(
            key, full, [me, *without_me[:1], stranger], contributions=4, min_peers=3, binding=round_two(keys)
        )


def test_an_honest_member_refuses_an_aggregate_of_another_epoch_or_naming_a_non_member(
    crypto_round: CryptoRound,
) -> None:
    keys, _, _ = crypto_round
    key = keys[0]
    spec = key.spec
    ctx = ckks.context()
    t = list(spec.members[: spec.threshold])
    values = np.ones(16, np.float32)
    # The members' own key shares, but under another epoch id: their masks are not this epoch's.
    other_epoch = hashlib.sha256(b"another epoch").digest()
    elsewhere = round_binding(other_epoch, 2)
    foreign = sm.aggregate_contributions(
        {k.me: ckks.encrypt(ctx, k.secret, elsewhere, k.me, values, 1.0, 4.0).to_bytes() for k in keys},
        length=16,
        binding=elsewhere,
        params=DEFAULT_PARAMS,
    )
    with pytest.raises(DecryptionRefused, match="another key epoch"):
        sm.decryption_share(key, foreign, t, contributions=4, min_peers=3, binding=round_two(keys))
    # An outsider's contribution under this epoch's id, summed with three members' updates:
    # the decrypt set holds no shares of its secret, so it refuses rather than leak a mask.
    stranger = NodeIdentity.from_seed(b"\x32" * 32).node_id
    any_secret = np.zeros_like(keys[3].secret)  # whatever key it used, no member holds shares of it
    intruder = ckks.encrypt(ctx, any_secret, round_two(keys), stranger, values, 1.0, 4.0).to_bytes()
    mixed = {
        k.me: ckks.encrypt(ctx, k.secret, round_two(keys), k.me, values, 1.0, 4.0).to_bytes()
        for k in keys[:3]
    }
    aggregate = sm.aggregate_contributions(
        {**mixed, stranger: intruder}, length=16, binding=round_two(keys), params=DEFAULT_PARAMS
    )
    with pytest.raises(DecryptionRefused, match="outside the epoch"):
        sm.decryption_share(key, aggregate, t, contributions=4, min_peers=3, binding=round_two(keys))


def test_the_contract_refuses_shares_outside_decrypt_and_never_decrypts_below_min_peers(
    ledger: Ledger,
) -> None:
    c = ledger.contract
    ledger.all_ready()
    r = c.round
    member = r.participants[0]
    # A decryption share while contributions are still being collected: refused.
    assert ledger.refused(
        ledger.tx(member, DecryptionShare(round=r.number, step=r.step, share_hash=sha(b"d")))
    )
    # Only two of four contribute (min_peers = 3): the timeout aborts the round, no decrypt phase.
    ledger.ok(
        *(
            ledger.tx(n, Contribution(round=r.number, blob_hash=sha(n.public_key), blob_size=9))
            for n in r.participants[:2]
        )
    )
    waiting = c.timeout_voters()
    ledger.ok(
        *(
            ledger.tx(n, PhaseTimeout(round=r.number, phase=r.phase, step=r.step))
            for n in waiting[: len(waiting) // 2 + 1]
        )
    )
    closed = c.round_record(r.number)
    assert closed is not None
    assert closed.outcome == ABORTED
    assert "min_peers" in closed.note
    assert closed.decryption_shares == ()
    assert c.round.phase == Phase.READY
    assert c.state.merged_rounds == 0
