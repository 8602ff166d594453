"""Secure merge facade: what the round protocol calls, bytes in and bytes out.

A round with threshold CKKS, seen from one member (the whole round: README, Architecture)::

    # key epoch (whenever membership changes; spec fixed on the ledger)
    epoch = start_key_epoch(spec, identity, params)
    submit(epoch.commitment)                   # 32 bytes, to the ledger
    epoch.expect_commitments(committed)        # all members' commitments, once on the ledger
    for body in epoch.outgoing(): ...          # envelopes: PublicKeyShare to all, SealedKeyShare to each
    epoch.receive(env.sender, env.body)        # for every key-epoch envelope received
    submit(epoch.fingerprint(coin))            # coin: once every bundle is on the ledger (crypto.dealing)
    epoch.complaints(coin, fingerprints)       # () to confirm; else submit these, do not finish
    keys = epoch.finish()                      # when epoch.missing() == ()

    # every round: the binding of this chain, key epoch, round and the round's ledger nonce
    binding = RoundBinding(chain_id, keys.spec.epoch_id, round_number, round_nonce)

    # contribute: weight = local samples x weightage, total = the round's total Ready weight
    blob = encrypt_update(keys, params_vector, weight, total_weight, binding=binding)

    # leader (and verifier): add the contributions, each checked against its committed
    # contributor and the round's binding; hash the result and commit it
    aggregate = aggregate_contributions(
        {node_1: blob_1, ...}, length=len(params_vector), binding=binding, params=keys.context.params
    )

    # members of the decrypt set T: one share each, exchanged among T
    share = decryption_share(keys, aggregate, T, contributions=k, min_peers=min_peers, binding=binding)

    # anyone with the aggregate and all shares of T
    merged = combine(keys.spec, aggregate, shares, params=keys.context.params)  # float32 mean

Every function validates peer bytes and raises a `crypto.errors.ProtocolError` subclass
on bad input (nothing changes state); local misuse raises ValueError or the local
errors re-exported here. Blobs are deterministic: equal inputs give equal bytes, so they
can be content-addressed by SHA-256 and the verifier can recompute the leader's sum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, final

import numpy as np
import numpy.typing as npt

from .ckks import (
    MAX_HEADER,
    Aggregator,
    CkksParams,
    EncryptedVector,
    RoundBinding,
    context,
    encrypt,
    rescaled_body_size,
)
from .errors import InvalidAggregate, InvalidCiphertext
from .identity import NodeId, NodeIdentity
from .quorum import min_contributions
from .threshold import (
    THRESHOLD_MESSAGES,
    DecryptionRefused,
    DecryptionShare,
    EpochIncomplete,
    EpochKeys,
    EpochSpec,
    InsufficientShares,
    KeyEpoch,
    PublicKeyShare,
    SealedKeyShare,
    combine_shares,
    default_threshold,
    make_decryption_share,
    threshold_messages,
)

__all__ = [
    "THRESHOLD_MESSAGES",
    "AggregateBuilder",
    "CkksParams",
    "DecryptionRefused",
    "EpochIncomplete",
    "EpochKeys",
    "EpochSpec",
    "InsufficientShares",
    "KeyEpoch",
    "MergedMean",
    "PublicKeyShare",
    "RoundBinding",
    "SealedKeyShare",
    "aggregate_contributions",
    "ciphertext_size",
    "combine",
    "decryptable_aggregate",
    "decryption_share",
    "decryption_share_size",
    "default_threshold",
    "encrypt_update",
    "merged_mean",
    "min_contributions",
    "start_key_epoch",
    "threshold_messages",
]

# Honest normalised weights sum to at most 1 (all of the round's Ready weight); a little
# slack absorbs float rounding of w_i / W.
_MAX_WEIGHT_SUM: Final = 1.0 + 1e-6


def start_key_epoch(spec: EpochSpec, identity: NodeIdentity, params: CkksParams) -> KeyEpoch:
    """Begin our side of a key epoch: draws a fresh secret and prepares all outgoing bodies."""
    return KeyEpoch(spec, identity, params)


def ciphertext_size(length: int, params: CkksParams) -> int:
    """Upper bound on the bytes of an encrypted `length`-parameter vector (for blob size caps)."""
    return rescaled_body_size(params, length) + MAX_HEADER + 8


def decryption_share_size(length: int, params: CkksParams) -> int:
    """Upper bound on the bytes of one decryption share of a `length`-parameter aggregate."""
    return rescaled_body_size(params, length) + MAX_HEADER + 8


def encrypt_update(
    keys: EpochKeys, parameters: npt.ArrayLike, weight: float, total_weight: float, *, binding: RoundBinding
) -> bytes:
    """Encrypt ``(weight / total_weight) * parameters`` and that normalised weight under our key share.

    Only a decrypt set of the epoch can remove its mask, only inside a sum of at least
    `min_contributions` contributions, and only in the round of `binding` (see
    `decryption_share`). Raises ValueError for a non-1-D, non-float, non-finite or
    out-of-range vector (|v| above ``params.max_abs_value``), a weight outside
    ``(0, total_weight]`` or a binding of another key epoch than `keys`.
    """
    if binding.epoch != keys.spec.epoch_id:
        raise ValueError("the round binding names another key epoch than our keys")
    return encrypt(keys.context, keys.secret, binding, keys.me, parameters, weight, total_weight).to_bytes()


def _decode(ctx_params: CkksParams, blob: bytes, length: int) -> EncryptedVector:
    vector = EncryptedVector.from_bytes(context(ctx_params), blob)
    if vector.length != length:
        raise InvalidCiphertext(f"ciphertext holds {vector.length} parameters, the model has {length}")
    return vector


@final
class AggregateBuilder:
    """Streaming homomorphic sum of one round's contributions: add blobs as they arrive
    (memory: one sum). Every blob must carry `binding`, the round's."""

    __slots__ = ("_aggregator", "_params")

    def __init__(self, length: int, params: CkksParams, *, binding: RoundBinding) -> None:
        self._params = params
        self._aggregator = Aggregator(context(params), length, binding)

    @property
    def count(self) -> int:
        """Contributions added so far."""
        return self._aggregator.count

    def add(self, blob: bytes, contributor: NodeId) -> None:
        """Add `contributor`'s committed contribution; `InvalidCiphertext` (and no change) if
        the blob is bad or is not exactly one contribution of `contributor`, `InvalidAggregate`
        if it is bound to another round (chain, key epoch, round nonce) or `contributor` is
        already in."""
        vector = _decode(self._params, blob, self._aggregator.length)
        if vector.contributors != (contributor,):
            raise InvalidCiphertext(f"the blob committed by {contributor.short} is not its own contribution")
        self._aggregator.add(vector)

    def result(self) -> bytes:
        return self._aggregator.result().to_bytes()


def aggregate_contributions(
    contributions: Mapping[NodeId, bytes],
    *,
    length: int,
    binding: RoundBinding,
    params: CkksParams,
) -> bytes:
    """The homomorphic sum of one round's contribution blobs by contributor (deterministic bytes)."""
    builder = AggregateBuilder(length, params, binding=binding)
    for contributor, blob in contributions.items():
        builder.add(blob, contributor)
    return builder.result()


def decryptable_aggregate(
    keys: EpochKeys,
    aggregate: bytes,
    *,
    contributions: int,
    min_peers: int,
    binding: RoundBinding,
    length: int | None = None,
) -> EncryptedVector:
    """`aggregate` decoded, if an honest member may help decrypt it; else `DecryptionRefused`.

    The one set of checks every kind of decryption share (`decryption_share`,
    `crypto.robust_merge.make_point_share`) makes first: the ledger committed
    `contributions` contributions, at least `min_contributions`; the aggregate sums exactly
    that many contributors; it is bound to `binding`, the round being decrypted (no blob of
    another round, key epoch, round nonce or chain); `length`, if given, is its size.
    """
    needed = min_contributions(min_peers, keys.spec.threshold)
    if contributions < needed:
        raise DecryptionRefused(
            f"aggregate of {contributions} contributions; at least {needed} needed "
            f"(max(min_peers={min_peers}, t+1={keys.spec.threshold + 1}))"
        )
    vector = EncryptedVector.from_bytes(keys.context, aggregate)
    if (field := binding.differs_in(vector.binding)) is not None:
        raise DecryptionRefused(
            f"aggregate is for another {field} (round {vector.binding.round}, decrypting {binding.round})"
        )
    if length is not None and vector.length != length:
        raise InvalidCiphertext(f"aggregate holds {vector.length} parameters, the model has {length}")
    if len(vector.contributors) != contributions:
        raise DecryptionRefused(
            f"aggregate sums {len(vector.contributors)} contributors, the ledger committed {contributions}"
        )
    return vector


def decryption_share(
    keys: EpochKeys,
    aggregate: bytes,
    decrypt_set: Sequence[NodeId],
    *,
    contributions: int,
    min_peers: int,
    binding: RoundBinding,
    length: int | None = None,
) -> bytes:
    """Our decryption share of `aggregate` for decrypt set `decrypt_set`, or `DecryptionRefused`.

    `contributions` is the number of contributions the ledger committed for this aggregate:
    an honest member refuses unless the aggregate sums exactly that many contributors, at
    least `min_contributions` (``max(min_peers, t + 1)`` for the epoch's t), all members of
    the epoch, is in the decrypt set, and the set has at least t distinct members. `length`
    (the model size), if given, must match the aggregate's.

    `binding` is the round being decrypted: an aggregate bound to another round, key epoch,
    round nonce or chain is refused (no blob of an earlier round is decrypted in this one).
    """
    vector = decryptable_aggregate(
        keys, aggregate, contributions=contributions, min_peers=min_peers, binding=binding, length=length
    )
    return make_decryption_share(keys, vector, decrypt_set).to_bytes()


@final
@dataclass(frozen=True, slots=True, eq=False)
class MergedMean:
    """The decrypted merge: weighted mean parameters (float32) and the sum of normalised weights."""

    mean: npt.NDArray[np.float32]
    weight_sum: float


def combine(
    spec: EpochSpec,
    aggregate: bytes,
    shares: Sequence[bytes],
    *,
    length: int | None = None,
    params: CkksParams,
) -> MergedMean:
    """Combine the decryption shares of all members of one decrypt set into the weighted mean.

    Deterministic: everyone combining the same aggregate and shares gets bit-identical
    output. `length` (the model size), if given, must match the aggregate's. Raises
    `InvalidCiphertext` / `InvalidDecryptionShare` for bad blobs, `InsufficientShares` if
    a member of the decrypt set is missing, and `InvalidAggregate` if the decrypted weight
    sum is not in ``(0, 1]`` (a corrupt contribution or share).
    """
    ctx = context(params)
    vector = EncryptedVector.from_bytes(ctx, aggregate)
    if length is not None and vector.length != length:
        raise InvalidCiphertext(f"aggregate holds {vector.length} parameters, the model has {length}")
    decoded = [DecryptionShare.from_bytes(ctx, share) for share in shares]
    return merged_mean(*combine_shares(spec, vector, decoded))


def merged_mean(sums: npt.NDArray[np.float64], weight_sum: float) -> MergedMean:
    """The weighted mean of a decrypted sum; `InvalidAggregate` if the weight sum is not in
    ``(0, 1]`` or the mean is not finite (a corrupt contribution or share)."""
    if not (math.isfinite(weight_sum) and 0.0 < weight_sum <= _MAX_WEIGHT_SUM):
        raise InvalidAggregate(f"decrypted weight sum {weight_sum:.6g} is outside (0, 1]")
    mean = (sums / weight_sum).astype(np.float32)
    if not bool(np.all(np.isfinite(mean))):
        raise InvalidAggregate("decrypted mean is not finite")
    return MergedMean(mean, weight_sum)
