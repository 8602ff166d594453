"""Blocks, certificates and consensus messages: hashing, validation, adversarial decoding."""

from __future__ import annotations

import dataclasses

import pytest

from consensus.blocks import (
    GENESIS_PREV_HASH,
    MAX_TX_BYTES,
    Block,
    CommitCertificate,
    EnvelopeOpener,
    check_block_links,
    verify_certificate,
)
from consensus.errors import InvalidBlock, InvalidCertificate
from consensus.messages import (
    CONSENSUS_MESSAGES,
    BlockRequest,
    BlockResponse,
    Precommit,
    Prevote,
    Proposal,
    SyncedBlock,
    TxGossip,
)
from consensus.simulator import sim_identity
from crypto import cbor
from crypto.envelope import EnvelopeCodec
from crypto.errors import (
    BadSignature,
    MalformedMessage,
    MessageTooLarge,
    ProtocolError,
    SchemaError,
    WrongChain,
)
from crypto.identity import NodeId, NodeIdentity

IDS = [sim_identity(i) for i in range(4)]
VALIDATORS = [i.node_id for i in IDS]
CHAIN = bytes(32)
OPENER = EnvelopeOpener(EnvelopeCodec(CHAIN, CONSENSUS_MESSAGES))
APP_HASH = b"\x07" * 32
B1 = Block(
    height=1,
    prev_hash=GENESIS_PREV_HASH,
    proposer=VALIDATORS[0],
    txs=(b"t1",),
    app_hash=APP_HASH,
    last_commit=None,
)


def seal(who: NodeIdentity, body: object, opener: EnvelopeOpener = OPENER) -> bytes:
    return opener.codec.seal(who, body)


def certificate(
    block: Block, signers: range | list[int], round: int = 0, opener: EnvelopeOpener = OPENER
) -> CommitCertificate:
    wires = [
        seal(IDS[i], Precommit(height=block.height, round=round, block_hash=block.hash), opener)
        for i in signers
    ]
    return CommitCertificate(block.height, round, block.hash, tuple(sorted(wires)))


def flip_signature(wire: bytes) -> bytes:
    """Flip one bit inside the envelope's signature (not just the last byte: that is the chain id)."""
    at = wire.index(OPENER.codec.open(wire).signature) + 10
    return wire[:at] + bytes([wire[at] ^ 1]) + wire[at + 1 :]


def test_block_hash_is_deterministic_and_covers_every_field() -> None:
    assert B1.hash == dataclasses.replace(B1).hash
    assert len(B1.hash) == 32
    cert = certificate(B1, range(3))
    b2 = Block(
        height=2, prev_hash=B1.hash, proposer=VALIDATORS[1], txs=(), app_hash=APP_HASH, last_commit=cert
    )
    variants = [
        dataclasses.replace(B1, txs=(b"t2",)),
        dataclasses.replace(B1, txs=(b"t1", b"t1")),
        dataclasses.replace(B1, proposer=VALIDATORS[1]),
        dataclasses.replace(B1, app_hash=b"\x08" * 32),
        dataclasses.replace(B1, prev_hash=b"\x01" * 32),
        dataclasses.replace(b2, last_commit=certificate(B1, range(1, 4))),
    ]
    assert len({v.hash for v in [B1, b2, *variants]}) == 2 + len(variants)
    assert cbor.loads_dataclass(Block, cbor.dumps_dataclass(b2)) == b2


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"height": 0}, "height"),
        ({"prev_hash": b"short"}, "32 bytes"),
        ({"txs": (b"",)}, "transaction"),
        ({"txs": (b"x" * (MAX_TX_BYTES + 1),)}, "transaction"),
        ({"height": 2}, "last commit"),
    ],
)
def test_block_validation(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(B1, **changes)  # type: ignore[arg-type]


def test_block_links() -> None:
    check_block_links(B1, height=1, prev_hash=GENESIS_PREV_HASH, app_hash=APP_HASH)
    with pytest.raises(InvalidBlock, match="height"):
        check_block_links(B1, height=2, prev_hash=GENESIS_PREV_HASH, app_hash=APP_HASH)
    with pytest.raises(InvalidBlock, match="prev_hash"):
        check_block_links(B1, height=1, prev_hash=b"\x01" * 32, app_hash=APP_HASH)
    with pytest.raises(InvalidBlock, match="app_hash"):
        check_block_links(B1, height=1, prev_hash=GENESIS_PREV_HASH, app_hash=bytes(32))


def test_certificate_verifies_with_three_of_four() -> None:
    verify_certificate(certificate(B1, range(3)), OPENER, VALIDATORS)
    verify_certificate(certificate(B1, range(4)), OPENER, VALIDATORS)


def test_certificate_attacks_are_refused() -> None:
    other = dataclasses.replace(B1, txs=(b"other",))
    good = certificate(B1, range(3))
    cases: dict[str, tuple[CommitCertificate, list[NodeId]]] = {
        "too few": (certificate(B1, range(2)), VALIDATORS),
        "non-validators": (certificate(B1, range(4)), VALIDATORS[:1] + [sim_identity(9).node_id] * 3),
        "vote for another block": (
            CommitCertificate(
                1, 0, B1.hash, tuple(sorted([*good.precommits[:2], *certificate(other, [3]).precommits]))
            ),
            VALIDATORS,
        ),
        "another round": (
            CommitCertificate(1, 1, B1.hash, good.precommits),
            VALIDATORS,
        ),
        "prevotes, not precommits": (
            CommitCertificate(
                1,
                0,
                B1.hash,
                tuple(sorted(seal(IDS[i], Prevote(height=1, round=0, block_hash=B1.hash)) for i in range(3))),
            ),
            VALIDATORS,
        ),
        "another chain": (
            certificate(B1, range(3), opener=EnvelopeOpener(EnvelopeCodec(b"\x01" * 32, CONSENSUS_MESSAGES))),
            VALIDATORS,
        ),
    }
    for name, (cert, validators) in cases.items():
        with pytest.raises(InvalidCertificate):
            verify_certificate(cert, OPENER, validators)
        assert name


def test_certificate_with_a_duplicate_signer_or_tampered_signature() -> None:
    good = certificate(B1, range(3))
    # Ed25519 is deterministic: a validator's second copy of one precommit is the same wire.
    with pytest.raises(ValueError, match="distinct"):
        CommitCertificate(1, 0, B1.hash, (good.precommits[0], good.precommits[0]))
    tampered = flip_signature(good.precommits[0])
    cert = CommitCertificate(1, 0, B1.hash, tuple(sorted([tampered, *good.precommits[1:]])))
    with pytest.raises(InvalidCertificate, match="signature"):
        verify_certificate(cert, OPENER, VALIDATORS)


def test_messages_round_trip_through_envelopes() -> None:
    bodies: list[object] = [
        Proposal(height=1, round=2, block=B1, pol_round=1),
        Prevote(height=1, round=0, block_hash=None),
        Precommit(height=3, round=1, block_hash=B1.hash),
        BlockRequest(from_height=5),
        BlockResponse(blocks=(SyncedBlock(block=B1, certificate=certificate(B1, range(3))),), tip=9),
        TxGossip(txs=(b"a", b"b")),
    ]
    for body in bodies:
        envelope = OPENER.codec.open(seal(IDS[0], body))
        assert envelope.body == body
        assert envelope.sender == VALIDATORS[0]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Proposal(height=1, round=1, block=B1, pol_round=1), "pol_round"),
        (lambda: Proposal(height=2, round=0, block=B1, pol_round=-1), "another height"),
        (lambda: Prevote(height=0, round=0, block_hash=None), "height"),
        (lambda: Precommit(height=1, round=-1, block_hash=None), "round"),
        (lambda: Prevote(height=1, round=0, block_hash=b"x"), "32 bytes"),
        (lambda: BlockRequest(from_height=0), "from_height"),
        (lambda: TxGossip(txs=()), "transactions"),
        (lambda: BlockResponse(blocks=(), tip=-1), "tip"),
    ],
)
def test_invalid_message_bodies_cannot_be_built(make: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()  # type: ignore[operator]


def _resign(identity: NodeIdentity, type_name: str, body: cbor.CborValue) -> bytes:
    """Sign an arbitrary body map as `type_name` (what a malicious peer can do)."""
    from crypto.envelope import DOMAIN, VERSION

    unsigned: dict[str, cbor.CborValue] = {
        "v": VERSION,
        "chain": CHAIN,
        "type": type_name,
        "from": identity.public_key,
        "body": cbor.dumps(body),
    }
    return cbor.dumps({**unsigned, "sig": identity.sign(DOMAIN + cbor.dumps(unsigned))})


def test_adversarial_wire_input_raises_only_protocol_errors() -> None:
    good = seal(IDS[1], Prevote(height=1, round=0, block_hash=None))
    evil: dict[str, tuple[bytes, type[ProtocolError]]] = {
        "truncated": (good[:-5], MalformedMessage),
        "trailing": (good + b"\x00", MalformedMessage),
        "bad signature": (flip_signature(good), BadSignature),
        "pol_round == round": (
            _resign(
                IDS[1],
                "ledger/proposal",
                {"height": 1, "round": 0, "pol_round": 0, "block": cbor.to_cbor_value(B1)},
            ),
            SchemaError,
        ),
        "unknown field": (
            _resign(IDS[1], "ledger/prevote", {"height": 1, "round": 0, "block_hash": None, "extra": 1}),
            SchemaError,
        ),
        "negative round": (
            _resign(IDS[1], "ledger/prevote", {"height": 1, "round": -3, "block_hash": None}),
            SchemaError,
        ),
        "oversized vote": (
            _resign(IDS[1], "ledger/prevote", {"height": 1, "round": 0, "block_hash": b"x" * 600}),
            MessageTooLarge,
        ),
        "wrong chain": (
            seal(
                IDS[1],
                Prevote(height=1, round=0, block_hash=None),
                EnvelopeOpener(EnvelopeCodec(b"\x02" * 32, CONSENSUS_MESSAGES)),
            ),
            WrongChain,
        ),
    }
    for name, (wire, error) in evil.items():
        with pytest.raises(error):
            OPENER.open(wire)
        assert name


def test_opener_cache_returns_the_same_envelope_and_does_not_cache_failures() -> None:
    wire = seal(IDS[2], Prevote(height=4, round=0, block_hash=None))
    assert OPENER.open(wire) is OPENER.open(wire)
    broken = flip_signature(wire)
    for _ in range(2):
        with pytest.raises(BadSignature):
            OPENER.open(broken)


def test_opener_cache_is_bounded_in_bytes() -> None:
    small = EnvelopeOpener(OPENER.codec, max_bytes=1000)
    wires = [seal(IDS[0], Prevote(height=h, round=0, block_hash=None)) for h in range(1, 20)]
    first = small.open(wires[0])
    for wire in wires[1:]:
        small.open(wire)
    assert small.open(wires[-1]) is small.open(wires[-1])
    assert small.open(wires[0]) is not first  # evicted, verified again
