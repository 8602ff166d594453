"""Smudging noise (`crypto.smudging`): the sampler's distribution, the bound, the budget.

The sampler is checked against the discrete Gaussian it claims (moments over 10^6 draws,
uniform low bits, the tail cut, exact behaviour at the table's ends) and for determinism
in its byte source; the accountant against a direct computation; the budget as an
attacker would test it: a member asked for one more share than its key epoch's budget
allows refuses, and the contract starts a new key epoch before a round would pass it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from consensus import contract, epoch_budget
from consensus.contract import ABORTED, MERGED, Contract
from consensus.genesis import FoundingMember, Genesis, TrainingParams
from consensus.transactions import (
    Aggregate,
    AggregateVerdict,
    Contribution,
    DecryptionShare,
    MergedModel,
    Phase,
    Ready,
    TxBody,
    TxSigner,
)
from crypto import ckks, prss, smudging
from crypto import threshold as th
from crypto.ckks import CkksParams
from crypto.identity import NodeIdentity
from crypto.smudging import DEFAULT_BUDGET, SmudgingBudget, gaussian_noise
from crypto.testing import round_binding, run_key_epoch
from swarmnode.testing.contract_chain import placeholder_epoch_blocks

SIGMA = smudging.sampler_sigma(68)
DRAWS = 1_000_000


def stream(seed: bytes) -> Callable[[int], bytes]:
    """A deterministic byte source (SHAKE-256 of the seed, read in order), like a PRF stream."""
    offset = 0

    def read(count: int) -> bytes:
        nonlocal offset
        data = hashlib.shake_256(seed).digest(offset + count)[offset:]
        offset += count
        return data

    return read


def values(high: np.ndarray, low: np.ndarray, shift: int) -> list[int]:
    return [(int(h) << shift) + int(lo) for h, lo in zip(high, low, strict=True)]


@pytest.fixture(scope="module")
def noise() -> tuple[np.ndarray, np.ndarray, int]:
    return gaussian_noise(os.urandom, DRAWS, 68)


# -- the sampler ------------------------------------------------------------------------------


def test_sampler_mean_and_variance_match_the_discrete_gaussian(
    noise: tuple[np.ndarray, np.ndarray, int],
) -> None:
    high, low, shift = noise
    x = (high.astype(np.float64) * 2.0**shift + low.astype(np.float64)) / SIGMA
    assert abs(float(x.mean())) < 0.006  # 6 standard errors of the mean
    assert abs(float(x.var()) - 1) < 0.01  # the variance's standard error is 0.0014
    assert abs(float(np.mean(x**4)) / 3 - 1) < 0.03  # Gaussian kurtosis, not a uniform's 1.8
    assert 2**68 <= SIGMA < 2**68 * (1 + 2**-12)
    base = smudging.base_gaussian(os.urandom, DRAWS).astype(np.float64) / 2**14
    assert abs(float(base.mean())) < 0.006
    assert abs(float(base.var()) - 1) < 0.01


def test_low_bits_are_uniform(noise: tuple[np.ndarray, np.ndarray, int]) -> None:
    """Residues mod 2^16 are uniform (chi-square over 65536 bins): no float artefacts."""
    _, low, _ = noise
    counts = np.bincount((low & np.uint64(0xFFFF)).astype(np.int64), minlength=1 << 16)
    expected = DRAWS / (1 << 16)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = (1 << 16) - 1
    assert abs(chi2 - dof) < 6 * math.sqrt(2 * dof)
    parity = np.bincount((low & np.uint64(1)).astype(np.int64), minlength=2)
    assert abs(int(parity[0]) - DRAWS / 2) < 5 * math.sqrt(DRAWS) / 2


def test_tail_cut_holds_and_the_table_ends_are_exact(noise: tuple[np.ndarray, np.ndarray, int]) -> None:
    high, low, shift = noise
    bound = smudging.BASE_CUT * sum(2**k for k in smudging._plan(68))
    assert bound < 13.8 * 2**68
    assert max(abs(v) for v in values(high[:20_000], low[:20_000], shift)) < bound
    assert float(np.abs(high).max()) * 2.0**shift < bound
    # u = 0 selects the lowest point of nonzero table mass (beyond 13 sigma the weights are
    # below the table's 2^-128 resolution), u = 2^128 - 1 the highest (through the tie-break
    # that draws the bottom word); nothing lies beyond the cut.
    lowest = smudging.base_gaussian(lambda n: bytes(n), 3).tolist()
    assert lowest == [lowest[0]] * 3
    assert -smudging.BASE_CUT <= lowest[0] < -13 * 2**14
    assert smudging.base_gaussian(lambda n: b"\xff" * n, 3).tolist() == [smudging.BASE_CUT] * 3
    h, lo, s = gaussian_noise(lambda n: b"\xff" * n, 2, 68)
    assert values(h, lo, s) == [bound, bound]


def test_guided_inversion_equals_a_plain_search_of_the_table() -> None:
    """The guide and its one-step walk are a shortcut: same samples as searching every threshold."""
    samples = smudging.base_gaussian(stream(b"guide"), 500_000)
    u = np.frombuffer(hashlib.shake_256(b"guide").digest(8 * 500_000), dtype="<u8")
    table = smudging._base_table()
    assert not np.isin(u, table.high).any()  # no tie on a top word (probability ~2^-45)
    expected = np.searchsorted(table.high, u, side="right") - smudging.BASE_CUT
    assert np.array_equal(samples, expected)


def test_noise_is_deterministic_in_its_byte_source() -> None:
    a = gaussian_noise(stream(b"prf key 1"), 50_000, 68)
    b = gaussian_noise(stream(b"prf key 1"), 50_000, 68)
    c = gaussian_noise(stream(b"prf key 2"), 50_000, 68)
    assert all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2], strict=True))
    assert not np.array_equal(a[0], c[0])
    ctx = ckks.context(ckks.DEFAULT_PARAMS)
    one = th.smudging_noise(ctx, 2, stream(b"share"))
    assert np.array_equal(one, th.smudging_noise(ctx, 2, stream(b"share")))
    assert one.shape == (2, 2, ctx.params.degree)
    # The residues are those of the integers: X mod q for each prime.
    h, lo, s = gaussian_noise(stream(b"share"), 2 * ctx.params.degree, 68)
    xs = values(h[:50], lo[:50], s)
    for j, q in enumerate(ctx.data_moduli):
        assert [int(r) for r in one[0, j, :50]] == [x % q for x in xs]


def test_byte_source_must_deliver() -> None:
    with pytest.raises(ValueError, match="byte source returned"):
        gaussian_noise(lambda n: bytes(n - 1), 10, 68)


# -- the bound ---------------------------------------------------------------------------------


def test_kl_of_an_integer_shift_of_a_discrete_gaussian_is_e2_over_2sigma2() -> None:
    """The identity the accountant rests on, checked by direct summation at a small width."""
    sigma, e = 6.0, 4
    xs = np.arange(-200, 201)  # the weights beyond are below 1e-240
    p = np.exp(-(xs**2) / (2 * sigma**2))
    p /= p.sum()
    shifted = np.exp(-((xs - e) ** 2) / (2 * sigma**2))
    shifted /= shifted.sum()
    kl = float(np.sum(shifted * np.log(shifted / p)))
    assert kl == pytest.approx(e * e / (2 * sigma**2), rel=1e-9)


def test_accountant_matches_a_direct_computation() -> None:
    budget = DEFAULT_BUDGET
    contributors, shares, coefficients = 64, 33, 123 * 8192
    e = math.sqrt(21 * contributors * 129 * math.log(2))  # Hoeffding, delta = 2^-128
    assert budget.error_bound(contributors) == pytest.approx(e, rel=1e-12)
    assert budget.error_bound(2) == 42  # capped at eta * c
    direct = shares * coefficients * e * e / (2 * 2.0**136)
    assert budget.divergence(contributors, shares, coefficients) == pytest.approx(direct, rel=1e-12)
    units = SmudgingBudget.units(contributors, shares, coefficients)
    kl_of_units = units * 21 * 129 * math.log(2) / (2 * 2.0**136)
    assert kl_of_units == pytest.approx(direct, rel=1e-9)  # units are linear in the KL bound
    # The capacity is the last number of units within 2^-40.
    assert budget.distance(budget.capacity, budget.capacity) <= 2.0**-40
    assert budget.distance(budget.capacity * 1003 // 1000, 0) > 2.0**-40  # 2^-10 kept for the rest
    assert math.log2(smudging.sampler_distance(68)) < -100
    assert ckks.DEFAULT_PARAMS.smudging == DEFAULT_BUDGET == contract.SMUDGING_BUDGET


def test_budget_parameters_are_validated() -> None:
    with pytest.raises(ValueError, match="budget_bits"):
        SmudgingBudget(68, 90)
    with pytest.raises(ValueError, match="no decryption"):
        SmudgingBudget(40, 40)
    with pytest.raises(ValueError, match="log_sigma"):
        SmudgingBudget(100, 40)


# -- the budget, as an attacker would probe it -------------------------------------------------

# sigma = 2^53 with a 2^-40 budget: the epoch holds 1.9 decryptions of one ciphertext by
# three members of three contributions (3 * 3 * 8192 units each).
SMALL = CkksParams(smudging_bits=53, smudging_budget_bits=40)


def test_a_member_asked_for_more_shares_than_the_budget_refuses() -> None:
    spec, ids, keys = run_key_epoch(5, 3, params=SMALL)
    ctx = keys[0].context
    v = np.linspace(-1, 1, 100)
    contributions = [
        ckks.encrypt(ctx, k.secret, round_binding(spec.epoch_id), k.me, v, 1.0, 3.0) for k in keys[:3]
    ]
    aggregate = ckks.add(contributions)
    units = SmudgingBudget.units(3, 3, ctx.params.degree)
    assert units <= SMALL.smudging.capacity < 2 * units
    member = ids[0].node_id
    first = th.make_decryption_share(keys[0], aggregate, [member, ids[1].node_id, ids[2].node_id])
    assert keys[0].smudging_spent == units
    # Asked again for the same aggregate with another decrypt set (the re-share attack of
    # issue 20): the second share would pass the epoch's budget, so it is never made.
    with pytest.raises(th.DecryptionRefused, match=r"smudging budget of key epoch \w+ spent"):
        th.make_decryption_share(keys[0], aggregate, [member, ids[3].node_id, ids[4].node_id])
    assert keys[0].smudging_spent == units
    others = [
        th.make_decryption_share(keys[k], aggregate, [ids[i].node_id for i in range(3)]) for k in (1, 2)
    ]
    total, weight = th.combine_shares(spec, aggregate, [first, *others])
    assert weight == pytest.approx(1.0, abs=1e-9)
    assert np.abs(total[:100] - v).max() < 1e-3  # sigma 2^53: the smudging is tiny


def test_merge_error_matches_the_formula() -> None:
    """The decrypted mean's error over 3 * 8192 coefficients, with the real sampler."""
    spec, ids, keys = run_key_epoch(4, 3)
    ctx = keys[0].context
    length = 3 * 8192 - 1
    v = np.random.default_rng(1).uniform(-100, 100, length)
    aggregate = ckks.add(
        [ckks.encrypt(ctx, k.secret, round_binding(spec.epoch_id), k.me, v, 1.0, 4.0) for k in keys]
    )
    decrypt_set = [i.node_id for i in ids[:3]]
    shares = [th.make_decryption_share(k, aggregate, decrypt_set) for k in keys[:3]]
    total, weight = th.combine_shares(spec, aggregate, shares)
    error = total / weight - v
    rms = float(np.sqrt(np.mean(error**2)))
    assert rms == pytest.approx(math.sqrt(3) * SIGMA / 2**90, rel=0.05)


# -- the contract ------------------------------------------------------------------------------

IDENTITIES = [NodeIdentity.from_seed(hashlib.sha256(b"smudging %d" % i).digest()) for i in range(4)]
NODES = [i.node_id for i in IDENTITIES]


class Ledger:
    """A 4-member contract driven through rounds with contribution blobs of a chosen size."""

    def __init__(self) -> None:
        genesis = Genesis(
            name="smudging-budget",
            members=tuple(FoundingMember(name=f"site-{i}", node_id=n) for i, n in enumerate(NODES)),
            training=TrainingParams(model_spec_hash=hashlib.sha256(b"spec").digest()),
        )
        self.contract = Contract(genesis)
        self.signers = {i.node_id: TxSigner(genesis.chain_id, i) for i in IDENTITIES}

    def block(self, *txs: tuple[object, TxBody]) -> None:
        signed = [self.signers[who].sign(body) for who, body in txs]  # type: ignore[index]
        assert self.contract.apply_block(self.contract.height + 1, signed) == (None,) * len(signed)

    def complete_epoch(self) -> None:
        for block in placeholder_epoch_blocks(self.contract.key_epoch()):
            self.block(*block)
        assert self.contract.key_epoch().complete

    def ready(self) -> None:
        number = self.contract.round.number
        self.block(*((m, Ready(round=number, weight=10, val_metric=0.5)) for m in NODES))

    def to_decrypt(self, blob_size: int) -> None:
        r = self.contract.round
        assert r.phase == Phase.CONTRIBUTE
        digest = hashlib.sha256(b"%d" % r.number).digest()
        self.block(
            *(
                (m, Contribution(round=r.number, blob_hash=digest, blob_size=blob_size))
                for m in r.participants
            )
        )
        r = self.contract.round
        assert r.leader is not None
        self.block(
            (
                r.leader,
                Aggregate(round=r.number, step=r.step, aggregate_hash=digest, contributors=r.contributors),
            )
        )
        r = self.contract.round
        assert r.verifier is not None
        verdict = AggregateVerdict(round=r.number, step=r.step, aggregate_hash=digest, recomputed_hash=digest)
        self.block((r.verifier, verdict))

    def finish(self) -> None:
        r = self.contract.round
        assert r.phase == Phase.DECRYPT
        self.block(
            *((m, DecryptionShare(round=r.number, step=r.step, share_hash=bytes(32))) for m in r.decrypt_set)
        )
        self.block(
            *(
                (m, MergedModel(round=r.number, step=r.step, params_hash=bytes(32)))
                for m in r.participants[: r.threshold]
            )
        )


def test_the_contract_starts_a_new_key_epoch_before_a_round_would_pass_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    budget = SmudgingBudget(log_sigma=55, budget_bits=40)  # capacity ~2.3M units
    monkeypatch.setattr(epoch_budget, "SMUDGING_BUDGET", budget)
    # Lagrange decrypt sets of t = 3 (epochs above the PRSS key limit): the unit counts below
    # assume |T| = 3 shares per decryption.
    monkeypatch.setattr(prss, "robust_epoch", lambda members, threshold, **_: False)
    # A round decrypts 4 contributions with |T| = 3 shares: 12 units per coefficient.
    # Blobs of `size` bytes hold size * 2 / 15 coefficients: 40% of the capacity each.
    size = budget.capacity * 4 // 10 // 12 * 15 // 2
    cost = 12 * (size * 2 // 15)
    ledger = Ledger()
    ledger.complete_epoch()
    for _ in range(2):
        ledger.ready()
        ledger.to_decrypt(size)
        ledger.finish()
    epoch = ledger.contract.key_epoch()
    assert (epoch.number, epoch.smudging_spent) == (1, 2 * cost)
    assert ledger.contract.history()[-1].outcome == MERGED
    # A third round like the others would pass the budget: the round waits for new keys.
    ledger.ready()
    assert ledger.contract.round.phase == Phase.READY
    assert ledger.contract.key_epoch().number == 2
    assert ledger.contract.key_epoch().members == epoch.members
    ledger.complete_epoch()
    assert ledger.contract.round.phase == Phase.CONTRIBUTE
    assert ledger.contract.round.epoch == 2
    ledger.to_decrypt(size)
    ledger.finish()
    # A round with much larger blobs than before: the check on entering DECRYPT aborts it
    # before any share is asked for, and a new epoch starts.
    ledger.ready()
    ledger.to_decrypt(size * 2)
    closed = ledger.contract.history()[-1]
    assert closed.outcome == ABORTED
    assert "smudging budget of key epoch 2 spent" in closed.note
    assert ledger.contract.round.phase == Phase.READY
    assert ledger.contract.key_epoch().number == 3
    assert ledger.contract.key_epoch().smudging_spent == 0


def test_smudging_table_script_meets_the_targets(tmp_path: Path) -> None:
    """scripts/smudging_table.py: every case within 2^-40 and 1e-5, the measurement on the formula."""
    out = tmp_path / "table.json"
    proc = subprocess.run(
        [sys.executable, "scripts/smudging_table.py", "--json", str(out), "--measure-members", "4"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["within_targets"] is True
    assert [(r["members"], r["parameters"], r["rounds"]) for r in result["rows"]] == [
        (16, 1_000_000, 100), (16, 50_000_000, 1000), (64, 1_000_000, 100), (64, 50_000_000, 1000),
    ]  # fmt: skip
    assert all(r["worst_epoch_distance_log2"] <= -40 for r in (*result["rows"], result["long_run"]))
    assert result["long_run"]["key_epochs"] > 1
    measured = result["measured"]
    assert measured["measured_rms"] == pytest.approx(measured["formula_rms"], rel=0.05)
