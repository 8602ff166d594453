"""Named CKKS parameter sets: the one place a swarm's CKKS parameters come from.

Genesis names a set (`training.ckks_params`), the contract copies that name into every key
epoch it opens (`consensus.contract.KeyEpoch.ckks_params`), and every key, ciphertext,
decryption share and dealing check of the epoch is made under the set's `CkksParams`,
passed in explicitly (`param_set`). No SEAL here: the contract judges dealing complaints
from the pinned primes (`CkksParamSet.dealing`) without building a context, and tests check
the pins and the security table below against SEAL.

Both sets use three 60-bit primes (two data primes, one special prime): ciphertexts and
shares travel packed at 60 bits per residue (`ckks.pack60`) and are rescaled once, so the
data level ``q0 * q1`` (~2^118) bounds the precision, whatever the ring degree. What the
degree buys is security margin: 180 modulus bits at N = 8192 are 128-bit secure by the
HE standard (at most 218 bits), at N = 16384 they are below even its 256-bit bound (237
bits of 438 allowed at 128 bits). The N = 16384 set spends 4 bits of the data level's
headroom on a finer scale, 2^94: its decrypted mean is 16 times more precise (RMS
``sqrt(|T|) 2^(68 - 94)``, 8.6e-8 at |T| = 33) for the same bound on values (2^20), and it
keeps the smudging's sigma, budget and statistical-distance bound (`smudging`), which do
not depend on the degree or the scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, final

from .dealing import DealingParams
from .smudging import DEFAULT_BUDGET_BITS, DEFAULT_LOG_SIGMA, SmudgingBudget

PACKED_BITS: Final = 60  # residues travel packed at 60 bits: no prime may be larger
ERROR_ETA: Final = 21  # centred binomial RLWE error: variance 10.5, sigma 3.24
SPLIT_SHIFT: Final = 52  # the exact encoder splits round(v * 2^scale) = high * 2^52 + low
# The HE standard's 128-bit (classical) bound on the total modulus bits per ring degree,
# the table SEAL enforces with `sec_level_type.tc128` (tests/crypto/test_ckks_params.py checks it).
HE_STANDARD_128_MAX_BITS: Final = MappingProxyType(
    {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
)


class UnknownParamSet(ValueError):
    """A name that is not one of `PARAM_SETS` (the message lists the known ones)."""


@final
@dataclass(frozen=True, slots=True)
class CkksParams:
    """CKKS parameters shared by every member of a swarm (a named set, fixed in genesis).

    Defaults: N = 8192, moduli [60, 60, 60] (180 of the 218 bits allowed at 128-bit
    security by the HE standard), coefficient encoding at scale 2^90, smudging noise a
    discrete Gaussian of width sigma = 2^smudging_bits per decryption share
    (`smudging.gaussian_noise`), inputs bounded by 2^20 in absolute value. A key epoch's
    decryption shares may leak at most 2^-smudging_budget_bits in statistical distance
    (`smudging.SmudgingBudget`, counted by `threshold.make_decryption_share` and the
    contract). RMS error of a decrypted mean: sqrt(|T|) 2^(smudging_bits - scale_bits)
    (1.4e-6 at |T| = 33 and scale 2^90); scripts/smudging_table.py tabulates both.
    """

    degree: int = 8192
    coeff_bits: tuple[int, ...] = (60, 60, 60)
    scale_bits: int = 90
    weight_scale_bits: int = 110
    smudging_bits: int = DEFAULT_LOG_SIGMA
    max_abs_value: float = float(1 << 20)
    smudging_budget_bits: int = DEFAULT_BUDGET_BITS

    def __post_init__(self) -> None:
        if self.degree not in HE_STANDARD_128_MAX_BITS:
            raise ValueError(f"degree must be one of {sorted(HE_STANDARD_128_MAX_BITS)}")
        if len(self.coeff_bits) != 3 or not all(30 <= b <= PACKED_BITS for b in self.coeff_bits):
            raise ValueError("coeff_bits must be three sizes of 30..60 bits (two data primes, one special)")
        if sum(self.coeff_bits) > HE_STANDARD_128_MAX_BITS[self.degree]:
            raise ValueError(f"{sum(self.coeff_bits)} modulus bits exceed the 128-bit security bound")
        data_bits = sum(self.coeff_bits[:2]) - 2  # a b-bit prime exceeds 2^(b-1): q0*q1 > 2^data_bits
        headroom = self.scale_bits + math.log2(self.max_abs_value) + 2
        if headroom >= data_bits - 1 or self.smudging_bits + 8 >= data_bits - 1:
            raise ValueError("scale, value bound or smudging leave no headroom below q0*q1/2")
        if self.scale_bits + math.log2(self.max_abs_value) > SPLIT_SHIFT + 62:
            raise ValueError("scaled values must stay below 2^114 for the exact encoder")
        # q0*q1/2 > 2^(data_bits - 1): a weight sum up to 2^7 (128, normal is ~1) must not wrap.
        if not self.scale_bits <= self.weight_scale_bits <= min(data_bits - 8, SPLIT_SHIFT + 62):
            raise ValueError("weight_scale_bits must be >= scale_bits and leave 2^7 of headroom")
        if not 33 <= self.smudging_bits <= 93:
            raise ValueError("smudging_bits must be in [33, 93]")
        SmudgingBudget(self.smudging_bits, self.smudging_budget_bits, ERROR_ETA)  # or ValueError

    @property
    def smudging(self) -> SmudgingBudget:
        """The per-key-epoch smudging budget these parameters give (ValueError if none)."""
        return SmudgingBudget(self.smudging_bits, self.smudging_budget_bits, ERROR_ETA)

    @property
    def security_bits(self) -> int:
        """Classical security per the HE standard table (SEAL checks it at context creation)."""
        return 128

    @property
    def total_modulus_bits(self) -> int:
        return sum(self.coeff_bits)


@final
@dataclass(frozen=True, slots=True)
class CkksParamSet:
    """A named parameter set: its `CkksParams` and the data-level primes SEAL picks for them.

    The primes are pinned so that the contract checks dealings without SEAL; a test checks
    them against `ckks.context(params).data_moduli`.
    """

    name: str
    params: CkksParams
    data_moduli: tuple[int, int]
    summary: str

    @property
    def dealing(self) -> DealingParams:
        """What the dealing check (`crypto.dealing`) of a key epoch under this set needs."""
        return DealingParams(self.data_moduli, self.params.degree)

    @property
    def mean_rms_error_per_share(self) -> float:
        """RMS error of a decrypted mean per sqrt(decryption share): 2^(smudging_bits - scale_bits)."""
        return math.ldexp(1.0, self.params.smudging_bits - self.params.scale_bits)


DEFAULT_SET: Final = "ckks-n8192-q60x3-coeff-s90"
PARAM_SETS: Final[Mapping[str, CkksParamSet]] = MappingProxyType({
    s.name: s
    for s in (
        CkksParamSet(
            DEFAULT_SET,
            CkksParams(),
            (1152921504606683137, 1152921504606748673),
            "N = 8192, 3 x 60-bit primes (128-bit secure), scale 2^90: the default",
        ),
        CkksParamSet(
            "ckks-n16384-q60x3-coeff-s94",
            CkksParams(degree=16384, scale_bits=94),
            (1152921504606584833, 1152921504606683137),
            "N = 16384, 3 x 60-bit primes (256-bit secure), scale 2^94: 16 x the precision",
        ),
    )
})  # fmt: skip
DEFAULT_PARAMS: Final = PARAM_SETS[DEFAULT_SET].params


def param_set(name: str) -> CkksParamSet:
    """The set called `name`; `UnknownParamSet` names it and lists the known sets otherwise."""
    found = PARAM_SETS.get(name)
    if found is None:
        raise UnknownParamSet(f"unknown CKKS parameter set {name!r}; known sets: {', '.join(PARAM_SETS)}")
    return found
