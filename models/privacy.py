"""A site's share of distributed differential privacy (genesis ``training.privacy``).

What one site contributes to a merge under DP, as a pure function of its model, the public
reference it trained from (the previous global model) and a random generator:

    reference + clip(model - reference, C) + N(0, s²·I)

The secure merge decrypts only the (equal-weight) mean of k such contributions, i.e.
``reference + (Σ clipped updates + Σ noises) / k``: k is on the ledger and the reference is
public, so what is released is the sum S = Σ clipped + Σ noise. Adding or removing one
site's data changes Σ clipped by at most C in L2 (its update is clipped to C whatever it
is), so S is the Gaussian mechanism with noise multiplier sigma once the noise in S has
standard deviation sigma·C.

Who adds that noise: a round merges at least m = `TrainingParams.min_contributions(t)`
contributions, of which up to t - 1 may come from colluding members who know (or omit)
their own noise and can subtract it; at least h = m - (t - 1) honest contributions remain.
Each site therefore adds ``s = sigma·C / √h`` (`site_noise_std`), so the honest noises alone
sum to variance sigma²·C² in every merged round, whatever the colluders do. A round with more
contributors carries more noise than needed; that is the price of not knowing who colludes.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatVector = npt.NDArray[np.float32]


def honest_floor(min_contributions: int, threshold: int) -> int:
    """The fewest honest contributions a merged round holds with t - 1 colluders (>= 1)."""
    honest = min_contributions - (threshold - 1)
    if honest < 1:
        raise ValueError(
            f"{min_contributions} contributions with threshold {threshold} may hold no honest one"
        )
    return honest


def site_noise_std(clip_norm: float, noise_multiplier: float, honest: int) -> float:
    """The standard deviation of the noise one site adds: the honest ones sum to sigma·C."""
    return noise_multiplier * clip_norm / math.sqrt(honest)


def clip_update(update: npt.NDArray[np.float64], clip_norm: float) -> npt.NDArray[np.float64]:
    """`update` scaled down to L2 norm `clip_norm` if longer (unchanged otherwise)."""
    norm = float(np.linalg.norm(update))
    if not math.isfinite(norm):
        raise ValueError("the update is not finite")
    clipped: npt.NDArray[np.float64] = update * min(1.0, clip_norm / norm) if norm > 0 else update
    return clipped


def private_contribution(
    model: FloatVector,
    reference: FloatVector,
    *,
    clip_norm: float,
    noise_std: float,
    rng: np.random.Generator,
) -> FloatVector:
    """``reference + clip(model - reference) + N(0, noise_std²)``, as float32."""
    if model.shape != reference.shape:
        raise ValueError(f"model has shape {model.shape}, the reference {reference.shape}")
    base = reference.astype(np.float64)
    update = clip_update(model.astype(np.float64) - base, clip_norm)
    noisy = base + update + rng.normal(0.0, noise_std, size=base.shape)
    return noisy.astype(np.float32)
