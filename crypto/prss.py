"""Pseudo-random secret sharing (PRSS) of smudging noise, for point shares (`crypto.pointshare`).

Cramer, Damgard and Ishai (TCC 2005): a key epoch of n members with threshold t gives
every set A of t-1 Shamir points a 32-byte key ``k_A``, known to the n-t+1 members whose
points are outside A. For an aggregate, every key expands to noise
``r_A = PRF(k_A, masks, chunk)`` (masks: a digest of the aggregate's contributors and mask
seeds, `crypto.pointshare.mask_digest`) and the noise polynomial is

    g(x) = sum_A r_A * Z_A(x),   Z_A(x) = prod_{a in A} (a - x) / a   (mod each prime)

Z_A has degree t-1, ``Z_A(0) = 1`` and vanishes on A, so member j computes its point
``g(x_j)`` from its own keys alone (``Z_A(x_j) = 0`` for the keys it lacks), every point
lies on the one polynomial g of degree t-1, and ``g(0) = sum_A r_A``. A coalition K of
t-1 members holds every key but ``k_K``: ``r_K`` stays pseudo-random to it and hides the
aggregate's encryption error in the decrypted sum, as one honest smudger does in
`crypto.threshold` (the bound is computational: AES-256-CTR under a SHA-256-derived key
is the PRF, `crypto.rns.XofStream`).

Dealing (in the key epoch): the holder of A with the lowest point draws ``k_A`` from
`os.urandom`, puts ``SHA-256(domain | epoch id | A | k_A)`` on the ledger
(`key_commitment`) and sends ``k_A`` sealed to the other holders (`deal_keys`); a holder
refuses a key that does not match its dealer's commitment and names the dealer
(`PrssKeyCollector.receive`).

Each member holds ``C(n-1, t-1)`` keys and expands all of them for every chunk of every
aggregate, and the decoded merge carries ``C(n, t-1)`` noise terms: `MAX_PRSS_KEYS` (252,
``C(10, 5)``) bounds the design to about n = 10 (larger swarms need a decryption
committee).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from math import comb
from typing import TYPE_CHECKING, Final, final

import numpy as np

from .ckks import CkksContext
from .errors import ProtocolError
from .identity import NodeId
from .rns import I64, U64, XofStream, add_mod_into, column, scalar_operand, shoup_mul, signed_split_residues
from .smudging import gaussian_noise

if TYPE_CHECKING:
    from .threshold import EpochSpec

PRSS_KEY_SIZE: Final = 32
MAX_PRSS_KEYS: Final = 252  # C(10, 5): n = 10, t = 6
_COMMITMENT_DOMAIN: Final = b"swarmnode/prss-key/v1\x00"
_NOISE_DOMAIN: Final = b"swarmnode/prss-noise/v2\x00"

Subset = tuple[int, ...]
"""A set of t-1 Shamir points (1-based, strictly increasing)."""

WideIntegers = tuple[I64, U64, int]
"""Integers ``high * 2^shift + low`` (see `crypto.rns.signed_split_residues`)."""


class PrssTooLarge(ValueError):
    """Local: the epoch's n and t need more PRSS keys than the configured limit."""


class InvalidPrssKey(ProtocolError):
    """A dealt PRSS key is malformed, from the wrong dealer, or does not match its commitment."""


NoiseSampler = Callable[[XofStream, int, int], WideIntegers]
"""``(stream, count, bits) -> count`` noise integers of width 2^bits drawn from the stream,
each below ``2^(bits + 4)`` in absolute value (`noise_point` sums them exactly in int64)."""


def gaussian_stream_noise(stream: XofStream, count: int, bits: int) -> WideIntegers:
    """`count` integers from the discrete Gaussian of width 2^bits (`crypto.smudging`), drawn
    from the stream: the flooding noise of proven bound that Lagrange shares use too."""
    return gaussian_noise(stream.read, count, bits)


# Each r_A is flooding noise of the same distribution as a Lagrange share's.
DEFAULT_NOISE: Final[NoiseSampler] = gaussian_stream_noise


def prss_subsets(members: int, threshold: int, *, max_keys: int = MAX_PRSS_KEYS) -> tuple[Subset, ...]:
    """Every (t-1)-set of the points 1..n, in lexicographic order; `PrssTooLarge` above `max_keys`."""
    count = comb(members, threshold - 1)
    if count > max_keys:
        raise PrssTooLarge(
            f"n = {members}, t = {threshold} needs C({members}, {threshold - 1}) = {count} PRSS keys, "
            f"above the limit of {max_keys} (about n = 10): use a decryption committee"
        )
    return _all_subsets(members, threshold)


def robust_epoch(members: int, threshold: int, *, max_keys: int = MAX_PRSS_KEYS) -> bool:
    """Whether an epoch of n members and threshold t deals PRSS keys (point shares, robust
    decryption): ``C(n, t-1) <= max_keys``. Larger epochs keep Lagrange shares."""
    return comb(members, threshold - 1) <= max_keys


def subsets_dealt(
    members: int, threshold: int, dealer: int, recipient: int | None = None
) -> tuple[Subset, ...]:
    """The sets whose key the member at point `dealer` draws (all of them, in `deal_keys`
    order) or deals to the one at `recipient` (the order of the keys in the dealer's box)."""
    return tuple(
        s
        for s in _all_subsets(members, threshold)
        if key_dealer(s, members) == dealer and (recipient is None or recipient not in s)
    )


def _all_subsets(members: int, threshold: int) -> tuple[Subset, ...]:
    if not 1 <= threshold <= members:
        raise ValueError(f"threshold {threshold} must be in [1, {members}]")
    return tuple(itertools.combinations(range(1, members + 1), threshold - 1))


def key_holders(subset: Subset, members: int) -> tuple[int, ...]:
    """The points that hold ``k_A``: every point outside A."""
    return tuple(x for x in range(1, members + 1) if x not in subset)


def key_dealer(subset: Subset, members: int) -> int:
    """The point that draws ``k_A``: the lowest holder."""
    return next(x for x in range(1, members + 1) if x not in subset)


def _subset_bytes(subset: Subset) -> bytes:
    """A canonical, prefix-free encoding of A: its size, then each point as u16."""
    return len(subset).to_bytes(2, "big") + b"".join(x.to_bytes(2, "big") for x in subset)


def key_commitment(epoch_id: bytes, subset: Subset, key: bytes) -> bytes:
    """``SHA-256(domain | epoch id | A | k_A)``: what the dealer of A puts on the ledger."""
    return hashlib.sha256(_COMMITMENT_DOMAIN + epoch_id + _subset_bytes(subset) + key).digest()


@final
@dataclass(frozen=True, slots=True)
class DealtKey:
    """One key a member draws: the set A, ``k_A`` (secret), the other holders to send it to."""

    subset: Subset
    key: bytes = field(repr=False)  # secret: kept out of logs
    recipients: tuple[int, ...]

    def commitment(self, epoch_id: bytes) -> bytes:
        return key_commitment(epoch_id, self.subset, self.key)


def deal_keys(spec: EpochSpec, dealer: NodeId, *, max_keys: int = MAX_PRSS_KEYS) -> tuple[DealtKey, ...]:
    """The keys `dealer` draws (fresh from `os.urandom`): one per set A whose lowest holder it is."""
    n, point = len(spec.members), spec.point(dealer)
    return tuple(
        DealtKey(subset, os.urandom(PRSS_KEY_SIZE), tuple(x for x in key_holders(subset, n) if x != point))
        for subset in prss_subsets(n, spec.threshold, max_keys=max_keys)
        if key_dealer(subset, n) == point
    )


@final
@dataclass(frozen=True, slots=True)
class PrssKeys:
    """A member's PRSS keys for one epoch: ``k_A`` for every (t-1)-set A without its point.

    `keys` is in the order of `prss_subsets`; the noise does not depend on that order.
    """

    epoch_id: bytes
    members: int
    threshold: int
    point: int
    keys: tuple[tuple[Subset, bytes], ...] = field(repr=False)  # secret: kept out of logs

    def __post_init__(self) -> None:
        expected = tuple(s for s in _all_subsets(self.members, self.threshold) if self.point not in s)
        if tuple(subset for subset, _ in self.keys) != expected:
            raise ValueError(f"point {self.point} must hold exactly the keys of the sets without it")
        if any(len(key) != PRSS_KEY_SIZE for _, key in self.keys):
            raise ValueError(f"PRSS keys have {PRSS_KEY_SIZE} bytes")


@final
class PrssKeyCollector:
    """A member's side of PRSS dealing: its own dealt keys plus every key dealt to it, each
    checked against its dealer's commitment from the ledger."""

    __slots__ = ("_commitments", "_keys", "_point", "spec")

    def __init__(
        self,
        spec: EpochSpec,
        me: NodeId,
        own: tuple[DealtKey, ...],
        commitments: Mapping[Subset, bytes],
        *,
        max_keys: int = MAX_PRSS_KEYS,
    ) -> None:
        n = len(spec.members)
        subsets = prss_subsets(n, spec.threshold, max_keys=max_keys)
        if set(commitments) != set(subsets) or any(len(c) != 32 for c in commitments.values()):
            raise ValueError("need one 32-byte commitment for every (t-1)-set of the epoch")
        self.spec: Final = spec
        self._point = spec.point(me)
        self._commitments = dict(commitments)
        self._keys: dict[Subset, bytes] = {}
        for dealt in own:
            if dealt.subset not in self._commitments or key_dealer(dealt.subset, n) != self._point:
                raise ValueError(f"{dealt.subset} is not a set whose key this member deals")
            if dealt.commitment(spec.epoch_id) != commitments[dealt.subset]:
                raise ValueError(f"the ledger's commitment for {dealt.subset} is not ours")
            self._keys[dealt.subset] = dealt.key

    def receive(self, dealer: NodeId, subset: Subset, key: bytes) -> None:
        """Accept ``k_A`` from `dealer`; `InvalidPrssKey` naming the dealer if it is not A's
        dealer, the key is not for us, or it does not match the dealer's commitment."""
        n = len(self.spec.members)
        if not self.spec.is_member(dealer):
            raise InvalidPrssKey(f"PRSS key from {dealer.short}, not a member of this epoch")
        if subset not in self._commitments:
            raise InvalidPrssKey(f"PRSS key from {dealer.short} for {subset}, not a (t-1)-set of the epoch")
        if self.spec.point(dealer) != key_dealer(subset, n) or self._point in subset:
            raise InvalidPrssKey(f"PRSS key from {dealer.short} for {subset}: not its key to deal to us")
        if (
            len(key) != PRSS_KEY_SIZE
            or key_commitment(self.spec.epoch_id, subset, key) != self._commitments[subset]
        ):
            raise InvalidPrssKey(f"PRSS key for {subset} from {dealer.short} does not match its commitment")
        self._keys[subset] = key

    def missing(self) -> tuple[Subset, ...]:
        """The sets whose key we should hold and do not have yet."""
        return tuple(s for s in self._commitments if self._point not in s and s not in self._keys)

    def finish(self) -> PrssKeys:
        if missing := self.missing():
            raise ValueError(f"still missing {len(missing)} PRSS keys, e.g. for {missing[0]}")
        n, t = len(self.spec.members), self.spec.threshold
        ordered = tuple((s, self._keys[s]) for s in _all_subsets(n, t) if self._point not in s)
        return PrssKeys(self.spec.epoch_id, n, t, self._point, ordered)


def vanishing_at(subset: Subset, x: int, q: int) -> int:
    """``Z_A(x) = prod_{a in A} (a - x) / a mod q``: degree |A|, 1 at 0, zero on A."""
    numerator, denominator = 1, 1
    for a in subset:
        numerator = numerator * (a - x) % q
        denominator = denominator * a % q
    return numerator * pow(denominator, -1, q) % q


def integer_weights(prss: PrssKeys) -> tuple[int, tuple[int, ...]]:
    """``(D, (c_A, ...))`` with ``Z_A(x_j) = c_A / D`` for each of the member's keys (in
    order), D their least common denominator: ``g(x_j) = D^-1 sum_A c_A r_A``."""
    values = [Fraction(math.prod(a - prss.point for a in s), math.prod(s)) for s, _ in prss.keys]
    denominator = math.lcm(*(v.denominator for v in values))
    return denominator, tuple(int(v * denominator) for v in values)


def _key_noise(ctx: CkksContext, seed: bytes, start: int, stop: int, sampler: NoiseSampler) -> WideIntegers:
    """``r_A`` of chunks ``[start, stop)``, flattened: one stream per chunk, so a chunk's noise
    does not depend on how chunks are batched."""
    n, bits = ctx.params.degree, ctx.params.smudging_bits
    draws = [sampler(XofStream(seed + chunk.to_bytes(4, "big")), n, bits) for chunk in range(start, stop)]
    shifts = {shift for _, _, shift in draws}
    if len(shifts) != 1:
        raise ValueError("the noise sampler must use one shift for every chunk")
    high = np.concatenate([h for h, _, _ in draws])
    low = np.concatenate([lo for _, lo, _ in draws])
    return high, low, shifts.pop()


@final
class _ExactSum:
    """``sum c_A r_A`` over a group of keys in int64, as ``high * 2^shift + low``.

    With ``|r_A| < 2^(bits + 4)`` (`NoiseSampler`), each limb stays below 2^62 while the
    weights' absolute values add up to at most the initial `room`.
    """

    __slots__ = ("high", "low", "room", "shift")

    def __init__(self, size: int, shift: int, bits: int) -> None:
        self.shift = shift
        self.room = (1 << 62) >> max(shift, bits + 5 - shift)
        self.high = np.zeros(size, dtype=np.int64)
        self.low = np.zeros(size, dtype=np.int64)

    def add(self, weight: int, noise: WideIntegers) -> bool:
        """Add ``weight * r``; False (and nothing added) if it does not fit."""
        high, low, shift = noise
        if shift != self.shift or abs(weight) > self.room:
            return False
        self.room -= abs(weight)
        self.high += high * np.int64(weight)
        self.low += low.view(np.int64) * np.int64(weight)
        return True

    def residues(self, moduli: Sequence[int]) -> U64:
        carry = self.low >> np.int64(self.shift)  # floor: the low limb back to [0, 2^shift)
        low = (self.low & np.int64((1 << self.shift) - 1)).view(np.uint64)
        return signed_split_residues(self.high + carry, low, self.shift, moduli)


def _add_scaled(ctx: CkksContext, out: U64, residues: U64, factors: Sequence[int]) -> None:
    """``out += factor * residues`` mod each prime; residues ``(L, k*N)``, out ``(k, L, N)``."""
    moduli = ctx.data_moduli
    operand, quotients = scalar_operand(factors, moduli)
    chunked = residues.reshape(len(moduli), out.shape[0], -1).transpose(1, 0, 2)
    add_mod_into(out, shoup_mul(chunked, operand, quotients, column(moduli)), ctx.q_col)


def noise_point(
    ctx: CkksContext,
    prss: PrssKeys,
    masks: bytes,
    start: int,
    stop: int,
    sampler: NoiseSampler = DEFAULT_NOISE,
) -> U64:
    """``g(x_j)`` for chunks ``[start, stop)`` of the sum whose masks hash to `masks`:
    ``(k, L, N)``, coefficient form.

    ``g(x_j) = D^-1 sum_A c_A r_A`` (`integer_weights`): the keys' noise is summed exactly
    in int64 and turned into residues once per group of keys whose weights fit (all of them
    for n <= 5), not once per key; a key whose weight alone does not fit is reduced alone.
    """
    moduli = ctx.data_moduli
    bits, size = ctx.params.smudging_bits, (stop - start) * ctx.params.degree
    denominator, weights = integer_weights(prss)
    inverse = [pow(denominator, -1, q) for q in moduli]
    out = np.zeros((stop - start, len(moduli), ctx.params.degree), dtype=np.uint64)
    group: _ExactSum | None = None
    for (subset, key), weight in zip(prss.keys, weights, strict=True):
        seed = _NOISE_DOMAIN + prss.epoch_id + _subset_bytes(subset) + key + masks
        noise = _key_noise(ctx, seed, start, stop, sampler)
        if group is not None and group.add(weight, noise):
            continue
        if group is not None:
            _add_scaled(ctx, out, group.residues(moduli), inverse)
        group = _ExactSum(size, noise[2], bits)
        if not group.add(weight, noise):
            group = None
            residues = signed_split_residues(*noise, moduli)
            _add_scaled(ctx, out, residues, [vanishing_at(subset, prss.point, q) for q in moduli])
    if group is not None:
        _add_scaled(ctx, out, group.residues(moduli), inverse)
    return out
