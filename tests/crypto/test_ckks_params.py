"""Named CKKS parameter sets (`crypto.ckks_params`): the registry, its pins against SEAL, and a
whole encrypt / aggregate / decrypt under the N = 16384 set, which no key, ciphertext or
share of the other set can enter."""

from __future__ import annotations

import math

import numpy as np
import pytest

from consensus import contract
from crypto import ckks
from crypto import secure_merge as sm
from crypto import threshold as th
from crypto.ckks_params import (
    DEFAULT_PARAMS,
    DEFAULT_SET,
    HE_STANDARD_128_MAX_BITS,
    PARAM_SETS,
    UnknownParamSet,
    param_set,
)
from crypto.errors import InvalidCiphertext, InvalidDecryptionShare, InvalidKeyShare
from crypto.sealbridge import he_standard_max_bits
from crypto.testing import round_binding, run_key_epoch

N16384 = "ckks-n16384-q60x3-coeff-s94"
LENGTH = 20_000
RNG = np.random.default_rng(16384)
VALUES = [RNG.uniform(-100, 100, LENGTH).astype(np.float32) for _ in range(5)]
WEIGHTS = [10.0, 20.0, 30.0, 40.0, 50.0]


def test_the_default_set_is_todays_parameters() -> None:
    assert param_set(DEFAULT_SET).params == DEFAULT_PARAMS == ckks.CkksParams()
    assert DEFAULT_SET == "ckks-n8192-q60x3-coeff-s90"


@pytest.mark.parametrize("name", list(PARAM_SETS))
def test_pinned_primes_and_security_match_seal(name: str) -> None:
    found = param_set(name)
    assert found.name == name
    ctx = ckks.context(found.params)
    assert tuple(ctx.data_moduli) == found.data_moduli
    assert found.dealing == th.dealing_params(ctx)
    assert found.params.total_modulus_bits <= he_standard_max_bits(found.params.degree)


def test_the_security_table_is_seals() -> None:
    assert dict(HE_STANDARD_128_MAX_BITS) == {d: he_standard_max_bits(d) for d in HE_STANDARD_128_MAX_BITS}


def test_every_set_has_the_contracts_smudging_budget() -> None:
    """The contract counts every key epoch's decryptions against one budget: a set with a
    smaller one would let its epochs decrypt past their statistical-distance bound."""
    for found in PARAM_SETS.values():
        assert found.params.smudging == contract.SMUDGING_BUDGET


def test_an_unknown_set_is_named_with_the_known_ones() -> None:
    with pytest.raises(UnknownParamSet, match=r"'ckks-n4096'.*ckks-n8192-q60x3-coeff-s90, " + N16384):
        param_set("ckks-n4096")


def test_the_n16384_set_is_more_precise_and_more_secure() -> None:
    big, default = param_set(N16384), param_set(DEFAULT_SET)
    assert big.params.degree == 16384
    assert big.mean_rms_error_per_share * 16 == default.mean_rms_error_per_share
    # 180 modulus bits at N = 16384 are below the HE standard's 256-bit bound (237 bits).
    assert big.params.total_modulus_bits <= 237


def merge_error(params: ckks.CkksParams) -> float:
    """Max abs error of the float64 weighted mean of `VALUES` after a t-of-n decryption under `params`."""
    spec, _, keys = run_key_epoch(5, params=params)  # t = 3
    binding = round_binding(spec.epoch_id)
    builder = sm.AggregateBuilder(LENGTH, params, binding=binding)
    for k, v, w in zip(keys, VALUES, WEIGHTS, strict=True):
        builder.add(sm.encrypt_update(k, v, w, sum(WEIGHTS), binding=binding), k.me)
    aggregate = builder.result()
    decrypt_set = list(spec.members[:3])
    parts = [
        sm.decryption_share(k, aggregate, decrypt_set, contributions=5, min_peers=2, binding=binding)
        for k in keys[:3]
    ]
    merged = sm.combine(spec, aggregate, parts, params=params)
    expected = sum(w / sum(WEIGHTS) * v.astype(np.float64) for v, w in zip(VALUES, WEIGHTS, strict=True))
    assert np.abs(merged.mean - expected).max() < 1e-5  # the float32 mean, as nodes merge it
    ctx = ckks.context(params)
    sums, weight_sum = th.combine_shares(
        spec,
        ckks.EncryptedVector.from_bytes(ctx, aggregate),
        [th.DecryptionShare.from_bytes(ctx, p) for p in parts],
    )
    return float(np.abs(sums / weight_sum - expected).max())


def test_a_round_under_the_n16384_set_merges_16_times_more_precisely() -> None:
    big = param_set(N16384)
    error = merge_error(big.params)
    # ~4.6 RMS at the max of 20k Gaussian errors; 8 leaves room.
    assert error < 8 * math.sqrt(3) * big.mean_rms_error_per_share
    assert error < merge_error(DEFAULT_PARAMS) / 4


def test_nothing_of_one_set_enters_an_epoch_of_the_other() -> None:
    """A member (or a stale key file) under the default set cannot feed a ciphertext, a
    decryption share or keys into an epoch under the N = 16384 set."""
    big = param_set(N16384).params
    spec, _, keys = run_key_epoch(3, params=big)
    _, _, small_keys = run_key_epoch(3, params=DEFAULT_PARAMS, epoch_id=spec.epoch_id)
    binding = round_binding(spec.epoch_id)
    values = np.ones(100, np.float32)
    foreign = sm.encrypt_update(small_keys[0], values, 1.0, 3.0, binding=binding)
    with pytest.raises(InvalidCiphertext):
        sm.AggregateBuilder(100, big, binding=binding).add(foreign, small_keys[0].me)
    builder = sm.AggregateBuilder(100, big, binding=binding)
    for k in keys:
        builder.add(sm.encrypt_update(k, values, 1.0, 3.0, binding=binding), k.me)
    aggregate = builder.result()
    small_aggregate = sm.aggregate_contributions(
        {k.me: sm.encrypt_update(k, values, 1.0, 3.0, binding=binding) for k in small_keys},
        length=100,
        binding=binding,
        params=DEFAULT_PARAMS,
    )
    members = list(spec.members[:2])
    share = sm.decryption_share(keys[0], aggregate, members, contributions=3, min_peers=2, binding=binding)
    small_members = [k.me for k in small_keys[:2]]
    small_share = sm.decryption_share(
        small_keys[1], small_aggregate, small_members, contributions=3, min_peers=2, binding=binding
    )
    with pytest.raises(InvalidDecryptionShare):
        sm.combine(spec, aggregate, [share, small_share], params=big)
    with pytest.raises(InvalidKeyShare):
        th.EpochKeys.import_secret(small_keys[0].export_secret(), big)
