"""Robust secure merge facade: point shares in, a checked merge (or a named culprit) out.

The robust counterpart of `crypto.secure_merge.decryption_share` / `combine`, bytes in
and bytes out (see `crypto.pointshare` for the mechanism, `crypto.prss` for the keys)::

    # key epoch, besides the Shamir dealing: PRSS keys (sealed to their holders)
    dealt = prss.deal_keys(spec, me)                     # commitments to the ledger
    collector = prss.PrssKeyCollector(spec, me, dealt, committed)
    collector.receive(dealer, subset, key)               # for every key dealt to us
    prss_keys = collector.finish()

    # every member of the epoch, once per aggregate (deterministic: the same bytes again)
    point = make_point_share(keys, prss_keys, aggregate, contributions=k, min_peers=p)

    # anyone with the aggregate and at least t + max_faulty points
    verdict = combine_points(spec, aggregate, points)
    verdict.merged.mean                                  # float32 weighted mean
    verdict.wrong                                        # culprits, with share digests

A point share is not bound to a decrypt set: every member publishes one, and the more
are published the more wrong ones can be named (up to ``min(max_faulty, m - t -
max_faulty)`` of m points). Whoever passes a point here must have checked that its
envelope's sender is the member of its point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import final

from .ckks import DEFAULT_PARAMS, MAX_HEADER, CkksParams, EncryptedVector, RoundBinding, context
from .errors import InvalidCiphertext
from .identity import NodeId
from .pointshare import (
    PointShare,
    UncheckablePoints,
    WrongShareDetected,
    aggregate_digest,
    check_points,
    default_max_faulty,
    interpolate,
    point_body_size,
    validate_points,
)
from .pointshare import make_point_share as _make_point
from .prss import PrssKeys
from .secure_merge import MergedMean, decryptable_aggregate, merged_mean
from .threshold import EpochKeys, EpochSpec

__all__ = [
    "UncheckablePoints",
    "Verdict",
    "WrongShare",
    "WrongShareDetected",
    "combine_points",
    "default_max_faulty",
    "make_point_share",
    "point_of",
    "point_share_size",
]


def point_share_size(length: int, params: CkksParams = DEFAULT_PARAMS) -> int:
    """Upper bound on the bytes of one point share of a `length`-parameter aggregate."""
    return point_body_size(context(params), length) + MAX_HEADER + 8


def point_of(share: bytes, params: CkksParams = DEFAULT_PARAMS) -> int:
    """The Shamir point a point share claims to be made at (`InvalidDecryptionShare` if its
    header is malformed; `combine_points` checks the body): a combiner checks it against the
    member that committed the share, without unpacking the 15 bytes per parameter."""
    return PointShare.from_bytes(context(params), share, check_body=False).point


def _aggregate(ctx_params: CkksParams, blob: bytes, length: int | None) -> EncryptedVector:
    vector = EncryptedVector.from_bytes(context(ctx_params), blob)
    if length is not None and vector.length != length:
        raise InvalidCiphertext(f"aggregate holds {vector.length} parameters, the model has {length}")
    return vector


def make_point_share(
    keys: EpochKeys,
    prss: PrssKeys,
    aggregate: bytes,
    *,
    contributions: int,
    min_peers: int,
    binding: RoundBinding,
    length: int | None = None,
) -> bytes:
    """Our point share of `aggregate`, or `DecryptionRefused` (the checks of
    `crypto.secure_merge.decryptable_aggregate`: committed count, at least
    ``max(min_peers, t + 1)`` contributions, the round of `binding`). Deterministic: asked
    again, it returns the same bytes."""
    vector = decryptable_aggregate(
        keys, aggregate, contributions=contributions, min_peers=min_peers, binding=binding, length=length
    )
    return _make_point(keys, prss, vector).to_bytes()


@final
@dataclass(frozen=True, slots=True)
class WrongShare:
    """A point share off the polynomial the other points agree on: its maker and its digest."""

    point: int
    member: NodeId
    share_digest: bytes


@final
@dataclass(frozen=True, slots=True, eq=False)
class Verdict:
    """A checked merge: the mean, the t points it was interpolated from, the wrong shares named.

    `checked` lists every (point, share digest) the decision used and `aggregate` the
    aggregate's digest: with those blobs anyone repeats `combine_points` and gets the same
    verdict (the fingerprint weights are hashed from exactly these).
    """

    merged: MergedMean
    decoding_set: tuple[int, ...]
    wrong: tuple[WrongShare, ...]
    aggregate: bytes
    checked: tuple[tuple[int, bytes], ...]
    max_faulty: int


def combine_points(
    spec: EpochSpec,
    aggregate: bytes,
    points: Sequence[bytes],
    *,
    max_faulty: int | None = None,
    length: int | None = None,
    params: CkksParams = DEFAULT_PARAMS,
) -> Verdict:
    """Check the point shares against each other and decrypt `aggregate` from agreeing ones.

    `max_faulty` (default `default_max_faulty`) is how many wrong shares the check must
    withstand: the merge needs ``t + max_faulty`` points on one polynomial. Raises
    `InvalidCiphertext` / `InvalidDecryptionShare` for bad blobs, `WrongShareDetected` when
    the points disagree and nobody can be named, `UncheckablePoints` when they agree but
    are too few (exactly t: nothing is checked; ``max_faulty=0`` accepts that),
    `InvalidAggregate` if the decrypted weight sum is not in ``(0, 1]``.
    """
    ctx = context(params)
    vector = _aggregate(params, aggregate, length)
    # Bodies are range-checked in the fingerprint pass (`check_points`), not unpacked twice.
    shares = [PointShare.from_bytes(ctx, blob, check_body=False) for blob in points]
    validate_points(spec, vector, shares)
    faulty = default_max_faulty(len(spec.members), spec.threshold) if max_faulty is None else max_faulty
    decision = check_points(spec, vector, shares, faulty)
    by_point = {s.point: s for s in shares}
    merged = merged_mean(*interpolate(vector, by_point, decision.decoding_set))
    return Verdict(
        merged=merged,
        decoding_set=decision.decoding_set,
        wrong=tuple(WrongShare(x, spec.members[x - 1], by_point[x].digest()) for x in decision.wrong),
        aggregate=aggregate_digest(vector),
        checked=tuple((x, by_point[x].digest()) for x in sorted(by_point)),
        max_faulty=faulty,
    )
