"""Shoup multiplication with the estimated high product (`crypto.rns.shoup_mul`) is exact."""

from __future__ import annotations

import numpy as np
import pytest

from crypto import rns
from crypto.ckks import context


@pytest.mark.parametrize("q", [*context().data_moduli, (1 << 61) - 1, 12289])
def test_shoup_mul_equals_the_integer_product_mod_q(q: int) -> None:
    rng = np.random.default_rng(q % 1000)
    edges = np.array([0, 1, 2, q // 2, q - 2, q - 1], dtype=np.uint64)
    a = np.concatenate([edges, rng.integers(0, q, 20_000, dtype=np.uint64)])
    operand = np.concatenate([edges[::-1], rng.integers(0, q, 20_000, dtype=np.uint64)]).reshape(1, -1)
    quotients = rns.shoup_quotients(operand, [q])
    got = rns.shoup_mul(a.reshape(1, -1), operand, quotients, rns.column([q]))
    expected = [x * w % q for x, w in zip(a.tolist(), operand[0].tolist(), strict=True)]
    assert got[0].tolist() == expected
    # every a against every edge operand (broadcast), and a scalar operand
    for w in edges.tolist():
        op, quo = rns.scalar_operand([w], [q])
        assert rns.shoup_mul(a.reshape(1, -1), op, quo, rns.column([q]))[0].tolist() == [
            x * w % q for x in a.tolist()
        ]


def test_the_high_product_estimate_is_at_most_two_below() -> None:
    rng = np.random.default_rng(7)
    top = np.iinfo(np.uint64).max
    a = np.concatenate(
        [
            np.array([top, top, 0, 1 << 32], dtype=np.uint64),
            rng.integers(0, top, 50_000, dtype=np.uint64, endpoint=True),
        ]
    )
    b = np.concatenate(
        [
            np.array([top, 1, top, (1 << 32) - 1], dtype=np.uint64),
            rng.integers(0, top, 50_000, dtype=np.uint64, endpoint=True),
        ]
    )
    exact = [x * y >> 64 for x, y in zip(a.tolist(), b.tolist(), strict=True)]
    deficit = [e - g for e, g in zip(exact, rns.mulhi64_estimate(a, b).tolist(), strict=True)]
    assert min(deficit) >= 0
    assert max(deficit) <= 2


def test_signed_split_residues_takes_the_short_path_and_the_long_one_exactly() -> None:
    """Small integers (|high| < q: min(h, h + q) on the words) and large ones (np.mod) both
    give ``(high * 2^shift + low) mod q``."""
    moduli = list(context().data_moduli)
    rng = np.random.default_rng(3)
    for bound in (1 << 20, (1 << 62) - 1):
        high = np.concatenate([rng.integers(-bound, bound, 5000), np.array([-bound, bound - 1, 0, -1])])
        low = rng.integers(0, 1 << 48, high.size, dtype=np.uint64)
        got = rns.signed_split_residues(high, low, 48, moduli)
        for j, q in enumerate(moduli):
            expected = [(h * (1 << 48) + lo) % q for h, lo in zip(high.tolist(), low.tolist(), strict=True)]
            assert got[j].tolist() == expected


def test_sub_mod_and_add_mod_wrap_at_the_prime() -> None:
    q = context().data_moduli[0]
    values = np.array([0, 1, q // 2, q - 1], dtype=np.uint64)
    a, b = np.meshgrid(values, values)
    column = rns.column([q])
    assert rns.sub_mod(a.reshape(1, -1), b.reshape(1, -1), column)[0].tolist() == [
        (x - y) % q for x, y in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist(), strict=True)
    ]
    assert rns.add_mod(a.reshape(1, -1), b.reshape(1, -1), column)[0].tolist() == [
        (x + y) % q for x, y in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist(), strict=True)
    ]
