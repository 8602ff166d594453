"""Merge rules: how a swarm combines its members' updates, and what local training adds.

One registry, `RULES`, read by everything that needs a rule: the genesis checks
``training.merge_method`` and ``training.merge_params`` against it, the CLI offers its
names, the node merges with the rule's `RuleMath.merge` and local training adds the rule's
`RuleMath.local_objective` term to every step's loss.

A rule is a small frozen value (`MergeRule`): its name, whether its merge can be computed on
encrypted updates (the secure merge computes a weighted mean and nothing else) and its
numeric parameters. Its math lives in the module `MergeRule.math` names and is imported on
first use, so reading the registry costs no numpy or torch (``swarmnode --help`` stays light).

Adding a rule is one module defining a `RuleMath` value plus one line in `RULES`
(`models.rules.fedprox` is the example).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:
    from torch import nn

    from models.flatten import FloatVector
    from models.training import StepPenalty

    # (contributions, their weights, the rule's settings) -> the merged vector
    MergeFunction = Callable[[Sequence[FloatVector], Sequence[float], Mapping[str, float]], FloatVector]
    # (the model as a stretch of local training starts, i.e. holding the merged model, and
    # the rule's settings) -> the term that stretch adds to every step's loss.
    RuleObjective = Callable[[nn.Module, Mapping[str, float]], StepPenalty]


class UnknownRuleError(ValueError):
    """A merge rule name or parameter that is not registered; the message lists the registered ones."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RuleParam:
    """One numeric parameter of a rule (genesis ``training.merge_params``), in [low, high]."""

    name: str
    default: float
    low: float
    high: float
    meaning: str

    def check(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{self.name}: must be a finite number, got {value!r}")
        if not self.low <= value <= self.high:
            raise ValueError(
                f"{self.name}: must be in [{self.low}, {self.high}] ({self.meaning}), got {value}"
            )


def checked_settings(owner: str, params: Sequence[RuleParam], given: Mapping[str, float]) -> dict[str, float]:
    """Every one of `params`' values: `given` ones checked, the others at their defaults;
    `owner` (e.g. "merge rule 'fedprox'") names what has no such parameter."""
    known = {p.name: p for p in params}
    unknown = sorted(given.keys() - known.keys())
    if unknown:
        allowed = ", ".join(known) if known else "none"
        raise UnknownRuleError(f"{owner} has no parameter {', '.join(unknown)} (its parameters: {allowed})")
    for name, value in given.items():
        known[name].check(value)
    return {p.name: float(given.get(p.name, p.default)) for p in params}


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RuleMath:
    """A rule's math: the merge and, optionally, a term local training adds to its loss."""

    merge: MergeFunction
    local_objective: RuleObjective | None = None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MergeRule:
    """A registered merge rule.

    secure: its merge is the weighted mean of the updates, so it can run on encrypted
            updates (``training.secure = true``); the others need plaintext updates.
    math:   ``"module:attribute"`` of its `RuleMath`, imported on first use.
    """

    name: str
    summary: str
    secure: bool
    math: str
    params: tuple[RuleParam, ...] = ()

    def settings(self, given: Mapping[str, float]) -> dict[str, float]:
        """Every parameter's value: `given` ones checked, the others at their defaults."""
        return checked_settings(f"merge rule {self.name!r}", self.params, given)

    def load_math(self) -> RuleMath:
        module, _, attribute = self.math.partition(":")
        value = getattr(importlib.import_module(module), attribute)
        if not isinstance(value, RuleMath):
            raise TypeError(f"merge rule {self.name!r}: {self.math} is not a RuleMath")
        return value


_MU = RuleParam(name="mu", default=0.01, low=0.0, high=1000.0, meaning="weight of the proximal term")

RULES: Final[tuple[MergeRule, ...]] = (
    MergeRule(name="mean", summary="weighted mean (FedAvg)", secure=True, math="models.merge:MEAN"),
    MergeRule(name="median", summary="coordinate-wise median", secure=False, math="models.merge:MEDIAN"),
    MergeRule(
        name="trimmed_mean",
        summary="coordinate-wise mean without the top and bottom 10 %",
        secure=False,
        math="models.merge:TRIMMED_MEAN",
    ),
    MergeRule(
        name="fedprox",
        summary="weighted mean; local training adds (mu/2)·||w - w_merged||²",
        secure=True,
        math="models.rules.fedprox:FEDPROX",
        params=(_MU,),
    ),
)
RULE_NAMES: Final[tuple[str, ...]] = tuple(r.name for r in RULES)
SECURE_RULE_NAMES: Final[tuple[str, ...]] = tuple(r.name for r in RULES if r.secure)


def rule_named(name: str) -> MergeRule:
    """The registered rule `name`; an `UnknownRuleError` listing the registered rules if none."""
    for rule in RULES:
        if rule.name == name:
            return rule
    raise UnknownRuleError(f"unknown merge method {name!r}; registered rules: {', '.join(RULE_NAMES)}")
