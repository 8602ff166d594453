"""FedYogi (Reddi et al., 2021, Algorithm 2): like FedAdam, but the second moment moves
additively towards Δ_r², so it grows slowly and shrinks no faster than (1-β2)·Δ_r² a round:

``v_r = v_{r-1} - (1-β2)·Δ_r²·sign(v_{r-1} - Δ_r²)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from .state import OptimizerState, adaptive_update, pseudo_gradient


def fedyogi_step(
    state: OptimizerState, mean: npt.NDArray[np.float32], settings: Mapping[str, float]
) -> OptimizerState:
    delta = pseudo_gradient(state, mean)
    squared = delta * delta
    second_moment = state.second_moment - (1.0 - settings["beta_2"]) * squared * np.sign(
        state.second_moment - squared
    )
    return adaptive_update(state, delta, second_moment, settings)
