"""Point shares with PRSS-shared smudging: honest merges, and Byzantine decryptors caught.

The attacks are the ones that pass today's `combine` (`tests/security/test_fuzz_decoders.py::
test_combine_with_one_hostile_share`, issue 20 attack 3): a share shifted on every
coefficient but the weight coefficient, a 1-unit shift, garbage, and colluders that shift
their points along a polynomial so that they agree with each other.
"""

from __future__ import annotations

import itertools
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest

from crypto import cbor, ckks, pointshare, prss
from crypto import robust_merge as rm
from crypto import secure_merge as sm
from crypto.ckks_params import DEFAULT_PARAMS
from crypto.errors import InvalidDecryptionShare, ProtocolError
from crypto.identity import NodeIdentity
from crypto.pointshare import PointShare
from crypto.rns import U64, add_mod_into, scalar_operand, shoup_mul
from crypto.testing import round_binding, run_key_epoch, run_prss_dealing
from crypto.threshold import DecryptionRefused, EpochKeys, EpochSpec, InsufficientShares, lagrange_at_zero

LENGTH = 3000  # one ciphertext chunk
CTX = ckks.context()
Q0, Q1 = CTX.data_moduli


@dataclass(frozen=True)
class Swarm:
    spec: EpochSpec
    keys: list[EpochKeys]
    prss: list[prss.PrssKeys]
    aggregate: bytes
    expected: np.ndarray
    points: list[bytes]

    @property
    def t(self) -> int:
        return self.spec.threshold

    @property
    def binding(self) -> ckks.RoundBinding:
        return round_binding(self.spec.epoch_id)


@cache
def swarm(n: int) -> Swarm:
    """A key epoch of n members (t = n // 2 + 1), all contributing, all publishing a point."""
    spec, _, keys = run_key_epoch(n)
    dealt = run_prss_dealing(spec)
    rng = np.random.default_rng(n)
    values = [rng.uniform(-1, 1, LENGTH).astype(np.float32) for _ in range(n)]
    weights = [float(w) for w in rng.integers(1, 10, n)]
    total = sum(weights)
    blobs = {
        k.me: sm.encrypt_update(k, v, w, total, binding=round_binding(spec.epoch_id))
        for k, v, w in zip(keys, values, weights, strict=True)
    }
    aggregate = sm.aggregate_contributions(
        blobs, length=LENGTH, binding=round_binding(spec.epoch_id), params=DEFAULT_PARAMS
    )
    expected = sum(w / total * v.astype(np.float64) for v, w in zip(values, weights, strict=True))
    points = [
        rm.make_point_share(
            k, p, aggregate, contributions=n, min_peers=2, binding=round_binding(spec.epoch_id)
        )
        for k, p in zip(keys, dealt, strict=True)
    ]
    return Swarm(spec, keys, dealt, aggregate, np.asarray(expected), points)


def tampered(blob: bytes, change: Callable[[U64], None]) -> bytes:
    """`blob` with its residues changed in place by `change` (header kept: a well-formed share)."""
    share = PointShare.from_bytes(CTX, blob)
    body = share.batch(0, share.header.chunks).copy()
    change(body)
    return ckks.encode_blob(blob[:4], share.header, [ckks.pack60(body)])


def shift(delta: int | list[int], *, skip_weight: bool = True) -> Callable[[U64], None]:
    """Add delta (mod each prime) to every coefficient, the weight coefficient left alone, as the
    attacker of issue 20 does so that the weight-sum check still passes."""

    def change(body: U64) -> None:
        for j, q in enumerate(CTX.data_moduli):
            d = delta[j] if isinstance(delta, list) else delta
            row = body[:, j, :].reshape(-1)
            keep = row[LENGTH] if skip_weight else None
            row[:] = (row + np.uint64(d % q)) % np.uint64(q)
            if keep is not None:
                row[LENGTH] = keep
            body[:, j, :] = row.reshape(body.shape[0], -1)

    return change


SHIFT = 1 << 83  # about 0.008 at scale 2^90


def test_honest_points_decode_to_todays_mean_within_precision() -> None:
    s = swarm(5)
    verdict = rm.combine_points(s.spec, s.aggregate, s.points)
    today = sm.combine(
        s.spec,
        s.aggregate,
        [
            sm.decryption_share(
                k,
                s.aggregate,
                list(s.spec.members[: s.t]),
                contributions=5,
                min_peers=2,
                binding=round_binding(s.spec.epoch_id),
            )
            for k in s.keys[: s.t]
        ],
        params=DEFAULT_PARAMS,
    )
    assert verdict.wrong == ()
    assert verdict.decoding_set == (1, 2, 3)
    assert verdict.merged.weight_sum == pytest.approx(1.0, abs=1e-9)
    assert np.abs(verdict.merged.mean - s.expected).max() < 1e-5
    assert np.abs(verdict.merged.mean - today.mean).max() < 1e-5
    assert verdict.checked == tuple(
        (k + 1, PointShare.from_bytes(CTX, p).digest()) for k, p in enumerate(s.points)
    )


def test_points_are_deterministic_and_bound_to_their_aggregate() -> None:
    s = swarm(5)
    again = rm.make_point_share(
        s.keys[2], s.prss[2], s.aggregate, contributions=5, min_peers=2, binding=s.binding
    )
    assert again == s.points[2]  # asking twice releases nothing new
    blob = PointShare.from_bytes(CTX, again)
    assert blob.header.member == 3
    assert len(again) - len(s.aggregate) > 0
    other = swarm(7)  # another epoch's aggregate: refused, not decrypted
    with pytest.raises(DecryptionRefused, match="another key epoch"):
        rm.make_point_share(
            s.keys[0], s.prss[0], other.aggregate, contributions=7, min_peers=2, binding=other.binding
        )
    with pytest.raises(InvalidDecryptionShare, match="another epoch"):
        rm.combine_points(s.spec, s.aggregate, [*s.points[:4], other.points[4]])


def test_an_aggregate_with_the_same_masks_gets_the_same_point_body() -> None:
    """A leader that changes c0 and asks again gets a point of another aggregate (header) with
    the same body: the noise is keyed by the masks, so no second noisy copy of y_j exists."""
    s = swarm(5)
    vector = ckks.EncryptedVector.from_bytes(CTX, s.aggregate)
    c0 = vector.batch(0, vector.chunks).copy()
    c0[0, 0] = (c0[0, 0] + np.uint64(1)) % np.uint64(Q1)
    seeds = dict(zip(vector.contributors, vector.header.seeds, strict=True))
    other = ckks.EncryptedVector.from_residues(CTX, LENGTH, vector.binding, seeds, [c0]).to_bytes()
    assert other != s.aggregate
    point = rm.make_point_share(s.keys[1], s.prss[1], other, contributions=5, min_peers=2, binding=s.binding)
    first, second = PointShare.from_bytes(CTX, s.points[1]), PointShare.from_bytes(CTX, point)
    assert first.header.aggregate != second.header.aggregate
    assert np.array_equal(first.batch(0, 1), second.batch(0, 1))


def test_an_honest_member_refuses_too_few_contributions_or_foreign_prss_keys() -> None:
    s = swarm(5)
    with pytest.raises(DecryptionRefused, match="at least 4"):  # t + 1 = 4
        rm.make_point_share(
            s.keys[0], s.prss[0], s.aggregate, contributions=3, min_peers=2, binding=s.binding
        )
    with pytest.raises(DecryptionRefused, match="ledger committed 4"):
        rm.make_point_share(
            s.keys[0], s.prss[0], s.aggregate, contributions=4, min_peers=2, binding=s.binding
        )
    with pytest.raises(DecryptionRefused, match="PRSS keys"):
        rm.make_point_share(
            s.keys[0], s.prss[1], s.aggregate, contributions=5, min_peers=2, binding=s.binding
        )


def test_any_t_agreeing_points_give_a_bit_identical_merge() -> None:
    s = swarm(5)
    means = {
        rm.combine_points(
            s.spec, s.aggregate, [s.points[k - 1] for k in subset], max_faulty=0
        ).merged.mean.tobytes()
        for subset in itertools.combinations(range(1, 6), s.t)
    }
    assert len(means) == 1


def test_a_shift_that_passes_todays_combine_is_detected_at_n4() -> None:
    s = swarm(4)  # t = 3: one spare point detects but cannot name
    bad = list(s.points)
    bad[1] = tampered(bad[1], shift(SHIFT))
    with pytest.raises(rm.WrongShareDetected) as caught:
        rm.combine_points(s.spec, s.aggregate, bad)
    assert caught.value.points == (1, 2, 3, 4)
    assert caught.value.share_digests[1] == PointShare.from_bytes(CTX, bad[1]).digest()


@pytest.mark.parametrize(("n", "culprit"), [(5, 2), (5, 5), (7, 1), (7, 4)])
def test_a_shifted_share_is_named_and_excluded(n: int, culprit: int) -> None:
    s = swarm(n)
    honest = rm.combine_points(s.spec, s.aggregate, s.points)
    bad = list(s.points)
    bad[culprit - 1] = tampered(bad[culprit - 1], shift(SHIFT))
    verdict = rm.combine_points(s.spec, s.aggregate, bad)
    assert verdict.wrong == (
        rm.WrongShare(
            culprit, s.spec.members[culprit - 1], PointShare.from_bytes(CTX, bad[culprit - 1]).digest()
        ),
    )
    assert culprit not in verdict.decoding_set
    assert verdict.merged.mean.tobytes() == honest.merged.mean.tobytes()
    assert verdict.merged.weight_sum == honest.merged.weight_sum


def test_a_one_unit_shift_of_one_coefficient_is_caught() -> None:
    s = swarm(5)

    def one_unit(body: U64) -> None:
        body[0, :, 7] = (body[0, :, 7] + np.uint64(1)) % np.array([Q0, Q1], dtype=np.uint64)

    bad = list(s.points)
    bad[3] = tampered(bad[3], one_unit)
    assert [w.point for w in rm.combine_points(s.spec, s.aggregate, bad).wrong] == [4]
    only_q1 = list(s.points)  # an error in one residue only (1 * q0 as an integer)
    only_q1[0] = tampered(only_q1[0], shift([0, 1]))
    assert [w.point for w in rm.combine_points(s.spec, s.aggregate, only_q1).wrong] == [1]


def test_random_garbage_is_caught() -> None:
    s = swarm(5)
    rng = np.random.default_rng(11)

    def garbage(body: U64) -> None:
        for j, q in enumerate(CTX.data_moduli):
            body[:, j, :] = rng.integers(0, q, body[:, j, :].shape, dtype=np.uint64)

    bad = list(s.points)
    bad[2] = tampered(bad[2], garbage)
    assert [w.point for w in rm.combine_points(s.spec, s.aggregate, bad).wrong] == [3]


def forged_along(s: Swarm, cheaters: tuple[int, ...], fixed: tuple[int, ...]) -> list[bytes]:
    """Colluders add ``delta * Z(x)`` with Z of degree t-1, ``Z(0) = 1``, zero on the honest points
    `fixed`: their points and those stay on one polynomial whose merge is shifted by delta."""
    bad = list(s.points)
    for x in cheaters:
        z = [prss.vanishing_at(fixed, x, q) for q in CTX.data_moduli]
        bad[x - 1] = tampered(
            bad[x - 1], shift([SHIFT * zj % q for zj, q in zip(z, CTX.data_moduli, strict=True)])
        )
    return bad


def test_two_colluding_wrong_shares_at_n7_are_detected() -> None:
    s = swarm(7)  # t = 4, default max_faulty = 1: a merge needs 5 points on one polynomial
    honest = rm.combine_points(s.spec, s.aggregate, s.points)
    # Two wrong shares that do not coordinate: the 5 honest points are the only 5 that agree.
    independent = list(s.points)
    for x in (2, 7):
        independent[x - 1] = tampered(independent[x - 1], shift(SHIFT + x))
    verdict = rm.combine_points(s.spec, s.aggregate, independent)
    assert [w.point for w in verdict.wrong] == [2, 7]
    assert verdict.merged.mean.tobytes() == honest.merged.mean.tobytes()
    # Their best move: agree with each other and 3 honest points (5 of 7, as many as the honest
    # polynomial has): two candidate polynomials, so nothing is accepted and nobody is framed.
    with pytest.raises(rm.WrongShareDetected):
        rm.combine_points(s.spec, s.aggregate, forged_along(s, (2, 7), (1, 3, 4)))


def test_more_colluders_than_max_faulty_are_refused_when_max_faulty_covers_them() -> None:
    """n = 5, t = 3: two colluders (t - 1) agree with two honest points, 4 of 5. The default
    max_faulty = 1 trusts 4 agreeing points, so this forgery is the documented limit; with
    max_faulty = 2 (every t - 1 coalition) the same points are refused."""
    s = swarm(5)
    bad = forged_along(s, (4, 5), (1, 2))
    with pytest.raises(rm.WrongShareDetected):
        rm.combine_points(s.spec, s.aggregate, bad, max_faulty=2)
    fooled = rm.combine_points(s.spec, s.aggregate, bad)  # beyond the default's assumption
    assert [w.point for w in fooled.wrong] == [3]


def test_t_plus_one_points_detect_but_cannot_name() -> None:
    s = swarm(5)
    bad = [s.points[k] for k in range(4)]  # t + 1 = 4 points, one of them wrong
    bad[1] = tampered(bad[1], shift(SHIFT))
    with pytest.raises(rm.WrongShareDetected, match="none can be named"):
        rm.combine_points(s.spec, s.aggregate, bad)


def test_fewer_than_t_plus_one_points_are_refused() -> None:
    s = swarm(5)
    with pytest.raises(rm.UncheckablePoints, match="nothing can be checked"):
        rm.combine_points(s.spec, s.aggregate, s.points[:3])
    with pytest.raises(InsufficientShares):
        rm.combine_points(s.spec, s.aggregate, s.points[:2])
    # Exactly t, unchecked, only if the caller says so.
    unchecked = rm.combine_points(s.spec, s.aggregate, s.points[:3], max_faulty=0)
    assert np.abs(unchecked.merged.mean - s.expected).max() < 1e-5
    with pytest.raises(InvalidDecryptionShare, match="two point shares of point 1"):
        rm.combine_points(s.spec, s.aggregate, [s.points[0], s.points[0], *s.points[1:]])


# -- PRSS -----------------------------------------------------------------------------------


def spec_of(n: int, t: int | None = None) -> EpochSpec:
    ids = tuple(NodeIdentity.generate().node_id for _ in range(n))
    return EpochSpec(bytes(32), ids, t if t is not None else n // 2 + 1)


@pytest.mark.parametrize("n", [4, 5, 7, 10])
def test_any_t_minus_1_members_miss_exactly_the_key_of_their_own_set(n: int) -> None:
    spec = spec_of(n)
    keys = run_prss_dealing(spec)
    t = spec.threshold
    everything = set(prss.prss_subsets(n, t))
    for coalition in itertools.combinations(range(1, n + 1), t - 1):
        known = {subset for k in coalition for subset, _ in keys[k - 1].keys}
        assert everything - known == {coalition}
    holders = {subset: {k.point for k in keys if subset in dict(k.keys)} for subset in everything}
    assert all(holders[a] == set(prss.key_holders(a, n)) for a in everything)
    for a in everything:  # and all holders got the same key
        assert len({dict(keys[x - 1].keys)[a] for x in holders[a]}) == 1


def test_a_key_that_does_not_match_its_commitment_is_refused_naming_the_dealer() -> None:
    spec = spec_of(5)
    dealt = {m: prss.deal_keys(spec, m) for m in spec.members}
    commitments = {d.subset: d.commitment(spec.epoch_id) for ds in dealt.values() for d in ds}
    dealer, recipient = spec.members[0], spec.members[3]
    collector = prss.PrssKeyCollector(spec, recipient, dealt[recipient], commitments)
    key = next(d for d in dealt[dealer] if 4 in d.recipients)
    with pytest.raises(prss.InvalidPrssKey, match=f"from {dealer.short} does not match its commitment"):
        collector.receive(dealer, key.subset, bytes(32))
    with pytest.raises(prss.InvalidPrssKey, match=f"from {spec.members[1].short} .*not its key"):
        collector.receive(spec.members[1], key.subset, key.key)  # a key it does not deal
    collector.receive(dealer, key.subset, key.key)
    assert key.subset not in collector.missing()
    with pytest.raises(ValueError, match="missing"):
        collector.finish()


def test_too_many_prss_keys_are_refused_naming_the_limit() -> None:
    assert len(prss.prss_subsets(10, 6)) == 252
    with pytest.raises(prss.PrssTooLarge, match=r"C\(11, 5\) = 462 PRSS keys, above the limit of 252"):
        prss.prss_subsets(11, 6)
    big = spec_of(16)
    with pytest.raises(prss.PrssTooLarge, match="decryption committee"):
        prss.deal_keys(big, big.members[0])


def test_noise_points_lie_on_one_polynomial_of_degree_t_minus_1() -> None:
    spec = spec_of(5)
    keys = run_prss_dealing(spec)
    points = {k.point: prss.noise_point(CTX, k, bytes(range(32)), 0, 2) for k in keys}
    moduli = CTX.data_moduli
    at_zero = []
    for subset in itertools.combinations(range(1, 6), spec.threshold):
        total = np.zeros_like(points[1])
        for k in subset:
            operand, quotients = scalar_operand(lagrange_at_zero(k, subset, moduli), moduli)
            add_mod_into(total, shoup_mul(points[k], operand, quotients, CTX.q_col), CTX.q_col)
        at_zero.append(total)
    assert all(np.array_equal(at_zero[0], z) for z in at_zero)  # every t of the 5 agree
    assert at_zero[0].any()


def test_the_noise_sampler_is_pluggable() -> None:
    spec = spec_of(4)
    keys = run_prss_dealing(spec)

    def zero(stream: prss.XofStream, count: int, bits: int) -> prss.WideIntegers:
        stream.read(count)
        return np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.uint64), 32

    assert not prss.noise_point(CTX, keys[0], bytes(32), 0, 2, zero).any()
    high, low, shift_ = prss.DEFAULT_NOISE(prss.XofStream(b"seed"), 50_000, 68)
    again = prss.DEFAULT_NOISE(prss.XofStream(b"seed"), 50_000, 68)
    assert np.array_equal(high, again[0])
    assert np.array_equal(low, again[1])
    values = high.astype(np.float64) * 2.0**shift_ + low
    assert 0.95 < values.std() / 2.0**68 < 1.05  # the Lagrange shares' discrete Gaussian
    assert np.abs(values).max() < 14 * 2.0**68


def recording(sampler: prss.NoiseSampler, calls: list[prss.WideIntegers]) -> prss.NoiseSampler:
    def record(stream: prss.XofStream, count: int, bits: int) -> prss.WideIntegers:
        calls.append(sampler(stream, count, bits))
        return calls[-1]

    return record


def wide_shift0(stream: prss.XofStream, count: int, bits: int) -> prss.WideIntegers:
    """Noise of 40 bits with shift 0: no key's weight fits an exact int64 sum."""
    words = np.frombuffer(stream.read(8 * count), dtype="<u8").astype(np.int64) >> np.int64(24)
    return words, np.zeros(count, dtype=np.uint64), 0


def largest(stream: prss.XofStream, count: int, bits: int) -> prss.WideIntegers:
    """The largest noise a sampler may return, ``+-(2^(bits + 4) - 1)``: the int64 sums' worst case."""
    sign = np.frombuffer(stream.read(count), dtype=np.uint8) & 1
    high = np.where(sign, (1 << (bits - 44)) - 1, -(1 << (bits - 44)))  # X = high * 2^48 + low
    return high, np.where(sign, (1 << 48) - 1, 1).astype(np.uint64), 48


@pytest.mark.parametrize("sampler", [prss.DEFAULT_NOISE, wide_shift0, largest])
def test_the_noise_point_is_sum_z_a_times_r_a_mod_q_whatever_the_grouping(
    sampler: prss.NoiseSampler,
) -> None:
    """n = 7, t = 4, point 7: weights c_A adding up to more than one int64 group holds, so the
    keys are summed in several groups (with `wide_shift0` each reduced alone); the point must
    equal the per-key sum."""
    keys = run_prss_dealing(spec_of(7))[6]
    calls: list[prss.WideIntegers] = []
    point = prss.noise_point(CTX, keys, bytes(32), 0, 2, recording(sampler, calls))
    _, weights = prss.integer_weights(keys)
    assert sum(abs(w) for w in weights) > 1 << 14  # the default sampler's int64 room
    n = CTX.params.degree
    for j, q in enumerate(CTX.data_moduli):
        for chunk in range(2):
            expected = [0] * 16
            for k, (subset, _) in enumerate(keys.keys):
                high, low, shift_ = calls[2 * k + chunk]
                z = prss.vanishing_at(subset, keys.point, q)
                for i in range(16):
                    expected[i] += z * ((int(high[i]) << shift_) + int(low[i]))
            assert [int(v) for v in point[chunk, j, :16]] == [e % q for e in expected]
    assert len(calls) == 2 * len(keys.keys)
    assert all(len(c[0]) == n for c in calls)


def test_fingerprints_are_the_bilinear_forms_mod_q() -> None:
    """The int64 limb products give exactly ``alpha_f^T d beta_f mod q`` (checked with Python ints)."""
    s = swarm(4)
    shares = [PointShare.from_bytes(CTX, blob) for blob in s.points[:2]]
    vector = ckks.EncryptedVector.from_bytes(CTX, s.aggregate)
    seed = bytes(range(32))
    prints = pointshare._fingerprints(CTX, seed, vector.chunks, shares)
    forms = pointshare._forms(CTX, seed, vector.chunks)
    count = forms.alpha.shape[0]
    assert count * (pointshare.fingerprint_forms(CTX)[0] - 1) >= pointshare.FINGERPRINT_SECURITY
    for share in shares:
        body = share.batch(0, vector.chunks).astype(object)  # (k, L, N) Python ints
        expected = [
            int(forms.alpha[f].astype(object) @ (body[:, j, :] @ forms.beta[:, f].astype(object))) % q
            for f in range(count)
            for j, q in enumerate(CTX.data_moduli)
        ]
        assert prints[share.point] == expected


# -- decoding hostile blobs -------------------------------------------------------------------


def test_hostile_point_share_blobs_raise_only_protocol_errors() -> None:
    s = swarm(4)
    valid = s.points[0]
    (head_len,) = struct.unpack_from(">I", valid, 4)
    head_end = 8 + head_len
    rnd = random.Random(20)
    outcomes: dict[str, int] = {}
    for _ in range(1500):
        choice = rnd.randrange(6)
        if choice == 0:  # header fields replaced by other CBOR values
            header = cbor.loads(valid[8:head_end])
            assert isinstance(header, dict)
            field = rnd.choice(sorted(header))
            header[field] = rnd.choice([0, -1, 2**40, b"", b"x" * 32, "s", [], None, 3, header[field]])
            head = cbor.dumps(header)
            data = valid[:4] + struct.pack(">I", len(head)) + head + valid[head_end:]
        elif choice == 1:  # a mutated prefix or header byte
            out = bytearray(valid[:head_end])
            out[rnd.randrange(head_end)] = rnd.randrange(256)
            data = bytes(out) + valid[head_end:]
        elif choice == 2:  # a body byte set high (a residue above its prime, or a valid change)
            out = bytearray(valid)
            out[rnd.randrange(head_end, len(out))] |= 0xF0
            data = bytes(out)
        elif choice == 3:
            data = valid[: rnd.randrange(len(valid))]
        elif choice == 4:
            data = valid + rnd.randbytes(rnd.randrange(1, 40))
        else:
            data = rnd.randbytes(rnd.randrange(0, 200))
        try:
            share = PointShare.from_bytes(CTX, data)
        except ProtocolError as exc:  # anything else propagates and fails the test
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
            continue
        assert share.to_bytes() == data
        outcomes["accepted"] = outcomes.get("accepted", 0) + 1
    assert set(outcomes) <= {"InvalidDecryptionShare", "accepted"}, outcomes
    assert outcomes["InvalidDecryptionShare"] > 1000, outcomes
