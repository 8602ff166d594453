"""Seeded adversarial schedules: 500 each for 4 and 7 validators (the issue's "done when").

Each schedule (see `consensus.simulator.run_schedule`) injects drop, duplicate,
delay/reorder, a partition that heals, a crash with restart from the store and
up to f equivocating validators, then checks on every commit that honest nodes
agree and that each block carries a valid certificate, and after the faults
stop that every valid transaction is applied within 2n + 2 heights.
"""

from __future__ import annotations

import pytest

from consensus.simulator import InvariantViolation, run_schedule

SCHEDULES = 500
CHUNK = 50


@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("first_seed", range(0, SCHEDULES, CHUNK))
def test_seeded_fault_schedules_keep_invariants(n: int, first_seed: int) -> None:
    byzantine_runs = evidence = 0
    for seed in range(first_seed, first_seed + CHUNK):
        result = run_schedule(n, seed)
        assert result.final_height > result.stable_height
        assert max(result.tx_commit_heights) <= result.stable_height + 2 * n + 2
        byzantine_runs += bool(result.byzantine)
        evidence += result.evidence
    assert byzantine_runs > 0  # the chunk exercised equivocation, not only benign faults
    assert evidence > 0  # and the honest nodes caught it as evidence


def test_schedule_is_deterministic() -> None:
    assert run_schedule(4, 12345) == run_schedule(4, 12345)


def test_liveness_bound_is_enforced() -> None:
    # A bound of zero heights is impossible to meet: the check must fire, not pass vacuously.
    with pytest.raises(InvariantViolation, match="after the bound"):
        run_schedule(4, 3, liveness_heights=0)
