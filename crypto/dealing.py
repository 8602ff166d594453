"""Verifiable dealing for key epochs: signed share contents, blinded fingerprints, complaints.

In a key epoch (`crypto.threshold`) dealer i Shamir-shares its secret ``s_i`` with a
polynomial ``f_i`` of degree ``t - 1`` per coefficient and prime, and sends ``f_i(x_j)``
to member j in a sealed box. Nothing there lets j tell whether its share lies on the
same polynomial as the others': a dealer that sends one member a wrong share makes
every aggregate holding its contribution decode to garbage, and nobody could say who.
This module makes the dealing checkable by every recipient and a bad dealing provable
to everyone, at the cost of a few scalars per dealer on the ledger:

* **Segments.** The share ``f_i(x_j)`` (data level, ``L x N`` residues, packed 60-bit)
  is cut into `DealingParams.segments` segments of `SEGMENT_VALUES` residues of one
  prime each. Every check below is per segment, so a complaint reveals one segment
  (15 KB) and fits a ledger transaction.
* **Blinding.** For each segment b the dealer also draws a scalar polynomial ``eta_b``
  of degree ``t - 1`` over that segment's prime and puts ``eta_b(x_j)`` next to the
  share in j's box.
* **Signed content.** The dealer signs (Ed25519, domain `CONTENT_DOMAIN`) a statement
  naming epoch, dealer, recipient, the byte lengths of share and blinding and one
  SHA-256 per segment (`segment_hashes`); the signature travels inside the box, so
  the recipient can later prove exactly what it received, one segment at a time.
* **Public coin.** Once every member's bundle hash (which fixes every box) is on the
  ledger, ``coin = SHA-256(domain, epoch id, bundle hashes in member order)`` expands
  (SHAKE-128) into per-segment weights ``gamma_{b,c}`` uniform mod the segment's prime.
* **Fingerprint.** Dealer i publishes ``P_b(x) = eta_b(x) + sum_c gamma_{b,c} f_{i,c}(x)``
  for every segment: t scalars per segment (`make_fingerprint`). Recipient j checks
  ``eta_b(x_j) + sum_c gamma_{b,c} y_{j,c} == P_b(x_j)`` for its share y (`find_fault`).
* **Complaint.** On a mismatch or a malformed share (a residue not below its prime, a
  wrong length) j reveals that segment with the dealer's signature (`DealingEvidence`);
  `judge_complaint` is a pure function anyone (the contract) evaluates: a forged or
  inconsistent piece of evidence is refused, a segment that is malformed or off the
  fingerprint names the dealer, one that matches names the complainer.

Soundness: the boxes are fixed (bundle hashes on the ledger) before the coin is known.
If the honest recipients' shares of some segment are not all on one polynomial of degree
``t - 1``, passing every check means ``eta + sum_c gamma_c y_c`` (the vector over the
honest points) lies in the t-dimensional space of evaluations of such polynomials; modulo
that space the map ``gamma -> eta + sum_c gamma_c y_c`` is affine and not constant, so
a uniform gamma satisfies it with probability at most ``1/q`` (q ~ 2^60). Only the last
member to commit a bundle can influence the coin, by re-dealing and re-hashing: each try
passes with probability 2^-60.

Hiding: ``P_b(0) = eta_b(0) + sum_c gamma_{b,c} s_{i,c}`` with ``eta_b(0)`` uniform and
independent of everything else, and t-1 colluders learn only ``P_b`` at their own points,
which they could compute from their shares already. So the fingerprints of two different
secrets are identically distributed; each ``eta_b`` is used for one coin only (a new
epoch deals afresh).

The Shamir coefficients ``c_1 .. c_{t-1}`` and the blinding polynomials come from one
32-byte seed the dealer draws from `os.urandom` (SHAKE-128 expansion), so a dealer that
restarts mid-epoch recomputes its fingerprint from the seed stored with its dealing
(`threshold.StoredKeyEpoch`) instead of storing the polynomials.

What it cannot do: a box that does not open, or opens to an unsigned content, proves
nothing (a sealed box has no proof of decryption), so the recipient cannot name the
dealer; it does not confirm and the epoch deadline leaves it out. Nor does it prove that
``f_i(0)`` is the ``s_i`` behind the dealer's public share or its ciphertexts: a member
can always make its own contribution decode to garbage.
"""

from __future__ import annotations

import functools
import hashlib
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

import numpy as np

from . import cbor
from .errors import BadSignature
from .identity import NodeId, NodeIdentity
from .rns import U64, add_mod, column, expand_uniform_mod, scalar_operand, shoup_mul

SEGMENT_VALUES: Final = 2048
SEGMENT_BYTES: Final = SEGMENT_VALUES * 15 // 2  # packed 60-bit residues, two per 15 bytes
SCALAR_BYTES: Final = 8  # one residue, little endian
CONTENT_DOMAIN: Final = b"swarmnode/key-share-content/v1\x00"
_SEGMENT_DOMAIN: Final = b"swarmnode/key-share-segment/v1\x00"
_COIN_DOMAIN: Final = b"swarmnode/dealing-coin/v1\x00"
_SEED_DOMAIN: Final = b"swarmnode/dealing-seed/v1\x00"
_PRSS_DOMAIN: Final = b"swarmnode/key-share-prss/v1\x00"
_MASK60: Final = (1 << 60) - 1


@final
@dataclass(frozen=True, slots=True)
class DealingParams:
    """The data-level primes and ring degree the shares live in."""

    moduli: tuple[int, ...]
    degree: int

    def __post_init__(self) -> None:
        if not self.moduli or self.degree % SEGMENT_VALUES or any(q >= 1 << 60 for q in self.moduli):
            raise ValueError("dealing params: 60-bit primes and a degree that is a multiple of 2048")

    @property
    def segments(self) -> int:
        return len(self.moduli) * self.degree // SEGMENT_VALUES

    @property
    def share_bytes(self) -> int:
        return self.segments * SEGMENT_BYTES

    @property
    def blinding_bytes(self) -> int:
        return self.segments * SCALAR_BYTES

    def prime(self, segment: int) -> int:
        return self.moduli[segment // (self.degree // SEGMENT_VALUES)]

    def fingerprint_size(self, threshold: int) -> int:
        return self.segments * threshold * SCALAR_BYTES


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class DealingEvidence:
    """One segment of a dealer-signed share content, as a recipient reveals it in a complaint."""

    segment: int
    share_length: int  # byte lengths of the whole share and blinding, as signed
    blinding_length: int
    segment_hashes: tuple[bytes, ...]  # as signed, one per segment
    shares: bytes  # this segment's packed shares
    blinding: bytes  # this segment's blinding share
    signature: bytes
    prss_digest: bytes  # `prss_digest` of the PRSS keys in the box, as signed (the keys stay secret)


# -- the dealer's polynomials ---------------------------------------------------------------


def _expand(seed: bytes, label: bytes, q: int, count: int) -> U64:
    return expand_uniform_mod(hashlib.sha256(_SEED_DOMAIN + seed + label).digest(), q, count)


def shamir_coefficients(params: DealingParams, seed: bytes, threshold: int) -> list[U64]:
    """``c_1 .. c_{t-1}`` of the Shamir polynomials, each ``(L, N)`` uniform mod its prime."""
    return [
        np.stack([
            _expand(seed, b"f" + k.to_bytes(4, "big") + p.to_bytes(2, "big"), q, params.degree)
            for p, q in enumerate(params.moduli)
        ])
        for k in range(1, threshold)
    ]  # fmt: skip


def shamir_shares(params: DealingParams, secret: U64, coefficients: Sequence[U64], members: int) -> list[U64]:
    """``f(1), ..., f(n)`` for ``f(x) = secret + sum_k c_k x^k``, per prime and coefficient."""
    moduli = params.moduli
    q_col = column(moduli)
    shares = []
    for x in range(1, members + 1):
        operand, quotients = scalar_operand([x] * len(moduli), moduli)
        value = np.zeros_like(secret)
        for c in reversed(coefficients):  # Horner: ((c_{t-1} x + c_{t-2}) x + ...) x + secret
            value = shoup_mul(add_mod(value, c, q_col), operand, quotients, q_col)
        shares.append(add_mod(value, secret, q_col))
    return shares


def _blinding_polynomials(params: DealingParams, seed: bytes, threshold: int) -> list[list[int]]:
    return [
        _expand(seed, b"eta" + b.to_bytes(4, "big"), params.prime(b), threshold).tolist()
        for b in range(params.segments)
    ]


def _evaluate(coefficients: Sequence[int], x: int, q: int) -> int:
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % q
    return value


def blinding_shares(params: DealingParams, seed: bytes, threshold: int, x: int) -> bytes:
    """``eta_b(x)`` for every segment b (what goes into the box of the member at point x)."""
    polynomials = _blinding_polynomials(params, seed, threshold)
    return b"".join(
        _evaluate(eta, x, params.prime(b)).to_bytes(SCALAR_BYTES, "little")
        for b, eta in enumerate(polynomials)
    )


# -- coin and fingerprint -------------------------------------------------------------------


def fingerprint_coin(epoch_id: bytes, bundle_hashes: Sequence[bytes]) -> bytes:
    """The public coin: fixed once every member's bundle hash (in member order) is on the ledger."""
    return hashlib.sha256(_COIN_DOMAIN + epoch_id + b"".join(bundle_hashes)).digest()


@functools.lru_cache(maxsize=64)
def _weights(coin: bytes, segment: int, q: int) -> tuple[int, ...]:
    return tuple(expand_uniform_mod(coin + segment.to_bytes(4, "big"), q, SEGMENT_VALUES).tolist())


def _combine(weights: Sequence[int], values: Sequence[int], q: int) -> int:
    total: int = sum(map(operator.mul, weights, values))
    return total % q


def make_fingerprint(params: DealingParams, coin: bytes, seed: bytes, secret: U64, threshold: int) -> bytes:
    """The dealer's fingerprint: for each segment, the t coefficients of ``P_b`` (8 bytes each)."""
    polynomials = [secret, *shamir_coefficients(params, seed, threshold)]
    return fingerprint_of(params, coin, polynomials, _blinding_polynomials(params, seed, threshold))


def fingerprint_of(
    params: DealingParams, coin: bytes, polynomials: Sequence[U64], blinding: Sequence[Sequence[int]]
) -> bytes:
    """The fingerprint of explicit polynomials: `polynomials` are f's coefficient arrays
    ``(L, N)``, lowest power first (the secret), `blinding` each segment's eta, same order."""
    flat = [p.reshape(-1) for p in polynomials]
    out = []
    for b, eta in enumerate(blinding):
        q = params.prime(b)
        weights = _weights(coin, b, q)
        window = slice(b * SEGMENT_VALUES, (b + 1) * SEGMENT_VALUES)
        for k, poly in enumerate(flat):
            value = (eta[k] + _combine(weights, poly[window].tolist(), q)) % q
            out.append(value.to_bytes(SCALAR_BYTES, "little"))
    return b"".join(out)


def _scalars(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + SCALAR_BYTES], "little") for i in range(0, len(data), SCALAR_BYTES)]


def fingerprint_fault(params: DealingParams, threshold: int, fingerprint: bytes) -> str | None:
    """Why `fingerprint` is not a well-formed fingerprint for threshold t (None if it is)."""
    expected = params.fingerprint_size(threshold)
    if len(fingerprint) != expected:
        return f"fingerprint has {len(fingerprint)} bytes, expected {expected}"
    values = _scalars(fingerprint)
    for b in range(params.segments):
        if any(v >= params.prime(b) for v in values[b * threshold : (b + 1) * threshold]):
            return f"fingerprint segment {b}: a coefficient is not below its prime"
    return None


# -- signed content -------------------------------------------------------------------------


def _pieces(share: bytes, blinding: bytes, segment: int) -> tuple[bytes, bytes]:
    return (
        share[segment * SEGMENT_BYTES : (segment + 1) * SEGMENT_BYTES],
        blinding[segment * SCALAR_BYTES : (segment + 1) * SCALAR_BYTES],
    )


def _segment_hash(segment: int, shares: bytes, blinding: bytes) -> bytes:
    lengths = len(shares).to_bytes(4, "big") + len(blinding).to_bytes(4, "big")
    return hashlib.sha256(_SEGMENT_DOMAIN + segment.to_bytes(4, "big") + lengths + blinding + shares).digest()


def segment_hashes(params: DealingParams, share: bytes, blinding: bytes) -> tuple[bytes, ...]:
    return tuple(_segment_hash(b, *_pieces(share, blinding, b)) for b in range(params.segments))


def prss_digest(prss_keys: bytes) -> bytes:
    """What the statement signs for the PRSS keys in a box (`crypto.prss`; empty if none)."""
    return hashlib.sha256(_PRSS_DOMAIN + prss_keys).digest()


def _statement(
    epoch: bytes, dealer: NodeId, recipient: NodeId, share_length: int, blinding_length: int,
    hashes: Sequence[bytes], prss_keys_digest: bytes,
) -> bytes:  # fmt: skip
    fields: list[cbor.CborValue] = [CONTENT_DOMAIN, epoch, dealer.public_key, recipient.public_key]
    return cbor.dumps([*fields, share_length, blinding_length, list(hashes), prss_keys_digest])


def sign_share(
    params: DealingParams,
    dealer: NodeIdentity,
    epoch: bytes,
    recipient: NodeId,
    share: bytes,
    blinding: bytes,
    prss_keys: bytes,
) -> bytes:
    """The dealer's signature over what it sends `recipient` (kept inside the box)."""
    hashes = segment_hashes(params, share, blinding)
    statement = _statement(
        epoch, dealer.node_id, recipient, len(share), len(blinding), hashes, prss_digest(prss_keys)
    )
    return dealer.sign(statement)


def verify_share(
    params: DealingParams, epoch: bytes, dealer: NodeId, recipient: NodeId, share: bytes, blinding: bytes,
    signature: bytes, prss_keys: bytes,
) -> None:  # fmt: skip
    """Raise `BadSignature` unless `dealer` signed exactly this share, blinding and PRSS keys
    for `recipient`."""
    hashes = segment_hashes(params, share, blinding)
    statement = _statement(
        epoch, dealer, recipient, len(share), len(blinding), hashes, prss_digest(prss_keys)
    )
    dealer.verify(statement, signature)


# -- checking and judging -------------------------------------------------------------------


def _unpack(piece: bytes) -> list[int]:
    values: list[int] = []
    for i in range(0, len(piece), 15):
        pair = int.from_bytes(piece[i : i + 15], "little")
        values += (pair & _MASK60, pair >> 60)
    return values


def _segment_fault(
    params: DealingParams, coin: bytes, threshold: int, x: int, fingerprint: bytes, segment: int,
    shares: bytes, blinding: bytes,
) -> bool:  # fmt: skip
    """Whether this segment of a well-sized content is malformed or off the fingerprint."""
    q = params.prime(segment)
    values = _unpack(shares)
    (eta,) = _scalars(blinding)
    if eta >= q or any(v >= q for v in values):
        return True
    fingerprint_poly = _scalars(fingerprint)[segment * threshold : (segment + 1) * threshold]
    return (eta + _combine(_weights(coin, segment, q), values, q)) % q != _evaluate(fingerprint_poly, x, q)


def find_fault(
    params: DealingParams, coin: bytes, threshold: int, x: int, fingerprint: bytes, share: bytes,
    blinding: bytes,
) -> int | None:  # fmt: skip
    """The first segment of the content we received that is malformed or off the dealer's
    fingerprint (0 for a content of the wrong size), None if the dealing checks out."""
    if len(share) != params.share_bytes or len(blinding) != params.blinding_bytes:
        return 0
    for b in range(params.segments):
        if _segment_fault(params, coin, threshold, x, fingerprint, b, *_pieces(share, blinding, b)):
            return b
    return None


def evidence(
    params: DealingParams,
    share: bytes,
    blinding: bytes,
    signature: bytes,
    segment: int,
    prss_keys: bytes,
) -> DealingEvidence:
    """The complaint's evidence: one segment of the signed content we received."""
    shares, blind = _pieces(share, blinding, segment)
    return DealingEvidence(
        segment=segment,
        share_length=len(share),
        blinding_length=len(blinding),
        segment_hashes=segment_hashes(params, share, blinding),
        shares=shares,
        blinding=blind,
        signature=signature,
        prss_digest=prss_digest(prss_keys),
    )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PrssEvidence:
    """What a member reveals to prove a dealer's PRSS keys for it wrong."""

    share_length: int  # the signed statement of the box: lengths, segment hashes, signature
    blinding_length: int
    segment_hashes: tuple[bytes, ...]
    signature: bytes
    prss_keys: bytes  # the PRSS keys in the box (revealed)
    public_share_digest: bytes  # SHA-256 of the dealer's packed public share
    prss_commitments: bytes  # the dealer's commitments, as in its public share


class InvalidEvidence(Exception):
    """The complaint proves nothing: forged, or inconsistent with what the dealer signed."""


def verify_statement(
    epoch: bytes, dealer: NodeId, complainer: NodeId, share_length: int, blinding_length: int,
    hashes: Sequence[bytes], prss_keys_digest: bytes, signature: bytes,
) -> None:  # fmt: skip
    """`InvalidEvidence` unless `dealer` signed this statement of a content for `complainer`."""
    statement = _statement(epoch, dealer, complainer, share_length, blinding_length, hashes, prss_keys_digest)
    try:
        dealer.verify(statement, signature)
    except BadSignature as exc:
        raise InvalidEvidence(f"the content is not signed by the dealer {dealer.short}") from exc


def judge_complaint(
    params: DealingParams, epoch: bytes, dealer: NodeId, complainer: NodeId, x: int, threshold: int,
    coin: bytes, fingerprint: bytes, proof: DealingEvidence,
) -> bool:  # fmt: skip
    """True if `proof` shows the dealer dealt `complainer` (at point x) a malformed share or
    one off its fingerprint; False if the revealed segment checks out (a false complaint).

    Raises `InvalidEvidence` if the evidence is not what the dealer signed. Pure and
    deterministic: every node judges alike."""
    b = proof.segment
    if len(proof.segment_hashes) != params.segments or not 0 <= b < params.segments:
        raise InvalidEvidence(
            f"evidence names segment {b} of {len(proof.segment_hashes)}, not of {params.segments}"
        )
    share_piece = max(0, min(SEGMENT_BYTES, proof.share_length - b * SEGMENT_BYTES))
    blinding_piece = max(0, min(SCALAR_BYTES, proof.blinding_length - b * SCALAR_BYTES))
    if (len(proof.shares), len(proof.blinding)) != (share_piece, blinding_piece):
        raise InvalidEvidence(f"evidence segment {b} does not have the signed lengths")
    if _segment_hash(b, proof.shares, proof.blinding) != proof.segment_hashes[b]:
        raise InvalidEvidence(f"evidence segment {b} does not match its signed hash")
    verify_statement(
        epoch, dealer, complainer, proof.share_length, proof.blinding_length, proof.segment_hashes,
        proof.prss_digest, proof.signature,
    )  # fmt: skip
    if (proof.share_length, proof.blinding_length) != (params.share_bytes, params.blinding_bytes):
        return True  # the dealer signed a content of the wrong size
    return _segment_fault(params, coin, threshold, x, fingerprint, b, proof.shares, proof.blinding)
