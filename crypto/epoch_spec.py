"""A key epoch as fixed on the ledger (`EpochSpec`), the messages its members exchange and the
commitments and polynomial encodings every part of threshold CKKS (`crypto.threshold`) shares."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

import numpy as np

from . import dealing, prss
from .ckks import DEFAULT_PARAMS, CkksContext, CkksParams, packed_size, unpack60
from .envelope import ENVELOPE_OVERHEAD, MessageTypes
from .errors import InvalidKeyShare, ProtocolError
from .identity import NodeId
from .rns import U64, column

EPOCH_ID_SIZE: Final = 32
_CRS_DOMAIN: Final = b"swarmnode/ckks-crs/v1"
_COMMITMENT_DOMAIN: Final = b"swarmnode/ckks-public-share/v1\x00"


class EpochIncomplete(Exception):
    """Local: the key epoch is still missing messages (see `KeyEpoch.missing`)."""


class InsufficientShares(Exception):
    """Local: fewer decryption shares than the decrypt set (or the threshold) needs."""


class DecryptionRefused(Exception):
    """Local: an honest member refuses to make this decryption share (see the message)."""


def default_threshold(members: int) -> int:
    """DESIGN default: a strict majority, ``floor(n / 2) + 1``."""
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


def poly_bytes(params: CkksParams, primes: int) -> int:
    return packed_size(primes * params.degree)


def threshold_messages(params: CkksParams) -> MessageTypes:
    """The key-epoch envelope types with size limits for `params` (register with the node's codec)."""
    slack = ENVELOPE_OVERHEAD + 512  # CBOR framing of the bodies, box overhead, ids
    types = MessageTypes()
    types.register("ckks.public_share", PublicKeyShare, max_size=poly_bytes(params, 3) + slack)
    prss_keys = prss.MAX_PRSS_KEYS * prss.PRSS_KEY_SIZE
    types.register("ckks.sealed_share", SealedKeyShare, max_size=poly_bytes(params, 2) + prss_keys + slack)
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


def unpack_poly(ctx: CkksContext, data: bytes, primes: int, error: type[ProtocolError], what: str) -> U64:
    if len(data) != poly_bytes(ctx.params, primes):
        raise error(f"{what} has {len(data)} bytes, expected {poly_bytes(ctx.params, primes)}")
    poly = unpack60(data, primes * ctx.params.degree).reshape(primes, ctx.params.degree)
    if bool(np.any(poly >= column(ctx.seal.key_moduli[:primes]))):
        raise error(f"{what}: a coefficient is not below its prime")
    return poly


def dealing_params(ctx: CkksContext) -> dealing.DealingParams:
    return dealing.DealingParams(tuple(ctx.data_moduli), ctx.params.degree)


def split_prss_keys(
    data: bytes, subsets: Sequence[prss.Subset], what: str
) -> tuple[tuple[prss.Subset, bytes], ...]:
    size = prss.PRSS_KEY_SIZE
    if len(data) != size * len(subsets):
        raise InvalidKeyShare(f"{what}: {len(data)} bytes, need {len(subsets)} PRSS keys of {size}")
    return tuple((s, data[k * size : (k + 1) * size]) for k, s in enumerate(subsets))
