"""Decryption shares of an aggregate for a decrypt set: making them (with smudging, counted
against the key epoch's budget) and combining them (`crypto.threshold`)."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

import numpy as np

from .ckks import (
    BATCH_CHUNKS,
    F64,
    MAX_VALUES,
    WIRE_VERSION,
    CkksContext,
    EncryptedVector,
    chunk_count,
    decode_blob,
    encode_blob,
    pack60,
    packed_size,
    rescaled_body_size,
    split_weight,
    unpack60,
)
from .epoch_keys import EpochKeys
from .epoch_spec import EPOCH_ID_SIZE, DecryptionRefused, EpochSpec, InsufficientShares
from .errors import InvalidDecryptionShare
from .identity import NodeId
from .rns import U64, add_mod, column, scalar_operand, shoup_mul, signed_split_residues
from .smudging import RandomBytes, SmudgingBudget, gaussian_noise

if TYPE_CHECKING:  # pointshare imports this module
    from .pointshare import PointShareHeader

_SHARE_MAGIC: Final = b"SND1"


def lagrange_at_zero(point: int, decrypt_set: Sequence[int], moduli: Sequence[int]) -> list[int]:
    """``prod_{m in T, m != k} x_m / (x_m - x_k) mod q`` for each prime (k = `point`)."""
    out = []
    for q in moduli:
        numerator, denominator = 1, 1
        for other in decrypt_set:
            if other != point:
                numerator = numerator * other % q
                denominator = denominator * (other - point) % q
        out.append(numerator * pow(denominator, -1, q) % q)
    return out


def _scalar_mul(poly: U64, scalars: Sequence[int], moduli: Sequence[int]) -> U64:
    operand, quotients = scalar_operand(scalars, moduli)
    return shoup_mul(poly, operand, quotients, column(moduli))


def smudging_noise(ctx: CkksContext, chunks: int, random_bytes: RandomBytes = os.urandom) -> U64:
    """``(chunks, L, N)`` coefficient-form noise, each coefficient from `smudging.gaussian_noise`
    (a discrete Gaussian of sigma = 2^smudging_bits, integer-exact) fed by `random_bytes`."""
    n = ctx.params.degree
    high, low, shift = gaussian_noise(random_bytes, chunks * n, ctx.params.smudging_bits)
    residues = signed_split_residues(high, low, shift, ctx.data_moduli)
    return residues.reshape(len(ctx.data_moduli), chunks, n).transpose(1, 0, 2)


@final
@dataclass(frozen=True, slots=True)
class DecryptionShareHeader:
    version: int
    parms_id: bytes
    epoch: bytes
    aggregate: bytes  # SHA-256 of the aggregate ciphertext blob this share decrypts
    decrypt_set: tuple[int, ...]  # Shamir points of T, strictly increasing
    member: int  # the maker's point, in decrypt_set
    length: int
    chunks: int


def check_share_header(
    ctx: CkksContext, header: DecryptionShareHeader | PointShareHeader, kind: str, *, maker_error: str | None
) -> None:
    """`InvalidDecryptionShare` unless `header` (of a `kind` share) is for `ctx`'s version and
    parameters, has a full epoch id and aggregate digest, and a length and shape `ctx` can
    hold; `maker_error`, the caller's verdict on the maker's point, is raised before the shape."""
    if header.version != WIRE_VERSION or header.parms_id != ctx.parms_id:
        raise InvalidDecryptionShare(f"{kind} for another version or parameters")
    if len(header.epoch) != EPOCH_ID_SIZE or len(header.aggregate) != 32:
        raise InvalidDecryptionShare(f"{kind}: bad epoch id or aggregate digest size")
    if maker_error is not None:
        raise InvalidDecryptionShare(maker_error)
    if not 0 < header.length <= MAX_VALUES or header.chunks != chunk_count(ctx.params, header.length):
        raise InvalidDecryptionShare(f"{kind} length/shape mismatch")


@final
class DecryptionShare:
    """One member's decryption share of an aggregate for a decrypt set (a content-addressed blob).

    Wire: ``b"SND1" | u32 header length | CBOR DecryptionShareHeader | (chunks, N) rescaled
    residues mod q1 packed at 60 bits`` (7.5 bytes per parameter).
    """

    __slots__ = ("_body", "_wire", "context", "header")

    def __init__(
        self, ctx: CkksContext, header: DecryptionShareHeader, wire: bytes, body: memoryview
    ) -> None:
        self.context: Final = ctx
        self.header: Final = header
        self._wire = wire
        self._body = body

    def to_bytes(self) -> bytes:
        return self._wire

    def batch(self, start: int, stop: int) -> U64:
        """Chunks ``[start, stop)`` as ``(k, N)`` rescaled residues mod q1."""
        n = self.context.params.degree
        raw = self._body[packed_size(start * n) : packed_size(stop * n)]
        return unpack60(raw, (stop - start) * n).reshape(stop - start, n)

    @classmethod
    def from_bytes(cls, ctx: CkksContext, data: bytes) -> DecryptionShare:
        """Decode and validate; raise `InvalidDecryptionShare` on bad input."""
        header, body = decode_blob(_SHARE_MAGIC, DecryptionShareHeader, data, InvalidDecryptionShare)
        t = header.decrypt_set
        check_share_header(
            ctx,
            header,
            "decryption share",
            maker_error=None
            if t and all(b > a for a, b in itertools.pairwise(t)) and t[0] >= 1 and header.member in t
            else "decrypt set must be increasing positive points including the maker",
        )
        expected = rescaled_body_size(ctx.params, header.length)
        if len(body) != expected:
            raise InvalidDecryptionShare(f"decryption share body has {len(body)} bytes, expected {expected}")
        share = cls(ctx, header, data, body)
        for start in range(0, header.chunks, BATCH_CHUNKS):
            batch = share.batch(start, min(start + BATCH_CHUNKS, header.chunks))
            ctx.check_residues(batch, ctx.rescaled_col, InvalidDecryptionShare, "share")
        return share


def make_decryption_share(
    keys: EpochKeys, aggregate: EncryptedVector, decrypt_set: Sequence[NodeId]
) -> DecryptionShare:
    """Our share of `aggregate` for exactly `decrypt_set` (at least t members, us among them).

    Removes the masks of exactly the aggregate's contributors (all members of this epoch).
    """
    spec, ctx = keys.spec, keys.context
    if aggregate.context.params != ctx.params:
        raise ValueError("aggregate is for other parameters")
    if aggregate.epoch != spec.epoch_id:
        raise DecryptionRefused("aggregate is for another key epoch")
    if not all(spec.is_member(c) for c in aggregate.contributors):
        raise DecryptionRefused("aggregate names a contributor outside the epoch")
    if len(set(decrypt_set)) != len(decrypt_set) or not all(spec.is_member(m) for m in decrypt_set):
        raise DecryptionRefused("decrypt set must be distinct members of the epoch")
    if len(decrypt_set) < spec.threshold:
        raise DecryptionRefused(f"decrypt set has {len(decrypt_set)} members, threshold is {spec.threshold}")
    if keys.me not in decrypt_set:
        raise DecryptionRefused("this node is not in the decrypt set")
    _charge_smudging(keys, aggregate, len(decrypt_set))
    points = tuple(sorted(spec.point(m) for m in decrypt_set))
    me = spec.point(keys.me)
    lagrange = lagrange_at_zero(me, points, ctx.data_moduli)
    dealer_of = {c: spec.point(c) - 1 for c in aggregate.contributors}
    operands = {c: (keys.dealer_shares[k], keys.dealer_quotients[k]) for c, k in dealer_of.items()}
    digest = hashlib.sha256(aggregate.to_bytes()).digest()
    header = DecryptionShareHeader(
        WIRE_VERSION, ctx.parms_id, spec.epoch_id, digest, points, me, aggregate.length, aggregate.chunks
    )

    def parts() -> Iterator[bytes]:
        for start in range(0, aggregate.chunks, BATCH_CHUNKS):
            stop = min(start + BATCH_CHUNKS, aggregate.chunks)
            masked = aggregate.masked_sum(start, stop, operands)  # sum_i a_i * f_i(x_me)
            product = _scalar_mul(masked, lagrange, ctx.data_moduli)  # times lambda, once
            noisy = add_mod(ctx.to_coefficients(product), smudging_noise(ctx, stop - start), ctx.q_col)
            yield pack60(ctx.rescale(noisy))

    wire = encode_blob(_SHARE_MAGIC, header, parts())
    return DecryptionShare.from_bytes(ctx, wire)


def _charge_smudging(keys: EpochKeys, aggregate: EncryptedVector, shares: int) -> None:
    """Count this decryption (all `shares` of it) against the epoch's smudging budget, or
    refuse if that would pass it: the statistical-distance bound of `smudging` holds only
    for the shares it counted."""
    params = keys.context.params
    budget = params.smudging
    units = SmudgingBudget.units(len(aggregate.contributors), shares, aggregate.chunks * params.degree)
    if keys.smudging_spent + units > budget.capacity:
        raise DecryptionRefused(
            f"smudging budget of key epoch {keys.spec.epoch_id.hex()[:16]} spent: {keys.smudging_spent} of "
            f"{budget.capacity} units used, this decryption needs {units} (a new key epoch is needed)"
        )
    keys.smudging_spent += units


def combine_shares(
    spec: EpochSpec, aggregate: EncryptedVector, shares: Sequence[DecryptionShare]
) -> tuple[F64, float]:
    """Decrypt `aggregate` from the shares of one decrypt set: (sum of weighted values, weight sum).

    Raises `InvalidDecryptionShare` if a share is for another epoch, aggregate or decrypt
    set, or members repeat; `InsufficientShares` unless every member of the (at least t
    strong) decrypt set has contributed its share.
    """
    ctx = aggregate.context
    if not shares:
        raise InsufficientShares("no decryption shares")
    digest = hashlib.sha256(aggregate.to_bytes()).digest()
    decrypt_set = shares[0].header.decrypt_set
    for share in shares:
        h = share.header
        if share.context.params != ctx.params or h.epoch != spec.epoch_id:
            raise InvalidDecryptionShare(f"share of point {h.member} is for another epoch or parameters")
        if h.aggregate != digest or h.length != aggregate.length:
            raise InvalidDecryptionShare(f"share of point {h.member} is for another aggregate")
        if h.decrypt_set != decrypt_set:
            raise InvalidDecryptionShare(
                f"share of point {h.member} is for decrypt set {h.decrypt_set}, not {decrypt_set}"
            )
    if decrypt_set[-1] > len(spec.members):
        raise InvalidDecryptionShare("decrypt set names a point outside the epoch")
    if len(decrypt_set) < spec.threshold:
        raise InvalidDecryptionShare(
            f"decrypt set {decrypt_set} is smaller than the threshold {spec.threshold}"
        )
    makers = [s.header.member for s in shares]
    if len(set(makers)) != len(makers):
        raise InvalidDecryptionShare("two shares from the same member")
    if set(makers) != set(decrypt_set):
        raise InsufficientShares(f"have shares from {sorted(makers)}, decrypt set is {decrypt_set}")
    n = ctx.params.degree
    out = np.empty(aggregate.chunks * n, dtype=np.float64)
    for start, batch in aggregate.batches():
        stop = start + batch.shape[0]
        plain = batch
        for share in shares:
            plain = add_mod(plain, share.batch(start, stop), ctx.rescaled_col)
        out[start * n : stop * n] = ctx.decode(plain)
    return split_weight(ctx.params, out, aggregate.length)
