"""Smudging (flooding) noise for decryption shares, and its per-key-epoch budget.

Noise. A decryption share adds, to every coefficient, an integer ``X`` drawn from a
distribution within statistical distance ``sampler_distance(b)`` (about 2^-107 at
b = 68) of the discrete Gaussian ``D_{Z,sigma}``, ``rho(x) = exp(-x^2 / (2 sigma^2))``,
with ``sigma >= 2^b`` (`gaussian_noise`, `sampler_sigma`). It is built exactly, with
integers only, from random bytes:

* Base: ``G ~ D_{Z,sigma0}`` with ``sigma0 = 2^14``, cut at ``|G| <= T = 13.5 sigma0``, by
  inversion of a 128-bit cumulative table computed once in exact integer arithmetic
  (`_base_table`): a uniform 128-bit ``u`` selects ``x`` with ``C(x-1) <= u < C(x)``. Each
  threshold is rounded by less than 2^-128, so the table's output is within
  ``(2T + 1) 2^-129`` of ``D_{Z,sigma0}`` cut at T, which is within the cut-off mass
  ``erfc(T / (sigma0 sqrt 2)) < 2^-135`` of ``D_{Z,sigma0}`` itself.
* Convolution: ``X = sum_j 2^(K_j) G_j`` for independent base samples and offsets
  ``0 = K_0 < K_1 < ... < K_{m-1} = b - 14``, steps of at most 12 bits (b = 68: offsets
  0, 12, 24, 36, 48, 54; six base samples). Peikert's convolution theorem (CRYPTO 2010,
  "An efficient and parallel Gaussian sampler for lattices", Thm 3.1, with x2 the coarse
  part ``2^k Y`` on the lattice ``2^k Z`` and x1 = x2 + G on Z) says that if
  ``Y ~ D_{Z,sY}`` and ``(sigma0^-2 + (2^k sY)^-2)^(-1/2) >= eta_eps(2^k Z) = 2^k
  eta_eps(Z)``, then ``G + 2^k Y`` is within 8 eps of ``D_{Z, sqrt(sigma0^2 + 4^k sY^2)}``.
  With eps = 2^-128, ``eta_eps(Z) <= sqrt(ln(2 + 2/eps) / pi) / sqrt(2 pi) = 2.13`` in this
  module's sigma convention (Micciancio-Regev, Lemma 3.3), so a step of k = 12 bits needs
  ``sigma0 >= 2^13.09``: 2^14 leaves almost a bit of margin (`_plan` checks every step).
  Applied from the coarsest part down, the errors add: ``m`` base distances plus
  ``8 eps`` per step (`sampler_distance`).

Every bit of ``X`` is random (no floating point anywhere), and the random bytes come from
a caller's byte source (`os.urandom` by default), so the same bytes give the same noise.

Bound. Member k's share hides the aggregate's secret-dependent noise ``E`` (a sum of
``c`` centred binomial errors, parameter eta) behind its ``X``: what a simulator without
the keys can produce differs from the real share exactly by shifting ``X`` by the integer
``E``. For ``D = D_{Z,sigma}`` and an integer shift e, ``KL(D + e || D) = e^2 / (2 sigma^2)``
exactly (the normalisations agree and ``E[x] = 0``). Hoeffding on the ``2 eta c`` fair
bits of ``E`` gives ``|E| <= sqrt(eta c ln(2/delta))`` except with probability delta =
2^-128 per coefficient. So one share of M coefficients has ``KL <= M eta c ln(2/delta) /
(2 sigma^2)``; KL adds over independent shares, and by Pinsker the statistical distance
of everything an epoch's shares reveal is at most ``sqrt(KL / 2)`` plus, per coefficient
of every share, delta (the Hoeffding tail) and twice the sampler's distance (real
sampler vs ``D``, on both sides of the comparison). `SmudgingBudget` counts that.

Budget. Every share is counted in integer units ``c * |T| * M`` per decryption
(conservatively, all |T| shares of it, whether or not this member made them):
`SmudgingBudget.capacity` is the largest total that keeps the bound above at most
``2^-budget_bits``, computed in exact rational arithmetic so every node (and the
contract) gets the same integer.
"""

from __future__ import annotations

import decimal
import functools
import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Final, final

import numpy as np
import numpy.typing as npt

RandomBytes = Callable[[int], bytes]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

BASE_LOG_SIGMA: Final = 14  # sigma0 = 2^14: the exactly tabulated base Gaussian
BASE_CUT: Final = 221_184  # T = 13.5 * 2^14: |G| <= T
STEP_BITS: Final = 12  # offsets K_j grow by at most this much (smoothing condition below)
SMOOTHING_LOG2_EPS: Final = -128
HOEFFDING_LOG2_DELTA: Final = -128  # per coefficient: P(|E| > bound)
NOISE_SHIFT: Final = 48  # gaussian_noise returns X = high * 2^48 + low
MIN_LOG_SIGMA: Final = 33
MAX_LOG_SIGMA: Final = 93
DEFAULT_LOG_SIGMA: Final = 68
DEFAULT_BUDGET_BITS: Final = 40
_GUIDE_BITS: Final = 18  # top bits of u index a guide into the cumulative table
_SEARCH: Final = 1 << 20  # guide entries from here on mark a bucket that holds a threshold
_BLOCK: Final = 1 << 14  # samples per vectorized pass: the temporaries of a block stay in cache
_TABLE_BITS: Final = 128
_FIXED: Final = 256  # fixed-point bits of the Gaussian weights while building the table
_LN2_UPPER: Final = Fraction(6931471805599454, 10**16)  # > ln 2


def _eta_sigma(log2_eps: int) -> float:
    """Upper bound on the smoothing parameter of Z, as a standard deviation."""
    return math.sqrt(math.log(2 + 2 * 2.0**-log2_eps) / math.pi) / math.sqrt(2 * math.pi)


@functools.cache
def _plan(log_sigma: int) -> tuple[int, ...]:
    """Offsets K_j of the base samples for sigma >= 2^log_sigma, each step checked to smooth."""
    if not MIN_LOG_SIGMA <= log_sigma <= MAX_LOG_SIGMA:
        raise ValueError(f"log_sigma must be in [{MIN_LOG_SIGMA}, {MAX_LOG_SIGMA}], got {log_sigma}")
    top = log_sigma - BASE_LOG_SIGMA
    offsets = [*range(0, top, STEP_BITS), top]
    sigma0 = 2.0**BASE_LOG_SIGMA
    eta = _eta_sigma(SMOOTHING_LOG2_EPS)
    coarse = sigma0  # width of the part above offset K_{j+1}, in units of 2^K_{j+1}
    for fine, upper in reversed(list(itertools.pairwise(offsets))):
        scale = 2.0 ** (upper - fine)
        harmonic = (sigma0**-2 + (scale * coarse) ** -2) ** -0.5
        if harmonic < scale * eta:  # pragma: no cover - fixed constants satisfy it
            raise ValueError(f"smudging step of {upper - fine} bits does not smooth 2^{upper - fine} Z")
        coarse = math.sqrt(sigma0**2 + (scale * coarse) ** 2)
    return tuple(offsets)


def sampler_sigma(log_sigma: int) -> float:
    """The exact width of the noise ``gaussian_noise`` approximates (at least 2^log_sigma)."""
    return 2.0**BASE_LOG_SIGMA * math.sqrt(sum(4.0**k for k in _plan(log_sigma)))


def sampler_distance(log_sigma: int) -> float:
    """Statistical distance of one `gaussian_noise` output from ``D_{Z, sampler_sigma}``."""
    parts = len(_plan(log_sigma))
    cut = math.erfc(BASE_CUT / (2.0**BASE_LOG_SIGMA * math.sqrt(2)))
    rounding = (2 * BASE_CUT + 1) * 2.0 ** -(_TABLE_BITS + 1)
    return parts * (cut + rounding) + (parts - 1) * 8 * 2.0**SMOOTHING_LOG2_EPS


@final
@dataclass(frozen=True, slots=True)
class _Table:
    high: U64  # top words of the 2T thresholds
    low: U64  # bottom words of the thresholds
    padded_high: U64  # high, then 2^64 - 1
    # guide[g], for bucket g of the top _GUIDE_BITS bits of u: the sample itself if no
    # threshold's top word falls in the bucket, else _SEARCH + (thresholds below the bucket)
    guide: npt.NDArray[np.int32]


@functools.cache
def _base_table() -> _Table:
    """Thresholds ``C(i) = floor(2^128 P(G <= -T + i))``, i < 2T, for G ~ D_{Z,2^14} cut at T.

    The weights ``exp(-x^2 / 2^29)`` are computed in 256-bit fixed point by the exact
    recurrence ``rho(x + 1) = rho(x) r^(2x + 1)``, ``r = exp(-2^-29)`` (50 digits more than
    needed); the truncation error stays below 2^-230 relative, far under the 2^-128 rounding.
    """
    with decimal.localcontext() as ctx:
        ctx.prec = 120
        r = int((decimal.Decimal(-1) / decimal.Decimal(2 ** (2 * BASE_LOG_SIGMA + 1))).exp() * (1 << _FIXED))
    r2 = r * r >> _FIXED
    one = 1 << _FIXED
    weights = [one]
    step = r
    for _ in range(BASE_CUT):
        weights.append(weights[-1] * step >> _FIXED)
        step = step * r2 >> _FIXED
    symmetric = weights[:0:-1] + weights  # x = -T .. T
    total = sum(symmetric)
    thresholds = []
    running = 0
    for weight in symmetric[:-1]:
        running += weight
        thresholds.append((running << _TABLE_BITS) // total)
    mask = (1 << 64) - 1
    high = np.array([c >> 64 for c in thresholds], dtype=np.uint64)
    low = np.array([c & mask for c in thresholds], dtype=np.uint64)
    buckets = np.arange(1 << _GUIDE_BITS, dtype=np.uint64) << np.uint64(64 - _GUIDE_BITS)
    below = np.append(np.searchsorted(high, buckets, side="left"), high.size).astype(np.int64)
    holds = below[1:] != below[:-1]
    guide = np.where(holds, below[:-1] + _SEARCH, below[:-1] - BASE_CUT)
    padded = np.append(high, np.uint64(np.iinfo(np.uint64).max))
    return _Table(high, low, padded, guide.astype(np.int32))


def _words(random_bytes: RandomBytes, count: int) -> U64:
    data = random_bytes(8 * count)
    if len(data) != 8 * count:
        raise ValueError(f"byte source returned {len(data)} bytes, asked for {8 * count}")
    return np.frombuffer(data, dtype="<u8").astype(np.uint64, copy=False)


def base_gaussian(random_bytes: RandomBytes, count: int) -> I64:
    """`count` samples of ``D_{Z,2^14}`` cut at ``|x| <= BASE_CUT`` (see the module docstring).

    Uses 8 bytes per sample (the top word of u), and 8 more for the rare sample (about
    2^-45) whose top word equals a threshold's: the bottom words are drawn after all top
    words, in sample order. A guide on the top 18 bits of u gives 71% of the samples; one
    comparison with the next threshold settles all but 1.6% of the rest, which are found
    by a search of the table. Blocks of `_BLOCK` samples keep every temporary in cache.
    """
    table = _base_table()
    u = _words(random_bytes, count)
    samples = np.empty(count, dtype=np.int64)
    unsettled = [_guided_block(table, u, samples, start) for start in range(0, count, _BLOCK)]
    searched = np.concatenate(unsettled)
    if searched.size:
        _search(random_bytes, table, u, samples, searched)
    return samples


def _guided_block(table: _Table, u: U64, samples: I64, start: int) -> I64:
    """Samples ``[start, start + _BLOCK)`` from the guide and one step; the positions left to search."""
    top_words = u[start : start + _BLOCK]
    guided = table.guide[(top_words >> np.uint64(64 - _GUIDE_BITS)).view(np.int64)]
    out = samples[start : start + _BLOCK]
    out[...] = guided
    unresolved = np.flatnonzero(guided >= _SEARCH)
    top = top_words[unresolved]
    index = (guided[unresolved] - _SEARCH).astype(np.int64)
    # Near the centre a bucket holds at most one threshold: index is the count of thresholds
    # below the bucket, so one comparison with the next one or two decides the sample
    # (`padded` ends in 2^64 - 1, above every top word but the last, which is searched).
    padded = table.padded_high
    index += padded[index] < top
    out[unresolved] = index - BASE_CUT  # the unsettled ones are overwritten by the search
    rest: I64 = unresolved[padded[index] <= top] + start
    return rest


def _search(random_bytes: RandomBytes, table: _Table, u: U64, samples: I64, positions: I64) -> None:
    """Exact samples at `positions` (ascending) by searching every threshold.

    The bottom word of u matters only on a tie with a threshold's top word: it is drawn
    then, in sample order. Searching in sorted order is ten times faster (cache)."""
    top = u[positions]
    order = np.argsort(top, kind="stable")
    left = np.empty(positions.size, dtype=np.int64)
    left[order] = np.searchsorted(table.high, top[order], side="left")
    samples[positions] = left - BASE_CUT
    tied = left < table.high.size
    tied[tied] = table.high[left[tied]] == top[tied]
    for i in np.flatnonzero(tied):
        right = int(np.searchsorted(table.high, top[i], side="right"))
        bottom = _words(random_bytes, 1)[0]
        segment = table.low[left[i] : right]
        samples[positions[i]] = left[i] + int(np.searchsorted(segment, bottom, side="right")) - BASE_CUT


def gaussian_noise(random_bytes: RandomBytes, count: int, log_sigma: int) -> tuple[I64, U64, int]:
    """`count` integers X from within `sampler_distance` of ``D_{Z, sampler_sigma(log_sigma)}``.

    Returned as ``(high, low, shift)`` with ``X = high * 2^shift + low``, ``0 <= low < 2^shift``
    (the form of `rns.signed_split_residues`). Deterministic in the bytes `random_bytes`
    returns; ``|X| <= BASE_CUT * sum_j 2^K_j < 13.8 * 2^log_sigma``.
    """
    offsets = _plan(log_sigma)
    samples = base_gaussian(random_bytes, count * len(offsets)).reshape(len(offsets), count)
    high = np.empty(count, dtype=np.int64)
    low = np.empty(count, dtype=np.uint64)
    for start in range(0, count, _BLOCK):
        stop = start + _BLOCK
        _compose(offsets, samples[:, start:stop], high[start:stop], low[start:stop])
    return high, low, NOISE_SHIFT


def _compose(offsets: Sequence[int], parts: I64, high: I64, low: U64) -> None:
    """``X = sum_j 2^(K_j) G_j`` into `high` and `low` (``X = high * 2^NOISE_SHIFT + low``)."""
    fine = parts[0].copy()  # parts below 2^NOISE_SHIFT (K_0 = 0): |fine| < 2^54
    high[...] = 0
    for offset, part in zip(offsets[1:], parts[1:], strict=True):
        if offset < NOISE_SHIFT:
            fine += part << np.int64(offset)
        else:
            high += part << np.int64(offset - NOISE_SHIFT)
    high += fine >> np.int64(NOISE_SHIFT)  # arithmetic: floor division
    low[...] = (fine & np.int64((1 << NOISE_SHIFT) - 1)).view(np.uint64)


def urandom_noise(count: int, log_sigma: int) -> tuple[I64, U64, int]:
    """`gaussian_noise` from the OS CSPRNG."""
    return gaussian_noise(os.urandom, count, log_sigma)


# -- the budget -------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class SmudgingBudget:
    """What one key epoch's decryption shares may leak: statistical distance <= 2^-budget_bits.

    `log_sigma`: smudging width (sigma >= 2^log_sigma); `error_eta`: parameter of the
    contributions' centred binomial error.
    """

    log_sigma: int = DEFAULT_LOG_SIGMA
    budget_bits: int = DEFAULT_BUDGET_BITS
    error_eta: int = 21

    def __post_init__(self) -> None:
        _plan(self.log_sigma)
        if not 20 <= self.budget_bits <= 80:
            raise ValueError(f"smudging budget_bits must be in [20, 80], got {self.budget_bits}")
        if not 1 <= self.error_eta <= 32:
            raise ValueError(f"error_eta must be in [1, 32], got {self.error_eta}")
        if self.capacity < 1:
            raise ValueError("smudging budget admits no decryption at all: widen sigma or lower budget_bits")

    @property
    def _log_term(self) -> Fraction:
        """An upper bound on ``ln(2 / delta)``."""
        return (1 - HOEFFDING_LOG2_DELTA) * _LN2_UPPER

    def error_bound(self, contributors: int) -> float:
        """Hoeffding bound on one coefficient of a sum of `contributors` errors (fails w.p. delta)."""
        cap = self.error_eta * contributors
        return min(math.sqrt(cap * float(self._log_term)), float(cap))

    def divergence(self, contributors: int, shares: int, coefficients: int) -> float:
        """KL bound of one decryption: `shares` shares of `coefficients` coefficients each."""
        e = self.error_bound(contributors)
        return shares * coefficients * e * e / (2 * 4.0**self.log_sigma)

    @staticmethod
    def units(contributors: int, shares: int, coefficients: int) -> int:
        """The integer charge of one decryption (``c * |T| * M``; KL is at most linear in it)."""
        return contributors * shares * coefficients

    @property
    def capacity(self) -> int:
        """The largest total of `units` whose statistical-distance bound is <= 2^-budget_bits.

        With ``KL <= W eta ln(2/delta) / (2 sigma^2)`` (W the units spent), ask
        ``sqrt(KL / 2) <= (1 - 2^-10) 2^-budget_bits`` and leave the other 2^-10 of the
        budget to the per-coefficient terms (checked). Exact rationals: deterministic.
        """
        return _capacity(self.log_sigma, self.budget_bits, self.error_eta)

    def distance(self, spent_units: int, coefficient_shares: int) -> float:
        """Statistical-distance bound after `spent_units` (with `coefficient_shares` <= them)."""
        kl = spent_units * self.error_eta * float(self._log_term) / (2 * 4.0**self.log_sigma)
        per_coefficient = 2.0**HOEFFDING_LOG2_DELTA + 2 * sampler_distance(self.log_sigma)
        return math.sqrt(kl / 2) + coefficient_shares * per_coefficient


@functools.cache
def _capacity(log_sigma: int, budget_bits: int, error_eta: int) -> int:
    target = Fraction(1, 1 << budget_bits) * (1 - Fraction(1, 1024))
    log_term = (1 - HOEFFDING_LOG2_DELTA) * _LN2_UPPER
    w = int(target * target * 4 * Fraction(4) ** log_sigma / (error_eta * log_term))
    per_coefficient = 2.0**HOEFFDING_LOG2_DELTA + 2 * sampler_distance(log_sigma)
    if w * per_coefficient > 2.0 ** -(budget_bits + 10):  # pragma: no cover - far from it
        raise ValueError("per-coefficient distance terms exceed their share of the budget")
    return w


DEFAULT_BUDGET: Final = SmudgingBudget()


def key_epochs_needed(budget: SmudgingBudget, decryptions: Sequence[int]) -> int:
    """How many key epochs a run of decryptions of the given unit costs needs (greedy, in order)."""
    epochs, spent = 1, 0
    for cost in decryptions:
        if cost > budget.capacity:
            raise ValueError(f"one decryption of {cost} units exceeds the epoch capacity {budget.capacity}")
        if spent + cost > budget.capacity:
            epochs, spent = epochs + 1, 0
        spent += cost
    return epochs
