"""Envelopes: round trips and every rejection path, plus a fuzzing test."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto import cbor
from crypto.envelope import DOMAIN, ENVELOPE_OVERHEAD, EnvelopeCodec, MessageTypes
from crypto.errors import (
    BadSignature,
    MalformedMessage,
    MessageTooLarge,
    NonCanonicalEncoding,
    ProtocolError,
    SchemaError,
    UnknownMessageType,
    UnsupportedVersion,
    WrongChain,
)
from crypto.identity import NodeId, NodeIdentity

CHAIN = bytes(range(32))


@dataclass(frozen=True, slots=True)
class Inner:
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class Sample:
    """A body with every supported field kind."""

    height: int
    flag: bool
    ratio: float
    name: str
    blob: bytes
    who: NodeId
    note: str | None
    hashes: tuple[bytes, ...]
    pair: tuple[int, str]
    inner: Inner
    inners: tuple[Inner, ...]

    def __post_init__(self) -> None:
        if self.height < 0:
            raise ValueError("height must be >= 0")


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


SAMPLE_TYPES = MessageTypes()
SAMPLE_TYPES.register("sample", Sample, max_size=4096)
SAMPLE_TYPES.register("ping", Ping, max_size=300)


def make_sample(who: NodeId) -> Sample:
    return Sample(
        height=7,
        flag=True,
        ratio=0.25,
        name="site-a",
        blob=b"\x00\xff" * 8,
        who=who,
        note=None,
        hashes=(b"\x01" * 32, b"\x02" * 32),
        pair=(3, "x"),
        inner=Inner("auc", 0.97),
        inners=(Inner("a", 1.0), Inner("b", -2.5)),
    )


ALICE = NodeIdentity.from_seed(b"\x07" * 32)
MALLORY = NodeIdentity.from_seed(b"\x09" * 32)
CODEC = EnvelopeCodec(CHAIN, SAMPLE_TYPES)


def outer_of(wire: bytes) -> dict[str, object]:
    value = cbor2.loads(wire)
    assert isinstance(value, dict)
    return value


def resign(fields: dict[str, object], signer: NodeIdentity = ALICE) -> bytes:
    """Re-sign a modified envelope, as an attacker holding a valid key could."""
    unsigned = {k: v for k, v in fields.items() if k != "sig"}
    signature = signer.sign(DOMAIN + cbor2.dumps(unsigned, canonical=True))
    return cbor2.dumps({**unsigned, "sig": signature}, canonical=True)


def test_round_trip_every_field_kind() -> None:
    body = make_sample(ALICE.node_id)
    wire = CODEC.seal(ALICE, body)

    envelope = CODEC.open(wire)
    assert envelope.body == body
    assert envelope.sender == ALICE.node_id
    assert envelope.type == "sample"
    assert envelope.chain == CHAIN
    assert envelope.wire == wire
    assert envelope.digest == hashlib.sha256(wire).digest()


def test_sealing_is_deterministic_and_canonical() -> None:
    body = make_sample(ALICE.node_id)
    wire = CODEC.seal(ALICE, body)
    assert CODEC.seal(ALICE, body) == wire  # Ed25519 is deterministic
    assert cbor2.dumps(cbor2.loads(wire), canonical=True) == wire


def test_envelope_overhead_bound_holds() -> None:
    wire = CODEC.seal(ALICE, Ping(nonce=0))
    body = cbor.dumps_dataclass(Ping(nonce=0))
    assert len(wire) - len(body) <= ENVELOPE_OVERHEAD - 48  # room for the longest type name


def test_float_field_given_an_int_still_encodes_as_float() -> None:
    body = dataclasses.replace(make_sample(ALICE.node_id), ratio=2)
    assert CODEC.open(CODEC.seal(ALICE, body)).body.ratio == 2.0  # type: ignore[attr-defined]


def test_seal_refuses_oversized_and_unregistered_bodies() -> None:
    with pytest.raises(ValueError, match="over its limit"):
        CODEC.seal(ALICE, dataclasses.replace(make_sample(ALICE.node_id), blob=b"x" * 5000))

    @dataclass(frozen=True)
    class Unregistered:
        x: int

    with pytest.raises(ValueError, match="not a registered"):
        CODEC.seal(ALICE, Unregistered(1))


def test_registry_rejects_duplicates_and_bad_schemas() -> None:
    types = MessageTypes()
    types.register("ping", Ping, max_size=300)
    with pytest.raises(ValueError, match="already registered"):
        types.register("ping", Inner, max_size=300)
    with pytest.raises(ValueError, match="already registered"):
        types.register("ping2", Ping, max_size=300)
    with pytest.raises(ValueError, match="max_size"):
        types.register("tiny", Inner, max_size=10)

    @dataclass(frozen=True)
    class WithDict:
        mapping: dict[str, int]

    with pytest.raises(TypeError, match="no CBOR schema"):
        types.register("dict", WithDict, max_size=300)


def test_merge_of_registries() -> None:
    other = MessageTypes()
    other.register("inner", Inner, max_size=300)
    merged = SAMPLE_TYPES.merge(other)
    assert {t.name for t in merged} == {"sample", "ping", "inner"}
    with pytest.raises(ValueError, match="already registered"):
        merged.merge(other)


# -- rejection paths ---------------------------------------------------------------


def test_oversized_message_rejected_before_decoding() -> None:
    # Not even CBOR: the size check must come first.
    with pytest.raises(MessageTooLarge, match="largest limit"):
        CODEC.open(b"\xff" * 5000)


def test_per_type_size_limit() -> None:
    fields = outer_of(CODEC.seal(ALICE, Ping(nonce=1)))
    fields["body"] = cbor.dumps({"nonce": 1, "pad": "x" * 400})
    with pytest.raises(MessageTooLarge, match="ping message"):
        CODEC.open(resign(fields))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\xa1", b"\x9f\x01\xff", b"\xc1\x01", b"not cbor at all", b"\xa1\x01\x02"],
)
def test_malformed_bytes(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        CODEC.open(data)


def test_non_bytes_input() -> None:
    with pytest.raises(MalformedMessage):
        CODEC.open("a string")  # type: ignore[arg-type]


def test_non_canonical_encoding_rejected() -> None:
    wire = CODEC.seal(ALICE, Ping(nonce=1))
    fields = outer_of(wire)
    # Same content, keys in insertion order instead of canonical order.
    loose = cbor2.dumps(dict(reversed(list(fields.items()))))
    assert loose != wire
    with pytest.raises(NonCanonicalEncoding):
        CODEC.open(loose)
    # An integer in a longer form than needed: 0x18 0x01 instead of 0x01.
    with pytest.raises(NonCanonicalEncoding):
        cbor.loads(b"\x18\x01")


def test_non_canonical_body_rejected_even_if_signed() -> None:
    fields = outer_of(CODEC.seal(ALICE, Ping(nonce=1)))
    fields["body"] = b"\xa1\x65nonce\x18\x01"  # {"nonce": 1} with a padded integer
    with pytest.raises(NonCanonicalEncoding):
        CODEC.open(resign(fields))


def test_unknown_and_missing_envelope_fields() -> None:
    fields = outer_of(CODEC.seal(ALICE, Ping(nonce=1)))
    with pytest.raises(SchemaError, match="unknown"):
        CODEC.open(resign({**fields, "extra": 1}))
    del fields["from"]
    with pytest.raises(SchemaError, match="missing"):
        CODEC.open(cbor2.dumps(fields, canonical=True))


def test_wrong_version() -> None:
    fields = outer_of(CODEC.seal(ALICE, Ping(nonce=1)))
    with pytest.raises(UnsupportedVersion):
        CODEC.open(resign({**fields, "v": 2}))
    with pytest.raises(UnsupportedVersion):
        CODEC.open(resign({**fields, "v": "1"}))


def test_wrong_chain_rejected() -> None:
    other = EnvelopeCodec(b"\x01" * 32, SAMPLE_TYPES)
    with pytest.raises(WrongChain):
        CODEC.open(other.seal(ALICE, Ping(nonce=1)))


def test_unknown_type() -> None:
    fields = outer_of(CODEC.seal(ALICE, Ping(nonce=1)))
    with pytest.raises(UnknownMessageType, match="nope"):
        CODEC.open(resign({**fields, "type": "nope"}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("chain", "text"),
        ("chain", b"\x00" * 31),
        ("type", 3),
        ("from", b"\x01" * 31),
        ("from", "alice"),
        ("body", {"nonce": 1}),
        ("sig", "sig"),
    ],
)
def test_envelope_field_types(field: str, value: object) -> None:
    fields = outer_of(CODEC.seal(ALICE, Ping(nonce=1)))
    fields[field] = value
    with pytest.raises(ProtocolError):
        CODEC.open(cbor2.dumps(fields, canonical=True))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"nonce": 1, "extra": 2}, "unknown field"),
        ({}, "missing field"),
        ({"nonce": "1"}, "expected an integer"),
        ({"nonce": True}, "expected an integer"),
        ({"nonce": 1.0}, "expected an integer"),
        ([1], "expected a map"),
    ],
)
def test_body_schema_violations(body: object, message: str) -> None:
    fields = outer_of(CODEC.seal(ALICE, Ping(nonce=1)))
    fields["body"] = cbor2.dumps(body, canonical=True)
    with pytest.raises(SchemaError, match=message):
        CODEC.open(resign(fields))


def sample_value(**changes: object) -> dict[str, object]:
    value = cbor.to_cbor_value(make_sample(ALICE.node_id))
    assert isinstance(value, dict)
    return {**value, **changes}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"flag": 1}, "flag: expected a boolean"),
        ({"ratio": 1}, "ratio: expected a float"),
        ({"name": b"site"}, "name: expected a text string"),
        ({"blob": "x"}, "blob: expected a byte string"),
        ({"who": b"\x01" * 31}, "who: expected a 32-byte"),
        ({"note": 5}, "note: expected str or NoneType"),
        ({"hashes": b"x"}, "hashes: expected an array"),
        ({"hashes": [b"x", 3]}, r"hashes\[1\]: expected a byte string"),
        ({"pair": [1]}, "pair: expected an array of 2"),
        ({"pair": ["1", "x"]}, r"pair\[0\]"),
        ({"inner": {"label": "x"}}, "inner: missing field"),
        ({"inners": [{"label": "x", "score": "high"}]}, r"inners\[0\].score"),
        ({"height": -1}, "height must be >= 0"),
    ],
)
def test_nested_schema_violations_name_the_field(changes: dict[str, object], message: str) -> None:
    fields = outer_of(CODEC.seal(ALICE, make_sample(ALICE.node_id)))
    fields["body"] = cbor2.dumps(sample_value(**changes), canonical=True)
    with pytest.raises(SchemaError, match=message):
        CODEC.open(resign(fields))


def test_non_finite_floats() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        CODEC.seal(ALICE, dataclasses.replace(make_sample(ALICE.node_id), ratio=float("nan")))
    fields = outer_of(CODEC.seal(ALICE, make_sample(ALICE.node_id)))
    fields["body"] = cbor2.dumps(sample_value(ratio=float("inf")), canonical=True)
    with pytest.raises(SchemaError, match="non-finite"):
        CODEC.open(resign(fields))


def test_bad_signature_every_signed_field() -> None:
    wire = CODEC.seal(ALICE, Ping(nonce=1))
    fields = outer_of(wire)
    tampered = [
        {**fields, "body": cbor.dumps({"nonce": 2})},
        {**fields, "from": MALLORY.public_key},
        {**fields, "sig": bytes(64)},
        {**fields, "sig": fields["sig"][:-1] + bytes([fields["sig"][-1] ^ 1])},  # type: ignore[index]
        {**fields, "sig": fields["sig"][:63]},  # type: ignore[index]
    ]
    for candidate in tampered:
        with pytest.raises(BadSignature):
            CODEC.open(cbor2.dumps(candidate, canonical=True))


def test_signature_without_domain_prefix_is_rejected() -> None:
    fields = outer_of(CODEC.seal(ALICE, Ping(nonce=1)))
    unsigned = {k: v for k, v in fields.items() if k != "sig"}
    naked = ALICE.sign(cbor2.dumps(unsigned, canonical=True))
    with pytest.raises(BadSignature):
        CODEC.open(cbor2.dumps({**unsigned, "sig": naked}, canonical=True))


def test_replayed_message_is_byte_identical_for_dedup() -> None:
    wire = CODEC.seal(ALICE, Ping(nonce=1))
    assert CODEC.open(wire).digest == CODEC.open(bytes(wire)).digest


# -- the strict CBOR decoder ------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\xc0\x60", MalformedMessage),  # tag 0
        (b"\xd9\xd9\xf7\x01", MalformedMessage),  # self-describe tag
        (b"\x5f\x41\x00\xff", MalformedMessage),  # indefinite byte string
        (b"\xf7", MalformedMessage),  # undefined
        (b"\xf0", MalformedMessage),  # simple value 16
        (b"\x1c", MalformedMessage),  # reserved additional info
        (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", MalformedMessage),  # 2^64-1 items claimed
        (b"\x5a\xff\xff\xff\xff", MalformedMessage),  # 4 GB byte string claimed
        (b"\x62\xff\xfe", MalformedMessage),  # invalid UTF-8
        (b"\xa1\x01\x02", MalformedMessage),  # integer map key
        (b"\xa2\x61a\x01\x61a\x02", NonCanonicalEncoding),  # duplicate key
        (b"\x01\x02", MalformedMessage),  # trailing bytes
        (b"\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00", NonCanonicalEncoding),  # 1.0 as float64
        (b"\x81" * 40 + b"\x01", MalformedMessage),  # nested too deep
    ],
)
def test_strict_cbor_decoder_rejects(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        cbor.loads(data)


def test_strict_cbor_decoder_accepts_canonical_values() -> None:
    values: list[cbor.CborValue] = [
        0,
        23,
        24,
        255,
        256,
        2**64 - 1,
        -1,
        -(2**64),
        1.5,
        -0.0,
        1e300,
        "",
        "é",
        b"",
        [],
        {},
        {"a": [1, {"b": None}], "bb": True, "c": False},
    ]
    for value in values:
        assert cbor.loads(cbor.dumps(value)) == value


# -- fuzzing ------------------------------------------------------------------------

_cbor_leaves = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=80),
    st.booleans(),
    st.none(),
)
_cbor_values = st.recursive(
    _cbor_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=8), children, max_size=5),
    ),
    max_leaves=30,
)
_VALID = [
    CODEC.seal(ALICE, Ping(nonce=2**40)),
    CODEC.seal(ALICE, make_sample(ALICE.node_id)),
    CODEC.seal(MALLORY, make_sample(MALLORY.node_id)),
]


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "mutated", "truncated", "cbor", "envelope", "spliced"]))
    if kind == "random":
        return draw(st.binary(max_size=600))
    base = draw(st.sampled_from(_VALID))
    if kind == "truncated":
        return base[: draw(st.integers(0, len(base) - 1))]
    if kind == "mutated":
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "cbor":
        return cbor2.dumps(draw(_cbor_values), canonical=draw(st.booleans()))
    if kind == "spliced":
        other = draw(st.sampled_from(_VALID))
        cut = draw(st.integers(0, min(len(base), len(other))))
        return base[:cut] + other[cut:]
    # a structurally plausible envelope with random field values
    fields = outer_of(base)
    key = draw(st.sampled_from(sorted(fields)))
    fields[key] = draw(_cbor_values)
    return cbor2.dumps(fields, canonical=True)


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_bytes())
def test_fuzz_decoder_raises_only_protocol_errors(data: bytes) -> None:
    try:
        envelope = CODEC.open(data)
    except ProtocolError:
        return
    # Anything accepted must be one of the genuinely signed messages.
    assert data in _VALID
    envelope.sender.verify(
        DOMAIN + cbor2.dumps({k: v for k, v in outer_of(data).items() if k != "sig"}, canonical=True),
        envelope.signature,
    )


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(0, 2**62))
def test_fuzz_no_forged_signature_accepted(garbage_sig: bytes, nonce: int) -> None:
    fields = outer_of(CODEC.seal(ALICE, Ping(nonce=nonce)))
    fields["sig"] = garbage_sig
    with pytest.raises(ProtocolError):
        CODEC.open(cbor2.dumps(fields, canonical=True))


@dataclass(frozen=True, slots=True)
class OptionalMetric:
    metric: float | None


def test_optional_float_field_given_an_int_encodes_as_float() -> None:
    data = cbor.dumps_dataclass(OptionalMetric(metric=1))
    assert cbor.loads_dataclass(OptionalMetric, data) == OptionalMetric(metric=1.0)
    assert cbor.loads_dataclass(OptionalMetric, cbor.dumps_dataclass(OptionalMetric(None))).metric is None
