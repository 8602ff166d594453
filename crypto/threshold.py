"""Threshold CKKS: collective keys by key epoch, t-of-n decryption with smudging.

The protocol of Mouchet et al. (PoPETs 2021) with Shamir re-sharing for t-of-n,
on the numpy RNS/NTT representation SEAL uses (`crypto.rns`; docs/SECURITY.md sections 3-5):

Key epoch (`KeyEpoch`), for an ordered member list with Shamir points 1..n:

1. Everyone derives the common random polynomial ``a`` from the epoch id (a hash of
   the ledger block that opened the epoch): SEAL's Blake2xb PRNG seeded by
   ``BLAKE2b-512("swarmnode/ckks-crs/v1" || epoch id)``.
2. Member i draws a fresh ternary secret ``s_i`` and error ``e_i`` (SEAL samplers
   seeded from `os.urandom`) and publishes ``b_i = -a * s_i + e_i`` (`PublicKeyShare`).
3. Member i Shamir-shares ``s_i`` coefficient-wise over every data prime with a random
   degree ``t - 1`` polynomial ``f_i`` (uniform coefficients from `os.urandom`) and
   sends ``f_i(x_k)`` to member k in an X25519 sealed box (`SealedKeyShare`); the box
   content names epoch, dealer and recipient, so a box cannot be replayed elsewhere.
   The content also holds blinding shares and the dealer's signature; once every
   bundle is on the ledger each dealer publishes a fingerprint of its dealing that
   every recipient checks its share against (verifiable dealing, `crypto.dealing`).
4. Collective public key ``(sum_i b_i, a)`` (members compare its digest on the ledger).
   Member k keeps its own secret ``s_i`` (it encrypts its updates with it, `ckks.encrypt`)
   and every dealer's share ``f_i(x_k)``: for any set K of dealers, ``sum_{i in K}
   f_i(x_k)`` is a point on a degree ``t - 1`` polynomial whose value at 0 is
   ``s_K = sum_{i in K} s_i``.

Decryption of an aggregate (rescaled ``c0`` and the (contributor, mask seed) pairs of the
set K it sums, see `ckks`) by a decrypt set T (``|T| >= t``): member k publishes
``d_k = rescale(lambda_k^T * sum_{i in K} a_i * f_i(x_k) + e_k)`` with ``a_i``
contributor i's mask, ``lambda_k^T`` its Lagrange coefficient at 0 for the points of T
(per prime), ``e_k`` smudging noise, a discrete Gaussian of sigma = 2^68 (integer-exact,
`os.urandom`, `smudging.gaussian_noise`; every share counted against the key epoch's
budget, `smudging.SmudgingBudget`) and ``rescale(x) = round(x / q0) mod q1`` (`CkksContext.rescale`);
``c0 + sum_{k in T} d_k`` mod q1 decodes to the sum, since ``c0 = sum_{i in K}
(Delta*m_i + e_i - a_i * s_i)``. Rescaling a share is rounding after the smudging, so it
reveals nothing more; its error (at most q0/2 ~ 2^59 per share) is far below the
smudging's sigma of 2^68 and halves the share (one residue per coefficient instead of two). A
share is bound to T through its Lagrange coefficient: combined with any other set it
decodes to noise. Fewer than t shares carry no information about any ``s_i`` (Shamir), and
the smudging hides each member's dealer shares in its published share. A share is bound
to K too: it removes exactly the masks of K, so it decrypts the sum over K and nothing
else (K is at least min_peers contributors, checked by every decryptor).

Not covered (documented limits): no proofs of correct decryption shares: a member that
decrypts wrongly makes the round fail visibly (members compare merged-model hashes), it
cannot learn more. A wrong dealing is caught and attributed in the epoch (`crypto.dealing`).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, final

import numpy as np

from . import cbor, dealing, prss
from .ckks import (
    BATCH_CHUNKS,
    DEFAULT_PARAMS,
    F64,
    MAX_VALUES,
    WIRE_VERSION,
    CkksContext,
    CkksParams,
    EncryptedVector,
    chunk_count,
    context,
    decode_blob,
    encode_blob,
    pack60,
    packed_size,
    rescaled_body_size,
    split_weight,
    unpack60,
)
from .envelope import ENVELOPE_OVERHEAD, MessageTypes
from .errors import BadSignature, InvalidDecryptionShare, InvalidKeyShare, ProtocolError
from .identity import NodeId, NodeIdentity
from .rns import (
    U64,
    add_mod,
    column,
    neg_mod,
    scalar_operand,
    shoup_mul,
    shoup_quotients,
    signed_split_residues,
)
from .smudging import RandomBytes, SmudgingBudget, gaussian_noise

EPOCH_ID_SIZE: Final = 32
_CRS_DOMAIN: Final = b"swarmnode/ckks-crs/v1"
_SHARE_MAGIC: Final = b"SND1"
_COMMITMENT_DOMAIN: Final = b"swarmnode/ckks-public-share/v1\x00"
_SEALED_BOX_OVERHEAD: Final = 48  # X25519 sealed box: ephemeral public key + Poly1305 tag


class EpochIncomplete(Exception):
    """Local: the key epoch is still missing messages (see `KeyEpoch.missing`)."""


class InsufficientShares(Exception):
    """Local: fewer decryption shares than the decrypt set (or the threshold) needs."""


class DecryptionRefused(Exception):
    """Local: an honest member refuses to make this decryption share (see the message)."""


def default_threshold(members: int) -> int:
    """The default (genesis `DecryptionThreshold` 1/2): a strict majority, ``floor(n / 2) + 1``."""
    return members // 2 + 1


@final
@dataclass(frozen=True, slots=True)
class EpochSpec:
    """A key epoch as fixed on the ledger: its id, ordered members and threshold t.

    Member ``members[k]`` holds Shamir point ``x = k + 1``.
    """

    epoch_id: bytes
    members: tuple[NodeId, ...]
    threshold: int

    def __post_init__(self) -> None:
        if len(self.epoch_id) != EPOCH_ID_SIZE:
            raise ValueError(f"epoch id must be {EPOCH_ID_SIZE} bytes")
        if len(set(self.members)) != len(self.members) or not self.members:
            raise ValueError("members must be a non-empty list of distinct node ids")
        if not 1 <= self.threshold <= len(self.members):
            raise ValueError(f"threshold must be in [1, {len(self.members)}]")

    def point(self, node: NodeId) -> int:
        """The Shamir x-coordinate of `node`."""
        try:
            return self.members.index(node) + 1
        except ValueError:
            raise ValueError(f"{node.short} is not a member of this epoch") from None

    def is_member(self, node: NodeId) -> bool:
        return node in self.members


# -- envelope bodies ---------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class PublicKeyShare:
    """``b_i = -a * s_i + e_i`` of the sender (key level, NTT form, 60-bit packed) and, in a
    robust epoch, the commitments to the PRSS keys it deals (`prss.key_commitment`, 32 bytes
    each in `prss.deal_keys` order; empty otherwise): both are fixed by its commitment."""

    epoch: bytes
    share: bytes
    prss_commitments: bytes


@final
@dataclass(frozen=True, slots=True)
class SealedKeyShare:
    """The sender's Shamir share for `recipient`, in an X25519 sealed box to it."""

    epoch: bytes
    recipient: NodeId
    box: bytes


@final
@dataclass(frozen=True, slots=True)
class KeyShareContent:
    """Plaintext inside a `SealedKeyShare` box: ``f_dealer(x_recipient)`` (data level, packed),
    the blinding shares ``eta_b(x_recipient)``, in a robust epoch the PRSS keys the dealer
    deals the recipient (`prss.subsets_dealt` order, 32 bytes each; empty otherwise) and the
    dealer's signature over all three (`dealing.sign_share`), which lets the recipient prove
    what it received."""

    epoch: bytes
    dealer: NodeId
    recipient: NodeId
    share: bytes
    blinding: bytes
    signature: bytes
    prss_keys: bytes


def _poly_bytes(params: CkksParams, primes: int) -> int:
    return packed_size(primes * params.degree)


def threshold_messages(params: CkksParams = DEFAULT_PARAMS) -> MessageTypes:
    """The key-epoch envelope types with size limits for `params` (register with the node's codec)."""
    slack = ENVELOPE_OVERHEAD + 512  # CBOR framing of the bodies, box overhead, ids
    types = MessageTypes()
    types.register("ckks.public_share", PublicKeyShare, max_size=_poly_bytes(params, 3) + slack)
    prss_keys = prss.MAX_PRSS_KEYS * prss.PRSS_KEY_SIZE
    types.register("ckks.sealed_share", SealedKeyShare, max_size=_poly_bytes(params, 2) + prss_keys + slack)
    return types


THRESHOLD_MESSAGES: Final = threshold_messages(DEFAULT_PARAMS)


# -- helpers ------------------------------------------------------------------------------


def common_random_poly(ctx: CkksContext, epoch_id: bytes) -> U64:
    """The CRS ``a`` (key level, NTT form), identical for every member of the epoch."""
    seed = hashlib.blake2b(_CRS_DOMAIN + epoch_id, digest_size=64).digest()
    return ctx.seal.sample_uniform(seed)


def public_share_commitment(
    epoch_id: bytes, member: NodeId, packed_share: bytes, prss_commitments: bytes
) -> bytes:
    """SHA-256 binding a packed public share and the PRSS key commitments to their epoch and
    member (what goes on the ledger; `commitment_of_digest` with the share's SHA-256)."""
    return commitment_of_digest(epoch_id, member, hashlib.sha256(packed_share).digest(), prss_commitments)


def commitment_of_digest(
    epoch_id: bytes, member: NodeId, share_digest: bytes, prss_commitments: bytes
) -> bytes:
    """`public_share_commitment` from the share's SHA-256: what the ledger checks a PRSS
    complaint's commitments against without the 180 KB share."""
    data = _COMMITMENT_DOMAIN + epoch_id + member.public_key + share_digest + prss_commitments
    return hashlib.sha256(data).digest()


def _unpack_poly(ctx: CkksContext, data: bytes, primes: int, error: type[ProtocolError], what: str) -> U64:
    if len(data) != _poly_bytes(ctx.params, primes):
        raise error(f"{what} has {len(data)} bytes, expected {_poly_bytes(ctx.params, primes)}")
    poly = unpack60(data, primes * ctx.params.degree).reshape(primes, ctx.params.degree)
    if bool(np.any(poly >= column(ctx.seal.key_moduli[:primes]))):
        raise error(f"{what}: a coefficient is not below its prime")
    return poly


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


def dealing_params(ctx: CkksContext) -> dealing.DealingParams:
    return dealing.DealingParams(tuple(ctx.data_moduli), ctx.params.degree)


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


# -- key epoch ----------------------------------------------------------------------------


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
    def import_secret(cls, data: bytes, params: CkksParams = DEFAULT_PARAMS) -> EpochKeys:
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
        public = _unpack_poly(ctx, stored.public_key[:half], key_primes, InvalidKeyShare, "stored public key")
        crs = _unpack_poly(ctx, stored.public_key[half:], key_primes, InvalidKeyShare, "stored public key")
        if not np.array_equal(crs, common_random_poly(ctx, spec.epoch_id)):
            raise InvalidKeyShare("stored public key does not match the epoch's common random polynomial")
        data_primes = len(ctx.data_moduli)
        secret = _unpack_poly(ctx, stored.secret, data_primes, InvalidKeyShare, "stored secret")
        size = _poly_bytes(params, data_primes)
        members = len(spec.members)
        if len(stored.dealer_shares) != members * size:
            raise InvalidKeyShare(f"stored dealer shares: need {members} of {size} bytes")
        dealer_shares = np.stack([
            _unpack_poly(ctx, stored.dealer_shares[k * size : (k + 1) * size], data_primes, InvalidKeyShare,
                         "stored dealer share")
            for k in range(members)
        ])  # fmt: skip
        prss_keys = _stored_prss_keys(spec, spec.point(stored.me), stored.prss_keys)
        return cls(ctx, spec, stored.me, np.stack([public, crs]), secret, dealer_shares, prss_keys)


def _split_keys(
    data: bytes, subsets: Sequence[prss.Subset], what: str
) -> tuple[tuple[prss.Subset, bytes], ...]:
    size = prss.PRSS_KEY_SIZE
    if len(data) != size * len(subsets):
        raise InvalidKeyShare(f"{what}: {len(data)} bytes, need {len(subsets)} PRSS keys of {size}")
    return tuple((s, data[k * size : (k + 1) * size]) for k, s in enumerate(subsets))


def _stored_prss_keys(spec: EpochSpec, point: int, data: bytes) -> prss.PrssKeys | None:
    n, t = len(spec.members), spec.threshold
    if not prss.robust_epoch(n, t):
        if data:
            raise InvalidKeyShare("stored keys: PRSS keys for an epoch too large for them")
        return None
    subsets = tuple(s for s in prss.prss_subsets(n, t) if point not in s)
    return prss.PrssKeys(spec.epoch_id, n, t, point, _split_keys(data, subsets, "stored PRSS keys"))


@final
@dataclass(frozen=True, slots=True)
class OwnDealing:
    """What a member deals in a key epoch, all it needs to reveal and finish it: the packed
    public share ``b_i`` (key level), its secret ``s_i`` and own Shamir share ``f_i(x_i)``
    (data level, secret), the seed of its Shamir and blinding polynomials (secret, for the
    fingerprint), the PRSS keys it draws (robust epochs; secret) and the sealed shares for
    the other members (in member order)."""

    public_share: bytes
    secret: bytes
    own_share: bytes
    seed: bytes
    sealed: tuple[SealedKeyShare, ...]
    prss: tuple[prss.DealtKey, ...]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class StoredSealedShare:
    recipient: NodeId
    box: bytes


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class StoredKeyEpoch:
    """Schema of `KeyEpoch.export_secret` (local storage, never sent)."""

    version: int
    epoch_id: bytes
    members: tuple[NodeId, ...]
    threshold: int
    me: NodeId
    public_share: bytes
    secret: bytes
    own_share: bytes
    seed: bytes
    sealed: tuple[StoredSealedShare, ...]
    prss_keys: bytes  # the PRSS keys we drew, in `prss.deal_keys` order (robust epochs)


def _prss_subsets_dealt(spec: EpochSpec, dealer: NodeId, recipient: NodeId) -> tuple[prss.Subset, ...]:
    n, t = len(spec.members), spec.threshold
    if not prss.robust_epoch(n, t):
        return ()
    return prss.subsets_dealt(n, t, spec.point(dealer), spec.point(recipient))


def _sealed_box_size(ctx: CkksContext, spec: EpochSpec, dealer: NodeId, recipient: NodeId) -> int:
    """Byte size of the sealed box holding one Shamir share (CBOR lengths depend on sizes only)."""
    params = dealing_params(ctx)
    prss_size = prss.PRSS_KEY_SIZE * len(_prss_subsets_dealt(spec, dealer, recipient))
    content = KeyShareContent(
        spec.epoch_id, dealer, recipient, bytes(params.share_bytes), bytes(params.blinding_bytes), bytes(64),
        bytes(prss_size),
    )  # fmt: skip
    return len(cbor.dumps_dataclass(content)) + _SEALED_BOX_OVERHEAD


def _deal(ctx: CkksContext, spec: EpochSpec, identity: NodeIdentity, a: U64) -> OwnDealing:
    """Draw a fresh secret s_i and error e_i; publish-ready ``b_i = -a*s_i + e_i`` and the
    Shamir shares of s_i with their blinding shares, each signed for its recipient
    (`crypto.dealing`). The polynomials go out of scope here: the shares (the other
    members' inside sealed boxes), s_i itself (data level) and the 32-byte seed the
    coefficients come from (for the fingerprint) survive."""
    seal_ctx = ctx.seal
    key_col = column(seal_ctx.key_moduli)
    secret = seal_ctx.ntt(seal_ctx.sample_ternary(os.urandom(64)))
    error = seal_ctx.ntt(seal_ctx.sample_error(os.urandom(64)))
    a_times_s = shoup_mul(a, secret, shoup_quotients(secret, seal_ctx.key_moduli), key_col)
    public_share = pack60(add_mod(neg_mod(a_times_s, key_col), error, key_col))
    me = identity.node_id
    params, seed = dealing_params(ctx), os.urandom(32)
    dealt = prss.deal_keys(spec, me) if prss.robust_epoch(len(spec.members), spec.threshold) else ()
    coefficients = dealing.shamir_coefficients(params, seed, spec.threshold)
    shares = dealing.shamir_shares(params, secret[: len(ctx.data_moduli)], coefficients, len(spec.members))
    own = b""
    sealed: list[SealedKeyShare] = []
    for x, (member, share) in enumerate(zip(spec.members, shares, strict=True), start=1):
        packed = pack60(share)
        if member == me:
            own = packed
            continue
        blinding = dealing.blinding_shares(params, seed, spec.threshold, x)
        keys = b"".join(d.key for d in dealt if x in d.recipients)
        signature = dealing.sign_share(params, identity, spec.epoch_id, member, packed, blinding, keys)
        content = KeyShareContent(spec.epoch_id, me, member, packed, blinding, signature, keys)
        sealed.append(SealedKeyShare(spec.epoch_id, member, member.seal(cbor.dumps_dataclass(content))))
    data_secret = pack60(secret[: len(ctx.data_moduli)])
    return OwnDealing(
        public_share=public_share,
        secret=data_secret,
        own_share=own,
        seed=seed,
        sealed=tuple(sealed),
        prss=dealt,
    )


@final
class KeyEpoch:
    """One member's side of a key epoch, driven with envelope bodies in and out (no I/O).

    >>> epoch = KeyEpoch(spec, identity)          # draws the fresh secret now
    >>> ledger.submit(epoch.commitment)           # 32 bytes: hash of our public share
    >>> epoch.expect_commitments(committed)       # every member's, once all are on the ledger
    >>> for body in epoch.outgoing(): send(body)  # 1 PublicKeyShare + n-1 SealedKeyShare
    >>> epoch.receive(envelope.sender, envelope.body)   # ProtocolError on bad input
    >>> keys = epoch.finish()                     # once `epoch.missing()` is empty

    Commit, then reveal: a member who saw the others' public shares before choosing its
    own could publish ``b_j = b* - sum_{i != j} b_i`` and make the collective key one whose
    secret it alone knows (a rogue-key attack). So the driver must reveal public shares
    (serve them, or send `outgoing()[0]`) only after every member's commitment is fixed on
    the ledger. The commitment is `commitment` (or, equivalently, the SHA-256 of the
    content-addressed public-share blob); `expect_commitments` makes `receive` check each
    public share against it. Checking is optional when the driver already verifies blobs
    against ledger hashes; the reveal *order* is what defeats the attack.

    Receiving the same message twice is harmless; a *different* message from the same
    sender for the same slot raises `InvalidKeyShare` and keeps the first.
    """

    __slots__ = (
        "_a",
        "_commitments",
        "_contents",
        "_context",
        "_dealing",
        "_identity",
        "_outgoing",
        "_prss_commitments",
        "_public",
        "_received",
        "commitment",
        "spec",
    )

    def __init__(
        self,
        spec: EpochSpec,
        identity: NodeIdentity,
        params: CkksParams = DEFAULT_PARAMS,
        *,
        dealing: OwnDealing | None = None,
    ) -> None:
        """Draw a fresh secret for `spec` (or, from `import_secret` only, take back a stored
        `dealing` of ours: the same public share, own Shamir share and sealed boxes)."""
        if not spec.is_member(identity.node_id):
            raise ValueError("this node is not a member of the epoch")
        ctx = context(params)
        self._context = ctx
        self._identity = identity
        self.spec: Final = spec
        self._a = common_random_poly(ctx, spec.epoch_id)
        if dealing is None:
            dealing = _deal(ctx, spec, identity, self._a)
        me = identity.node_id
        self._dealing = dealing
        own_commitments = b"".join(d.commitment(spec.epoch_id) for d in dealing.prss)
        self._public: dict[NodeId, bytes] = {me: dealing.public_share}
        self._prss_commitments: dict[NodeId, bytes] = {me: own_commitments}
        self._received: dict[NodeId, bytes] = {me: dealing.own_share}
        self._contents: dict[NodeId, KeyShareContent] = {}  # signed, from the other dealers
        self._outgoing: tuple[PublicKeyShare | SealedKeyShare, ...] = (
            PublicKeyShare(spec.epoch_id, dealing.public_share, own_commitments),
            *dealing.sealed,
        )
        self.commitment: Final = public_share_commitment(
            spec.epoch_id, me, dealing.public_share, own_commitments
        )
        self._commitments: dict[NodeId, bytes] | None = None

    def export_secret(self) -> bytes:
        """Canonical bytes of our dealing, to finish this epoch after a restart (SECRET: our
        own Shamir share of s_i is inside; store like `EpochKeys.export_secret`, mode 0600).

        What other members sent us is not included (it is refetched from their committed
        bundles), nor are the fixed commitments (they are on the ledger)."""
        d = self._dealing
        stored = StoredKeyEpoch(
            version=4,
            epoch_id=self.spec.epoch_id,
            members=self.spec.members,
            threshold=self.spec.threshold,
            me=self._identity.node_id,
            public_share=d.public_share,
            secret=d.secret,
            own_share=d.own_share,
            seed=d.seed,
            sealed=tuple(StoredSealedShare(recipient=b.recipient, box=b.box) for b in d.sealed),
            prss_keys=b"".join(k.key for k in d.prss),
        )
        return cbor.dumps_dataclass(stored)

    @classmethod
    def import_secret(
        cls, data: bytes, identity: NodeIdentity, params: CkksParams = DEFAULT_PARAMS
    ) -> KeyEpoch:
        """Inverse of `export_secret` for the same identity: the restored epoch has the same
        commitment and reveals byte-identical shares. Every field is checked; a bad file raises
        a `ProtocolError` subclass (`SchemaError`, `NonCanonicalEncoding`, `InvalidKeyShare`...)
        whose message names what is wrong."""
        stored = cbor.loads_dataclass(StoredKeyEpoch, data, max_depth=3)
        if stored.version != 4:
            raise InvalidKeyShare(f"unsupported stored key-epoch version {stored.version}")
        if len(stored.seed) != 32:
            raise InvalidKeyShare(f"stored key epoch: polynomial seed of {len(stored.seed)} bytes, not 32")
        try:
            spec = EpochSpec(stored.epoch_id, stored.members, stored.threshold)
        except ValueError as exc:
            raise InvalidKeyShare(f"stored key epoch: {exc}") from None
        me = identity.node_id
        if stored.me != me:
            raise InvalidKeyShare(f"stored key epoch belongs to {stored.me.short}, not to {me.short}")
        if not spec.is_member(me):
            raise InvalidKeyShare("stored key epoch: this node is not one of its members")
        ctx = context(params)
        _unpack_poly(
            ctx, stored.public_share, len(ctx.seal.key_moduli), InvalidKeyShare, "stored public share"
        )
        _unpack_poly(ctx, stored.secret, len(ctx.data_moduli), InvalidKeyShare, "stored secret")
        _unpack_poly(ctx, stored.own_share, len(ctx.data_moduli), InvalidKeyShare, "stored own key share")
        others = tuple(m for m in spec.members if m != me)
        recipients = tuple(s.recipient for s in stored.sealed)
        if recipients != others:
            raise InvalidKeyShare("stored key epoch: need one sealed share per other member, in member order")
        for share in stored.sealed:
            expected = _sealed_box_size(ctx, spec, me, share.recipient)
            if len(share.box) != expected:
                raise InvalidKeyShare(
                    f"stored sealed share for {share.recipient.short} has {len(share.box)} bytes, "
                    f"expected {expected}"
                )
        dealing = OwnDealing(
            public_share=stored.public_share,
            secret=stored.secret,
            own_share=stored.own_share,
            seed=stored.seed,
            sealed=tuple(SealedKeyShare(spec.epoch_id, s.recipient, s.box) for s in stored.sealed),
            prss=_stored_dealt_keys(spec, me, stored.prss_keys),
        )
        return cls(spec, identity, params, dealing=dealing)

    def expect_commitments(self, commitments: Mapping[NodeId, bytes]) -> tuple[NodeId, ...]:
        """Fix every member's public-share commitment (from the ledger) before anything is revealed.

        Returns the members whose already received public share does not match their
        commitment (dropped: they count as missing). Raises ValueError if the mapping does
        not cover exactly the members, or our own commitment differs (the ledger is not ours).
        """
        if self._commitments is not None:
            if dict(commitments) != self._commitments:
                raise ValueError("commitments are already fixed, differently")
            return ()
        if set(commitments) != set(self.spec.members) or any(len(c) != 32 for c in commitments.values()):
            raise ValueError("need one 32-byte commitment for every member of the epoch")
        if commitments[self._identity.node_id] != self.commitment:
            raise ValueError("the ledger's commitment for this node is not ours")
        self._commitments = dict(commitments)
        bad = tuple(
            m
            for m, share in self._public.items()
            if public_share_commitment(self.spec.epoch_id, m, share, self._prss_commitments[m])
            != self._commitments[m]
        )
        for member in bad:
            del self._public[member]
            del self._prss_commitments[member]
        return bad

    def outgoing(self) -> tuple[PublicKeyShare | SealedKeyShare, ...]:
        """Our public share (first; broadcast) and one sealed share per other member (to each).

        Reveal the public share only once every member's commitment is fixed on the ledger
        (see the class docstring); the sealed shares may go at any time.
        """
        return self._outgoing

    def receive(self, sender: NodeId, body: object) -> None:
        """Accept a verified envelope's sender and body; raise a `ProtocolError` if it is bad."""
        if not self.spec.is_member(sender):
            raise InvalidKeyShare(f"{sender.short} is not a member of this epoch")
        if isinstance(body, PublicKeyShare):
            self._receive_public(sender, body)
        elif isinstance(body, SealedKeyShare):
            self._receive_sealed(sender, body)
        else:
            raise InvalidKeyShare(f"unexpected key-epoch message {type(body).__name__}")

    def _receive_public(self, sender: NodeId, body: PublicKeyShare) -> None:
        if body.epoch != self.spec.epoch_id:
            raise InvalidKeyShare("public share for another epoch")
        _unpack_poly(self._context, body.share, 3, InvalidKeyShare, "public share")
        n, t = len(self.spec.members), self.spec.threshold
        dealt = prss.subsets_dealt(n, t, self.spec.point(sender)) if prss.robust_epoch(n, t) else ()
        if len(body.prss_commitments) != 32 * len(dealt):
            raise InvalidKeyShare(f"public share of {sender.short}: need {len(dealt)} PRSS key commitments")
        digest = public_share_commitment(self.spec.epoch_id, sender, body.share, body.prss_commitments)
        if self._commitments is not None and digest != self._commitments[sender]:
            raise InvalidKeyShare(f"public share of {sender.short} does not match its commitment")
        _store_once(self._public, sender, body.share, "public share")
        _store_once(self._prss_commitments, sender, body.prss_commitments, "PRSS key commitments")

    def _receive_sealed(self, sender: NodeId, body: SealedKeyShare) -> None:
        me = self._identity.node_id
        if body.epoch != self.spec.epoch_id:
            raise InvalidKeyShare("sealed share for another epoch")
        if body.recipient != me or sender == me:
            raise InvalidKeyShare("sealed share is not addressed to this node")
        plaintext = self._identity.unseal(body.box)  # SealedBoxError if not ours / tampered
        content = cbor.loads_dataclass(KeyShareContent, plaintext, max_depth=1)
        if (content.epoch, content.dealer, content.recipient) != (self.spec.epoch_id, sender, me):
            raise InvalidKeyShare("sealed share content names another epoch, dealer or recipient")
        try:
            dealing.verify_share(
                dealing_params(self._context), content.epoch, sender, me, content.share, content.blinding,
                content.signature, content.prss_keys,
            )  # fmt: skip
        except BadSignature:
            raise InvalidKeyShare(f"sealed share content not signed by its dealer {sender.short}") from None
        # A malformed share is kept: `complaints` proves it (`finish` refuses it).
        _store_once(self._received, sender, content.share, "sealed share")
        self._contents.setdefault(sender, content)

    def fingerprint(self, coin: bytes) -> bytes:
        """Our dealing's fingerprint for the epoch's public coin (`dealing.make_fingerprint`)."""
        ctx = self._context
        secret = _unpack_poly(ctx, self._dealing.secret, len(ctx.data_moduli), InvalidKeyShare, "own secret")
        t = self.spec.threshold
        return dealing.make_fingerprint(dealing_params(ctx), coin, self._dealing.seed, secret, t)

    def complaints(
        self, coin: bytes, fingerprints: Mapping[NodeId, bytes]
    ) -> tuple[tuple[NodeId, dealing.DealingEvidence], ...]:
        """Check each other dealer's share for us against its fingerprint (once nothing is
        missing): the dealers whose share is malformed or off, with the evidence to prove it."""
        params, me = dealing_params(self._context), self._identity.node_id
        x, t = self.spec.point(me), self.spec.threshold
        found = []
        for dealer in self.spec.members:
            content = self._contents.get(dealer)
            if content is None:
                continue  # ourselves, or not received yet (`missing`)
            share, blinding = content.share, content.blinding
            fault = dealing.find_fault(params, coin, t, x, fingerprints[dealer], share, blinding)
            if fault is not None:
                proof = dealing.evidence(params, share, blinding, content.signature, fault, content.prss_keys)
                found.append((dealer, proof))
        return tuple(found)

    def missing(self) -> tuple[NodeId, ...]:
        """Members from which we still lack the public share or our sealed share."""
        return tuple(m for m in self.spec.members if m not in self._public or m not in self._received)

    def finish(self) -> EpochKeys:
        """The collective public key, our secret and every dealer's share for us;
        `EpochIncomplete` until nothing is missing."""
        if missing := self.missing():
            raise EpochIncomplete(f"missing messages from {', '.join(m.short for m in missing)}")
        ctx = self._context
        key_col = column(ctx.seal.key_moduli)
        data_primes = len(ctx.data_moduli)
        b = np.zeros_like(self._a)
        for member in self.spec.members:  # fixed order; the sum is order-independent anyway
            b = add_mod(
                b, _unpack_poly(ctx, self._public[member], 3, InvalidKeyShare, "public share"), key_col
            )
        dealer_shares = np.stack([
            _unpack_poly(ctx, self._received[member], data_primes, InvalidKeyShare, "key share")
            for member in self.spec.members
        ])  # fmt: skip
        secret = _unpack_poly(ctx, self._dealing.secret, data_primes, InvalidKeyShare, "own secret")
        return EpochKeys(
            ctx, self.spec, self._identity.node_id, np.stack([b, self._a]), secret, dealer_shares,
            self._collect_prss(),
        )  # fmt: skip

    def prss_evidence(self, dealer: NodeId) -> dealing.PrssEvidence:
        """What a complaint about `dealer`'s PRSS keys for us reveals (`crypto.prss_complaint`):
        the signed statement and keys of its box, its public share's digest and commitments."""
        content = self._contents[dealer]
        return dealing.PrssEvidence(
            share_length=len(content.share),
            blinding_length=len(content.blinding),
            segment_hashes=dealing.segment_hashes(
                dealing_params(self._context), content.share, content.blinding
            ),
            signature=content.signature,
            prss_keys=content.prss_keys,
            public_share_digest=hashlib.sha256(self._public[dealer]).digest(),
            prss_commitments=self._prss_commitments[dealer],
        )

    def prss_faults(self) -> tuple[NodeId, ...]:
        """The dealers whose PRSS keys for us are missing from their box or do not match their
        committed commitments (once nothing is `missing`): `finish` refuses them."""
        return tuple(d for d, content in self._contents.items() if self._prss_fault(d, content.prss_keys))

    def _dealer_commitments(self) -> dict[prss.Subset, bytes]:
        n, t = len(self.spec.members), self.spec.threshold
        commitments: dict[prss.Subset, bytes] = {}
        for member, packed in self._prss_commitments.items():
            subsets = prss.subsets_dealt(n, t, self.spec.point(member))
            commitments.update(_split_keys(packed, subsets, f"PRSS commitments of {member.short}"))
        return commitments

    def _prss_fault(self, dealer: NodeId, keys: bytes) -> bool:
        n, t = len(self.spec.members), self.spec.threshold
        if not prss.robust_epoch(n, t):
            return bool(keys)
        subsets = prss.subsets_dealt(n, t, self.spec.point(dealer), self.spec.point(self._identity.node_id))
        if len(keys) != prss.PRSS_KEY_SIZE * len(subsets):
            return True
        commitments = self._dealer_commitments()
        return any(
            prss.key_commitment(self.spec.epoch_id, subset, key) != commitments[subset]
            for subset, key in _split_keys(keys, subsets, "PRSS keys")
        )

    def _collect_prss(self) -> prss.PrssKeys | None:
        """Our PRSS keys (robust epochs): our own draws and every dealer's keys for us,
        each checked against its dealer's commitment (`prss.InvalidPrssKey` names the dealer)."""
        n, t = len(self.spec.members), self.spec.threshold
        if not prss.robust_epoch(n, t):
            return None
        me = self._identity.node_id
        collector = prss.PrssKeyCollector(self.spec, me, self._dealing.prss, self._dealer_commitments())
        for dealer, content in self._contents.items():
            subsets = prss.subsets_dealt(n, t, self.spec.point(dealer), self.spec.point(me))
            if len(content.prss_keys) != prss.PRSS_KEY_SIZE * len(subsets):
                raise prss.InvalidPrssKey(
                    f"{dealer.short} dealt us {len(content.prss_keys)} bytes of PRSS keys"
                )
            for subset, key in _split_keys(content.prss_keys, subsets, f"PRSS keys from {dealer.short}"):
                collector.receive(dealer, subset, key)
        return collector.finish()


def _stored_dealt_keys(spec: EpochSpec, me: NodeId, data: bytes) -> tuple[prss.DealtKey, ...]:
    n, t, point = len(spec.members), spec.threshold, spec.point(me)
    subsets = prss.subsets_dealt(n, t, point) if prss.robust_epoch(n, t) else ()
    return tuple(
        prss.DealtKey(subset, key, tuple(x for x in prss.key_holders(subset, n) if x != point))
        for subset, key in _split_keys(data, subsets, "stored PRSS keys")
    )


def _store_once(slot: dict[NodeId, bytes], sender: NodeId, value: bytes, what: str) -> None:
    previous = slot.get(sender)
    if previous is None:
        slot[sender] = value
    elif previous != value:
        raise InvalidKeyShare(f"conflicting {what} from {sender.short}; keeping the first")


# -- decryption shares ----------------------------------------------------------------------


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
        if header.version != WIRE_VERSION or header.parms_id != ctx.parms_id:
            raise InvalidDecryptionShare("decryption share for another version or parameters")
        if len(header.epoch) != EPOCH_ID_SIZE or len(header.aggregate) != 32:
            raise InvalidDecryptionShare("bad epoch id or aggregate digest size")
        if not t or any(b <= a for a, b in itertools.pairwise(t)) or t[0] < 1 or header.member not in t:
            raise InvalidDecryptionShare("decrypt set must be increasing positive points including the maker")
        if not 0 < header.length <= MAX_VALUES or header.chunks != chunk_count(ctx.params, header.length):
            raise InvalidDecryptionShare("decryption share length/shape mismatch")
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
