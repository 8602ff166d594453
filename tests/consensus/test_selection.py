"""Model selection by the swarm's pooled validation metric (`consensus.selection`): what the
metric is, that every node computes the same one, and what a lying site can do with it."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools

import pytest

from consensus.contract import Contract, ContractState
from consensus.contract_state import ReadyRecord
from consensus.genesis import FoundingMember, Genesis, StoppingRule, TrainingParams
from consensus.selection import evaluate_last_merged, pooled_metric, stop_reason
from crypto.identity import NodeIdentity

NODES = [NodeIdentity.from_seed(hashlib.sha256(b"selection %d" % i).digest()).node_id for i in range(4)]
RULE = StoppingRule(max_rounds=10, select="best")


def genesis(rule: StoppingRule = RULE) -> Genesis:
    return Genesis(
        name="selection-test",
        members=tuple(FoundingMember(name=f"site-{i}", node_id=n) for i, n in enumerate(NODES)),
        training=TrainingParams(model_spec_hash=b"\x01" * 32, stopping=rule),
    )


def ready(weights: list[int], metrics: list[float | None]) -> list[ReadyRecord]:
    return [
        ReadyRecord(node_id=n, weight=w, val_metric=m, height=1)
        for n, w, m in zip(NODES, weights, metrics, strict=False)
    ]


def merged(s: ContractState, label: str) -> ContractState:
    """The state after another merged round whose model is `label`'s hash."""
    return dataclasses.replace(
        s, merged_rounds=s.merged_rounds + 1, last_merged_hash=hashlib.sha256(label.encode()).digest()
    )


def select(g: Genesis, scored: list[tuple[str, list[ReadyRecord]]]) -> ContractState:
    """Merge and score models in order, as the contract does at each Ready quorum."""
    s = Contract(g).state
    for label, records in scored:
        s = evaluate_last_merged(merged(s, label), g, records)
    return s


def test_pooled_metric_is_the_ready_weighted_mean_clamped_with_missing_as_worst() -> None:
    assert pooled_metric(ready([1, 3], [0.5, 0.9]), RULE) == pytest.approx((0.5 + 3 * 0.9) / 4)
    assert pooled_metric(ready([1, 1], [2.0, -5.0]), RULE) == pytest.approx(0.5)  # clamped to [0, 1]
    assert pooled_metric(ready([1, 1], [None, 0.8]), RULE) == pytest.approx(0.4)  # missing: worst (0)
    by_loss = StoppingRule(goal="min", select="best", metric_low=0.0, metric_high=4.0)
    assert pooled_metric(ready([1, 1], [None, 1.0]), by_loss) == pytest.approx(2.5)  # missing: worst (4)
    assert pooled_metric(ready([1, 1], [None, None]), RULE) is None  # nobody scored it


def test_the_pooled_metric_does_not_depend_on_the_order_of_the_ready_records() -> None:
    """Every node applies the same transactions, but nothing should hinge on their order:
    exactly rounded sums give the same float whatever the order."""
    records = ready([7, 13, 101, 3], [0.1, 0.7000000001, 0.93, 0.3333333])
    values = {pooled_metric(list(p), RULE) for p in itertools.permutations(records)}
    assert len(values) == 1


def test_the_best_scored_model_is_kept_and_patience_counts_rounds_without_improvement() -> None:
    g = genesis(StoppingRule(max_rounds=10, patience=2, select="best"))
    w = [10, 10, 10, 10]
    s = select(g, [("m1", ready(w, [0.7] * 4)), ("m2", ready(w, [0.9] * 4)), ("m3", ready(w, [0.8] * 4))])
    assert s.best_model_hash == hashlib.sha256(b"m2").digest()
    assert (s.best_metric, s.stale_rounds) == (pytest.approx(0.9), 1)
    assert stop_reason(s, g) is None
    again = evaluate_last_merged(s, g, ready(w, [0.1] * 4))  # the same model scored twice: ignored
    assert again == s
    s = evaluate_last_merged(merged(s, "m4"), g, ready(w, [0.85] * 4))
    assert "no improvement" in (stop_reason(s, g) or "")


def test_of_equally_scored_models_the_later_is_kept_without_resetting_patience() -> None:
    """A small validation split scores several rounds ROC AUC 1.0: keeping the first of them
    would end training with a round-1 model."""
    g = genesis(StoppingRule(max_rounds=10, patience=2, select="best"))
    w = [10, 10, 10, 10]
    s = select(g, [("m1", ready(w, [1.0] * 4)), ("m2", ready(w, [1.0] * 4))])
    assert s.best_model_hash == hashlib.sha256(b"m2").digest()
    assert s.stale_rounds == 1


def test_a_model_nobody_scored_is_never_selected() -> None:
    """The statistics merges (and the initial model) are scored by nobody: honest sites report
    no metric for them, so they carry no score and cannot become the final model."""
    g = genesis()
    s = select(g, [("statistics", ready([10] * 4, [None] * 4)), ("m1", ready([10] * 4, [0.6] * 4))])
    assert s.best_model_hash == hashlib.sha256(b"m1").digest()


@pytest.mark.parametrize(("for_m1", "for_m2"), [(1e9, -1e9), (1.0, 0.0), (1.0, None)])
def test_a_lying_site_cannot_select_a_model_beyond_what_its_weight_allows(
    for_m1: float, for_m2: float | None
) -> None:
    """The attacker: one site of weight share p = 0.2 wants the worse model m1 kept. It
    reports the best possible value for m1 and the worst for m2 (out of range, at the
    bounds, or no metric at all, which counts as the worst). The pooled metrics then differ
    by (1 - p) x honest gap - p x range; with an honest gap of 0.3 > p / (1 - p) = 0.25
    the honest choice stands."""
    g = genesis()
    weights = [40, 40, 20]
    s = select(g, [("m1", ready(weights, [0.6, 0.6, for_m1])), ("m2", ready(weights, [0.9, 0.9, for_m2]))])
    assert s.best_model_hash == hashlib.sha256(b"m2").digest()


def test_a_lying_site_alone_cannot_make_a_statistics_merge_the_final_model() -> None:
    """The attacker scores the statistics merge (which honest sites do not score) as perfect:
    counted with the honest sites' missing metrics as the worst value, it pools to p x 1."""
    g = genesis()
    s = select(
        g, [("statistics", ready([40, 40, 20], [None, None, 1.0])), ("m1", ready([40, 40, 20], [0.6] * 3))]
    )
    assert s.best_model_hash == hashlib.sha256(b"m1").digest()


def test_within_its_weight_a_lying_site_does_decide_between_close_models() -> None:
    """What a liar can do (documented in docs/SECURITY.md): with p = 0.2 it flips a choice
    whose honest gap (0.2) is below p / (1 - p) x range = 0.25."""
    g = genesis()
    s = select(
        g, [("m1", ready([40, 40, 20], [0.7, 0.7, 1.0])), ("m2", ready([40, 40, 20], [0.9, 0.9, 0.0]))]
    )
    assert s.best_model_hash == hashlib.sha256(b"m1").digest()


def test_select_best_needs_sane_bounds() -> None:
    with pytest.raises(ValueError, match=r"training\.stopping\.select"):
        StoppingRule(select="median")
    with pytest.raises(ValueError, match=r"training\.stopping\.metric_low"):
        StoppingRule(select="best", metric_low=1.0, metric_high=1.0)
