"""FedAvgM (Hsu et al., 2019): server momentum on the pseudo-gradient.

``m_r = β·m_{r-1} + Δ_r`` and ``x_r = x_{r-1} + η·m_r``; with β = 0 and η = 1 the global
model is the merged mean (exactly: the float32 mean is representable in float64).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from .state import OptimizerState, pseudo_gradient


def fedavgm_step(
    state: OptimizerState, mean: npt.NDArray[np.float32], settings: Mapping[str, float]
) -> OptimizerState:
    delta = pseudo_gradient(state, mean)
    momentum = settings["momentum"] * state.momentum + delta
    model = state.model + settings["server_lr"] * momentum
    return OptimizerState(model=model, momentum=momentum, second_moment=state.second_moment)
