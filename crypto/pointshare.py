"""Point shares: threshold decryption in which every share can be checked against the others.

Member j of a key epoch publishes, for an aggregate over contributors C,

    d_j = sum_{i in C} a_i * f_i(x_j) + g(x_j)   mod q0*q1   (coefficient form)

with ``f_i`` dealer i's Shamir polynomial of ``s_i`` (`crypto.threshold`), ``a_i``
contributor i's mask and g the aggregate's PRSS noise polynomial (`crypto.prss`). No
Lagrange coefficient, no decrypt set, no rescaling (15 bytes per parameter), and no
fresh randomness: the noise is keyed by the aggregate's masks (contributors and seeds,
`mask_digest`), not its bytes, so the body is a function of ``y_j`` alone. Asking twice,
or for another aggregate with the same masks (a leader changing c0), gives the same
body: a second release leaks nothing new, and no member ever multiplies its key material
by a coefficient of someone's choice (the re-share attack on
`threshold.make_decryption_share` needs two releases of one ``y_j`` under different
multipliers or noises).

Every honest point lies on one polynomial of degree t-1 whose value at 0 is
``a * s_C + sum_A r_A``, so any t points interpolate the decryption (the combiner applies
the Lagrange coefficients at 0, then rescales) and every further point is an exact
Reed-Solomon check. `check_points` compares random linear fingerprints of the points
(coefficients hashed from the aggregate and every share, so no share can be made to fit
them) and accepts a polynomial only when at least ``need = t + f`` points lie on it
(f = `max_faulty`) and no other polynomial has as many; every point off it is wrong and
named with its share digest. Otherwise it refuses (`WrongShareDetected`).

With e wrong shares among m published points, colluding as they like:

- a wrong polynomial reaches ``need`` points only through at least f + 1 wrong ones (it
  shares at most t - 1 points with the honest one), and it is the only one there only if
  the honest polynomial has fewer than ``need``, i.e. ``e > m - need``: so no merge is
  changed while ``e <= max(f, m - t - f)``;
- the honest polynomial is accepted and all e culprits named while ``e <= m - t - f``,
  unless more than f of them line up on one polynomial (then: refused, nobody named).

With m = t + 1 nothing can be named, and below ``t + f`` points (exactly t: nothing is
checked) the merge is refused unless the caller lowers f.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, final

import numpy as np

from .ckks import (
    BATCH_CHUNKS,
    F64,
    WIRE_VERSION,
    CkksContext,
    EncryptedVector,
    chunk_count,
    decode_blob,
    encode_blob,
    pack60,
    packed_size,
    split_weight,
    unpack60,
)
from .decryption_shares import check_share_header
from .errors import InvalidDecryptionShare
from .prss import DEFAULT_NOISE, NoiseSampler, PrssKeys, noise_point
from .rns import (
    I64,
    U64,
    add_mod,
    add_mod_into,
    column,
    scalar_operand,
    shoup_mul,
)
from .threshold import (
    DecryptionRefused,
    EpochKeys,
    EpochSpec,
    InsufficientShares,
    lagrange_at_zero,
)

_POINT_MAGIC: Final = b"SNP1"
_FINGERPRINT_DOMAIN: Final = b"swarmnode/point-fingerprint/v2\x00"
_MASKS_DOMAIN: Final = b"swarmnode/point-masks/v1\x00"
# A wrong point passes every fingerprint of its prime with probability <= 2^-FINGERPRINT_SECURITY.
FINGERPRINT_SECURITY: Final = 128
_LIMB_BITS: Final = 30
_ALPHA_PART_BITS: Final = 21  # a 63-bit limb sum in three parts, for exact int64 products
_FINGERPRINT_CHUNKS: Final = 8  # chunks per matrix product: 1 MB of limbs


class WrongShareDetected(InvalidDecryptionShare):
    """The published points do not lie on one polynomial, and which are wrong cannot be decided.

    `points` are all the points checked, `share_digests` their SHA-256 (aligned): anyone
    holding the same shares repeats the check and gets the same answer.
    """

    def __init__(self, message: str, points: tuple[int, ...], share_digests: tuple[bytes, ...]) -> None:
        super().__init__(message)
        self.points = points
        self.share_digests = share_digests


class UncheckablePoints(InsufficientShares):
    """Local: the points agree, but too few were published to rule out `max_faulty` wrong ones."""


@final
@dataclass(frozen=True, slots=True)
class PointShareHeader:
    version: int
    parms_id: bytes
    epoch: bytes
    aggregate: bytes  # SHA-256 of the aggregate ciphertext blob this point decrypts
    member: int  # the maker's Shamir point
    length: int
    chunks: int


def point_body_size(ctx: CkksContext, length: int) -> int:
    """Bytes of a point share's body: both data residues of every coefficient at 60 bits."""
    return packed_size(chunk_count(ctx.params, length) * len(ctx.data_moduli) * ctx.params.degree)


@final
class PointShare:
    """One member's point of an aggregate (a content-addressed blob).

    Wire: ``b"SNP1" | u32 header length | CBOR PointShareHeader | (chunks, 2, N)
    coefficient residues mod (q0, q1) packed at 60 bits`` (15 bytes per parameter).
    """

    __slots__ = ("_body", "_digest", "_wire", "context", "header")

    def __init__(self, ctx: CkksContext, header: PointShareHeader, wire: bytes, body: memoryview) -> None:
        self.context: Final = ctx
        self.header: Final = header
        self._wire = wire
        self._body = body
        self._digest: bytes | None = None

    @property
    def point(self) -> int:
        return self.header.member

    def to_bytes(self) -> bytes:
        return self._wire

    def digest(self) -> bytes:
        """SHA-256 of the blob: its content address and its name in evidence (hashed once)."""
        if self._digest is None:
            self._digest = hashlib.sha256(self._wire).digest()
        return self._digest

    def batch(self, start: int, stop: int) -> U64:
        """Chunks ``[start, stop)`` as ``(k, 2, N)`` residues (coefficient form)."""
        per_chunk = len(self.context.data_moduli) * self.context.params.degree
        raw = self._body[packed_size(start * per_chunk) : packed_size(stop * per_chunk)]
        return unpack60(raw, (stop - start) * per_chunk).reshape(stop - start, -1, self.context.params.degree)

    def batches(self) -> Iterator[tuple[int, U64]]:
        for start in range(0, self.header.chunks, BATCH_CHUNKS):
            yield start, self.batch(start, min(start + BATCH_CHUNKS, self.header.chunks))

    @classmethod
    def from_bytes(cls, ctx: CkksContext, data: bytes, *, check_body: bool = True) -> PointShare:
        """Decode and validate; raise `InvalidDecryptionShare` (only) on bad input.

        ``check_body=False`` checks the header and sizes but not that every residue is below
        its prime: for reading the header of a share that is combined (checked) later."""
        header, body = decode_blob(_POINT_MAGIC, PointShareHeader, data, InvalidDecryptionShare)
        check_share_header(
            ctx,
            header,
            "point share",
            maker_error=None
            if header.member >= 1
            else f"point share of point {header.member}: points start at 1",
        )
        expected = point_body_size(ctx, header.length)
        if len(body) != expected:
            raise InvalidDecryptionShare(f"point share body has {len(body)} bytes, expected {expected}")
        share = cls(ctx, header, data, body)
        for _, batch in share.batches() if check_body else ():
            ctx.check_residues(
                batch, ctx.q_col, InvalidDecryptionShare, f"point share of point {header.member}"
            )
        return share


def aggregate_digest(aggregate: EncryptedVector) -> bytes:
    return aggregate.digest()


def mask_digest(aggregate: EncryptedVector) -> bytes:
    """SHA-256 of what fixes ``y_j``: the round binding (masks are drawn under it) and every
    (contributor, mask seed) of the sum."""
    pairs = zip(aggregate.contributors, aggregate.header.seeds, strict=True)
    return hashlib.sha256(
        _MASKS_DOMAIN + aggregate.binding.digest + b"".join(c.public_key + seed for c, seed in pairs)
    ).digest()


def make_point_share(
    keys: EpochKeys, prss: PrssKeys, aggregate: EncryptedVector, sampler: NoiseSampler = DEFAULT_NOISE
) -> PointShare:
    """Our point of `aggregate`: deterministic in the keys and the aggregate.

    Removes the masks of exactly the aggregate's contributors (members of this epoch);
    `DecryptionRefused` if the aggregate or the PRSS keys are for another epoch or member.
    """
    spec, ctx = keys.spec, keys.context
    me = spec.point(keys.me)
    if aggregate.context.params != ctx.params:
        raise ValueError("aggregate is for other parameters")
    if aggregate.epoch != spec.epoch_id:
        raise DecryptionRefused("aggregate is for another key epoch")
    if not all(spec.is_member(c) for c in aggregate.contributors):
        raise DecryptionRefused("aggregate names a contributor outside the epoch")
    ours = (spec.epoch_id, len(spec.members), spec.threshold, me)
    if (prss.epoch_id, prss.members, prss.threshold, prss.point) != ours:
        raise DecryptionRefused("PRSS keys are for another epoch or member")
    operands = {
        c: (keys.dealer_shares[spec.point(c) - 1], keys.dealer_quotients[spec.point(c) - 1])
        for c in aggregate.contributors
    }
    masks = mask_digest(aggregate)
    header = PointShareHeader(
        WIRE_VERSION, ctx.parms_id, spec.epoch_id, aggregate_digest(aggregate), me, aggregate.length,
        aggregate.chunks,
    )  # fmt: skip

    def parts() -> Iterator[bytes]:
        for start in range(0, aggregate.chunks, BATCH_CHUNKS):
            stop = min(start + BATCH_CHUNKS, aggregate.chunks)
            point = ctx.to_coefficients(aggregate.masked_sum(start, stop, operands))
            add_mod_into(point, noise_point(ctx, prss, masks, start, stop, sampler), ctx.q_col)
            yield pack60(point)

    # Our own residues, each reduced below its prime: the body needs no second check.
    return PointShare.from_bytes(ctx, encode_blob(_POINT_MAGIC, header, parts()), check_body=False)


# -- checking and combining ---------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Decision:
    """What `check_points` decided: the t points to interpolate and the points that are wrong."""

    decoding_set: tuple[int, ...]
    wrong: tuple[int, ...]


def default_max_faulty(members: int, threshold: int) -> int:
    """f for a combine by default: ``max(1, floor((n - t) / 2))``.

    With all n points published, no merge is changed by up to ``ceil((n - t) / 2)`` wrong
    shares and up to ``n - t - f`` are named; f members may withhold and the other
    ``n - f >= t + f`` points still decide (n >= 5). At least 1, so that a single wrong
    share never passes unseen (at n = 4 that takes all four points).
    """
    return max(1, (members - threshold) // 2)


def validate_points(spec: EpochSpec, aggregate: EncryptedVector, shares: Sequence[PointShare]) -> None:
    """`InvalidDecryptionShare` naming the point if a share is for another epoch or aggregate,
    outside the epoch, or a second share of one point."""
    digest = aggregate_digest(aggregate)
    seen: set[int] = set()
    for share in shares:
        h = share.header
        if share.context.params != aggregate.context.params or h.epoch != spec.epoch_id:
            raise InvalidDecryptionShare(
                f"point share of point {h.member} is for another epoch or parameters"
            )
        if h.aggregate != digest or h.length != aggregate.length:
            raise InvalidDecryptionShare(f"point share of point {h.member} is for another aggregate")
        if h.member > len(spec.members):
            raise InvalidDecryptionShare(
                f"point share of point {h.member}: the epoch has {len(spec.members)}"
            )
        if h.member in seen:
            raise InvalidDecryptionShare(f"two point shares of point {h.member}")
        seen.add(h.member)


def _fingerprint_seed(aggregate: EncryptedVector, shares: Sequence[PointShare]) -> bytes:
    ordered = sorted(shares, key=lambda s: s.point)
    names = b"".join(s.point.to_bytes(2, "big") + s.digest() for s in ordered)
    return hashlib.sha256(_FINGERPRINT_DOMAIN + aggregate_digest(aggregate) + names).digest()


@final
@dataclass(frozen=True, slots=True)
class _Forms:
    """The random bilinear forms of one check: ``alpha_f^T d[:, prime, :] beta_f mod prime``.

    Weights are integers below 2^bits (`fingerprint_forms`), so a share's residues, cut into
    `_LIMB_BITS`-bit limbs, meet beta in int64 matrix products that cannot overflow.
    """

    beta: I64  # (N, forms)
    alpha: I64  # (forms, chunks)
    limbs: int


def fingerprint_forms(ctx: CkksContext) -> tuple[int, int]:
    """``(weight bits, forms)``: the most weight bits for which a limb's products summed over
    N coefficients stay below 2^63, and enough forms that a wrong point passes all of them
    with probability at most ``2^-FINGERPRINT_SECURITY``."""
    bits = 63 - _LIMB_BITS - (ctx.params.degree - 1).bit_length()
    return bits, -(-FINGERPRINT_SECURITY // (bits - 1))


def _forms(ctx: CkksContext, seed: bytes, chunks: int) -> _Forms:
    n = ctx.params.degree
    bits, forms = fingerprint_forms(ctx)
    words = np.frombuffer(hashlib.shake_128(seed).digest(4 * forms * (n + chunks)), dtype="<u4")
    weights = (words >> np.uint32(32 - bits)).astype(np.int64)
    limbs = -(-max(q.bit_length() for q in ctx.data_moduli) // _LIMB_BITS)
    beta = np.ascontiguousarray(weights[: forms * n].reshape(forms, n).T)
    return _Forms(beta, weights[forms * n :].reshape(forms, chunks), limbs)


def _limb_sums(forms: _Forms, share: PointShare) -> I64:
    """``sum_i beta_i * limb(d[c, prime, i])`` for every limb, chunk, prime and form:
    ``(limbs, chunks, L, forms)``, each below 2^63. A few chunks at a time, so that the
    limbs stay in cache. Checks on the way that every residue is below its prime
    (`InvalidDecryptionShare`): the one pass over the body before the merge."""
    mask = np.uint64((1 << _LIMB_BITS) - 1)
    ctx = share.context
    chunks, primes, n = share.header.chunks, len(ctx.data_moduli), ctx.params.degree
    out = np.empty((forms.limbs, chunks, primes, forms.beta.shape[1]), dtype=np.int64)
    limbs = np.empty((forms.limbs, _FINGERPRINT_CHUNKS, primes, n), dtype=np.uint64)
    for start in range(0, chunks, _FINGERPRINT_CHUNKS):
        batch = share.batch(start, min(start + _FINGERPRINT_CHUNKS, chunks))
        ctx.check_residues(batch, ctx.q_col, InvalidDecryptionShare, f"point share of point {share.point}")
        k = batch.shape[0]
        for i in range(forms.limbs):
            np.bitwise_and(batch >> np.uint64(_LIMB_BITS * i), mask, out=limbs[i, :k])
        sums = limbs[:, :k].view(np.int64).reshape(-1, n) @ forms.beta
        out[:, start : start + k] = sums.reshape(forms.limbs, k, primes, -1)
    return out


def _fingerprints(
    ctx: CkksContext, seed: bytes, chunks: int, shares: Sequence[PointShare]
) -> dict[int, list[int]]:
    """Per point, ``alpha_f^T d[:, prime, :] beta_f mod prime`` for each form f and prime
    (forms * L integers, form-major). A nonzero error matrix E mod q passes one form with
    probability at most ``2 / 2^bits`` (Schwartz-Zippel over weights below 2^bits < q:
    first ``E beta``, then alpha), all of them with at most ``2^-FINGERPRINT_SECURITY``."""
    moduli = ctx.data_moduli
    forms = _forms(ctx, seed, chunks)
    part = _ALPHA_PART_BITS
    out: dict[int, list[int]] = {}
    for share in shares:
        sums = _limb_sums(forms, share)
        # alpha < 2^20 times a 21-bit part of a sum, over up to 2^13 chunks: below 2^54.
        parts = [
            np.einsum("fc,lcjf->ljf", forms.alpha, (sums >> np.int64(part * p)) & np.int64((1 << part) - 1))
            for p in range(3)
        ]
        values = []
        for f in range(forms.alpha.shape[0]):
            for j, q in enumerate(moduli):
                total = sum(
                    int(parts[p][i, j, f]) << (_LIMB_BITS * i + part * p)
                    for i in range(forms.limbs)
                    for p in range(3)
                )
                values.append(total % q)
        out[share.point] = values
    return out


def _lagrange_at(x: int, point: int, subset: Sequence[int], q: int) -> int:
    numerator, denominator = 1, 1
    for other in subset:
        if other != point:
            numerator = numerator * (x - other) % q
            denominator = denominator * (point - other) % q
    return numerator * pow(denominator, -1, q) % q


def _agreement(
    subset: tuple[int, ...], fingerprints: Mapping[int, list[int]], moduli: list[int]
) -> frozenset[int]:
    """The points whose fingerprints lie on the polynomial through those of `subset`."""
    agree = set(subset)
    for x, values in fingerprints.items():
        if x in agree:
            continue
        weights = [[_lagrange_at(x, k, subset, q) for q in moduli] for k in subset]
        if all(
            sum(w[i] * fingerprints[k][i] for w, k in zip(weights, subset, strict=True)) % q == values[i]
            for i, q in enumerate(moduli)
        ):
            agree.add(x)
    return frozenset(agree)


def check_points(
    spec: EpochSpec, aggregate: EncryptedVector, shares: Sequence[PointShare], max_faulty: int
) -> Decision:
    """Decide which points to trust (shares already passed `validate_points`).

    Accepts the polynomial on which at least ``t + max_faulty`` points lie if it is the only
    one; the points off it are wrong. `UncheckablePoints` if all points agree but fewer than
    ``t + max_faulty`` were published (exactly t: nothing can be checked; pass
    ``max_faulty=0`` to accept that anyway), `WrongShareDetected` if they disagree and no
    polynomial can be trusted, `InsufficientShares` below t points.
    """
    t = spec.threshold
    need = t + max_faulty
    points = tuple(sorted(s.point for s in shares))
    if max_faulty < 0:
        raise ValueError("max_faulty must be >= 0")
    if len(points) < t:
        raise InsufficientShares(f"{len(points)} point shares, the threshold is {t}")
    ctx = aggregate.context
    prints = _fingerprints(ctx, _fingerprint_seed(aggregate, shares), aggregate.chunks, shares)
    moduli = [q for _ in range(fingerprint_forms(ctx)[1]) for q in ctx.data_moduli]
    first = _agreement(points[:t], prints, moduli)
    if len(first) == len(points):
        if len(points) < need:
            what = (
                "nothing can be checked" if len(points) == t else "too few to rule out colluding wrong ones"
            )
            raise UncheckablePoints(
                f"{len(points)} point shares agree, {need} needed (t = {t}, max_faulty = {max_faulty}): "
                f"{what}"
            )
        return Decision(points[:t], ())
    trusted = {first} if len(first) >= need else set()
    for subset in itertools.combinations(points, t):
        if not any(set(subset) <= found for found in trusted):
            agree = _agreement(subset, prints, moduli)
            if len(agree) >= need:
                trusted.add(agree)
    if len(trusted) != 1:
        digests = {s.point: s.digest() for s in shares}
        raise WrongShareDetected(
            f"point shares {points} disagree and no single polynomial has {need} of them: "
            f"more than {max_faulty} are wrong, none can be named",
            points,
            tuple(digests[x] for x in points),
        )
    (agree,) = trusted
    return Decision(tuple(sorted(agree))[:t], tuple(x for x in points if x not in agree))


def interpolate(
    aggregate: EncryptedVector, shares: Mapping[int, PointShare], decoding_set: Sequence[int]
) -> tuple[F64, float]:
    """``c0 + rescale(sum_k L_k(0) d_k)`` over the points of `decoding_set`, decoded:
    (sum of weighted values, weight sum). Exact mod q0*q1 before rescaling, so every
    decoding set of agreeing points gives bit-identical output."""
    ctx = aggregate.context
    moduli = ctx.data_moduli
    n = ctx.params.degree
    coefficients = {
        k: scalar_operand(lagrange_at_zero(k, decoding_set, moduli), moduli) for k in decoding_set
    }
    out = np.empty(aggregate.chunks * n, dtype=np.float64)
    for start, c0 in aggregate.batches():
        stop = start + c0.shape[0]
        total = np.zeros((stop - start, len(moduli), n), dtype=np.uint64)
        for k in decoding_set:
            operand, quotients = coefficients[k]
            add_mod_into(
                total, shoup_mul(shares[k].batch(start, stop), operand, quotients, column(moduli)), ctx.q_col
            )
        out[start * n : stop * n] = ctx.decode(add_mod(c0, ctx.rescale(total), ctx.rescaled_col))
    return split_weight(ctx.params, out, aggregate.length)
