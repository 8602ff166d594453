"""The secure-merge facade end to end: epoch, encrypt, aggregate, share, combine; refusals and precision."""

from __future__ import annotations

import numpy as np
import pytest

from crypto import ckks, threshold
from crypto import secure_merge as sm
from crypto.ckks_params import DEFAULT_PARAMS
from crypto.envelope import EnvelopeCodec
from crypto.errors import InvalidAggregate, InvalidCiphertext, InvalidDecryptionShare
from crypto.identity import NodeId, NodeIdentity
from crypto.testing import round_binding, run_key_epoch

SPEC4, IDS4, KEYS4 = run_key_epoch(4)  # t = 3
BINDING = round_binding(SPEC4.epoch_id)
LENGTH = 3000
RNG = np.random.default_rng(5)
VALUES = [RNG.uniform(-1, 1, LENGTH).astype(np.float32) for _ in range(4)]
WEIGHTS = [10.0, 20.0, 30.0, 40.0]
BLOBS = [
    sm.encrypt_update(k, v, w, sum(WEIGHTS), binding=BINDING)
    for k, v, w in zip(KEYS4, VALUES, WEIGHTS, strict=True)
]
AGGREGATE = sm.aggregate_contributions(
    dict(zip(SPEC4.members, BLOBS, strict=True)), length=LENGTH, binding=BINDING, params=DEFAULT_PARAMS
)
T = list(SPEC4.members[1:])  # points 2, 3, 4


def expected_mean(values: list[np.ndarray], weights: list[float]) -> np.ndarray:
    total = sum(weights)
    return sum(w / total * v.astype(np.float64) for v, w in zip(values, weights, strict=True))  # type: ignore[return-value]


def by_contributor(blobs: list[bytes], members: int = 4) -> dict[NodeId, bytes]:
    """The first `members` contributions, keyed by their contributors (as the ledger commits them)."""
    return dict(zip(SPEC4.members[:members], blobs, strict=False))


def shares(aggregate: bytes = AGGREGATE, contributions: int = 4) -> list[bytes]:
    return [
        sm.decryption_share(
            KEYS4[i], aggregate, T, contributions=contributions, min_peers=2, length=LENGTH, binding=BINDING
        )
        for i in (1, 2, 3)
    ]


def test_round_trip_through_the_facade() -> None:
    parts = shares()
    merged = sm.combine(SPEC4, AGGREGATE, parts, params=DEFAULT_PARAMS)
    assert merged.mean.dtype == np.float32
    assert merged.mean.shape == (LENGTH,)
    assert merged.weight_sum == pytest.approx(1.0, abs=1e-10)
    assert np.abs(merged.mean - expected_mean(VALUES, WEIGHTS)).max() < 5e-6
    # Everyone combining the same bytes gets bit-identical parameters.
    again = sm.combine(SPEC4, AGGREGATE, parts[::-1], params=DEFAULT_PARAMS)
    assert again.mean.tobytes() == merged.mean.tobytes()


def test_streaming_aggregation_equals_batch_aggregation() -> None:
    builder = sm.AggregateBuilder(LENGTH, DEFAULT_PARAMS, binding=BINDING)
    for member, blob in reversed(list(zip(SPEC4.members, BLOBS, strict=True))):
        builder.add(blob, member)
    assert builder.count == 4
    assert builder.result() == AGGREGATE  # the verifier recomputes the leader's bytes


def test_builder_rejects_bad_blobs_and_keeps_its_sum() -> None:
    builder = sm.AggregateBuilder(LENGTH, DEFAULT_PARAMS, binding=BINDING)
    members = SPEC4.members
    builder.add(BLOBS[0], members[0])
    other_length = sm.encrypt_update(KEYS4[1], np.zeros(LENGTH + 1, np.float32), 1.0, 2.0, binding=BINDING)
    for bad in (BLOBS[1][:-1], other_length, b"", BLOBS[1][:20]):
        with pytest.raises(InvalidCiphertext):
            builder.add(bad, members[1])
    with pytest.raises(InvalidCiphertext, match="not its own contribution"):
        builder.add(BLOBS[2], members[1])  # member 2 committed member 3's update as its own
    with pytest.raises(InvalidCiphertext, match="not its own contribution"):
        builder.add(AGGREGATE, members[1])  # a sum passed off as one contribution
    with pytest.raises(InvalidAggregate, match="already in the sum"):
        builder.add(sm.encrypt_update(KEYS4[0], VALUES[0], 1.0, 2.0, binding=BINDING), members[0])
    assert builder.count == 1
    for member, blob in zip(members[1:], BLOBS[1:], strict=True):
        builder.add(blob, member)
    assert builder.result() == AGGREGATE


def test_decryption_is_refused_below_min_peers_and_for_single_updates() -> None:
    for contributions, min_peers in [(2, 3), (1, 1), (0, 0), (3, 4)]:
        with pytest.raises(sm.DecryptionRefused, match="contributions"):
            sm.decryption_share(
                KEYS4[1], AGGREGATE, T, contributions=contributions, min_peers=min_peers, binding=BINDING
            )
    with pytest.raises(sm.DecryptionRefused, match="not in the decrypt set"):
        sm.decryption_share(KEYS4[0], AGGREGATE, T, contributions=4, min_peers=2, binding=BINDING)
    with pytest.raises(sm.DecryptionRefused, match="threshold"):
        sm.decryption_share(KEYS4[1], AGGREGATE, T[:2], contributions=4, min_peers=2, binding=BINDING)
    with pytest.raises(InvalidCiphertext, match="model has"):
        sm.decryption_share(
            KEYS4[1], AGGREGATE, T, contributions=4, min_peers=2, length=LENGTH + 1, binding=BINDING
        )
    # The ledger committed 4 contributions; an aggregate of 3 (or a sum claiming 4 but naming 3) is refused.
    partial = sm.aggregate_contributions(
        by_contributor(BLOBS, 3), length=LENGTH, binding=BINDING, params=DEFAULT_PARAMS
    )
    with pytest.raises(sm.DecryptionRefused, match="sums 3 contributors"):
        sm.decryption_share(KEYS4[1], partial, T, contributions=4, min_peers=2, binding=BINDING)


def test_missing_or_foreign_shares() -> None:
    good = shares()
    with pytest.raises(sm.InsufficientShares):
        sm.combine(SPEC4, AGGREGATE, good[:2], params=DEFAULT_PARAMS)
    with pytest.raises(InvalidCiphertext, match="model has"):
        sm.combine(SPEC4, AGGREGATE, good, length=LENGTH - 1, params=DEFAULT_PARAMS)
    with pytest.raises(InvalidDecryptionShare):
        sm.combine(SPEC4, AGGREGATE, [good[0][:-3], *good[1:]], params=DEFAULT_PARAMS)
    partial = sm.aggregate_contributions(
        by_contributor(BLOBS, 3), length=LENGTH, binding=BINDING, params=DEFAULT_PARAMS
    )
    with pytest.raises(InvalidDecryptionShare, match="another aggregate"):
        sm.combine(SPEC4, partial, good, params=DEFAULT_PARAMS)


def test_an_overweight_contribution_is_detected_after_decryption() -> None:
    # A site claiming the whole round's weight pushes the weight sum above 1.
    cheat = sm.encrypt_update(KEYS4[0], VALUES[0], 100.0, 100.0, binding=BINDING)
    aggregate = sm.aggregate_contributions(
        by_contributor([cheat, *BLOBS[1:]]), length=LENGTH, binding=BINDING, params=DEFAULT_PARAMS
    )
    with pytest.raises(InvalidAggregate, match="weight sum"):
        sm.combine(SPEC4, aggregate, shares(aggregate), params=DEFAULT_PARAMS)


def test_dropped_contributor_still_gives_the_weighted_mean_of_the_rest() -> None:
    # t = 2 of 4: the three contributions left are t + 1, the fewest a decryptor accepts.
    spec, _, keys = run_key_epoch(4, threshold=2)
    binding = round_binding(spec.epoch_id)
    total = sum(WEIGHTS)
    blobs = [
        sm.encrypt_update(k, v, w, total, binding=binding)
        for k, v, w in zip(keys, VALUES[:3], WEIGHTS, strict=False)
    ]
    aggregate = sm.aggregate_contributions(
        dict(zip(spec.members, blobs, strict=False)), length=LENGTH, binding=binding, params=DEFAULT_PARAMS
    )
    decrypt_set = list(spec.members[1:3])
    parts = [
        sm.decryption_share(k, aggregate, decrypt_set, contributions=3, min_peers=2, binding=binding)
        for k in keys[1:3]
    ]
    merged = sm.combine(spec, aggregate, parts, params=DEFAULT_PARAMS)
    assert merged.weight_sum == pytest.approx(0.6, abs=1e-10)
    assert np.abs(merged.mean - expected_mean(VALUES[:3], WEIGHTS[:3])).max() < 5e-6


def test_blob_size_bounds() -> None:
    assert len(AGGREGATE) <= sm.ciphertext_size(LENGTH, DEFAULT_PARAMS)
    assert all(len(s) <= sm.decryption_share_size(LENGTH, DEFAULT_PARAMS) for s in shares())
    assert sm.ciphertext_size(1_000_000, DEFAULT_PARAMS) / 1_000_000 < 7.7


def test_epoch_via_facade_and_envelopes() -> None:
    codec = EnvelopeCodec(b"k" * 32, sm.THRESHOLD_MESSAGES)
    identities = [NodeIdentity.generate() for _ in range(3)]
    spec = sm.EpochSpec(b"e" * 32, tuple(i.node_id for i in identities), sm.default_threshold(3))
    epochs = [sm.start_key_epoch(spec, i, DEFAULT_PARAMS) for i in identities]
    committed = {spec.members[k]: e.commitment for k, e in enumerate(epochs)}  # from the ledger
    for epoch in epochs:
        epoch.expect_commitments(committed)
    wires = [
        (codec.seal(i, body), body) for i, e in zip(identities, epochs, strict=True) for body in e.outgoing()
    ]
    for wire, body in wires:
        envelope = codec.open(wire)
        for identity, epoch in zip(identities, epochs, strict=True):
            if identity.node_id == envelope.sender:
                continue
            if isinstance(body, sm.SealedKeyShare) and body.recipient != identity.node_id:
                continue
            epoch.receive(envelope.sender, envelope.body)
    keys = [e.finish() for e in epochs]
    values = [np.full(10, float(i), np.float32) for i in range(3)]
    binding = round_binding(spec.epoch_id)
    blobs = [sm.encrypt_update(k, v, 1.0, 3.0, binding=binding) for k, v in zip(keys, values, strict=True)]
    aggregate = sm.aggregate_contributions(
        dict(zip(spec.members, blobs, strict=True)), length=10, binding=binding, params=DEFAULT_PARAMS
    )
    decrypt_set = list(spec.members[:2])
    parts = [
        sm.decryption_share(k, aggregate, decrypt_set, contributions=3, min_peers=2, binding=binding)
        for k in keys[:2]
    ]
    merged = sm.combine(spec, aggregate, parts, params=DEFAULT_PARAMS)
    assert np.abs(merged.mean - 1.0).max() < 1e-6


def test_sixteen_member_weighted_mean_precision() -> None:
    """Issue #4 done-when: 16 members, vectors in [-100, 100], random weights: max abs error <= 1e-5."""
    spec, _, keys = run_key_epoch(16)  # t = 9
    rng = np.random.default_rng(2024)
    length = 2 * 8192 + 1000
    values = [rng.uniform(-100, 100, length).astype(np.float32) for _ in range(16)]
    weights = [float(w) for w in rng.uniform(1, 1000, 16)]
    total = sum(weights)
    binding = round_binding(spec.epoch_id)
    builder = sm.AggregateBuilder(length, DEFAULT_PARAMS, binding=binding)
    for k, v, w in zip(keys, values, weights, strict=True):
        builder.add(sm.encrypt_update(k, v, w, total, binding=binding), k.me)
    aggregate = builder.result()
    decrypt_set = list(spec.members[16 - spec.threshold :])
    parts = [
        sm.decryption_share(k, aggregate, decrypt_set, contributions=16, min_peers=8, binding=binding)
        for k in keys[16 - spec.threshold :]
    ]
    merged = sm.combine(spec, aggregate, parts, params=DEFAULT_PARAMS)
    expected = expected_mean(values, weights)
    error = float(np.abs(merged.mean.astype(np.float64) - expected).max())
    # float32 output rounding alone is up to 2^-18 ~ 3.8e-6 at |mean| ~ 50; measure the crypto
    # error before that rounding too.
    ctx = ckks.context()
    sums, weight_sum = threshold.combine_shares(
        spec,
        ckks.EncryptedVector.from_bytes(ctx, aggregate),
        [threshold.DecryptionShare.from_bytes(ctx, p) for p in parts],
    )
    crypto_error = float(np.abs(sums / weight_sum - expected).max())
    print(
        f"16 members, t={spec.threshold}: max abs error {crypto_error:.3g}, {error:.3g} after float32 output"
    )
    assert crypto_error <= 1e-5
    assert error <= 1e-5
