"""CKKS parameters, coefficient encoding, packing, encryption, addition and the ciphertext wire format."""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from crypto import cbor, ckks, rns, smudging
from crypto.errors import InvalidAggregate, InvalidCiphertext, ProtocolError
from crypto.identity import NodeId, NodeIdentity
from crypto.sealbridge import he_standard_max_bits
from crypto.testing import round_binding

N = 8192
CTX = ckks.context()
EPOCH = os.urandom(32)
BINDING = round_binding(EPOCH)


class Contributors:
    """Members' own secrets (key level, NTT form) without a key epoch: enough to test the ciphertext layer."""

    def __init__(self, count: int) -> None:
        seal = CTX.seal
        self.ids = [NodeIdentity.generate().node_id for _ in range(count)]
        self.secrets = {node: seal.ntt(seal.sample_ternary(os.urandom(64))) for node in self.ids}

    def data_secret(self, node: NodeId) -> np.ndarray:
        return self.secrets[node][: len(CTX.data_moduli)]

    def decrypt(self, vector: ckks.EncryptedVector) -> tuple[np.ndarray, float]:
        return ckks.decrypt_with_secret(CTX, vector, {n: self.data_secret(n) for n in vector.contributors})


KEYS = Contributors(4)


def encrypt(
    values: np.ndarray, weight: float = 1.0, total: float = 1.0, who: int = 0
) -> ckks.EncryptedVector:
    node = KEYS.ids[who]
    return ckks.encrypt(CTX, KEYS.data_secret(node), BINDING, node, values, weight, total)


# -- parameters ------------------------------------------------------------------------------


def test_default_parameters_are_the_documented_ones() -> None:
    p = ckks.DEFAULT_PARAMS
    assert (p.degree, p.coeff_bits, p.scale_bits, p.smudging_bits) == (8192, (60, 60, 60), 90, 68)
    assert p.total_modulus_bits == 180 <= he_standard_max_bits(8192) == 218
    assert p.security_bits == 128
    assert [q.bit_length() for q in CTX.seal.key_moduli] == [60, 60, 60]
    # The wrap bound: |sum| * 2^90 plus all smudging stays far below q0*q1/2.
    q0, q1 = CTX.data_moduli
    assert p.max_abs_value * 2**p.scale_bits * 4 < q0 * q1 // 2
    assert 2**7 * 2**p.weight_scale_bits < q0 * q1 // 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"degree": 8000},
        {"coeff_bits": (60, 60)},
        {"coeff_bits": (60, 60, 61)},
        {"degree": 4096, "coeff_bits": (60, 60, 60)},  # 180 > 109 bits allowed at N = 4096
        {"scale_bits": 100},  # 100 + 20 bits of values leave no headroom
        {"smudging_bits": 120},
        {"smudging_budget_bits": 10},  # outside [20, 80]
        {"smudging_bits": 40},  # sigma 2^40 admits no decryption within 2^-40
        {"weight_scale_bits": 80},  # below the value scale
        {"weight_scale_bits": 115},  # no room for the weight sum
    ],
)
def test_unsafe_parameters_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any of several messages
        ckks.CkksParams(**kwargs)  # type: ignore[arg-type]


# -- packing and encoding (no encryption: fast, so hypothesis gets many examples) -----------


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.uint64, st.integers(1, 300).map(lambda k: 2 * k), elements=st.integers(0, 2**60 - 1)))
def test_pack60_round_trips(values: np.ndarray) -> None:
    packed = ckks.pack60(values)
    assert len(packed) == ckks.packed_size(values.size) == values.size * 15 // 2
    assert np.array_equal(ckks.unpack60(packed, values.size), values)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**60 - 1), min_size=2, max_size=40).filter(lambda v: len(v) % 2 == 0))
def test_pack60_byte_layout_is_the_120_bit_little_endian_pair(values: list[int]) -> None:
    """The wire layout (content-addressed blobs depend on it): pair i is ``v0 + v1 * 2^60`` in
    15 little-endian bytes, whatever vector tricks the packer uses."""
    reference = b"".join(
        (values[i] + (values[i + 1] << 60)).to_bytes(15, "little") for i in range(0, len(values), 2)
    )
    packed = ckks.pack60(np.array(values, dtype=np.uint64))
    assert packed == reference
    # and from a view at an odd offset into a larger buffer, as blob bodies are read
    body = memoryview(b"\x07" + reference + b"\x09")[1:-1]
    assert ckks.unpack60(body, len(values)).tolist() == values


def test_pack60_rejects_wrong_lengths() -> None:
    with pytest.raises(ValueError, match="packed length"):
        ckks.unpack60(b"\0" * 14, 2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hnp.arrays(
        np.float64,
        N,
        elements=st.floats(-(2.0**20), 2.0**20, allow_nan=False, allow_infinity=False),
    )
)
def test_encode_rescale_decode_is_exact_to_the_rescaled_unit(values: np.ndarray) -> None:
    scaled = np.rint(np.ldexp(values, 90))
    decoded = CTX.decode(CTX.rescale(CTX.encode(scaled)))
    # Exact integers mod q0*q1 rounded to a multiple of q0 (half a unit of q0 / 2^90, < 2^-31),
    # then ~2^-52 relative from the float product.
    assert np.all(np.abs(decoded - values) <= 2.0**-31 + np.abs(values) * 2.0**-50)


def test_rescale_rounds_to_nearest_and_wraps_mod_q1() -> None:
    q0, q1 = CTX.data_moduli
    top = q0 * (q1 - 1) + q0 // 2 + 1
    integers = [0, 1, q0 // 2, q0 // 2 + 1, q0, 5 * q0 + q0 // 2 + 1, q0 * q1 - 1, top, -q0]
    residues = np.array([[x % q0 for x in integers], [x % q1 for x in integers]], dtype=np.uint64)
    expected = [((2 * (x % (q0 * q1)) + q0) // (2 * q0)) % q1 for x in integers]
    assert CTX.rescale(residues).tolist() == expected
    assert expected[:6] == [0, 0, 0, 1, 1, 6]
    assert expected[6] == expected[7] == 0  # rounds up to q1: wraps like the integers mod q0*q1


def test_encode_reduces_signed_integers_exactly() -> None:
    rng = np.random.default_rng(7)
    ints = [int(x) for x in rng.integers(-(2**62), 2**62, N)]
    ints[:4] = [0, -1, 2**110, -(2**110)]
    scaled = np.array(ints, dtype=np.float64)  # rounds to doubles: compare against what they hold
    exact = [int(x) for x in scaled]
    residues = CTX.encode(scaled)[0]
    for j, q in enumerate(CTX.data_moduli):
        assert residues[j].tolist() == [x % q for x in exact]


def test_ntt_matches_seal_and_inverts() -> None:
    poly = np.stack([rns.uniform_mod(q, N) for q in CTX.data_moduli])
    assert np.array_equal(CTX.seal.intt(CTX.seal.ntt(poly)), poly)


def test_uniform_mod_and_wide_smudging_sampler() -> None:
    q = CTX.data_moduli[0]
    draws = rns.uniform_mod(q, 50_000)
    assert int(draws.max()) < q
    high, low, shift = smudging.urandom_noise(50_000, 68)  # the smudging sampler (was uniform)
    values = high.astype(np.float64) * 2.0**shift + low.astype(np.float64)
    assert np.abs(values).max() < 14 * 2.0**68  # the sampler's cut
    assert np.abs(values).max() > 2.0**69  # full width: sigma = 2^68
    assert abs(values.mean()) < 2.0**62  # centred
    assert np.unique(low & np.uint64(1)).size == 2  # low bits are random, unlike a float sample


def test_centred_binomial_error_and_seeded_uniform_expansion() -> None:
    error = rns.centered_binomial(ckks.ERROR_ETA, 200_000)
    assert int(error.min()) >= -ckks.ERROR_ETA
    assert int(error.max()) <= ckks.ERROR_ETA
    assert abs(float(error.var()) - ckks.ERROR_ETA / 2) < 0.2  # sigma 3.24
    assert abs(float(error.mean())) < 0.05
    q = CTX.data_moduli[1]
    expanded = rns.expand_uniform_mod(b"seed", q, 50_000)
    assert np.array_equal(expanded, rns.expand_uniform_mod(b"seed", q, 50_000))
    assert np.array_equal(expanded[:1000], rns.expand_uniform_mod(b"seed", q, 1000))  # one stream
    assert int(expanded.max()) < q
    assert not np.array_equal(expanded[:1000], rns.expand_uniform_mod(b"seee", q, 1000))
    small = rns.expand_uniform_mod(b"x", 12289, 20_000)  # a 14-bit prime rejects half of the words
    assert int(small.max()) < 12289
    assert abs(float(small.mean()) / 12289 - 0.5) < 0.02


# -- encryption, addition, decryption --------------------------------------------------------


def test_encrypt_decrypt_and_weight_slot() -> None:
    values = np.random.default_rng(1).uniform(-100, 100, 3 * N - 1).astype(np.float32)  # weight fits chunk 3
    vector = encrypt(values, 3.0, 4.0)
    assert (vector.length, vector.chunks) == (values.size, 3)
    sums, weight = KEYS.decrypt(vector)
    assert np.abs(sums - 0.75 * values.astype(np.float64)).max() < 1e-9
    assert abs(weight - 0.75) < 1e-15


def test_numpy_decryption_agrees_with_seal_decryptor() -> None:
    """``(c0, a)`` with ``c0 = m + e - a*s`` is what SEAL's symmetric encryption makes: SEAL's own
    `Decryptor` (``c0 + c1 * s``) recovers ``m + e`` from our arrays, bit for bit."""
    node = KEYS.ids[0]
    secret = KEYS.data_secret(node)
    a = ckks.mask(CTX, BINDING, node, b"\1" * ckks.SEED_SIZE, 0, 1)[0]
    plain = CTX.encode(np.rint(np.ldexp(np.linspace(-5, 5, N), 90)))[0]
    message = rns.add_mod(plain, ckks.encryption_error(CTX, 1)[0], CTX.q_col)
    a_s = CTX.seal.intt(rns.shoup_mul(a, secret, rns.shoup_quotients(secret, CTX.data_moduli), CTX.q_col))
    c0 = CTX.seal.ntt(rns.sub_mod(message, a_s, CTX.q_col))
    decrypted = CTX.seal.decrypt_with_secret(KEYS.secrets[node], np.stack([c0, a]), 2.0**90)
    assert np.array_equal(decrypted, CTX.seal.ntt(message))


def test_masks_are_deterministic_uniform_and_bound_to_round_contributor_and_seed() -> None:
    node, other = KEYS.ids[:2]
    seed = os.urandom(ckks.SEED_SIZE)
    first = ckks.mask(CTX, BINDING, node, seed, 0, 3)
    assert first.shape == (3, 2, N)
    assert np.array_equal(first, ckks.mask(CTX, BINDING, node, seed, 0, 3))
    assert np.array_equal(first[1:], ckks.mask(CTX, BINDING, node, seed, 1, 3))  # chunk-addressed
    assert bool(np.all(first < CTX.q_col))
    assert abs(float(first[:, 0].mean()) / CTX.data_moduli[0] - 0.5) < 0.01
    for changed in (
        ckks.mask(CTX, BINDING, other, seed, 0, 3),
        ckks.mask(CTX, round_binding(os.urandom(32)), node, seed, 0, 3),
        ckks.mask(CTX, BINDING, node, os.urandom(ckks.SEED_SIZE), 0, 3),
    ):
        assert not bool(np.any(changed == first))  # equal by chance with probability ~2^-45


def test_a_contribution_does_not_decrypt_without_its_own_secret() -> None:
    values = np.linspace(-1, 1, 500)
    vector = encrypt(values)
    wrong = {vector.contributors[0]: KEYS.data_secret(KEYS.ids[1])}
    sums, _ = ckks.decrypt_with_secret(CTX, vector, wrong)
    assert np.abs(sums - values).min() > 1e-3  # uniform garbage, nowhere near the values


def test_encryption_is_randomised() -> None:
    values = np.ones(10)
    first, second = encrypt(values), encrypt(values)
    assert first.to_bytes() != second.to_bytes()
    assert first.header.seeds != second.header.seeds  # a fresh mask every time: never reused


def test_addition_is_exact_and_order_independent() -> None:
    rng = np.random.default_rng(2)
    vectors = [rng.uniform(-100, 100, 5000) for _ in range(3)]
    weights = [1.0, 2.5, 6.5]
    encrypted = [encrypt(v, w, 10.0, who=k) for k, (v, w) in enumerate(zip(vectors, weights, strict=True))]
    total = ckks.add(encrypted)
    assert total.to_bytes() == ckks.add(reversed(encrypted)).to_bytes()  # verifier recomputes the same bytes
    assert total.contributors == tuple(sorted(KEYS.ids[:3], key=lambda n: n.public_key))
    sums, weight = KEYS.decrypt(total)
    expected = sum(w / 10.0 * v for v, w in zip(vectors, weights, strict=True))
    # each rescaled c0 and the decryption round by up to half a unit of q0 / 2^90 ~ 2^-30
    assert np.abs(sums - expected).max() < 4 * 2.0**-30
    assert abs(weight - 1.0) < 1e-14


def test_moderately_large_vector_crosses_batches() -> None:
    length = (ckks.BATCH_CHUNKS + 5) * N + 17  # more than one batch, weight in the last chunk
    values = np.random.default_rng(3).uniform(-1, 1, length).astype(np.float32)
    vector = encrypt(values, 1.0, 2.0)
    assert vector.chunks == ckks.BATCH_CHUNKS + 6
    body = ckks.packed_size(vector.chunks * N)
    assert body < len(vector) <= body + 300  # the header: epoch, contributor id and seed
    decoded = ckks.EncryptedVector.from_bytes(CTX, vector.to_bytes())
    sums, weight = KEYS.decrypt(ckks.add([decoded, encrypt(values, 1.0, 2.0, who=1)]))
    assert np.abs(sums - values.astype(np.float64)).max() < 3 * 2.0**-30  # three rescale roundings
    assert weight == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize(
    ("values", "weight", "total"),
    [
        (np.array([1.0, np.nan]), 1.0, 1.0),
        (np.array([np.inf]), 1.0, 1.0),
        (np.array([2.0**20 + 1]), 1.0, 1.0),
        (np.array([-(2.0**21)]), 1.0, 1.0),
        (np.array([1.0]), 0.0, 1.0),
        (np.array([1.0]), -1.0, 1.0),
        (np.array([1.0]), 2.0, 1.0),
        (np.array([1.0]), float("nan"), 1.0),
        (np.array([1.0]), 1.0, float("inf")),
        (np.zeros((2, 2)), 1.0, 1.0),
        (np.zeros(0), 1.0, 1.0),
        (np.arange(3), 1.0, 1.0),  # integers: not model parameters
    ],
)
def test_bad_inputs_are_rejected_before_encoding(values: np.ndarray, weight: float, total: float) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - message varies
        encrypt(values, weight, total)


def test_aggregator_refuses_mismatched_lengths() -> None:
    aggregator = ckks.Aggregator(CTX, 10)
    with pytest.raises(ValueError, match="cannot add"):
        aggregator.add(encrypt(np.zeros(11)))
    with pytest.raises(ValueError, match="nothing"):
        aggregator.result()


def test_aggregator_refuses_a_contributor_twice_and_mixed_epochs() -> None:
    aggregator = ckks.Aggregator(CTX, 10)
    aggregator.add(encrypt(np.zeros(10)))
    with pytest.raises(InvalidAggregate, match="already in the sum"):
        aggregator.add(encrypt(np.ones(10)))  # the same contributor again, even with a fresh mask
    node = KEYS.ids[1]
    elsewhere = ckks.encrypt(
        CTX, KEYS.data_secret(node), round_binding(os.urandom(32)), node, np.zeros(10), 1.0, 1.0
    )
    with pytest.raises(InvalidAggregate, match="two key epochs"):
        aggregator.add(elsewhere)
    assert aggregator.count == 1  # nothing changed


# -- wire format --------------------------------------------------------------------------------

SMALL = encrypt(np.random.default_rng(4).uniform(-3, 3, N + 100))
WIRE = SMALL.to_bytes()
PREFIX = 8  # magic + header length


def _header_length(wire: bytes) -> int:
    return int(struct.unpack_from(">I", wire, 4)[0])


def _with_header(wire: bytes, **changes: object) -> bytes:
    start, end = PREFIX, PREFIX + _header_length(wire)
    fields = cbor.loads(wire[start:end])
    assert isinstance(fields, dict)
    fields.update(changes)  # type: ignore[arg-type]
    head = cbor.dumps(fields)
    return wire[:4] + struct.pack(">I", len(head)) + head + wire[end:]


def test_wire_round_trips_exactly() -> None:
    decoded = ckks.EncryptedVector.from_bytes(CTX, WIRE)
    assert decoded.to_bytes() == WIRE
    assert np.array_equal(decoded.batch(0, decoded.chunks), SMALL.batch(0, SMALL.chunks))
    seeds = dict(zip(decoded.contributors, decoded.header.seeds, strict=True))
    rebuilt = ckks.EncryptedVector.from_residues(
        CTX, decoded.length, BINDING, seeds, [decoded.batch(0, decoded.chunks)]
    )
    assert rebuilt.to_bytes() == WIRE  # canonical: one encoding per ciphertext
    body = len(WIRE) - PREFIX - _header_length(WIRE)
    assert body == 2 * N * 60 // 8  # 2 ciphertexts x c0 rescaled x N, 60 bits each (c1 is the seed)


def test_wire_size_is_7_5_bytes_per_parameter() -> None:
    per_parameter = (len(WIRE) - PREFIX - _header_length(WIRE)) / (SMALL.chunks * N)
    assert per_parameter == 7.5


@pytest.mark.parametrize("cut", [0, 3, 7, 8, 20, PREFIX + 40, len(WIRE) // 2, len(WIRE) - 15, len(WIRE) - 1])
def test_truncated_wire_is_rejected(cut: int) -> None:
    with pytest.raises(InvalidCiphertext):
        ckks.EncryptedVector.from_bytes(CTX, WIRE[:cut])


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(InvalidCiphertext):
        ckks.EncryptedVector.from_bytes(CTX, WIRE + b"\0" * 15)


@pytest.mark.parametrize(
    "changes",
    [
        {"version": 1},  # the format before c0 was rescaled
        {"version": 2},  # public-key encryption, c1 on the wire
        {"version": 3},  # no round binding
        {"version": ckks.WIRE_VERSION + 1},
        {"parms_id": b"\1" * 32},
        {"scale_bits": 60},
        {"length": 0},
        {"length": SMALL.length + N},  # claims a third chunk the body does not have
        {"length": ckks.MAX_VALUES + 1},
        {"chunks": 3},
        {"polys": 2},
        {"extra": 1},
        {"epoch": b"\1" * 31},
        {"chain_id": b"\1" * 31},
        {"nonce": b"\1" * 33},
        {"round": 0},
        {"round": 1 << 63},
        {"round": "1"},
        {"contributors": []},
        {"seeds": []},
        {"seeds": [b"\1" * 15]},
        {"seeds": [b"\1" * 16, b"\2" * 16]},
        {"contributors": [b"\1" * 31]},
        {"length": -1},
        {"length": "9"},
    ],
)
def test_header_tampering_is_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidCiphertext):
        ckks.EncryptedVector.from_bytes(CTX, _with_header(WIRE, **changes))


def test_a_version_3_blob_is_refused_with_a_clear_error() -> None:
    start, end = PREFIX, PREFIX + _header_length(WIRE)
    fields = cbor.loads(WIRE[start:end])
    assert isinstance(fields, dict)
    old = {k: v for k, v in fields.items() if k not in ("chain_id", "round", "nonce")} | {"version": 3}
    head = cbor.dumps(old)
    blob = WIRE[:4] + struct.pack(">I", len(head)) + head + WIRE[end:]
    with pytest.raises(InvalidCiphertext, match="wire version 3 is not supported"):
        ckks.EncryptedVector.from_bytes(CTX, blob)


def test_contributors_must_be_distinct_and_in_key_order() -> None:
    low, high = sorted((KEYS.ids[0].public_key, KEYS.ids[1].public_key))
    seeds = [b"\1" * 16, b"\2" * 16]
    for order in ([high, low], [low, low]):
        with pytest.raises(InvalidCiphertext, match="distinct contributors"):
            ckks.EncryptedVector.from_bytes(CTX, _with_header(WIRE, contributors=order, seeds=seeds))
    too_many = sorted(NodeIdentity.generate().public_key for _ in range(ckks.MAX_CONTRIBUTORS + 1))
    forged = _with_header(WIRE, contributors=too_many, seeds=[b"\1" * 16] * len(too_many))
    with pytest.raises(InvalidCiphertext, match="contributors"):
        ckks.EncryptedVector.from_bytes(CTX, forged)


def test_wrong_magic_and_header_length_are_rejected() -> None:
    for bad in (b"SND1" + WIRE[4:], WIRE[:4] + struct.pack(">I", 5000) + WIRE[8:], b"x" * 3):
        with pytest.raises(InvalidCiphertext):
            ckks.EncryptedVector.from_bytes(CTX, bad)
    with pytest.raises(InvalidCiphertext):
        ckks.EncryptedVector.from_bytes(CTX, bytearray(WIRE))  # type: ignore[arg-type]


@pytest.mark.parametrize("position", [0, 1, 8191, N + 3, 2 * N - 1])
@pytest.mark.parametrize("offset", [0, 1, 2**60])
def test_out_of_range_coefficients_are_rejected(position: int, offset: int) -> None:
    residues = SMALL.batch(0, SMALL.chunks).copy()
    flat = residues.reshape(-1)
    flat[position] = np.uint64(min(CTX.data_moduli[1] + offset, 2**60 - 1))  # q1, q1+1, 2^60-1
    forged = ckks.encode_blob(b"SNC1", SMALL.header, [ckks.pack60(flat)])
    with pytest.raises(InvalidCiphertext, match="not below its prime"):
        ckks.EncryptedVector.from_bytes(CTX, forged)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(WIRE) - 1), st.integers(1, 255))
def test_any_byte_flip_is_rejected_or_changes_the_content_hash(position: int, flip: int) -> None:
    tampered = bytearray(WIRE)
    tampered[position] ^= flip
    try:
        decoded = ckks.EncryptedVector.from_bytes(CTX, bytes(tampered))
    except ProtocolError:
        return
    # A flip that keeps every coefficient in range is a different, valid ciphertext:
    # content addressing (SHA-256 on the ledger) is what catches it.
    assert hashlib.sha256(decoded.to_bytes()).digest() != hashlib.sha256(WIRE).digest()


def test_equal_parameters_share_one_context_across_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    params = ckks.CkksParams(scale_bits=80)  # not built yet by any other test
    with ThreadPoolExecutor(4) as pool:
        contexts = list(pool.map(lambda _: ckks.context(ckks.CkksParams(scale_bits=80)), range(8)))
    assert all(c is contexts[0] for c in contexts)
    assert ckks.context(params) is contexts[0]
    assert ckks.context(ckks.CkksParams()) is CTX


def test_in_place_modular_sum_matches_add_mod_at_the_edges() -> None:
    q = CTX.q_col
    rng = np.random.default_rng(7)
    top = q - np.uint64(1)
    a = np.concatenate(
        [np.zeros_like(q), top, top, rng.integers(0, 1 << 59, size=(q.shape[0], 64), dtype=np.uint64) % q],
        axis=1,
    )
    b = np.concatenate(
        [top, np.ones_like(q), top, rng.integers(0, 1 << 59, size=(q.shape[0], 64), dtype=np.uint64) % q],
        axis=1,
    )
    expected = rns.add_mod(a, b, q)
    rns.add_mod_into(a, b, q)
    assert np.array_equal(a, expected)
    assert bool(np.all(a < q))
