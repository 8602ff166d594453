"""One member's side of a key epoch (`KeyEpoch`): dealing, commit-then-reveal of public shares,
sealed Shamir shares, the dealing check and export for a restart (`crypto.threshold`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, final

import numpy as np

from . import cbor, dealing, prss
from .ckks import CkksContext, CkksParams, context, pack60
from .epoch_keys import EpochKeys
from .epoch_spec import (
    EpochIncomplete,
    EpochSpec,
    KeyShareContent,
    PublicKeyShare,
    SealedKeyShare,
    common_random_poly,
    dealing_params,
    public_share_commitment,
    split_prss_keys,
    unpack_poly,
)
from .errors import BadSignature, InvalidKeyShare
from .identity import NodeId, NodeIdentity
from .rns import U64, add_mod, column, neg_mod, shoup_mul, shoup_quotients

_SEALED_BOX_OVERHEAD: Final = 48  # X25519 sealed box: ephemeral public key + Poly1305 tag


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

    >>> epoch = KeyEpoch(spec, identity, params)  # draws the fresh secret now
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
        params: CkksParams,
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

    @property
    def params(self) -> CkksParams:
        """The CKKS parameter set this epoch deals under (every key and share is made under it)."""
        return self._context.params

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
    def import_secret(cls, data: bytes, identity: NodeIdentity, params: CkksParams) -> KeyEpoch:
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
        unpack_poly(
            ctx, stored.public_share, len(ctx.seal.key_moduli), InvalidKeyShare, "stored public share"
        )
        unpack_poly(ctx, stored.secret, len(ctx.data_moduli), InvalidKeyShare, "stored secret")
        unpack_poly(ctx, stored.own_share, len(ctx.data_moduli), InvalidKeyShare, "stored own key share")
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
        unpack_poly(self._context, body.share, 3, InvalidKeyShare, "public share")
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
        secret = unpack_poly(ctx, self._dealing.secret, len(ctx.data_moduli), InvalidKeyShare, "own secret")
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
                b, unpack_poly(ctx, self._public[member], 3, InvalidKeyShare, "public share"), key_col
            )
        dealer_shares = np.stack([
            unpack_poly(ctx, self._received[member], data_primes, InvalidKeyShare, "key share")
            for member in self.spec.members
        ])  # fmt: skip
        secret = unpack_poly(ctx, self._dealing.secret, data_primes, InvalidKeyShare, "own secret")
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
            commitments.update(split_prss_keys(packed, subsets, f"PRSS commitments of {member.short}"))
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
            for subset, key in split_prss_keys(keys, subsets, "PRSS keys")
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
            for subset, key in split_prss_keys(content.prss_keys, subsets, f"PRSS keys from {dealer.short}"):
                collector.receive(dealer, subset, key)
        return collector.finish()


def _stored_dealt_keys(spec: EpochSpec, me: NodeId, data: bytes) -> tuple[prss.DealtKey, ...]:
    n, t, point = len(spec.members), spec.threshold, spec.point(me)
    subsets = prss.subsets_dealt(n, t, point) if prss.robust_epoch(n, t) else ()
    return tuple(
        prss.DealtKey(subset, key, tuple(x for x in prss.key_holders(subset, n) if x != point))
        for subset, key in split_prss_keys(data, subsets, "stored PRSS keys")
    )


def _store_once(slot: dict[NodeId, bytes], sender: NodeId, value: bytes, what: str) -> None:
    previous = slot.get(sender)
    if previous is None:
        slot[sender] = value
    elif previous != value:
        raise InvalidKeyShare(f"conflicting {what} from {sender.short}; keeping the first")
