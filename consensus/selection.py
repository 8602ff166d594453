"""Model selection: the swarm's pooled validation metric of each merged model, and the best.

With ``stopping.select = "best"`` in the genesis, a site's `Ready` for a round carries the
validation metric of the merged model it starts that round from: the ledger's last merged
model. When the round's Ready quorum is reached (before the round starts), the contract
pools these metrics into one value for that model (`pooled_metric`), keeps the best model
so far, counts rounds without improvement for ``patience``, and stops once
``statistics_rounds + max_rounds`` merged models have been evaluated: the last merged
model is evaluated by the Ready quorum of the round after it, which then stops instead of
starting. The stop record's final model is the best evaluated one (the last merged one if
no model was ever evaluated).

The pooled metric is a weighted mean over the round's Ready records, weight = the Ready
weight (rows x weightage, the same weight the site has in the merge), each reported value
clamped to [``metric_low``, ``metric_high``], a missing one counted as the worst bound. It
is a function of ledger transactions alone, computed with exactly rounded sums, so every
node picks the same best round and final model hash. Of equally scored models the later
one is kept (it trained longer; a small validation split often scores several rounds
1.0), but only a gain of more than ``min_delta`` resets ``patience``. What a lying site can do: a site of
weight share p moves the pooled metric of any model by at most p x (metric_high -
metric_low), and so can make a model the selected one only if it is within that margin
of the honest best (the clamp and the worst-value default keep one site from outvoting
the others by an extreme or absent value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from .contract_state import ContractState, ReadyRecord
from .genesis import Genesis, StoppingRule


def pooled_metric(ready: Sequence[ReadyRecord], rule: StoppingRule) -> float | None:
    """The Ready-weighted mean of the reported metrics, clamped to the genesis bounds, a
    missing metric counted as the worst bound; None if nobody reported one."""
    if not any(r.val_metric is not None for r in ready):
        return None
    worst = rule.metric_low if rule.goal == "max" else rule.metric_high

    def clamped(value: float | None) -> float:
        return worst if value is None else min(max(value, rule.metric_low), rule.metric_high)

    total = sum(r.weight for r in ready)
    return math.fsum(r.weight * clamped(r.val_metric) for r in ready) / total


def improves(metric: float, best: float | None, rule: StoppingRule) -> bool:
    """Whether `metric` beats `best` by more than ``min_delta`` in the rule's direction."""
    if best is None:
        return True
    return metric > best + rule.min_delta if rule.goal == "max" else metric < best - rule.min_delta


def evaluate_last_merged(s: ContractState, g: Genesis, ready: Sequence[ReadyRecord]) -> ContractState:
    """Score the last merged model (once) by the metrics of `ready`, the Ready records of
    the round that starts from it; the best so far becomes ``best_model_hash``."""
    model = s.last_merged_hash
    if model is None or model == s.evaluated_hash:
        return s
    rule = g.training.stopping
    metric = pooled_metric(ready, rule)
    s = replace(s, evaluated_hash=model)
    if metric is None:  # nobody could evaluate it (e.g. a statistics merge): no score, no count
        return s
    if improves(metric, s.best_metric, rule):
        return replace(s, best_metric=metric, best_model_hash=model, stale_rounds=0)
    s = replace(s, stale_rounds=s.stale_rounds + 1)
    best = s.best_metric  # not None: a first score always improves
    if best is None or not improves(best, metric, replace(rule, min_delta=0.0)):  # as good: the later,
        return replace(s, best_metric=metric, best_model_hash=model)  # trained longer (a saturated
    return s  # metric, e.g. ROC AUC 1.0 on a small validation split, must not keep round 1)


def stop_reason(s: ContractState, g: Genesis) -> str | None:
    """Why training stops now under ``select = "best"`` (after `evaluate_last_merged`), if it does."""
    rule = g.training.stopping
    if s.merged_rounds >= rule.merged_rounds:
        return f"max_rounds={rule.max_rounds} reached (best pooled metric {s.best_metric})"
    if rule.patience and s.stale_rounds >= rule.patience:
        return f"no improvement of the pooled metric for {rule.patience} rounds (best {s.best_metric})"
    return None
