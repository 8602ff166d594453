"""The outcome of a key epoch at one member (`EpochKeys`) and its export to, and import from,
the node's own key store (`crypto.threshold`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final, final

import numpy as np

from . import cbor, prss
from .ckks import CkksContext, CkksParams, context, pack60
from .epoch_spec import EpochSpec, common_random_poly, poly_bytes, split_prss_keys, unpack_poly
from .errors import InvalidKeyShare
from .identity import NodeId
from .rns import U64, shoup_quotients


@final
@dataclass(frozen=True, slots=True)
class StoredEpochKeys:
    """Schema of `EpochKeys.export_secret` (local storage, never sent)."""

    version: int
    epoch_id: bytes
    members: tuple[NodeId, ...]
    threshold: int
    me: NodeId
    public_key: bytes
    secret: bytes  # our own s_i (data level, NTT form)
    dealer_shares: bytes  # f_i(x_me) of every member i, in member order
    prss_keys: bytes  # robust epochs: our PRSS keys in `PrssKeys.keys` order; empty otherwise


@final
class EpochKeys:
    """The outcome of a key epoch at one member: collective public key, own secret, dealer
    shares and, in a robust epoch (`prss.robust_epoch`), our PRSS keys."""

    __slots__ = (
        "_dealer_quotients",
        "context",
        "dealer_shares",
        "me",
        "prss",
        "public_key",
        "secret",
        "smudging_spent",
        "spec",
    )

    def __init__(
        self, ctx: CkksContext, spec: EpochSpec, me: NodeId, public_key: U64, secret: U64, dealer_shares: U64,
        prss_keys: prss.PrssKeys | None = None,
    ) -> None:  # fmt: skip
        self.context: Final = ctx
        self.spec: Final = spec
        self.me: Final = me
        self.public_key: Final = public_key  # (2, L_key, N): (sum b_i, a), NTT form
        self.secret: Final = secret  # (L, N): our s_i, NTT form, data level
        self.dealer_shares: Final = dealer_shares  # (n, L, N): f_i(x_me) in member order, NTT form
        self.prss: Final = prss_keys
        self._dealer_quotients: U64 | None = None
        # Smudging budget units (`SmudgingBudget.units`) of every share made with these keys
        # since they were loaded; the ledger's count (the contract) is the durable one.
        self.smudging_spent = 0

    @property
    def dealer_quotients(self) -> U64:
        """Shoup quotients of `dealer_shares` (computed once: ~6 ms of Python ints per dealer)."""
        if self._dealer_quotients is None:
            moduli = self.context.data_moduli
            quotients = [shoup_quotients(share, moduli) for share in self.dealer_shares]
            self._dealer_quotients = np.stack(quotients)
        return self._dealer_quotients

    @property
    def public_key_digest(self) -> bytes:
        """SHA-256 of the packed collective public key: members compare it on the ledger."""
        return hashlib.sha256(pack60(self.public_key)).digest()

    def export_secret(self) -> bytes:
        """Canonical bytes of these keys for the node's own key store (secret: store with mode 0600)."""
        own_prss = b"" if self.prss is None else b"".join(key for _, key in self.prss.keys)
        stored = StoredEpochKeys(
            3, self.spec.epoch_id, self.spec.members, self.spec.threshold, self.me,
            pack60(self.public_key), pack60(self.secret), pack60(self.dealer_shares), own_prss,
        )  # fmt: skip
        return cbor.dumps_dataclass(stored)

    @classmethod
    def import_secret(cls, data: bytes, params: CkksParams) -> EpochKeys:
        """Inverse of `export_secret`; raises a `ProtocolError` subclass if the bytes are bad."""
        stored = cbor.loads_dataclass(StoredEpochKeys, data, max_depth=2)
        ctx = context(params)
        if stored.version != 3:
            raise InvalidKeyShare(f"unsupported stored key version {stored.version}")
        try:
            spec = EpochSpec(stored.epoch_id, stored.members, stored.threshold)
        except ValueError as exc:
            raise InvalidKeyShare(f"stored epoch: {exc}") from None
        if not spec.is_member(stored.me):
            raise InvalidKeyShare("stored keys belong to a non-member")
        key_primes = len(ctx.seal.key_moduli)
        half = len(stored.public_key) // 2
        public = unpack_poly(ctx, stored.public_key[:half], key_primes, InvalidKeyShare, "stored public key")
        crs = unpack_poly(ctx, stored.public_key[half:], key_primes, InvalidKeyShare, "stored public key")
        if not np.array_equal(crs, common_random_poly(ctx, spec.epoch_id)):
            raise InvalidKeyShare("stored public key does not match the epoch's common random polynomial")
        data_primes = len(ctx.data_moduli)
        secret = unpack_poly(ctx, stored.secret, data_primes, InvalidKeyShare, "stored secret")
        size = poly_bytes(params, data_primes)
        members = len(spec.members)
        if len(stored.dealer_shares) != members * size:
            raise InvalidKeyShare(f"stored dealer shares: need {members} of {size} bytes")
        dealer_shares = np.stack([
            unpack_poly(ctx, stored.dealer_shares[k * size : (k + 1) * size], data_primes, InvalidKeyShare,
                         "stored dealer share")
            for k in range(members)
        ])  # fmt: skip
        prss_keys = _stored_prss_keys(spec, spec.point(stored.me), stored.prss_keys)
        return cls(ctx, spec, stored.me, np.stack([public, crs]), secret, dealer_shares, prss_keys)


def _stored_prss_keys(spec: EpochSpec, point: int, data: bytes) -> prss.PrssKeys | None:
    n, t = len(spec.members), spec.threshold
    if not prss.robust_epoch(n, t):
        if data:
            raise InvalidKeyShare("stored keys: PRSS keys for an epoch too large for them")
        return None
    subsets = tuple(s for s in prss.prss_subsets(n, t) if point not in s)
    return prss.PrssKeys(spec.epoch_id, n, t, point, split_prss_keys(data, subsets, "stored PRSS keys"))
