"""Addition-only CKKS with coefficient encoding: parameters, packing, encryption, wire format.

This module is the one place that knows how a parameter vector is laid out in
ciphertexts and how ciphertexts are laid out in bytes.

Parameters (`ckks_params.CkksParams`, named sets in `ckks_params.PARAM_SETS`; docs/SECURITY.md
section 3 argues their security level). The default set:

- Ring degree N = 8192, coefficient moduli of 60, 60 and 60 bits. Total 180 bits; the
  HE standard's 128-bit table allows at most 218 bits at N = 8192 (SEAL's
  ``SEC_LEVEL_TYPE.TC128`` enforces it when the context is built), so this is 128-bit
  security with room to spare. The last prime is SEAL's special prime, used only by the
  key epoch's public key shares; ciphertexts live at the data level ``q0 * q1`` (~2^120).
- **Coefficient encoding** at scale Delta = 2^90: value i goes to plaintext coefficient i
  as ``round(v * 2^90) mod q_j``. Only additions are ever done, so no CKKS slot encoder
  is needed: N values per ciphertext instead of N/2 and no sqrt(N) error blow-up.
- Layout: a vector of ``length`` values and one weight is the coefficient stream
  ``w*v_0, ..., w*v_{length-1}, w`` cut into ``chunks = ceil((length + 1) / N)``
  ciphertexts (zero padded). ``w`` is the site's weight divided by the round's total
  weight, so the sum of all contributions is the weighted mean times the weight sum
  and stays within ``max_abs_value``; the decoded sum must stay below ~2^28.9 in
  absolute value or it wraps silently, hence inputs are checked before encoding.
- **Encryption with the contributor's own key share, c1 from a seed**: member i of a key
  epoch holds its additive secret ``s_i`` (``s = sum_i s_i``, `threshold`). It encrypts
  ``c0 = Delta*m + e - a * s_i`` with ``a`` expanded by AES-256-CTR from a fresh random
  16-byte seed, the round binding and the contributor's id, and ``e`` a centred binomial error
  (eta = 21, sigma 3.24, SEAL's sigma is 3.2): an RLWE sample under ``s_i`` like SEAL's
  symmetric encryption. Only c0 and the seed travel; anyone re-expands ``a``. A sum keeps
  every contributor's (id, seed), and decrypting it needs ``sum_i a_i * s_i`` over exactly
  those contributors, which the decrypt set computes from its per-dealer Shamir shares of
  each ``s_i`` (`threshold.make_decryption_share`). A fresh seed per encryption means a
  mask is never reused, whatever a crashed node re-encrypts. Compared with public-key
  encryption under the collective key this is a third of the bytes and no
  ``encrypt_zero`` (u, two errors, the special prime); the threshold is the same (any t
  members can rebuild ``s_i`` from their shares, as they can rebuild ``s``).
- **c0 travels rescaled**: c0 is sent as ``round(c0 / q0) mod q1`` in coefficient form
  (CKKS's rescale by q0, 60 of its 120 bits), so a ciphertext costs one residue per
  coefficient. Rounding c0 is safe and nearly free: it is a function of what the sender
  would send anyway, it adds at most q0/2 ~ 2^59 (2^-31 at scale 2^90) to the decrypted
  sum per contribution, and it does not touch the secret key. The mask ``a * s`` is never
  rounded before the decryption share's smudging: its rounding error would be
  key-dependent noise. Sums of rescaled c0 stay exact mod q1 (``q0 * sum round(c0_i /
  q0)``), and decryption shares are rescaled the same way (`threshold`), so decryption
  adds rescaled values mod q1 and decodes ``q0 * centred(k) / 2^scale``.
- The weight coefficient is encoded at its own, finer scale 2^110 (the sum of normalised
  weights is about 1, far below the 2^119 wrap): the mean divides by the decrypted weight
  sum, so its error would be multiplied by the values' magnitude (100 x 3e-7 at scale
  2^90); at 2^110 it is ~1e-12 and the mean is as precise as the sum.
- Precision of the decrypted weighted mean, values in [-100, 100], smudging a discrete
  Gaussian of sigma = 2^68 per decryption share (error ~ sigma * sqrt(|T|) / 2^90 RMS,
  about 5.5 times that at the maximum over 1M parameters): scripts/smudging_table.py
  (docs/results/smudging_table.json) gives the formula and a measurement. Casting the mean
  to float32 adds up to 2^-18 ~ 3.8e-6 at |v| ~ 100. `tests/crypto/test_secure_merge.py`
  checks <= 1e-5 at 16 members.
- Security of the smudging: each share's noise hides the aggregate's own secret-dependent
  noise, a sum of n centred binomial errors, to a KL divergence of e^2 / (2 sigma^2) per
  coefficient; every share is counted against a per-key-epoch budget of statistical
  distance 2^-smudging_budget_bits (`smudging`, docs/SECURITY.md section 4).

Wire format of a ciphertext blob (`EncryptedVector.to_bytes`):

    b"SNC1" | u32 big-endian header length | canonical CBOR of `CiphertextHeader` | body
    body = (chunks, N) uint64 residues of c0 rescaled (mod q1, coefficient form) in C
           order, packed two 60-bit coefficients per 15 bytes (7.5 bytes per parameter)

The header names the round it belongs to (`RoundBinding`: chain id, key epoch, round
number and the contract's per-round nonce) and, sorted by public key, every contributor
in the sum with its mask seed (one for a contribution, k for a sum of k). The binding's
digest also goes into every mask, so a blob of another round, chain or epoch is refused
by its header and, were the header rewritten, would not decrypt under this round's masks.
The header is schema-checked CBOR; the body stays outside CBOR so a 50M-parameter
blob (375 MB) is never copied to be parsed. The decoder checks the magic, header,
parms id, shapes and exact length, and that every coefficient is below its prime; the
encoding is canonical (decode then encode gives the same bytes), so blobs can be
content-addressed by SHA-256.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import os
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar, final

import numpy as np
import numpy.typing as npt

from . import cbor
from .ckks_params import DEFAULT_PARAMS as DEFAULT_PARAMS
from .ckks_params import ERROR_ETA as ERROR_ETA
from .ckks_params import PACKED_BITS as PACKED_BITS
from .ckks_params import SPLIT_SHIFT as _SPLIT_SHIFT
from .ckks_params import CkksParams as CkksParams
from .errors import InvalidAggregate, InvalidCiphertext, ProtocolError
from .identity import NodeId
from .rns import (
    U64,
    add_mod,
    add_mod_into,
    centered_binomial,
    column,
    scalar_operand,
    shoup_mul,
    shoup_quotients,
    signed_split_residues,
    stream_uniform_mod,
    sub_mod,
)
from .sealbridge import SealContext

F64 = npt.NDArray[np.float64]

# 3: key-share encryption, c1 from a seed (7.5 bytes per parameter, was 22.5);
# 4: the header and masks bind chain id, key epoch, round and round nonce (`RoundBinding`);
# 5: masks expanded by AES-256-CTR (`rns.XofStream`) instead of SHAKE-128 (same bytes, other masks)
WIRE_VERSION: Final = 5
MAX_VALUES: Final = 1 << 27  # 134M parameters: far above the 50M target, bounds allocations
BATCH_CHUNKS: Final = 32  # ciphertexts processed per numpy batch: 16 MiB of residues
MAX_HEADER: Final = 1 << 16
MAX_CONTRIBUTORS: Final = 1024  # (id, seed) pairs in one header: 53 KiB of CBOR at most
SEED_SIZE: Final = 16
_MASK_DOMAIN: Final = b"swarmnode/ckks-mask/v3"
_BINDING_DOMAIN: Final = b"swarmnode/round-binding/v1\x00"
BINDING_ID_SIZE: Final = 32  # chain id, key epoch id and round nonce are SHA-256 digests
_BLOB_PREFIX: Final = struct.Struct(">4sI")
_CIPHERTEXT_MAGIC: Final = b"SNC1"
_MASK60: Final = np.uint64((1 << 60) - 1)

H = TypeVar("H")


def chunk_count(params: CkksParams, length: int) -> int:
    """Ciphertexts needed for `length` values plus the weight coefficient."""
    return -(-(length + 1) // params.degree)


@final
class CkksContext:
    """Everything derived from `CkksParams`: the SEAL context, primes, encoder and decoder."""

    __slots__ = ("_crt", "data_moduli", "params", "q_col", "rescaled_col", "seal")

    def __init__(self, params: CkksParams) -> None:
        self.params: Final = params
        self.seal: Final = SealContext(params.degree, params.coeff_bits)
        self.data_moduli: Final = self.seal.data_moduli
        self.q_col: Final = column(self.data_moduli)
        q0, q1 = self.data_moduli
        self.rescaled_col: Final = column([q1])  # rescaled polys (ciphertexts, shares) live mod q1 alone
        self._crt = scalar_operand([pow(q0, -1, q1)], [q1])

    @property
    def parms_id(self) -> bytes:
        return self.seal.data_parms_id

    def encode(self, scaled: F64) -> U64:
        """``x mod q_j``, coefficient form, for integer-valued floats ``|x| < 2^114``: (k*N,) to (k, L, N).

        Callers scale and round first (``rint(ldexp(v, scale_bits))``). The split
        ``x = high * 2^52 + low`` is exact in float64, so no Python integers are needed.
        """
        n = self.params.degree
        if scaled.ndim != 1 or scaled.size % n:
            raise ValueError("encode takes a whole number of chunks")
        high = np.floor(np.ldexp(scaled, -_SPLIT_SHIFT))
        low = scaled - np.ldexp(high, _SPLIT_SHIFT)  # exact: an integer in [0, 2^52)
        residues = signed_split_residues(
            high.astype(np.int64), low.astype(np.uint64), _SPLIT_SHIFT, self.data_moduli
        )
        return residues.reshape(len(self.data_moduli), -1, n).transpose(1, 0, 2)

    def to_coefficients(self, polys: U64) -> U64:
        """Inverse NTT of a ``(k, L, N)`` batch."""
        return np.stack([self.seal.intt(p) for p in polys])

    def rescale(self, coefficients: U64) -> U64:
        """``round(x / q0) mod q1`` for integers x mod q0*q1 given as ``(..., 2, N)`` coefficient residues.

        Garner: ``x = x0 + q0 * g`` with ``g = (x1 - x0) * q0^-1 mod q1``, so the rounded
        quotient is g, plus one when ``x0 / q0 >= 1/2`` (q0 is odd), wrapping at q1.
        """
        q0, q1 = self.data_moduli
        x0, x1 = coefficients[..., 0, :], coefficients[..., 1, :]
        q1_arr = np.array([q1], dtype=np.uint64)
        x0_mod_q1 = np.minimum(x0, x0 - q1_arr)  # q0 < 2 * q1; below q1, x0 - q1 wraps above x0
        quotient = shoup_mul(sub_mod(x1, x0_mod_q1, q1_arr), self._crt[0][0], self._crt[1][0], q1_arr)
        quotient += x0 > np.uint64(q0 // 2)
        np.minimum(quotient, quotient - q1_arr, out=quotient)  # q1 (only) wraps to 0
        return quotient

    def decode(self, rescaled: U64) -> F64:
        """Rescaled residues ``(k, N)`` mod q1 to floats: ``q0 * centred(k) / 2^scale``, flattened.

        Each unit of k is ``q0 / 2^90 ~ 2^-30``; the float product adds ~2^-52 relative.
        Deterministic: every member decoding the same residues gets the same floats.
        """
        q0, q1 = self.data_moduli
        signed = np.where(
            rescaled > np.uint64(q1 // 2),
            rescaled.astype(np.int64) - np.int64(q1),
            rescaled.astype(np.int64),
        )
        values: F64 = signed.astype(np.float64).reshape(-1) * math.ldexp(q0, -self.params.scale_bits)
        return values

    @staticmethod
    def check_residues(data: U64, moduli: U64, error: type[ProtocolError], what: str) -> None:
        """Raise `error` unless every residue of `data` is below its modulus (`moduli` broadcasts)."""
        if bool(np.any(data >= moduli)):
            raise error(f"{what}: a coefficient is not below its prime")


_contexts: dict[CkksParams, CkksContext] = {}
_contexts_lock = threading.Lock()


def context(params: CkksParams = DEFAULT_PARAMS) -> CkksContext:
    """The one (immutable, shared) context of `params`; building it costs ~50 ms.

    Locked so that worker threads starting at once still share a single instance.
    """
    with _contexts_lock:
        found = _contexts.get(params)
        if found is None:
            found = _contexts[params] = CkksContext(params)
        return found


def rescaled_body_size(params: CkksParams, length: int) -> int:
    """Bytes of `length` values' worth of rescaled polys (one residue mod q1 per coefficient):
    the body of a ciphertext blob and of a decryption share."""
    return packed_size(chunk_count(params, length) * params.degree)


# -- 60-bit packing --------------------------------------------------------------------


def packed_size(coefficients: int) -> int:
    """Bytes of `coefficients` (even count) residues packed at 60 bits."""
    return coefficients * PACKED_BITS // 8


def pack60(values: U64) -> bytes:
    """Pack residues (< 2^60, even count) two per 15 bytes, little endian.

    Pair i is the 120-bit little-endian integer ``v0 + v1 * 2^60`` at byte 15 i. It is
    written as two unaligned 8-byte words through strided views of the output: bytes
    ``15i .. 15i+7`` (``v0 | v1 << 60``) and ``15i+7 .. 15i+14`` (the pair's bits 56..119);
    the byte both words cover gets the same value from each, so no pass over the bytes
    is needed (one vector op per word, no 16-byte staging copy).
    """
    pairs = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1, 2)
    count = pairs.shape[0]
    out = np.empty(15 * count, dtype=np.uint8)
    if count:
        low, high = pairs[:, 0], pairs[:, 1]
        _words(out, 0, count)[...] = low | (high << np.uint64(60))
        _words(out, 7, count)[...] = ((low >> np.uint64(56)) & np.uint64(0xF)) | (high << np.uint64(4))
    return out.tobytes()


def _words(buffer: npt.NDArray[np.uint8] | bytes | memoryview, offset: int, count: int) -> U64:
    """`count` little-endian u64 words at byte ``offset + 15 i`` of `buffer` (a strided view, no copy)."""
    view: U64 = np.ndarray((count,), dtype="<u8", buffer=buffer, offset=offset, strides=(15,))
    return view


def unpack60(data: bytes | memoryview, count: int) -> U64:
    """Inverse of `pack60`: `count` residues from exactly ``packed_size(count)`` bytes.

    Every 15-byte pair decodes to two values below 2^60 and back to the same bytes, so
    the packing itself is canonical; callers check each value against its prime.
    """
    if count % 2 or len(data) != packed_size(count):
        raise ValueError("packed length mismatch")
    out = np.empty((count // 2, 2), dtype=np.uint64)
    if count:
        np.bitwise_and(_words(data, 0, count // 2), _MASK60, out=out[:, 0])
        np.right_shift(_words(data, 7, count // 2), np.uint64(4), out=out[:, 1])
    return out.reshape(-1)


# -- blob container: magic | header length | CBOR header | packed body --------------------


def encode_blob(magic: bytes, header: object, body_parts: Iterable[bytes]) -> bytes:
    head = cbor.dumps_dataclass(header)
    # BytesIO.getvalue() hands over its buffer without a copy: a 375 MB blob costs 375 MB once,
    # where b"".join over a generator would hold every part and the result at the same time.
    out = io.BytesIO()
    out.write(_BLOB_PREFIX.pack(magic, len(head)))
    out.write(head)
    for part in body_parts:
        out.write(part)
    return out.getvalue()


def decode_blob(
    magic: bytes, header_cls: type[H], data: bytes, error: type[ProtocolError]
) -> tuple[H, memoryview]:
    """Split and schema-check a blob; raise `error` (a ProtocolError) on anything malformed."""
    if not isinstance(data, bytes):
        raise error(f"expected bytes, got {type(data).__name__}")
    if len(data) < _BLOB_PREFIX.size:
        raise error("blob truncated before its header")
    found, head_len = _BLOB_PREFIX.unpack_from(data, 0)
    if found != magic:
        raise error(f"wrong blob magic {found!r}, expected {magic!r}")
    if head_len > MAX_HEADER or _BLOB_PREFIX.size + head_len > len(data):
        raise error("blob header length out of range")
    start = _BLOB_PREFIX.size
    try:
        header = cbor.loads_dataclass(header_cls, data[start : start + head_len], max_depth=2)
    except ProtocolError as exc:
        raise error(f"bad blob header: {exc}") from None
    return header, memoryview(data)[start + head_len :]


# -- ciphertext vectors --------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class RoundBinding:
    """The round a ciphertext belongs to: chain, key epoch, round number and round nonce.

    The nonce is fixed by the ledger when the round starts (`consensus.contract.Round`).
    Every contribution of the round carries the binding in its header and its masks; the
    aggregator and the decryption share refuse any other, so a blob of an earlier round of
    the same key epoch, or of another chain, never enters this round's aggregate.
    """

    chain_id: bytes
    epoch: bytes  # the key epoch id (the contract's epoch seed)
    round: int
    nonce: bytes

    def __post_init__(self) -> None:
        if any(len(field) != BINDING_ID_SIZE for field in (self.chain_id, self.epoch, self.nonce)):
            raise ValueError(f"chain id, key epoch id and round nonce must have {BINDING_ID_SIZE} bytes")
        if not 0 < self.round < 1 << 63:
            raise ValueError(f"round {self.round} is not a positive 63-bit number")

    @property
    def digest(self) -> bytes:
        """SHA-256 of the domain and the four fields: what every mask is expanded under."""
        fields = self.chain_id + self.epoch + self.round.to_bytes(8, "big") + self.nonce
        return hashlib.sha256(_BINDING_DOMAIN + fields).digest()

    def differs_in(self, other: RoundBinding) -> str | None:
        """The first field in which `other` differs (for error messages), None if it is equal."""
        fields = (
            ("chain", self.chain_id, other.chain_id),
            ("key epoch", self.epoch, other.epoch),
            ("round", self.round, other.round),
            ("round nonce", self.nonce, other.nonce),
        )
        return next((name for name, mine, theirs in fields if mine != theirs), None)


@final
@dataclass(frozen=True, slots=True)
class CiphertextHeader:
    """Header of a ciphertext blob. Everything the body's size depends on is here and checked.

    `chain_id`, `epoch`, `round` and `nonce` are the `RoundBinding`; `contributors`
    (strictly increasing by public key) and `seeds` (aligned) name whose key shares mask
    the sum, and how to re-expand each mask.
    """

    version: int
    parms_id: bytes  # SEAL parms id of the data level: pins N, the primes and the scheme
    scale_bits: int
    length: int  # parameter values; the weight rides in one extra coefficient
    chunks: int
    chain_id: bytes
    epoch: bytes  # the key epoch whose key shares encrypted it
    round: int
    nonce: bytes  # the round's nonce on the ledger
    contributors: tuple[NodeId, ...]
    seeds: tuple[bytes, ...]

    @property
    def binding(self) -> RoundBinding:
        """The round binding; ValueError if a field is malformed (`EncryptedVector.from_bytes` checks)."""
        return RoundBinding(self.chain_id, self.epoch, self.round, self.nonce)


def mask(
    ctx: CkksContext, binding: RoundBinding, contributor: NodeId, seed: bytes, start: int, stop: int
) -> U64:
    """Chunks ``[start, stop)`` of a contributor's uniform mask polynomial ``a``: ``(k, L, N)``, NTT form.

    The `XofStream` of (domain, binding digest, contributor, seed, chunk, prime): the same for
    everyone, and a contributor's seed replayed under another id, round, key epoch or chain
    gives another mask.
    """
    n = ctx.params.degree
    prefix = _MASK_DOMAIN + binding.digest + contributor.public_key + seed
    out = np.empty((stop - start, len(ctx.data_moduli), n), dtype=np.uint64)
    for chunk in range(start, stop):
        for j, q in enumerate(ctx.data_moduli):
            out[chunk - start, j] = stream_uniform_mod(prefix + struct.pack(">IB", chunk, j), q, n)
    return out


@final
class EncryptedVector:
    """`length` weighted values plus their weight, encrypted as `chunks` CKKS ciphertexts.

    Holds the validated wire bytes; numpy residues are unpacked one batch at a time, so a
    50M-parameter vector costs its 375 MB of wire bytes and no more.
    """

    __slots__ = ("_body", "_digest", "_wire", "context", "header")

    def __init__(self, ctx: CkksContext, header: CiphertextHeader, wire: bytes, body: memoryview) -> None:
        self.context: Final = ctx
        self.header: Final = header
        self._wire = wire
        self._body = body
        self._digest: bytes | None = None

    @property
    def length(self) -> int:
        return self.header.length

    @property
    def chunks(self) -> int:
        return self.header.chunks

    @property
    def epoch(self) -> bytes:
        return self.header.epoch

    @property
    def binding(self) -> RoundBinding:
        return self.header.binding

    @property
    def contributors(self) -> tuple[NodeId, ...]:
        return self.header.contributors

    def to_bytes(self) -> bytes:
        return self._wire

    def digest(self) -> bytes:
        """SHA-256 of the blob (its content address), hashed once."""
        if self._digest is None:
            self._digest = hashlib.sha256(self._wire).digest()
        return self._digest

    def __len__(self) -> int:
        return len(self._wire)

    def batch(self, start: int, stop: int) -> U64:
        """Ciphertexts ``[start, stop)`` as ``(k, N)`` rescaled c0 residues mod q1 (coefficient form)."""
        n = self.context.params.degree
        if not 0 <= start <= stop <= self.chunks:
            raise IndexError("chunk range out of bounds")
        raw = self._body[packed_size(start * n) : packed_size(stop * n)]
        return unpack60(raw, (stop - start) * n).reshape(stop - start, n)

    def batches(self) -> Iterator[tuple[int, U64]]:
        for start in range(0, self.chunks, BATCH_CHUNKS):
            yield start, self.batch(start, min(start + BATCH_CHUNKS, self.chunks))

    def masked_sum(self, start: int, stop: int, operands: Mapping[NodeId, tuple[U64, U64]]) -> U64:
        """``sum_i a_i * w_i`` over the contributors for chunks ``[start, stop)``: ``(k, L, N)``, NTT form.

        `operands` gives each contributor's ``(L, N)`` NTT-form key material ``w_i`` and its
        Shoup quotients (its own secret to decrypt, a dealer's Shamir share for a decryption
        share); ``a_i`` is the contributor's `mask`.
        """
        ctx = self.context
        total = np.zeros((stop - start, len(ctx.data_moduli), ctx.params.degree), dtype=np.uint64)
        binding = self.binding
        for contributor, seed in zip(self.header.contributors, self.header.seeds, strict=True):
            a = mask(ctx, binding, contributor, seed, start, stop)
            operand, quotients = operands[contributor]
            add_mod_into(total, shoup_mul(a, operand, quotients, ctx.q_col), ctx.q_col)
        return total

    @classmethod
    def from_residues(
        cls,
        ctx: CkksContext,
        length: int,
        binding: RoundBinding,
        seeds: dict[NodeId, bytes],
        batches: Iterable[U64],
    ) -> EncryptedVector:
        """Build the canonical blob from ``(k, N)`` residue batches (see `batch`) in chunk order."""
        ordered = sorted(seeds, key=lambda node: node.public_key)
        header = CiphertextHeader(
            WIRE_VERSION, ctx.parms_id, ctx.params.scale_bits, length, chunk_count(ctx.params, length),
            binding.chain_id, binding.epoch, binding.round, binding.nonce,
            tuple(ordered), tuple(seeds[node] for node in ordered),
        )  # fmt: skip
        wire = encode_blob(_CIPHERTEXT_MAGIC, header, (pack60(b) for b in batches))
        return cls.from_bytes(ctx, wire, validate=False)

    @classmethod
    def from_bytes(cls, ctx: CkksContext, data: bytes, *, validate: bool = True) -> EncryptedVector:
        """Decode and fully validate a ciphertext blob; raise `InvalidCiphertext` on bad input."""
        try:
            header, body = decode_blob(_CIPHERTEXT_MAGIC, CiphertextHeader, data, InvalidCiphertext)
        except InvalidCiphertext:
            _refuse_other_version(data)
            raise
        params = ctx.params
        if header.version != WIRE_VERSION:
            raise InvalidCiphertext(f"unsupported ciphertext version {header.version}")
        if header.parms_id != ctx.parms_id or header.scale_bits != params.scale_bits:
            raise InvalidCiphertext("ciphertext is for other CKKS parameters")
        if not 0 < header.length <= MAX_VALUES:
            raise InvalidCiphertext(f"ciphertext length {header.length} out of range")
        if header.chunks != chunk_count(params, header.length):
            raise InvalidCiphertext("ciphertext shape does not match its length")
        try:
            _ = header.binding
        except ValueError as exc:
            raise InvalidCiphertext(f"ciphertext header: {exc}") from None
        keys = [c.public_key for c in header.contributors]
        if not 0 < len(keys) <= MAX_CONTRIBUTORS or any(b <= a for a, b in itertools.pairwise(keys)):
            raise InvalidCiphertext(
                f"ciphertext must name 1..{MAX_CONTRIBUTORS} distinct contributors in key order"
            )
        if len(header.seeds) != len(keys) or any(len(seed) != SEED_SIZE for seed in header.seeds):
            raise InvalidCiphertext(f"ciphertext needs one {SEED_SIZE}-byte mask seed per contributor")
        expected = rescaled_body_size(params, header.length)
        if len(body) != expected:
            raise InvalidCiphertext(f"ciphertext body has {len(body)} bytes, expected {expected}")
        vector = cls(ctx, header, data, body)
        if validate:
            for _, batch in vector.batches():
                ctx.check_residues(batch, ctx.rescaled_col, InvalidCiphertext, "ciphertext")
        return vector


def _refuse_other_version(data: bytes) -> None:
    """Raise a clear `InvalidCiphertext` if `data` is a well-formed blob of another wire version
    (its header schema differs, so `decode_blob` only says the header is bad)."""
    try:
        magic, head_len = _BLOB_PREFIX.unpack_from(data, 0)
        if magic != _CIPHERTEXT_MAGIC:
            return
        fields = cbor.loads(data[_BLOB_PREFIX.size : _BLOB_PREFIX.size + head_len], max_depth=2)
    except (struct.error, ProtocolError, TypeError):
        return
    version = fields.get("version") if isinstance(fields, dict) else None
    if isinstance(version, int) and version != WIRE_VERSION:
        raise InvalidCiphertext(
            f"ciphertext wire version {version} is not supported (this node reads version "
            f"{WIRE_VERSION}, which binds every contribution to its round)"
        ) from None


def normalised_weight(weight: float, total_weight: float) -> float:
    """The weight a site encrypts: its share of the round's total (so the sum stays bounded)."""
    if not (math.isfinite(weight) and math.isfinite(total_weight)):
        raise ValueError("weights must be finite")
    if not 0 < weight <= total_weight:
        raise ValueError(f"weight must be in (0, total_weight], got {weight} of {total_weight}")
    return weight / total_weight


def encryption_error(ctx: CkksContext, chunks: int) -> U64:
    """``(chunks, L, N)`` coefficient-form RLWE error, centred binomial with eta `ERROR_ETA`."""
    n = ctx.params.degree
    error = centered_binomial(ERROR_ETA, chunks * n)
    residues = signed_split_residues(error, np.zeros(error.shape, dtype=np.uint64), 0, ctx.data_moduli)
    return residues.reshape(len(ctx.data_moduli), chunks, n).transpose(1, 0, 2)


def encrypt(
    ctx: CkksContext,
    secret: U64,
    binding: RoundBinding,
    contributor: NodeId,
    values: npt.ArrayLike,
    weight: float,
    total_weight: float,
) -> EncryptedVector:
    """Encrypt ``(w * values, w)`` with ``w = weight / total_weight`` under `contributor`'s key share.

    `secret` is the contributor's additive secret ``s_i`` of key epoch ``binding.epoch`` (NTT
    form, data level ``(L, N)``); each chunk is ``rescale(Delta*m + e - a * s_i)`` with ``a``
    its `mask` under a fresh seed and the round's `binding`. `values` is a 1-D float vector
    (float32 model parameters, any length up to `MAX_VALUES`); non-finite values or
    ``|v| > max_abs_value`` are rejected before anything is encoded. Randomness (seed,
    errors) comes from `os.urandom`. Processed `BATCH_CHUNKS` ciphertexts at a time.
    """
    vector = np.asarray(values)
    if vector.ndim != 1 or not 0 < vector.size <= MAX_VALUES:
        raise ValueError(f"values must be a 1-D vector of 1..{MAX_VALUES} floats")
    if vector.dtype.kind != "f":
        raise ValueError(f"values must be floats, got {vector.dtype}")
    if secret.shape != (len(ctx.data_moduli), ctx.params.degree):
        raise ValueError("secret must be a data-level (L, N) poly")
    w = normalised_weight(weight, total_weight)
    params = ctx.params
    limit = params.max_abs_value
    if not bool(np.all(np.isfinite(vector))) or float(np.max(np.abs(vector))) > limit:
        raise ValueError(f"values must be finite with |v| <= {limit:g}")
    length = vector.size
    n = ctx.params.degree
    chunks = chunk_count(ctx.params, length)
    seed = os.urandom(SEED_SIZE)
    quotients = shoup_quotients(secret, ctx.data_moduli)

    def batches() -> Iterator[U64]:
        for start in range(0, chunks, BATCH_CHUNKS):
            stop = min(start + BATCH_CHUNKS, chunks)
            scaled = np.zeros((stop - start) * n, dtype=np.float64)
            lo, hi = start * n, min(stop * n, length)
            scaled[: hi - lo] = np.rint(np.ldexp(vector[lo:hi].astype(np.float64) * w, params.scale_bits))
            if lo <= length < stop * n:
                scaled[length - lo] = np.rint(np.ldexp(w, params.weight_scale_bits))
            a = mask(ctx, binding, contributor, seed, start, stop)
            a_s = ctx.to_coefficients(shoup_mul(a, secret, quotients, ctx.q_col))
            message = add_mod(ctx.encode(scaled), encryption_error(ctx, stop - start), ctx.q_col)
            yield ctx.rescale(sub_mod(message, a_s, ctx.q_col))

    return EncryptedVector.from_residues(ctx, length, binding, {contributor: seed}, batches())


@final
class Aggregator:
    """Homomorphic sum of encrypted vectors of one length and round, added as they arrive.

    Addition mod q is exact and order-independent, and the header lists the contributors in
    key order, so anyone adding the same blobs gets the same bytes (the verifier recomputes
    the leader's aggregate and compares hashes). A contributor can be in the sum only once,
    and every vector carries the same `RoundBinding`: `binding` if given, else the first's.
    """

    __slots__ = ("_binding", "_seeds", "_sum", "context", "length")

    def __init__(self, ctx: CkksContext, length: int, binding: RoundBinding | None = None) -> None:
        self.context: Final = ctx
        self.length: Final = length
        self._binding = binding
        self._seeds: dict[NodeId, bytes] = {}
        self._sum: U64 = np.zeros((chunk_count(ctx.params, length), ctx.params.degree), dtype=np.uint64)

    @property
    def count(self) -> int:
        """Contributors in the sum so far."""
        return len(self._seeds)

    def add(self, vector: EncryptedVector) -> None:
        """Add `vector`; `InvalidAggregate` (and no change) if it is bound to another round (or
        chain, key epoch, round nonce) or names a contributor already in the sum."""
        if vector.context.params != self.context.params or vector.length != self.length:
            raise ValueError(f"cannot add a {vector.length}-value vector to a {self.length}-value sum")
        binding = vector.binding
        if self._binding is not None and (field := self._binding.differs_in(binding)) is not None:
            raise InvalidAggregate(
                f"cannot add ciphertexts of two {field}s (a round-{binding.round} ciphertext "
                f"to a round-{self._binding.round} sum)"
            )
        if twice := [c.short for c in vector.contributors if c in self._seeds]:
            raise InvalidAggregate(f"already in the sum: {', '.join(twice)}")
        if len(self._seeds) + len(vector.contributors) > MAX_CONTRIBUTORS:
            raise InvalidAggregate(f"a sum holds at most {MAX_CONTRIBUTORS} contributors")
        for start, batch in vector.batches():
            add_mod_into(self._sum[start : start + batch.shape[0]], batch, self.context.rescaled_col)
        self._binding = binding
        self._seeds.update(zip(vector.contributors, vector.header.seeds, strict=True))

    def result(self) -> EncryptedVector:
        if self._binding is None or not self._seeds:
            raise ValueError("nothing was added")
        s = self._sum
        return EncryptedVector.from_residues(
            self.context, self.length, self._binding, self._seeds,
            (s[i : i + BATCH_CHUNKS] for i in range(0, s.shape[0], BATCH_CHUNKS)),
        )  # fmt: skip


def add(vectors: Iterable[EncryptedVector]) -> EncryptedVector:
    """The homomorphic sum of one or more encrypted vectors of the same length, parameters and round."""
    items = iter(vectors)
    first = next(items, None)
    if first is None:
        raise ValueError("add needs at least one vector")
    total = Aggregator(first.context, first.length)
    total.add(first)
    for vector in items:
        total.add(vector)
    return total.result()


def decrypt_with_secret(
    ctx: CkksContext, vector: EncryptedVector, secrets: Mapping[NodeId, U64]
) -> tuple[F64, float]:
    """Decryption with every contributor's own secret: ``c0 + rescale(sum_i a_i * s_i)`` (for tests).

    `secrets` maps each contributor to its NTT-form data-level ``(L, N)`` secret; returns
    (weighted sum, weight sum).
    """
    out = np.empty(vector.chunks * ctx.params.degree, dtype=np.float64)
    n = ctx.params.degree
    operands = {c: (secrets[c], shoup_quotients(secrets[c], ctx.data_moduli)) for c in vector.contributors}
    for start, batch in vector.batches():
        stop = start + batch.shape[0]
        masked = vector.masked_sum(start, stop, operands)
        plain = add_mod(batch, ctx.rescale(ctx.to_coefficients(masked)), ctx.rescaled_col)
        out[start * n : stop * n] = ctx.decode(plain)
    return split_weight(ctx.params, out, vector.length)


def split_weight(params: CkksParams, decoded: F64, length: int) -> tuple[F64, float]:
    """Decoded coefficients (at scale 2^scale_bits) to (values, weight at its own finer scale)."""
    weight = math.ldexp(float(decoded[length]), params.scale_bits - params.weight_scale_bits)
    return decoded[:length], weight
