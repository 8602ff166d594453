"""Server optimizers (`models.optimizers`): each step against a hand computation, and the
registry's checks of names and parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.optimizers import OPTIMIZER_NAMES, optimizer_named
from models.optimizers.fedadam import fedadam_step
from models.optimizers.fedavgm import fedavgm_step
from models.optimizers.fedyogi import fedyogi_step
from models.optimizers.state import OptimizerState, first_state
from models.rules import UnknownRuleError

ADAPTIVE = {"server_lr": 0.5, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.1}


def means(*values: float) -> list[np.ndarray]:
    return [np.array([v], dtype=np.float32) for v in values]


def run(step: object, sequence: list[np.ndarray], settings: dict[str, float]) -> OptimizerState:
    assert callable(step)
    state = first_state(sequence[0])
    for mean in sequence[1:]:
        state = step(state, mean, settings)
    return state


def test_the_first_merged_round_is_taken_as_is() -> None:
    mean = np.array([0.25, -3.0], dtype=np.float32)
    state = first_state(mean)
    assert state.global_model().tobytes() == mean.tobytes()
    assert not state.momentum.any()
    assert not state.second_moment.any()


def test_fedadam_matches_a_hand_computation() -> None:
    # Round 2: Δ = 1, m = 0.1, v = 0.01, x = 1 + 0.5 * 0.1 / (0.1 + 0.1) = 1.25.
    assert run(fedadam_step, means(1.0, 2.0), ADAPTIVE).model[0] == pytest.approx(1.25, rel=1e-15)
    # Round 3: Δ = 1 - 1.25 = -0.25.
    m = 0.9 * 0.1 + 0.1 * -0.25
    v = 0.99 * 0.01 + 0.01 * 0.0625
    expected = 1.25 + 0.5 * m / (math.sqrt(v) + 0.1)
    state = run(fedadam_step, means(1.0, 2.0, 1.0), ADAPTIVE)
    assert (state.momentum[0], state.second_moment[0]) == pytest.approx((m, v), rel=1e-15)
    assert state.model[0] == pytest.approx(expected, rel=1e-15)


def test_fedyogi_matches_a_hand_computation() -> None:
    # Round 2 as FedAdam (v starts at 0: v = 0 + 0.01 * 1); round 3: v < Δ² so v grows by (1-β2)Δ².
    assert run(fedyogi_step, means(1.0, 2.0), ADAPTIVE).model[0] == pytest.approx(1.25, rel=1e-15)
    m = 0.9 * 0.1 + 0.1 * -0.25
    v = 0.01 + 0.01 * 0.0625
    state = run(fedyogi_step, means(1.0, 2.0, 1.0), ADAPTIVE)
    assert state.second_moment[0] == pytest.approx(v, rel=1e-15)
    assert state.model[0] == pytest.approx(1.25 + 0.5 * m / (math.sqrt(v) + 0.1), rel=1e-15)
    # Once v exceeds Δ², Yogi shrinks it by (1-β2)Δ² (Adam would decay it by β2).
    big = OptimizerState(model=np.zeros(1), momentum=np.zeros(1), second_moment=np.array([4.0]))
    assert fedyogi_step(big, means(1.0)[0], ADAPTIVE).second_moment[0] == pytest.approx(4.0 - 0.01)


def test_fedavgm_matches_a_hand_computation() -> None:
    settings = {"server_lr": 1.0, "momentum": 0.5}
    # Round 2: Δ = 1, m = 1, x = 2; round 3: Δ = 0, m = 0.5, x = 2.5.
    assert run(fedavgm_step, means(1.0, 2.0, 2.0), settings).model[0] == 2.5


def test_fedavgm_without_momentum_at_rate_one_is_the_plain_mean_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    sequence = [rng.normal(size=50).astype(np.float32) for _ in range(5)]
    state = run(fedavgm_step, sequence, {"server_lr": 1.0, "momentum": 0.0})
    assert state.global_model().tobytes() == sequence[-1].tobytes()


def test_the_registry_checks_names_and_parameters() -> None:
    assert OPTIMIZER_NAMES == ("none", "fedavgm", "fedadam", "fedyogi")
    assert optimizer_named("fedadam").settings({"tau": 0.01}) == {
        "server_lr": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.01,
    }  # fmt: skip
    with pytest.raises(UnknownRuleError, match="registered optimizers: none, fedavgm, fedadam, fedyogi"):
        optimizer_named("sgd")
    with pytest.raises(UnknownRuleError, match="'fedavgm' has no parameter tau"):
        optimizer_named("fedavgm").settings({"tau": 0.1})
    with pytest.raises(ValueError, match=r"beta_1: must be in \[0.0, 0.999\]"):
        optimizer_named("fedyogi").settings({"beta_1": 1.0})
    with pytest.raises(ValueError, match="server optimizer 'none' has no step"):
        optimizer_named("none").load_step()
