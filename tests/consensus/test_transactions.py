"""Transaction bodies and their envelopes: validation, round trips, adversarial bytes."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from consensus.transactions import (
    MAX_FINGERPRINT,
    TX_BODIES,
    TX_MESSAGES,
    Aggregate,
    AggregateVerdict,
    Approve,
    Contribution,
    DecryptionShare,
    EpochComplaint,
    EpochComplete,
    EpochFingerprint,
    EpochPublicShare,
    EpochRejoin,
    EpochSealedShares,
    EpochTimeout,
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
    VoteEquivocation,
    tx_codec,
    tx_id,
)
from crypto import cbor
from crypto.dealing import SEGMENT_BYTES
from crypto.errors import BadSignature, MessageTooLarge, ProtocolError, SchemaError, WrongChain
from crypto.identity import NodeId, NodeIdentity
from swarmnode.testing.transactions import transaction_examples

CHAIN = hashlib.sha256(b"chain").digest()
ALICE = NodeIdentity.from_seed(b"\x01" * 32)
BOB = NodeIdentity.from_seed(b"\x02" * 32)
H = hashlib.sha256(b"x").digest()
H2 = hashlib.sha256(b"y").digest()
KEYS = sorted([ALICE.node_id, BOB.node_id], key=lambda n: n.public_key)

EXAMPLES: list[TxBody] = transaction_examples(
    peer=BOB.node_id, contributors=KEYS, digest=H, equivocation=(b"\x01" * 100, b"\x02" * 100)
)


def test_every_body_kind_is_registered_and_exemplified() -> None:
    assert {type(b) for b in EXAMPLES} == set(TX_BODIES)
    assert {t.body for t in TX_MESSAGES} == set(TX_BODIES)


@pytest.mark.parametrize("body", EXAMPLES, ids=lambda b: type(b).__name__)
def test_round_trip(body: TxBody) -> None:
    signer = TxSigner(CHAIN, ALICE)
    wire = signer.sign(body)
    envelope = tx_codec(CHAIN).open(wire)
    assert envelope.body == body
    assert envelope.sender == ALICE.node_id
    assert tx_id(envelope) == signer.tx_id(body)


def test_tx_id_binds_type_sender_and_body_not_signature_bytes() -> None:
    body = Ready(round=1, weight=5)
    a = tx_codec(CHAIN).open(TxSigner(CHAIN, ALICE).sign(body))
    b = tx_codec(CHAIN).open(TxSigner(CHAIN, BOB).sign(body))
    c = tx_codec(CHAIN).open(TxSigner(CHAIN, ALICE).sign(Ready(round=1, weight=6)))
    assert len({tx_id(a), tx_id(b), tx_id(c)}) == 3
    assert tx_id(a) == tx_id(tx_codec(CHAIN).open(a.wire))


def test_wrong_chain_tampering_and_oversize_are_refused() -> None:
    wire = TxSigner(CHAIN, ALICE).sign(Ready(round=1, weight=5))
    with pytest.raises(WrongChain):
        tx_codec(hashlib.sha256(b"other").digest()).open(wire)
    outer = cbor.loads(wire)
    assert isinstance(outer, dict)
    outer["body"] = cbor.dumps_dataclass(Ready(round=1, weight=500))  # signature no longer covers it
    with pytest.raises(BadSignature):
        tx_codec(CHAIN).open(cbor.dumps(outer))
    outer["from"] = BOB.public_key
    with pytest.raises(BadSignature):
        tx_codec(CHAIN).open(cbor.dumps(outer))
    with pytest.raises(MessageTooLarge):
        tx_codec(CHAIN).open(wire + bytes(40_000))
    for cut in (1, len(wire) // 2, len(wire) - 1):
        with pytest.raises(ProtocolError):
            tx_codec(CHAIN).open(wire[:cut])


def test_a_signed_body_failing_validation_is_a_schema_error() -> None:
    # A malicious node signs a body its own constructor would refuse: still refused.
    unsigned: dict[str, cbor.CborValue] = {
        "v": 1,
        "chain": CHAIN,
        "type": "tx.round.ready",
        "from": ALICE.public_key,
        "body": cbor.dumps({"round": 1, "weight": 0, "val_metric": None}),
    }
    from crypto.envelope import DOMAIN

    signature = ALICE.sign(DOMAIN + cbor.dumps(unsigned))
    with pytest.raises(SchemaError, match="weight"):
        tx_codec(CHAIN).open(cbor.dumps({**unsigned, "sig": signature}))


def complaint(**changes: object) -> EpochComplaint:
    example = next(b for b in EXAMPLES if isinstance(b, EpochComplaint))
    evidence = dataclasses.replace(example.evidence, **changes)
    return EpochComplaint(epoch=1, dealer=BOB.node_id, evidence=evidence)


def aggregate(contributors: tuple[NodeId, ...]) -> Aggregate:
    return Aggregate(round=1, step=0, aggregate_hash=H, contributors=contributors)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: JoinRequest(name="", addresses=()), "name"),
        (lambda: JoinRequest(name="x", addresses=("nope",)), "addresses[0]"),
        (lambda: JoinRequest(name="x", addresses=(), last_left=-1), "last_left"),
        (lambda: Approve(joiner=BOB.node_id, request=b"short"), "request"),
        (lambda: Leave(member_since=-1), "member_since"),
        (lambda: Evict(target=BOB.node_id, target_since=0, reason="x" * 201), "reason"),
        (lambda: EpochPublicShare(epoch=0, share_hash=H), "epoch"),
        (lambda: EpochSealedShares(epoch=1, shares_hash=b""), "shares_hash"),
        (lambda: EpochComplete(epoch=1, collective_key_hash=H[:31]), "collective_key_hash"),
        (lambda: EpochFingerprint(epoch=1, fingerprint=bytes(7)), "fingerprint"),
        (lambda: EpochFingerprint(epoch=1, fingerprint=bytes(MAX_FINGERPRINT + 8)), "fingerprint"),
        (lambda: complaint(segment=64), "evidence.segment"),
        (lambda: complaint(segment_hashes=(H[:31],)), "evidence.segment_hashes"),
        (lambda: complaint(shares=bytes(SEGMENT_BYTES + 1)), "evidence"),
        (lambda: complaint(signature=bytes(63)), "evidence"),
        (lambda: EpochTimeout(epoch=0, stage="commit"), "epoch"),
        (lambda: EpochTimeout(epoch=1, stage="contribute"), "stage"),
        (lambda: EpochRejoin(epoch=0), "epoch"),
        (lambda: Ready(round=0, weight=1), "round"),
        (lambda: Ready(round=1, weight=0), "weight"),
        (lambda: Ready(round=1, weight=2**53 + 1), "weight"),
        (lambda: Ready(round=1, weight=1, val_metric=float("nan")), "val_metric"),
        (lambda: Contribution(round=1, blob_hash=H, blob_size=0), "blob_size"),
        (lambda: aggregate(tuple(reversed(KEYS))), "contributors"),
        (lambda: aggregate((KEYS[0], KEYS[0])), "contributors"),
        (lambda: Aggregate(round=1, step=-1, aggregate_hash=H, contributors=()), "step"),
        (
            lambda: AggregateVerdict(round=1, step=0, aggregate_hash=H, recomputed_hash=H[1:]),
            "recomputed_hash",
        ),
        (lambda: DecryptionShare(round=1, step=0, share_hash=b""), "share_hash"),
        (lambda: MergedModel(round=1, step=0, params_hash=b""), "params_hash"),
        (lambda: PhaseTimeout(round=1, phase="stopped", step=0), "phase"),
        (lambda: PhaseTimeout(round=1, phase="lunch", step=0), "phase"),
        (lambda: Stop(round=0), "round"),
        (lambda: VoteEquivocation(first=b"", second=b"x"), "first"),
        (lambda: VoteEquivocation(first=b"x", second=b"x" * 1025), "second"),
        (lambda: VoteEquivocation(first=b"x", second=b"x"), "second"),
    ],
)
def test_invalid_bodies_name_their_field(build: object, field: str) -> None:
    assert callable(build)
    with pytest.raises(ValueError, match=f"^{field.replace('[', '.').replace(']', '.')}"):
        build()


def test_verdict_agreement_and_phases() -> None:
    assert AggregateVerdict(round=1, step=0, aggregate_hash=H, recomputed_hash=H).agrees
    assert not AggregateVerdict(round=1, step=0, aggregate_hash=H, recomputed_hash=H2).agrees
    for phase in Phase:
        if phase is not Phase.STOPPED:
            assert PhaseTimeout(round=1, phase=phase.value, step=0).phase == phase


def test_integer_metric_is_stored_as_float_and_bools_are_refused() -> None:
    body = Ready(round=1, weight=3, val_metric=1)
    assert type(body.val_metric) is float
    wire = TxSigner(CHAIN, ALICE).sign(body)
    assert tx_codec(CHAIN).open(wire).body == body
    with pytest.raises(ValueError, match="weight: must be an integer"):
        Ready(round=1, weight=True)
    with pytest.raises(ValueError, match="val_metric"):
        Ready(round=1, weight=1, val_metric="0.5")  # type: ignore[arg-type]
