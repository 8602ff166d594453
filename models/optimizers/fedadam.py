"""FedAdam (Reddi et al., 2021, Algorithm 2, without bias correction):

``m_r = β1·m_{r-1} + (1-β1)·Δ_r``, ``v_r = β2·v_{r-1} + (1-β2)·Δ_r²`` and
``x_r = x_{r-1} + η·m_r / (√v_r + τ)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from .state import OptimizerState, adaptive_update, pseudo_gradient


def fedadam_step(
    state: OptimizerState, mean: npt.NDArray[np.float32], settings: Mapping[str, float]
) -> OptimizerState:
    delta = pseudo_gradient(state, mean)
    beta_2 = settings["beta_2"]
    second_moment = beta_2 * state.second_moment + (1.0 - beta_2) * (delta * delta)
    return adaptive_update(state, delta, second_moment, settings)
