"""The state a server optimizer carries from merged round to merged round, and the math
every optimizer shares (`models.optimizers` has the registry and the algorithm)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias, final

import numpy as np
import numpy.typing as npt

Float64Vector: TypeAlias = npt.NDArray[np.float64]


@final
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class OptimizerState:
    """The global model after a merged round and the optimizer's moments (float64)."""

    model: Float64Vector  # x_r
    momentum: Float64Vector  # m_r (first moment)
    second_moment: Float64Vector  # v_r (adaptive optimizers; zeros for the others)

    def global_model(self) -> npt.NDArray[np.float32]:
        """What members train from: x_r as float32 (round to nearest, on every node alike)."""
        return self.model.astype(np.float32)


# (state after the previous merged round, this round's merged mean, the optimizer's
# settings) -> the state after this round.
OptimizerStep = Callable[[OptimizerState, npt.NDArray[np.float32], Mapping[str, float]], OptimizerState]


def first_state(mean: npt.NDArray[np.float32]) -> OptimizerState:
    """The state after the first merged round: its mean, and zero moments."""
    model = np.asarray(mean, dtype=np.float64).copy()
    return OptimizerState(model=model, momentum=np.zeros_like(model), second_moment=np.zeros_like(model))


def pseudo_gradient(state: OptimizerState, mean: npt.NDArray[np.float32]) -> Float64Vector:
    """Δ_r = x̄_r - x_{r-1}: where the members' mean moved from the previous global model."""
    if mean.shape != state.model.shape:
        raise ValueError(f"merged mean has shape {mean.shape}, the global model {state.model.shape}")
    delta: Float64Vector = np.asarray(mean, dtype=np.float64) - state.model
    return delta


def adaptive_update(
    state: OptimizerState, delta: Float64Vector, second_moment: Float64Vector, settings: Mapping[str, float]
) -> OptimizerState:
    """The step FedAdam and FedYogi share once v_r is known: ``m_r = β1·m_{r-1} + (1-β1)·Δ_r``
    and ``x_r = x_{r-1} + η·m_r / (√v_r + τ)``."""
    beta_1 = settings["beta_1"]
    momentum = beta_1 * state.momentum + (1.0 - beta_1) * delta
    model = state.model + settings["server_lr"] * momentum / (np.sqrt(second_moment) + settings["tau"])
    return OptimizerState(model=model, momentum=momentum, second_moment=second_moment)
