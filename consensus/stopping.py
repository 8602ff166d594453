"""Stopping training: the stopping rule applied to each merged round, and `Stop` votes.

After each merged round, ``max_rounds`` merged training rounds (after the genesis's
``statistics_rounds``),
``patience`` rounds without an improvement of the median reported validation
metric by more than ``min_delta``, or a differential-privacy budget that one more
merged round would overspend (genesis ``training.privacy.epsilon_budget``,
`consensus.privacy_budget`) stop training and record the final model
hash; a majority of members can also vote `Stop`. With ``select = "best"`` the
metric is the pooled one of `consensus.selection`, scored when the next round's
Ready quorum is in, and the final model is the best one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from crypto.identity import NodeId

from .contract_state import MERGED, ContractState, Result, Round, StopRecord, round_number_check
from .genesis import Genesis
from .privacy_budget import gaussian_epsilon, within_budget
from .round_history import abort, append_history
from .transactions import Phase, Stop


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def close_merged(s: ContractState, g: Genesis, h: int, merged_hash: bytes) -> ContractState:
    r = s.round
    participants = set(r.participants)
    metrics = [x.val_metric for x in r.ready if x.node_id in participants and x.val_metric is not None]
    median = _median(metrics)
    closed = replace(r, outcome=MERGED, merged_hash=merged_hash, median_metric=median, close_height=h)
    rule = g.training.stopping
    if rule.select == "best":  # scored and stopped when the next round's Ready quorum is in
        merged_rounds = s.merged_rounds + 1
        return replace(
            append_history(s, closed),
            round=Round(number=r.number + 1),
            merged_rounds=merged_rounds,
            last_merged_hash=merged_hash,
        )
    best, stale = s.best_metric, s.stale_rounds
    if median is not None:  # a round nobody reported a metric for neither improves nor counts
        if best is None:
            improved = True
        elif rule.goal == "max":
            improved = median > best + rule.min_delta
        else:
            improved = median < best - rule.min_delta
        best, stale = (median, 0) if improved else (best, stale + 1)
    merged_rounds = s.merged_rounds + 1
    s = replace(
        append_history(s, closed),
        round=Round(number=r.number + 1),
        merged_rounds=merged_rounds,
        last_merged_hash=merged_hash,
        best_metric=best,
        stale_rounds=stale,
    )
    if merged_rounds >= rule.merged_rounds:
        return stop(s, h, f"max_rounds={rule.max_rounds} reached")
    if rule.patience and stale >= rule.patience:
        return stop(s, h, f"no improvement of the median metric for {rule.patience} rounds")
    privacy = g.training.privacy
    if privacy is not None and not within_budget(
        privacy.noise_multiplier, merged_rounds + 1, privacy.delta, privacy.epsilon_budget
    ):
        spent = gaussian_epsilon(privacy.noise_multiplier, merged_rounds, privacy.delta)
        budget = f"{privacy.epsilon_budget:g} (delta {privacy.delta:g})"
        return stop(s, h, f"privacy budget: epsilon {spent:.3g} spent of {budget}")
    return s


def stop(s: ContractState, h: int, reason: str) -> ContractState:
    """Stop training; the final model is the best scored one under ``select = "best"``
    (`consensus.selection`), else the last merged one."""
    final = s.best_model_hash if s.best_model_hash is not None else s.last_merged_hash
    record = StopRecord(height=h, reason=reason, merged_rounds=s.merged_rounds, final_model_hash=final)
    return replace(s, round=Round(number=s.round.number, phase=Phase.STOPPED.value), stopped=record)


def stop_vote(s: ContractState, g: Genesis, h: int, sender: NodeId, body: Stop) -> Result:
    if s.member(sender) is None:
        return "not a member"
    if (reason := round_number_check(s, body.round)) is not None:
        return reason
    r = s.round
    if sender in r.stop_votes:
        return "already voted to stop"
    r = replace(r, stop_votes=(*r.stop_votes, sender))
    s = replace(s, round=r)
    members = set(s.member_ids)
    if len(set(r.stop_votes) & members) < len(members) // 2 + 1:
        return s
    if r.phase != Phase.READY:
        s = abort(s, g, h, "training stopped by member vote")
    return stop(s, h, "stopped by a majority of members")
