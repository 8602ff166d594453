"""How much privacy merged rounds spend: the ε of genesis ``training.privacy``, for the
stopping rule (`consensus.stopping`), the genesis check and each node's own refusal.

Every merged round releases the sum of the sites' clipped updates plus Gaussian noise of
standard deviation sigma·C from honest sites alone (`models.privacy`), and every site takes
part in every round it is asked to (no sampling): each round is the Gaussian mechanism
with noise multiplier sigma and sampling rate 1. Its Rényi DP at order alpha is alpha / (2sigma²), and
R rounds compose to R·alpha / (2sigma²); (ε, δ) follows by the conversion of Balle et al.,
2020 (Theorem 21), minimised over Opacus's default orders. This is Opacus's
`RDPAccountant` for ``sample_rate = 1`` in closed form (``tests/consensus/
test_privacy_budget.py`` checks it against the library): the contract cannot import
torch, and needs only the standard library to decide, on every node alike, when a
budget is spent. `swarmnode.privacy` reports with Opacus itself.
"""

from __future__ import annotations

import math
from typing import Final

RDP_ORDERS: Final[tuple[float, ...]] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *(float(a) for a in range(12, 64)),
)
"""`opacus.accountants.RDPAccountant.DEFAULT_ALPHAS`."""


def gaussian_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε after `rounds` Gaussian-mechanism rounds at `noise_multiplier`, for `delta` (RDP)."""
    if rounds < 0:
        raise ValueError("rounds must be >= 0")
    if rounds == 0:
        return 0.0
    best = math.inf
    for alpha in RDP_ORDERS:
        rdp = rounds * alpha / (2 * noise_multiplier**2)
        eps = rdp - (math.log(delta) + math.log(alpha)) / (alpha - 1) + math.log((alpha - 1) / alpha)
        best = min(best, eps)
    return best


def within_budget(noise_multiplier: float, rounds: int, delta: float, epsilon_budget: float | None) -> bool:
    """Whether `rounds` rounds together stay within `epsilon_budget` (always, without one)."""
    return epsilon_budget is None or gaussian_epsilon(noise_multiplier, rounds, delta) <= epsilon_budget
