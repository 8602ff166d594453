"""Distributed differential privacy (genesis ``training.privacy``) against its attackers.

- t - 1 colluding members remove their own noise: the honest noise left in the merge still
  has the variance the accountant assumes (sigma·C on the sum), measured over many merges.
- A site's update, however large, moves the merge by at most C (clipping), whatever the site
  trained to; a member claiming a huge sample count cannot weight the merge (the ledger
  refuses any weight but 1 under DP, `tests/consensus/test_contract.py`), and the node
  offers weight 1 whatever its sample count.
- The budget accountant (closed form, in the contract) equals Opacus's for the same
  parameters, and so does the reporting accountant.
- A node refuses to contribute once its own contributions spent the budget.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any, cast

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from consensus.contract import Contract
from consensus.contract_state import ContributionRecord, Round
from consensus.genesis import PrivacyParams, TrainingParams
from consensus.privacy_budget import gaussian_epsilon
from crypto.identity import NodeIdentity
from models.merge import weighted_mean
from models.privacy import clip_update, private_contribution
from swarmnode.privacy import PrivacyBudgetSpent, SitePrivacy, privacy_spent, privacy_summary

CLIP = 0.5
SIGMA = 1.3
ME = NodeIdentity.from_seed(b"\x01" * 32).node_id
OTHER = NodeIdentity.from_seed(b"\x02" * 32).node_id


@pytest.mark.parametrize(("threshold", "min_peers"), [(2, 2), (5, 2), (5, 7)])
async def test_merge_noise_after_colluders_remove_theirs_is_what_the_accountant_assumes(
    threshold: int, min_peers: int
) -> None:
    """The smallest round the ledger merges (m = max(min_peers, t + 1) contributions), t - 1
    of them colluders who add no noise (the same as removing theirs), the others made by the
    node's own code: the noise of the released sum, measured over 40 merges of 4000
    coordinates, has the variance (sigma·C)² the accountant assumes, within 5 %."""
    rng = np.random.default_rng(7)
    m, colluders = max(min_peers, threshold + 1), threshold - 1
    size, noise = 4000, []
    reference = rng.normal(0.0, 1.0, size).astype(np.float32)
    privacy = PrivacyParams(clip_norm=CLIP, noise_multiplier=SIGMA, delta=1e-5)
    training = TrainingParams(model_spec_hash=bytes(32), min_peers=min_peers, privacy=privacy)
    ledger = cast(Contract, _Ledger((), Round(number=1, threshold=threshold)))

    async def never(digest: bytes) -> np.ndarray:
        raise AssertionError("no merged round yet: the reference is the initial model")

    honest_site = SitePrivacy(training, ledger, ME, never, lambda: reference, rng=rng)
    for _ in range(40):
        models = [reference + rng.normal(0.0, 1.0, size).astype(np.float32) for _ in range(m)]
        clipped = [clip_update(x.astype(np.float64) - reference, CLIP) for x in models]
        contributions = [
            await honest_site.contribution(1, x)
            if k >= colluders
            else (reference + c).astype(np.float32)  # a colluder: its clipped update, no noise
            for k, (x, c) in enumerate(zip(models, clipped, strict=True))
        ]
        mean = weighted_mean(contributions, [1.0] * m)  # the plaintext reference of the secure mean
        released_sum = m * (mean.astype(np.float64) - reference)
        noise.append(released_sum - np.sum(clipped, axis=0))
    measured = float(np.var(np.concatenate(noise)))
    assert measured == pytest.approx((SIGMA * CLIP) ** 2, rel=0.05)


def test_clipping_bounds_every_site_contribution() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(0.0, 1.0, 500).astype(np.float32)
    for scale in (1e-3, 0.1, 1.0, 1e3, 1e6):
        model = (reference + rng.normal(0.0, scale, 500)).astype(np.float32)
        sent = private_contribution(model, reference, clip_norm=CLIP, noise_std=0.0, rng=rng)
        moved = float(np.linalg.norm(sent.astype(np.float64) - reference))
        assert moved <= CLIP * (1 + 1e-5) + 1e-5
        update = float(np.linalg.norm(model.astype(np.float64) - reference))
        if update < CLIP:  # short updates pass unchanged
            assert moved == pytest.approx(update, rel=1e-4)
        else:
            assert moved == pytest.approx(CLIP, rel=1e-4)
    with pytest.raises(ValueError, match="not finite"):
        clip_update(np.array([np.inf, 0.0]), CLIP)


@pytest.mark.parametrize("sigma", [0.6, 1.0, 2.5, 8.0])
@pytest.mark.parametrize("rounds", [1, 3, 20])
@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-7])
def test_budget_accountant_equals_opacus_rdp(sigma: float, rounds: int, delta: float) -> None:
    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=sigma, sample_rate=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = accountant.get_epsilon(delta)
    assert gaussian_epsilon(sigma, rounds, delta) == pytest.approx(expected, rel=1e-12)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # PRV at sampling rate 1: log(0) branches
def test_reported_epsilons_are_opacus_rdp_and_prv_per_round() -> None:
    privacy = PrivacyParams(clip_norm=1.0, noise_multiplier=1.5, delta=1e-5)
    spent = privacy_spent(privacy, 4)
    assert [s.rounds for s in spent] == [1, 2, 3, 4]
    rdp, prv = RDPAccountant(), PRVAccountant()
    for k, s in enumerate(spent, start=1):
        rdp.step(noise_multiplier=1.5, sample_rate=1.0)
        prv.step(noise_multiplier=1.5, sample_rate=1.0)
        assert s.epsilon_rdp == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-12)
        assert s.epsilon_rdp == pytest.approx(gaussian_epsilon(1.5, k, 1e-5), rel=1e-12)
        assert s.epsilon_prv == pytest.approx(prv.get_epsilon(1e-5), rel=1e-9)
        assert s.epsilon_prv <= s.epsilon_rdp  # PRV is the tighter estimate
    assert spent[0].epsilon_rdp < spent[-1].epsilon_rdp


class _Ledger:
    """The two things `SitePrivacy` reads from the contract."""

    def __init__(self, history: tuple[Round, ...], round: Round) -> None:
        self._history, self.round = history, round

    def history(self) -> tuple[Round, ...]:
        return self._history


def _contributed(number: int, who: object) -> Round:
    record = ContributionRecord(node_id=cast(Any, who), blob_hash=bytes(32), blob_size=1, height=number)
    return Round(number=number, outcome="aborted" if number % 2 else "merged", contributions=(record,))


async def test_a_node_refuses_to_contribute_once_its_budget_is_spent() -> None:
    """Budget 8 at sigma 1.3: 4 rounds spend 7.82, a 5th would spend 8.94. Every round we
    contributed to counts, merged or aborted; rounds others contributed to do not."""
    privacy = PrivacyParams(clip_norm=CLIP, noise_multiplier=SIGMA, delta=1e-5, epsilon_budget=8.0)
    assert gaussian_epsilon(SIGMA, 4, 1e-5) <= 8.0 < gaussian_epsilon(SIGMA, 5, 1e-5)
    training = TrainingParams(model_spec_hash=bytes(32), privacy=privacy)
    params = np.zeros(8, dtype=np.float32)

    async def global_model(digest: bytes) -> np.ndarray:
        return np.zeros(8, dtype=np.float32)

    def site(history: tuple[Round, ...]) -> SitePrivacy:
        open_round = Round(number=len(history) + 1, threshold=2)
        ledger = cast(Contract, _Ledger(history, open_round))
        return SitePrivacy(training, ledger, ME, global_model, lambda: np.zeros(8, dtype=np.float32))

    mine = tuple(_contributed(n, ME) for n in range(1, 5))
    others = tuple(_contributed(n, OTHER) for n in range(5, 9))
    assert (await site(mine[:3]).contribution(4, params)).shape == (8,)
    assert (await site((*mine[:3], *others)).contribution(8, params)).shape == (8,)
    with pytest.raises(PrivacyBudgetSpent, match=r"4 contributed round\(s\) cost epsilon 7\.82"):
        await site(mine).contribution(5, params)
    with pytest.raises(PrivacyBudgetSpent, match=r"training\.privacy\.epsilon_budget = 8"):
        site((*mine, *others)).check_budget(9)
    unlimited = replace(training, privacy=replace(privacy, epsilon_budget=None))
    ledger = cast(Contract, _Ledger(mine, Round(number=5, threshold=2)))
    free = SitePrivacy(unlimited, ledger, ME, global_model, lambda: params)
    assert (await free.contribution(5, params)).shape == (8,)
    assert math.isfinite(gaussian_epsilon(SIGMA, 4, 1e-5))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_report_summary_lists_epsilon_per_merged_round_and_in_total() -> None:
    privacy = PrivacyParams(clip_norm=1.0, noise_multiplier=2.0, delta=1e-5, epsilon_budget=4.5)
    summary = privacy_summary(privacy, [3, 4, 6])  # ledger numbers of the merged rounds
    rounds = cast(list[dict[str, float]], summary["rounds"])
    assert [r["round"] for r in rounds] == [3, 4, 6]
    assert [r["epsilon_round_rdp"] for r in rounds] == [gaussian_epsilon(2.0, 1, 1e-5)] * 3
    assert rounds[-1]["epsilon_rdp"] == pytest.approx(gaussian_epsilon(2.0, 3, 1e-5), rel=1e-12)
    assert summary["epsilon_budget"] == 4.5
