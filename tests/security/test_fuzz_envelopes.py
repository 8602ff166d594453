"""Fuzzing every registered message body behind a *valid signature*.

`tests/crypto/test_envelope.py` already fuzzes the outer envelope (10,000 hostile
byte strings, forged signatures). Here the attacker is a key holder: each case is a
correctly signed envelope, on our chain, of a registered type, whose body bytes are
type-confused, missing or extra fields, truncated, bit-flipped, deeply nested,
oversized or plain garbage. The signature check passes, so every case reaches the
body decoder (`crypto.cbor.loads_dataclass` and the body's own validation). The only
acceptable outcomes are a `ProtocolError` subclass or a body of exactly the claimed
type that re-encodes to the signed bytes.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from consensus.messages import CONSENSUS_MESSAGES
from consensus.transactions import TX_MESSAGES
from crypto import cbor
from crypto.envelope import EnvelopeCodec, MessageTypes
from crypto.errors import MessageTooLarge, ProtocolError
from crypto.identity import NodeIdentity
from crypto.threshold import THRESHOLD_MESSAGES

if TYPE_CHECKING:  # the fixtures' types; conftest is not importable at run time
    from conftest import FuzzKit, LedgerSample

ALL_TYPES = CONSENSUS_MESSAGES.merge(TX_MESSAGES).merge(THRESHOLD_MESSAGES)
SIGNER = NodeIdentity.from_seed(b"\x42" * 32)


def test_every_registered_type_has_a_sample(body_samples: dict[type, list[object]]) -> None:
    registered = {t.body for t in ALL_TYPES}
    assert registered == set(body_samples), registered ^ set(body_samples)


def test_signed_hostile_bodies_of_every_type(
    fuzz: FuzzKit, ledger_sample: LedgerSample, body_samples: dict[type, list[object]]
) -> None:
    chain = ledger_sample.chain_id
    codec = EnvelopeCodec(chain, ALL_TYPES)
    types = list(ALL_TYPES)
    encoded = {t.name: [cbor.dumps_dataclass(b) for b in body_samples[t.body]] for t in types}
    # Signing a valid body costs as much as a hostile one: reuse each valid wire.
    for t in types:
        for body in body_samples[t.body]:
            assert codec.open(codec.seal(SIGNER, body)).body == body
    per_type: dict[str, int] = {}

    def case(rnd: random.Random) -> str:
        message_type = rnd.choice(types)
        valid = rnd.choice(encoded[message_type.name])
        body = fuzz.hostile(rnd, valid)
        if rnd.random() < 0.003:  # oversized: a huge field still under the transport's limits
            body = cbor.dumps({"pad": bytes(message_type.max_size)})
        wire = fuzz.sign_raw(SIGNER, chain, message_type.name, body)
        per_type[message_type.name] = per_type.get(message_type.name, 0) + 1
        try:
            envelope = codec.open(wire)
        except MessageTooLarge:
            assert len(wire) > message_type.max_size
            return "too large"
        except ProtocolError as exc:
            return type(exc).__name__
        # Accepted: then it is exactly a body of the claimed type, canonically the signed bytes.
        assert type(envelope.body) is message_type.body
        assert envelope.sender == SIGNER.node_id
        assert cbor.dumps_dataclass(envelope.body) == body
        return "accepted"

    stats = fuzz.run(case, cases=max(fuzz.cases, 20 * len(types)))
    # Every type got its share, and the hostile inputs hit several distinct refusals.
    assert min(per_type.values()) >= stats.cases // (3 * len(types)), per_type
    refusals = {k for k in stats.outcomes if k not in ("accepted",)}
    assert {"SchemaError", "MalformedMessage", "NonCanonicalEncoding"} <= refusals, stats.outcomes


def test_registry_union_has_no_duplicate_names() -> None:
    # The node merges these registries; `merge` raises on a clash, so reaching here is the check.
    merged = MessageTypes().merge(ALL_TYPES)
    assert len(list(merged)) == len(list(CONSENSUS_MESSAGES)) + len(list(TX_MESSAGES)) + len(
        list(THRESHOLD_MESSAGES)
    )


def test_hostile_envelopes_stay_within_a_memory_bound(
    fuzz: FuzzKit, ledger_sample: LedgerSample, body_samples: dict[type, list[object]]
) -> None:
    """Deep nesting and huge declared lengths must be refused without building big objects."""
    chain = ledger_sample.chain_id
    codec = EnvelopeCodec(chain, ALL_TYPES)
    proposal = next(t for t in ALL_TYPES if t.name == "ledger/proposal")
    wires = []
    rnd = random.Random(11)
    for _ in range(200):
        kind = rnd.randrange(3)
        if kind == 0:
            body = b"\x81" * 500_000 + b"\x00"  # nesting, within the proposal size limit
        elif kind == 1:
            body = b"\x5b" + (2**40).to_bytes(8, "big") + bytes(16)  # claims 1 TiB of bytes
        else:
            body = b"\x9b" + (2**40).to_bytes(8, "big") + b"\x00" * 16  # claims 2^40 items
        wires.append(fuzz.sign_raw(SIGNER, chain, proposal.name, body))
    with fuzz.bounded_memory(16 * 1024 * 1024):
        for wire in wires:
            try:
                codec.open(wire)
            except ProtocolError:
                continue
            raise AssertionError("a hostile body was accepted")
