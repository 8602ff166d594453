"""One node's side of distributed differential privacy (genesis ``training.privacy``).

`SitePrivacy` turns the model a site offers into its private contribution
(`models.privacy.private_contribution`: clipped against the global model the site trained
from, plus its share of the noise) right before it is encrypted, and refuses to contribute
once the rounds it already contributed to, together with this one, would spend more than
the genesis ε budget. The ledger's stopping rule stops the swarm at the same budget
(`consensus.stopping`); the node's own count covers what the swarm-wide count does not:
every round it contributed to, merged or aborted after its update went out.

`privacy_spent` is the accountant for reports: Opacus's RDP accountant (the one the budget
uses, in closed form in `consensus.privacy_budget`) and its PRV accountant (a tighter
numerical estimate), per merged round and in total.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import final

import numpy as np

from consensus.contract import MERGED, Contract
from consensus.genesis import Genesis, PrivacyParams, TrainingParams
from consensus.privacy_budget import gaussian_epsilon, within_budget
from crypto.identity import NodeId
from models.privacy import honest_floor, private_contribution, site_noise_std

from .config import NodeConfig
from .results import FloatVector, SwarmError


class PrivacyBudgetSpent(SwarmError):
    """Contributing once more would spend more than genesis ``training.privacy.epsilon_budget``."""


@final
class SitePrivacy:
    """Private contributions of node `me` under `training.privacy` (which must be set)."""

    def __init__(
        self,
        training: TrainingParams,
        contract: Contract,
        me: NodeId,
        global_model: Callable[[bytes], Awaitable[FloatVector]],
        initial_model: Callable[[], FloatVector],
        rng: np.random.Generator | None = None,
    ) -> None:
        if training.privacy is None:
            raise ValueError("SitePrivacy needs genesis training.privacy")
        self.privacy: PrivacyParams = training.privacy
        self._training = training
        self._contract = contract
        self._me = me
        self._global_model = global_model
        self._initial_model = initial_model
        self._rng = rng if rng is not None else np.random.default_rng()  # seeded from OS entropy

    def contributed_rounds(self, before: int) -> int:
        """Rounds before round `before` whose contributions include ours (merged or not)."""
        return sum(
            1
            for r in self._contract.history()
            if r.number < before and any(c.node_id == self._me for c in r.contributions)
        )

    def check_budget(self, round_number: int) -> None:
        """`PrivacyBudgetSpent` if contributing to round `round_number` would overspend."""
        p = self.privacy
        spent = self.contributed_rounds(round_number)
        if not within_budget(p.noise_multiplier, spent + 1, p.delta, p.epsilon_budget):
            raise PrivacyBudgetSpent(
                f"privacy budget spent: {spent} contributed round(s) cost epsilon "
                f"{gaussian_epsilon(p.noise_multiplier, spent, p.delta):.3g} and one more would pass "
                f"training.privacy.epsilon_budget = {p.epsilon_budget:g} (delta {p.delta:g})"
            )

    async def reference(self, round_number: int) -> FloatVector:
        """The public model our update is measured from: the global model of the last merged
        round before `round_number` (what we trained from), else the swarm's initial model."""
        merged = [
            r.merged_hash
            for r in self._contract.history()
            if r.number < round_number and r.outcome == MERGED and r.merged_hash is not None
        ]
        return await self._global_model(merged[-1]) if merged else self._initial_model()

    async def contribution(self, round_number: int, parameters: FloatVector) -> FloatVector:
        """What we encrypt for round `round_number` in place of `parameters`."""
        self.check_budget(round_number)
        r = self._contract.round
        if r.number != round_number:
            raise SwarmError(f"round {round_number} is no longer open (round {r.number} is)")
        p = self.privacy
        honest = honest_floor(self._training.min_contributions(r.threshold), r.threshold)
        std = site_noise_std(p.clip_norm, p.noise_multiplier, honest)
        reference = await self.reference(round_number)
        return private_contribution(
            parameters, reference, clip_norm=p.clip_norm, noise_std=std, rng=self._rng
        )


def node_privacy(
    genesis: Genesis,
    config: NodeConfig,
    contract: Contract,
    me: NodeId,
    global_model: Callable[[bytes], Awaitable[FloatVector]],
) -> SitePrivacy | None:
    """The node's `SitePrivacy` if the genesis asks for DP; its first reference is the
    swarm's initial model (`swarmnode.trainer.initial_parameters`, what ``swarmnode run``
    starts every site from)."""
    if genesis.training.privacy is None:
        return None

    def initial_model() -> FloatVector:
        from .trainer import initial_parameters  # loads torch; and the trainer imports the node

        return initial_parameters(genesis, config)

    return SitePrivacy(genesis.training, contract, me, global_model, initial_model)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacySpent:
    """(ε, δ) after `rounds` merged rounds: by RDP (the budget's accountant) and by PRV."""

    rounds: int
    delta: float
    epsilon_rdp: float
    epsilon_prv: float

    def to_dict(self) -> dict[str, float]:
        return {"rounds": self.rounds, "delta": self.delta, "epsilon_rdp": self.epsilon_rdp,
                "epsilon_prv": self.epsilon_prv}  # fmt: skip


def privacy_spent(privacy: PrivacyParams, rounds: int) -> Sequence[PrivacySpent]:
    """(ε, δ) after each of `rounds` merged rounds by Opacus's accountants (sampling rate 1:
    every site contributes to every round; a site that skipped rounds spent less)."""
    # Imported here: Opacus loads torch, which the rest of a report does not need.
    from opacus.accountants import PRVAccountant, RDPAccountant

    rdp, prv = RDPAccountant(), PRVAccountant()
    spent: list[PrivacySpent] = []
    with warnings.catch_warnings():  # "optimal order is the largest alpha" for large ε
        warnings.simplefilter("ignore")
        for k in range(1, rounds + 1):
            for accountant in (rdp, prv):
                accountant.step(noise_multiplier=privacy.noise_multiplier, sample_rate=1.0)
            spent.append(
                PrivacySpent(
                    rounds=k,
                    delta=privacy.delta,
                    epsilon_rdp=float(rdp.get_epsilon(privacy.delta)),
                    epsilon_prv=float(prv.get_epsilon(privacy.delta)),
                )
            )
    return spent


def privacy_summary(privacy: PrivacyParams, merged_rounds: Sequence[int]) -> dict[str, object]:
    """What `swarmnode report` shows: the genesis DP settings and, for each merged ledger
    round (by number), the ε of that round alone and of all merged rounds up to it."""
    spent = privacy_spent(privacy, len(merged_rounds))
    single = spent[0].epsilon_rdp if spent else 0.0
    return {
        "clip_norm": privacy.clip_norm,
        "noise_multiplier": privacy.noise_multiplier,
        "delta": privacy.delta,
        "epsilon_budget": privacy.epsilon_budget,
        "rounds": [
            {"round": number, "epsilon_round_rdp": single, **s.to_dict()}
            for number, s in zip(merged_rounds, spent, strict=True)
        ],
    }
