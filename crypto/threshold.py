"""Threshold CKKS: collective keys by key epoch, t-of-n decryption with smudging.

The protocol of Mouchet et al. (PoPETs 2021) with Shamir re-sharing for t-of-n,
on the numpy RNS/NTT representation SEAL uses. This module is the public face of four parts:
`epoch_spec` (the epoch as fixed on the ledger, its messages and commitments), `key_epoch`
(one member's side of it: dealing, reveal, checks, restart), `epoch_keys` (its outcome,
stored and restored) and `decryption_shares` (making and combining shares). Each takes the
key epoch's CKKS parameter set (`ckks_params`) explicitly, never a default.

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

from .decryption_shares import (
    DecryptionShare,
    combine_shares,
    lagrange_at_zero,
    make_decryption_share,
    smudging_noise,
)
from .epoch_keys import EpochKeys
from .epoch_spec import (
    EPOCH_ID_SIZE,
    THRESHOLD_MESSAGES,
    DecryptionRefused,
    EpochIncomplete,
    EpochSpec,
    InsufficientShares,
    KeyShareContent,
    PublicKeyShare,
    SealedKeyShare,
    commitment_of_digest,
    common_random_poly,
    dealing_params,
    default_threshold,
    public_share_commitment,
    threshold_messages,
)
from .key_epoch import KeyEpoch, StoredKeyEpoch, StoredSealedShare

__all__ = [
    "EPOCH_ID_SIZE",
    "THRESHOLD_MESSAGES",
    "DecryptionRefused",
    "DecryptionShare",
    "EpochIncomplete",
    "EpochKeys",
    "EpochSpec",
    "InsufficientShares",
    "KeyEpoch",
    "KeyShareContent",
    "PublicKeyShare",
    "SealedKeyShare",
    "StoredKeyEpoch",
    "StoredSealedShare",
    "combine_shares",
    "commitment_of_digest",
    "common_random_poly",
    "dealing_params",
    "default_threshold",
    "lagrange_at_zero",
    "make_decryption_share",
    "public_share_commitment",
    "smudging_noise",
    "threshold_messages",
]
