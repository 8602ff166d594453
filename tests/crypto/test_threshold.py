"""Key epochs, Shamir key shares in sealed boxes, t-of-n decryption shares and their combination."""

from __future__ import annotations

import dataclasses
import itertools
import os
import struct

import numpy as np
import pytest

from crypto import cbor, ckks, rns
from crypto import threshold as th
from crypto.ckks_params import DEFAULT_PARAMS
from crypto.decryption_shares import _scalar_mul
from crypto.envelope import EnvelopeCodec
from crypto.errors import (
    InvalidDecryptionShare,
    InvalidKeyShare,
    ProtocolError,
    SchemaError,
    SealedBoxError,
)
from crypto.identity import NodeId, NodeIdentity
from crypto.testing import round_binding, run_key_epoch

N = 8192
SPEC, IDS, KEYS = run_key_epoch(5, 3)
CTX = KEYS[0].context
BINDING = round_binding(SPEC.epoch_id)
RNG = np.random.default_rng(11)
LENGTH = N + 500  # two ciphertexts per contribution
VALUES = [RNG.uniform(-100, 100, LENGTH) for _ in range(3)]
WEIGHTS = [3.0, 5.0, 12.0]
CONTRIBUTIONS = [
    ckks.encrypt(CTX, KEYS[i].secret, BINDING, KEYS[i].me, v, w, sum(WEIGHTS))
    for i, (v, w) in enumerate(zip(VALUES, WEIGHTS, strict=True))
]
AGGREGATE = ckks.add(CONTRIBUTIONS)
EXPECTED_SUM = sum(w / sum(WEIGHTS) * v for v, w in zip(VALUES, WEIGHTS, strict=True))


def nodes(points: tuple[int, ...]) -> list[NodeId]:
    return [SPEC.members[p - 1] for p in points]


def shares_for(points: tuple[int, ...]) -> list[th.DecryptionShare]:
    return [th.make_decryption_share(KEYS[p - 1], AGGREGATE, nodes(points)) for p in points]


def raw_decrypt(plain: np.ndarray) -> np.ndarray:
    return CTX.decode(plain)[:LENGTH]


# -- key epoch ----------------------------------------------------------------------------------


def test_every_member_derives_the_same_collective_public_key() -> None:
    assert len({k.public_key_digest for k in KEYS}) == 1
    crs = th.common_random_poly(CTX, SPEC.epoch_id)
    assert all(np.array_equal(k.public_key[1], crs) for k in KEYS)
    assert not np.array_equal(crs, th.common_random_poly(CTX, os.urandom(32)))


def test_dealer_shares_lie_on_one_polynomial_whose_value_at_zero_is_the_dealers_secret() -> None:
    # Interpolating any t members' shares of dealer i gives s_i; those secrets decrypt the aggregate.
    rebuilt = {}
    for dealer, keys in enumerate(KEYS):
        secrets = []
        for subset in [(1, 2, 3), (2, 4, 5), (1, 3, 4, 5)]:
            total = np.zeros_like(keys.secret)
            for p in subset:
                lam = th.lagrange_at_zero(p, subset, CTX.data_moduli)
                scaled = _scalar_mul(KEYS[p - 1].dealer_shares[dealer], lam, CTX.data_moduli)
                total = rns.add_mod(total, scaled, CTX.q_col)
            secrets.append(total)
        assert all(np.array_equal(s, keys.secret) for s in secrets)
        rebuilt[keys.me] = secrets[0]
    sums, weight = ckks.decrypt_with_secret(CTX, AGGREGATE, rebuilt)
    assert np.abs(sums - EXPECTED_SUM).max() < 1e-8  # one rescale rounding (2^-31) per contribution
    assert weight == pytest.approx(1.0, abs=1e-12)


def test_epoch_messages_travel_in_envelopes_within_their_size_limits() -> None:
    codec = EnvelopeCodec(b"c" * 32, th.THRESHOLD_MESSAGES)
    identities = [NodeIdentity.generate() for _ in range(3)]
    spec = th.EpochSpec(os.urandom(32), tuple(i.node_id for i in identities), 2)
    epochs = [th.KeyEpoch(spec, i, DEFAULT_PARAMS) for i in identities]
    commit_all(epochs)
    for sender, epoch in zip(identities, epochs, strict=True):
        for body in epoch.outgoing():
            envelope = codec.open(codec.seal(sender, body))  # raises if over the type's limit
            for receiver, other in zip(identities, epochs, strict=True):
                if receiver is sender or (
                    isinstance(body, th.SealedKeyShare) and body.recipient != receiver.node_id
                ):
                    continue
                other.receive(envelope.sender, envelope.body)
    assert len({e.finish().public_key_digest for e in epochs}) == 1


def commit_all(epochs: list[th.KeyEpoch]) -> None:
    commitments = {e.spec.members[k]: e.commitment for k, e in enumerate(epochs)}
    for epoch in epochs:
        assert epoch.expect_commitments(commitments) == ()


def test_outgoing_has_one_public_share_and_one_sealed_share_per_other_member() -> None:
    epochs = [th.KeyEpoch(SPEC, i, DEFAULT_PARAMS) for i in IDS]
    epoch = epochs[0]
    out = epoch.outgoing()
    assert [type(b) for b in out] == [th.PublicKeyShare] + [th.SealedKeyShare] * 4
    assert [b.recipient for b in out[1:]] == list(SPEC.members[1:])  # type: ignore[union-attr]


def fresh_epoch(index: int = 0) -> tuple[th.KeyEpoch, list[th.KeyEpoch]]:
    epochs = [th.KeyEpoch(SPEC, i, DEFAULT_PARAMS) for i in IDS]
    commit_all(epochs)
    return epochs[index], epochs


def sealed_for(epoch: th.KeyEpoch, recipient: NodeId) -> th.SealedKeyShare:
    return next(b for b in epoch.outgoing() if isinstance(b, th.SealedKeyShare) and b.recipient == recipient)


def public_of(epoch: th.KeyEpoch) -> th.PublicKeyShare:
    return next(b for b in epoch.outgoing() if isinstance(b, th.PublicKeyShare))


def test_finish_waits_for_every_message() -> None:
    epochs = [th.KeyEpoch(SPEC, i, DEFAULT_PARAMS) for i in IDS]
    commit_all(epochs)
    me = epochs[0]
    assert me.missing() == SPEC.members[1:]
    with pytest.raises(th.EpochIncomplete):
        me.finish()
    for sender, epoch in zip(IDS[1:], epochs[1:], strict=True):
        me.receive(sender.node_id, public_of(epoch))
    assert me.missing() == SPEC.members[1:]  # sealed shares still missing
    for sender, epoch in zip(IDS[1:], epochs[1:], strict=True):
        me.receive(sender.node_id, sealed_for(epoch, IDS[0].node_id))
        me.receive(sender.node_id, sealed_for(epoch, IDS[0].node_id))  # a replay is harmless
    assert me.missing() == ()
    me.finish()


def test_sealed_shares_cannot_be_opened_by_another_member() -> None:
    dealer, _ = fresh_epoch(0)
    box = sealed_for(dealer, IDS[1].node_id)
    for other in IDS[2:]:
        with pytest.raises(SealedBoxError):
            other.unseal(box.box)
    # Member 2 receiving member 1's box, relabelled as its own, cannot open it either.
    _, epochs = fresh_epoch(0)
    with pytest.raises(SealedBoxError):
        epochs[2].receive(IDS[0].node_id, dataclasses.replace(box, recipient=IDS[2].node_id))
    # And as addressed, it is refused before any decryption attempt.
    with pytest.raises(InvalidKeyShare, match="not addressed"):
        epochs[2].receive(IDS[0].node_id, box)
    IDS[1].unseal(box.box)  # the recipient can


def test_a_forwarded_box_is_refused() -> None:
    dealer, epochs = fresh_epoch(0)
    box = sealed_for(dealer, IDS[2].node_id)
    # Member 1 re-sends member 0's box to member 2 as if it were its own share.
    with pytest.raises(InvalidKeyShare, match="dealer"):
        epochs[2].receive(IDS[1].node_id, box)


def seal_to_1(plaintext: bytes) -> bytes:
    return IDS[1].node_id.seal(plaintext)


def test_key_epoch_rejects_bad_messages_without_changing_state() -> None:
    dealer, epochs = fresh_epoch(0)
    me = epochs[1]
    public = public_of(dealer)
    sealed = sealed_for(dealer, IDS[1].node_id)
    stranger = NodeIdentity.generate()
    bad_coefficient = np.zeros((3, N), dtype=np.uint64)
    bad_coefficient[2, 7] = np.uint64(CTX.seal.key_moduli[2])
    forged_content = th.KeyShareContent(
        SPEC.epoch_id, IDS[0].node_id, IDS[1].node_id, b"\0" * 10, b"", bytes(64), b""
    )
    cases: list[tuple[NodeId, object, type[ProtocolError]]] = [
        (stranger.node_id, public, InvalidKeyShare),
        (IDS[0].node_id, dataclasses.replace(public, epoch=os.urandom(32)), InvalidKeyShare),
        (IDS[0].node_id, dataclasses.replace(public, share=public.share[:-1]), InvalidKeyShare),
        (IDS[0].node_id, dataclasses.replace(public, share=ckks.pack60(bad_coefficient)), InvalidKeyShare),
        (IDS[0].node_id, dataclasses.replace(sealed, epoch=os.urandom(32)), InvalidKeyShare),
        (IDS[0].node_id, dataclasses.replace(sealed, box=sealed.box[:-1] + b"x"), SealedBoxError),
        (IDS[0].node_id, dataclasses.replace(sealed, box=IDS[1].node_id.seal(b"not cbor")), ProtocolError),
        (IDS[0].node_id, dataclasses.replace(sealed, box=seal_to_1(cbor.dumps({"x": 1}))), SchemaError),
        (
            IDS[0].node_id,
            dataclasses.replace(sealed, box=IDS[1].node_id.seal(cbor.dumps_dataclass(forged_content))),
            InvalidKeyShare,
        ),
        (IDS[1].node_id, sealed, InvalidKeyShare),  # "from" ourselves
        (IDS[0].node_id, th.EpochSpec(SPEC.epoch_id, SPEC.members, 3), InvalidKeyShare),  # not a message
    ]
    for sender, body, error in cases:
        with pytest.raises(error):
            me.receive(sender, body)
    assert me.missing() == SPEC.members[:1] + SPEC.members[2:]  # nothing was accepted
    me.receive(IDS[0].node_id, public)
    other_public = public_of_unchecked(th.KeyEpoch(SPEC, IDS[0], DEFAULT_PARAMS))
    with pytest.raises(InvalidKeyShare, match="commitment"):  # a second, different share
        me.receive(IDS[0].node_id, other_public)


def test_epoch_spec_validation() -> None:
    members = tuple(i.node_id for i in IDS)
    for epoch_id, mem, t in [
        (b"x" * 31, members, 3),
        (b"x" * 32, members, 0),
        (b"x" * 32, members, 6),
        (b"x" * 32, members + members[:1], 3),
        (b"x" * 32, (), 1),
    ]:
        with pytest.raises(ValueError):  # noqa: PT011
            th.EpochSpec(epoch_id, mem, t)
    assert [th.default_threshold(n) for n in (1, 2, 3, 4, 5, 16)] == [1, 2, 2, 3, 3, 9]
    with pytest.raises(ValueError, match="not a member"):
        th.KeyEpoch(SPEC, NodeIdentity.generate(), DEFAULT_PARAMS)


def test_epoch_keys_export_and_import() -> None:
    data = KEYS[2].export_secret()
    restored = th.EpochKeys.import_secret(data, DEFAULT_PARAMS)
    assert restored.public_key_digest == KEYS[2].public_key_digest
    assert np.array_equal(restored.secret, KEYS[2].secret)
    assert np.array_equal(restored.dealer_shares, KEYS[2].dealer_shares)
    assert (restored.spec, restored.me) == (SPEC, SPEC.members[2])
    tampered = cbor.loads(data)
    assert isinstance(tampered, dict)
    tampered["epoch_id"] = os.urandom(32)  # the CRS no longer matches
    with pytest.raises(InvalidKeyShare):
        th.EpochKeys.import_secret(cbor.dumps(tampered), DEFAULT_PARAMS)
    stored = cbor.loads(data)
    assert isinstance(stored, dict)
    shares = stored["dealer_shares"]
    assert isinstance(shares, bytes)
    for field, value, match in [
        ("dealer_shares", shares[: len(shares) * 4 // 5], "dealer shares"),  # one member's missing
        ("dealer_shares", shares[:-1], "dealer shares"),
        ("secret", b"\0" * 10, "stored secret"),
        ("version", 1, "version"),  # the format that kept only the summed key share
    ]:
        with pytest.raises(InvalidKeyShare, match=match):
            th.EpochKeys.import_secret(cbor.dumps({**stored, field: value}), DEFAULT_PARAMS)


# -- t-of-n decryption ----------------------------------------------------------------------------


def test_every_t_subset_decrypts_and_larger_sets_too() -> None:
    points = range(1, 6)
    subsets = [*itertools.combinations(points, 3), *itertools.combinations(points, 4), (1, 2, 3, 4, 5)]
    for subset in subsets:
        sums, weight = th.combine_shares(SPEC, AGGREGATE, shares_for(subset))
        assert np.abs(sums - EXPECTED_SUM).max() < 1e-5, subset
        assert weight == pytest.approx(1.0, abs=1e-10), subset


def test_combining_is_deterministic_and_order_independent() -> None:
    shares = shares_for((1, 3, 5))
    first = th.combine_shares(SPEC, AGGREGATE, shares)
    second = th.combine_shares(SPEC, AGGREGATE, shares[::-1])
    assert np.array_equal(first[0], second[0])
    assert first[1] == second[1]


def test_fewer_than_t_shares_do_not_decrypt() -> None:
    shares = shares_for((1, 2, 4))
    for pair in itertools.combinations(shares, 2):
        with pytest.raises(th.InsufficientShares):
            th.combine_shares(SPEC, AGGREGATE, list(pair))
    with pytest.raises(th.InsufficientShares):
        th.combine_shares(SPEC, AGGREGATE, [])
    with pytest.raises(th.DecryptionRefused, match="threshold"):
        th.make_decryption_share(KEYS[0], AGGREGATE, nodes((1, 2)))
    # The mathematics agrees: t-1 members interpolating as a 2-set get noise, not the sum.
    c = AGGREGATE.batch(0, AGGREGATE.chunks)
    lowered = dataclasses.replace(SPEC, threshold=2)
    for pair in itertools.combinations(range(1, 6), 2):
        plain = c
        for p in pair:
            k = KEYS[p - 1]
            keys = th.EpochKeys(CTX, lowered, k.me, k.public_key, k.secret, k.dealer_shares)
            d = th.make_decryption_share(keys, AGGREGATE, nodes(pair))
            plain = rns.add_mod(plain, d.batch(0, AGGREGATE.chunks), CTX.rescaled_col)
        assert np.abs(raw_decrypt(plain) - EXPECTED_SUM).max() > 1e6


def test_a_share_for_one_decrypt_set_does_not_combine_with_another() -> None:
    t_one, t_two = (1, 2, 3), (1, 4, 5)
    mixed = [shares_for(t_two)[0], *shares_for(t_one)[1:]]  # member 1's share made for the other set
    with pytest.raises(InvalidDecryptionShare, match="decrypt set"):
        th.combine_shares(SPEC, AGGREGATE, mixed)
    # Even with the labels stripped, its Lagrange coefficient is wrong for this set: noise.
    c = AGGREGATE.batch(0, AGGREGATE.chunks)
    plain = c
    for share in mixed:
        plain = rns.add_mod(plain, share.batch(0, AGGREGATE.chunks), CTX.rescaled_col)
    assert np.abs(raw_decrypt(plain) - EXPECTED_SUM).max() > 1e6
    # The honest combination of the same set still works.
    plain = c
    for share in shares_for(t_one):
        plain = rns.add_mod(plain, share.batch(0, AGGREGATE.chunks), CTX.rescaled_col)
    assert np.abs(raw_decrypt(plain) - EXPECTED_SUM).max() < 1e-5


def test_shares_for_another_aggregate_or_epoch_or_repeated_are_refused() -> None:
    other = ckks.add(CONTRIBUTIONS[:2])
    shares = shares_for((1, 2, 3))
    foreign = th.make_decryption_share(KEYS[0], other, nodes((1, 2, 3)))
    with pytest.raises(InvalidDecryptionShare, match="another aggregate"):
        th.combine_shares(SPEC, AGGREGATE, [foreign, *shares[1:]])
    other_spec = dataclasses.replace(SPEC, epoch_id=os.urandom(32))
    with pytest.raises(InvalidDecryptionShare, match="another epoch"):
        th.combine_shares(other_spec, AGGREGATE, shares)
    with pytest.raises(InvalidDecryptionShare, match="same member"):
        th.combine_shares(SPEC, AGGREGATE, [shares[0], shares[0], shares[1]])


def test_a_share_removes_exactly_the_masks_the_aggregate_names() -> None:
    """Relabelling the aggregate (c0 of three contributions, header naming two) gets shares that
    leave the third mask in: the sum decodes to noise, nobody's update comes out."""
    two = ckks.add(CONTRIBUTIONS[:2])
    seeds = dict(zip(two.contributors, two.header.seeds, strict=True))
    relabelled = ckks.EncryptedVector.from_residues(
        CTX, LENGTH, BINDING, seeds, [AGGREGATE.batch(0, AGGREGATE.chunks)]
    )
    shares = [th.make_decryption_share(KEYS[p - 1], relabelled, nodes((1, 2, 3))) for p in (1, 2, 3)]
    sums, _ = th.combine_shares(SPEC, relabelled, shares)
    assert np.abs(sums - EXPECTED_SUM).min() > 1e3


def test_make_share_refuses_aggregates_of_another_epoch_or_of_outsiders() -> None:
    other_spec, _, other_keys = run_key_epoch(3, 2)
    foreign = ckks.encrypt(
        CTX, other_keys[0].secret, round_binding(other_spec.epoch_id), other_keys[0].me, VALUES[0], 1.0, 1.0
    )
    with pytest.raises(th.DecryptionRefused, match="another key epoch"):
        th.make_decryption_share(KEYS[0], foreign, nodes((1, 2, 3)))
    outsider = ckks.encrypt(CTX, other_keys[0].secret, BINDING, other_keys[0].me, VALUES[0], 1.0, 1.0)
    with pytest.raises(th.DecryptionRefused, match="outside the epoch"):
        th.make_decryption_share(KEYS[0], ckks.add([CONTRIBUTIONS[0], outsider]), nodes((1, 2, 3)))


def test_make_share_refuses_bad_decrypt_sets() -> None:
    with pytest.raises(th.DecryptionRefused, match="not in the decrypt set"):
        th.make_decryption_share(KEYS[0], AGGREGATE, nodes((2, 3, 4)))
    with pytest.raises(th.DecryptionRefused, match="distinct members"):
        th.make_decryption_share(KEYS[0], AGGREGATE, [*nodes((1, 2)), NodeIdentity.generate().node_id])
    with pytest.raises(th.DecryptionRefused, match="distinct members"):
        th.make_decryption_share(KEYS[0], AGGREGATE, nodes((1, 2, 2)))


def test_shares_are_smudged_and_fresh() -> None:
    a, b = (th.make_decryption_share(KEYS[0], AGGREGATE, nodes((1, 2, 3))) for _ in range(2))
    assert a.to_bytes() != b.to_bytes()
    diff = rns.sub_mod(a.batch(0, 1), b.batch(0, 1), CTX.rescaled_col)
    # Difference of two smudges at scale 2^-90: sigma 2^-22 each, so std 2^-21.5 and a max
    # over 8192 coefficients near 2^-19.5 (Gaussian tails: the uniform one stopped at 2^-21).
    noise = CTX.decode(diff)
    assert 2.0**-24 < np.abs(noise).max() < 2.0**-18


# -- decryption share wire format ---------------------------------------------------------------

SHARE = shares_for((1, 2, 3))[0]
SHARE_WIRE = SHARE.to_bytes()


def _share_with_header(**changes: object) -> bytes:
    head_len = struct.unpack_from(">I", SHARE_WIRE, 4)[0]
    fields = cbor.loads(SHARE_WIRE[8 : 8 + head_len])
    assert isinstance(fields, dict)
    fields.update(changes)  # type: ignore[arg-type]
    head = cbor.dumps(fields)
    return SHARE_WIRE[:4] + struct.pack(">I", len(head)) + head + SHARE_WIRE[8 + head_len :]


def test_decryption_share_round_trips_and_is_7_5_bytes_per_parameter() -> None:
    decoded = th.DecryptionShare.from_bytes(CTX, SHARE_WIRE)
    assert decoded.to_bytes() == SHARE_WIRE
    assert decoded.header == SHARE.header
    head_len = struct.unpack_from(">I", SHARE_WIRE, 4)[0]
    assert (len(SHARE_WIRE) - 8 - head_len) / (SHARE.header.chunks * N) == 7.5  # one residue mod q1


@pytest.mark.parametrize(
    "changes",
    [
        {"version": 9},
        {"parms_id": b"\0" * 32},
        {"epoch": b"\0" * 31},
        {"aggregate": b"\0" * 31},
        {"decrypt_set": []},
        {"decrypt_set": [2, 1, 3]},
        {"decrypt_set": [0, 1, 2]},
        {"decrypt_set": [2, 3, 4]},  # maker not in it
        {"length": 0},
        {"length": LENGTH + N},
        {"chunks": 1},
        {"member": "1"},
    ],
)
def test_decryption_share_header_tampering_is_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidDecryptionShare):
        th.DecryptionShare.from_bytes(CTX, _share_with_header(**changes))


@pytest.mark.parametrize("cut", [0, 5, 30, len(SHARE_WIRE) // 3, len(SHARE_WIRE) - 1])
def test_truncated_or_extended_decryption_shares_are_rejected(cut: int) -> None:
    with pytest.raises(InvalidDecryptionShare):
        th.DecryptionShare.from_bytes(CTX, SHARE_WIRE[:cut])
    with pytest.raises(InvalidDecryptionShare):
        th.DecryptionShare.from_bytes(CTX, SHARE_WIRE + b"\0" * 15)


@pytest.mark.parametrize("offset", [0, 1, 2**59])
def test_decryption_share_with_out_of_range_coefficient_is_rejected(offset: int) -> None:
    residues = SHARE.batch(0, SHARE.header.chunks).copy()
    residues[1, 99] = np.uint64(min(CTX.data_moduli[1] + offset, 2**60 - 1))  # shares live mod q1
    forged = ckks.encode_blob(b"SND1", SHARE.header, [ckks.pack60(residues)])
    with pytest.raises(InvalidDecryptionShare, match="not below its prime"):
        th.DecryptionShare.from_bytes(CTX, forged)


def test_decrypt_set_beyond_the_epoch_is_refused_when_combining() -> None:
    header = dataclasses.replace(SHARE.header, decrypt_set=(1, 2, 9))
    forged = th.DecryptionShare.from_bytes(
        CTX, ckks.encode_blob(b"SND1", header, [ckks.pack60(SHARE.batch(0, header.chunks))])
    )
    with pytest.raises(InvalidDecryptionShare, match="outside the epoch"):
        th.combine_shares(SPEC, AGGREGATE, [forged])
    small = dataclasses.replace(SHARE.header, decrypt_set=(1, 2))
    forged = th.DecryptionShare.from_bytes(
        CTX, ckks.encode_blob(b"SND1", small, [ckks.pack60(SHARE.batch(0, small.chunks))])
    )
    with pytest.raises(InvalidDecryptionShare, match="smaller than the threshold"):
        th.combine_shares(SPEC, AGGREGATE, [forged])


def test_public_shares_must_match_their_commitments() -> None:
    epochs = [th.KeyEpoch(SPEC, i, DEFAULT_PARAMS) for i in IDS]
    honest = {SPEC.members[k]: e.commitment for k, e in enumerate(epochs)}
    me = epochs[1]
    # A share that arrives before the commitments is held, then dropped if it does not match.
    # member 0 publishes a share other than the committed one
    rogue = th.KeyEpoch(SPEC, IDS[0], DEFAULT_PARAMS)
    me.receive(IDS[0].node_id, public_of_unchecked(rogue))
    me.receive(IDS[2].node_id, public_of_unchecked(epochs[2]))
    with pytest.raises(InvalidKeyShare, match="conflicting"):  # equivocation before the ledger decides
        me.receive(IDS[0].node_id, public_of_unchecked(epochs[0]))
    assert me.expect_commitments(honest) == (IDS[0].node_id,)
    assert IDS[0].node_id in me.missing()
    # After the commitments are fixed, a mismatching share is refused outright.
    with pytest.raises(InvalidKeyShare, match="commitment"):
        me.receive(IDS[0].node_id, public_of_unchecked(rogue))
    me.receive(IDS[0].node_id, public_of_unchecked(epochs[0]))  # the committed one is accepted
    assert me.expect_commitments(honest) == ()  # idempotent with the same ledger data


def test_commitments_are_checked_against_the_epoch() -> None:
    epochs = [th.KeyEpoch(SPEC, i, DEFAULT_PARAMS) for i in IDS]
    honest = {SPEC.members[k]: e.commitment for k, e in enumerate(epochs)}
    me = epochs[0]
    with pytest.raises(ValueError, match="every member"):
        me.expect_commitments({m: c for m, c in honest.items() if m != SPEC.members[3]})
    with pytest.raises(ValueError, match="not ours"):
        me.expect_commitments({**honest, SPEC.members[0]: os.urandom(32)})
    me.expect_commitments(honest)
    with pytest.raises(ValueError, match="already fixed"):
        me.expect_commitments({**honest, SPEC.members[2]: os.urandom(32)})
    # The commitment binds the member: the same share under another member's name differs.
    public = public_of_unchecked(epochs[1])
    share, prss_commitments = public.share, public.prss_commitments
    commitment = epochs[1].commitment
    assert th.public_share_commitment(SPEC.epoch_id, SPEC.members[1], share, prss_commitments) == commitment
    assert th.public_share_commitment(SPEC.epoch_id, SPEC.members[2], share, prss_commitments) != commitment


def public_of_unchecked(epoch: th.KeyEpoch) -> th.PublicKeyShare:
    """An epoch's public share, read even before its commitments are fixed (as an attacker could)."""
    return next(b for b in epoch._outgoing if isinstance(b, th.PublicKeyShare))
