"""Exact modular arithmetic on numpy ``uint64`` arrays of RNS residues.

Every prime here is below 2^61, so a sum of two residues never overflows 64
bits. Multiplication by a *fixed* operand uses Shoup's trick (the operand's
precomputed quotient ``floor(w * 2^64 / q)``): it needs the high half of a
64x64-bit product only to within a few units (`mulhi64_estimate`, from 32-bit
limbs), is exact for ``q < 2^61`` and costs a handful of vector ops.

Arrays of polynomials have the RNS prime on the second-to-last axis and the
coefficient on the last: ``(..., L, N)``. Residues are always in ``[0, q)``.
Randomness comes only from `os.urandom`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Final, final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

_MASK32: Final = np.uint64(0xFFFFFFFF)
_SHIFT32: Final = np.uint64(32)
MAX_PRIME_BITS: Final = 61
_BLOCK: Final = 1 << 14  # entries per block of a large product (~20 temporaries of 128 KiB)
_STREAM_DOMAIN: Final = b"swarmnode/prss-stream/v1\x00"  # (named when only PRSS noise used it)


def column(moduli: Sequence[int]) -> U64:
    """The moduli as a ``(L, 1)`` array that broadcasts over ``(..., L, N)``."""
    return np.array(moduli, dtype=np.uint64).reshape(-1, 1)


def mulhi64_estimate(a: U64, b: U64) -> U64:
    """The high 64 bits of the 128-bit products ``a * b``, less 0, 1 or 2 (elementwise).

    From 32-bit limbs without the carry out of the low half (``(a0 b0 >> 32) + low(a0 b1)
    + low(a1 b0) < 3 * 2^32``, so it adds at most 2): three limb products instead of four
    and half the additions. Shoup's multiplication absorbs the deficit (`_shoup_mul`).
    """
    a0, a1 = a & _MASK32, a >> _SHIFT32
    b0, b1 = b & _MASK32, b >> _SHIFT32
    result: U64 = a1 * b1
    result += (a0 * b1) >> _SHIFT32
    result += (a1 * b0) >> _SHIFT32
    return result


def shoup_quotients(operand: U64, moduli: Sequence[int]) -> U64:
    """``floor(w * 2^64 / q_j)`` for every entry w of an ``(L, N)`` operand (row j mod q_j)."""
    out = np.empty_like(operand)
    for j, q in enumerate(moduli):
        out[j] = np.array([(int(w) << 64) // q for w in operand[j].tolist()], dtype=np.uint64)
    return out


def shoup_mul(a: U64, operand: U64, quotients: U64, q_col: U64) -> U64:
    """``a * operand mod q`` (broadcasting), given the operand's Shoup quotients. Entries of a < q.

    Large inputs go through in blocks of rows of `a` (about `_BLOCK` entries): the twenty
    temporaries of a block stay in cache, which makes it about three times faster than
    one pass over the whole array.
    """
    rows = a.shape[0] if a.ndim else 1
    if a.ndim == 0 or a.size <= _BLOCK:
        return _shoup_mul(a, operand, quotients, q_col)
    step = max(1, _BLOCK * rows // a.size)
    out = np.empty(np.broadcast_shapes(a.shape, operand.shape, quotients.shape, q_col.shape), dtype=np.uint64)
    for start in range(0, rows, step):
        stop = start + step
        out[start:stop] = _shoup_mul(
            a[start:stop], *(_rows(x, start, stop, a.ndim) for x in (operand, quotients, q_col))
        )
    return out


def _rows(x: U64, start: int, stop: int, ndim: int) -> U64:
    """Rows ``[start, stop)`` of a broadcast operand if it spans `a`'s first axis, else all of it."""
    return x[start:stop] if x.ndim == ndim and x.shape[0] != 1 else x


def _shoup_mul(a: U64, operand: U64, quotients: U64, q_col: U64) -> U64:
    # The exact quotient leaves a * w - quotient * q in [0, 2q); the estimate is up to 2 less,
    # so r is in [0, 4q) (below 2^63 for q < 2^61). min(r, r - c) is r - c exactly when
    # r >= c (else r - c wraps above r): two such steps bring r into [0, q).
    with np.errstate(over="ignore"):
        r = np.asarray(a * operand)
        r -= mulhi64_estimate(a, quotients) * q_col  # wraps mod 2^64; true value in [0, 4q)
        np.minimum(r, r - (q_col + q_col), out=r)
        np.minimum(r, r - q_col, out=r)
    return r


def scalar_operand(values: Sequence[int], moduli: Sequence[int]) -> tuple[U64, U64]:
    """One scalar per prime (reduced mod it) as a ``(L, 1)`` Shoup operand and its quotients."""
    reduced = [v % q for v, q in zip(values, moduli, strict=True)]
    operand = np.array(reduced, dtype=np.uint64).reshape(-1, 1)
    quotients = np.array([(w << 64) // q for w, q in zip(reduced, moduli, strict=True)], dtype=np.uint64)
    return operand, quotients.reshape(-1, 1)


def add_mod(a: U64, b: U64, q_col: U64) -> U64:
    r = a + b
    np.minimum(r, r - q_col, out=r)  # as in `add_mod_into`
    return r


def add_mod_into(total: U64, b: U64, q_col: U64) -> None:
    """``total = (total + b) mod q`` in place (no temporaries the size of `total` kept).

    Both below q < 2^63, so the sum does not wrap; min(r, r - q) is r mod q (r - q wraps
    to a huge value exactly when r < q)."""
    np.add(total, b, out=total)
    np.minimum(total, total - q_col, out=total)


def sub_mod(a: U64, b: U64, q_col: U64) -> U64:
    r = a - b  # wraps to 2^64 + a - b when a < b, so that r + q wraps back to a - b + q < r
    np.minimum(r, r + q_col, out=r)
    return r


def neg_mod(a: U64, q_col: U64) -> U64:
    result: U64 = np.where(a == 0, a, q_col - a)
    return result


def signed_split_residues(high: I64, low: U64, shift: int, moduli: Sequence[int]) -> U64:
    """Residues of the integers ``high * 2^shift + low`` modulo every prime, as ``(L, *shape)``.

    `high` is int64 (any sign), ``0 <= low < 2^shift <= 2^61``: together they represent
    integers up to about 2^(63 + shift) exactly without Python ints.
    """
    out = np.empty((len(moduli), *high.shape), dtype=np.uint64)
    smallest, largest = (int(high.min()), int(high.max())) if high.size else (0, 0)
    for j, q in enumerate(moduli):
        q_arr = np.array([q], dtype=np.uint64)
        if -q < smallest and largest < q:
            # The common case (noise, errors, values far below 2^(shift + 60)): h mod q is h or
            # h + q, and min(h, h + q) over the 64-bit words picks it (a negative h wraps high).
            words = high.view(np.uint64)
            h = np.minimum(words, words + np.uint64(q))
        else:
            h = np.mod(high, np.int64(q)).astype(np.uint64)  # numpy mod takes the divisor's sign: in [0, q)
        if shift:
            operand, quotient = scalar_operand([1 << shift], [q])
            h = shoup_mul(h, operand[0], quotient[0], q_arr)
        lo = low if shift < MAX_PRIME_BITS - 2 else np.mod(low, np.uint64(q))
        out[j] = add_mod(h, lo.astype(np.uint64, copy=False), q_arr)
    return out


def random_u64(count: int) -> U64:
    """`count` independent uniform 64-bit words from the OS CSPRNG."""
    return np.frombuffer(os.urandom(8 * count), dtype=np.uint64).copy()


def uniform_mod(q: int, count: int) -> U64:
    """`count` exactly uniform residues mod q (rejection sampling on ``bit_length(q)``-bit words)."""
    bits = q.bit_length()
    out = np.empty(count, dtype=np.uint64)
    filled = 0
    while filled < count:
        need = count - filled
        draw = random_u64(need + need // 8 + 8) >> np.uint64(64 - bits)
        accepted = draw[draw < np.uint64(q)][:need]
        out[filled : filled + accepted.size] = accepted
        filled += accepted.size
    return out


def expand_uniform_mod(seed: bytes, q: int, count: int) -> U64:
    """`count` residues exactly uniform mod q, deterministic in `seed` (SHAKE-128 as the XOF).

    Rejection sampling on ``bit_length(q)``-bit words of the XOF stream: everyone expanding
    the same seed gets the same residues. A longer digest extends the same stream, so the
    rare retry (a 60-bit prime rejects about 2^-43 of the words) keeps the accepted prefix.
    """
    bits = q.bit_length()
    extra = 16
    while True:
        stream = hashlib.shake_128(seed).digest(8 * (count + extra))
        words = np.frombuffer(stream, dtype="<u8") >> np.uint64(64 - bits)
        accepted = words[words < np.uint64(q)]
        if accepted.size >= count:
            return accepted[:count].astype(np.uint64)
        extra *= 4


@final
class XofStream:
    """A deterministic byte stream of any length from a seed, read front to back: the
    AES-256-CTR keystream (counter from 0) under the key ``SHA-256(domain | seed)``.

    A PRF of the seed as long as the seed holds a secret key: SHA-256 derives a fresh AES
    key per stream, and AES-256 in counter mode is a PRF up to the PRP/PRF switching term
    (``blocks^2 / 2^129``, below 2^-100 for a chunk's 24,576 blocks). With a public seed
    (a mask), SHA-256 then AES-CTR is an expandable-output function like SHAKE-128 (as in
    Kyber's "90s" variant) at several times its speed.
    """

    __slots__ = ("_encryptor",)

    def __init__(self, seed: bytes) -> None:
        key = hashlib.sha256(_STREAM_DOMAIN + seed).digest()
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def read(self, size: int) -> bytes:
        return self._encryptor.update(bytes(size))


def stream_uniform_mod(seed: bytes, q: int, count: int) -> U64:
    """`count` residues exactly uniform mod q, deterministic in `seed` (`XofStream` as the XOF).

    Rejection sampling on ``bit_length(q)``-bit words, as `expand_uniform_mod`: the rare
    shortfall (a 60-bit prime rejects about 2^-43 of the words) reads on in the same stream.
    """
    bits = q.bit_length()
    stream = XofStream(seed)
    parts: list[U64] = []
    need, extra = count, 16
    while need > 0:
        words = np.frombuffer(stream.read(8 * (need + extra)), dtype="<u8") >> np.uint64(64 - bits)
        accepted = words[words < np.uint64(q)][:need]
        parts.append(accepted)
        need -= accepted.size
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def centered_binomial(eta: int, count: int) -> I64:
    """`count` samples of the centred binomial distribution with parameter eta (variance eta/2).

    Each sample is ``popcount(x) - popcount(y)`` for two independent eta-bit words from the
    OS CSPRNG: the RLWE error of Kyber/Saber, exact and constant-time in numpy.
    """
    if not 1 <= eta <= 32:
        raise ValueError("eta must be in [1, 32]")
    words = random_u64(count)
    mask = np.uint64((1 << eta) - 1)
    ones = np.bitwise_count(words & mask).astype(np.int64)
    others = np.bitwise_count((words >> np.uint64(32)) & mask).astype(np.int64)
    result: I64 = ones - others
    return result
