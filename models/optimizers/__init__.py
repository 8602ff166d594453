"""Server optimizers without a server (Reddi et al., 2021, "Adaptive Federated Optimization").

The ledger records, for every merged round r, the plain (weighted) mean of the updates,
x̄_r: the secure merge computes nothing else. A server optimizer turns that sequence of
means into the global model every member trains from next: with x_{r-1} the previous global
model, the pseudo-gradient is Δ_r = x̄_r - x_{r-1} and ``x_r = x_{r-1} + step(Δ_r, state)``.
There is no server: every member applies the same elementwise float64 computation (no
reductions, so no summation order to disagree on) to the same inputs, so all of them hold
bit-identical global models, and the state is a pure function of the ledger's means (a
restarted or late member replays them, `swarmnode.global_models`).

The first merged round has no previous global model (members may start from different
initialisations): its global model is its mean, and the optimizer steps from the second.

One registry, `OPTIMIZERS`, read by the genesis (``training.server_optimizer`` and
``training.server_params``) and the node; like `models.rules` it costs no numpy to read.
Adding an optimizer is one module defining its `models.optimizers.state.OptimizerStep`
plus one entry here (`models.optimizers.fedadam` is an example). It is
independent of the merge rule, so FedProx's local term combines with any of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from models.rules import RuleParam, UnknownRuleError, checked_settings

if TYPE_CHECKING:
    from .state import OptimizerStep


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOptimizer:
    """A registered server optimizer; `step` is ``"module:attribute"`` of its `OptimizerStep`
    (imported on first use), None for ``none`` (the global model is the merged mean)."""

    name: str
    summary: str
    step: str | None
    params: tuple[RuleParam, ...] = ()

    def settings(self, given: Mapping[str, float]) -> dict[str, float]:
        """Every parameter's value: `given` ones checked, the others at their defaults."""
        return checked_settings(f"server optimizer {self.name!r}", self.params, given)

    def load_step(self) -> OptimizerStep:
        if self.step is None:
            raise ValueError(f"server optimizer {self.name!r} has no step")
        module, _, attribute = self.step.partition(":")
        step: OptimizerStep = getattr(importlib.import_module(module), attribute)
        return step


def _param(name: str, default: float, low: float, high: float, meaning: str) -> RuleParam:
    return RuleParam(name=name, default=default, low=low, high=high, meaning=meaning)


_LR = _param("server_lr", 1.0, 1e-6, 100.0, "server learning rate η")
_ADAPTIVE = (
    _param("server_lr", 0.01, 1e-6, 100.0, "server learning rate η"),
    _param("beta_1", 0.9, 0.0, 0.999, "first-moment decay β1"),
    _param("beta_2", 0.99, 0.0, 0.9999, "second-moment decay β2"),
    _param("tau", 1e-3, 1e-9, 1.0, "adaptivity τ added to √v"),
)

OPTIMIZERS: Final[tuple[ServerOptimizer, ...]] = (
    ServerOptimizer(name="none", summary="the merged mean is the global model (FedAvg)", step=None),
    ServerOptimizer(
        name="fedavgm",
        summary="server momentum: m = β·m + Δ, x += η·m",
        step="models.optimizers.fedavgm:fedavgm_step",
        params=(_LR, _param("momentum", 0.9, 0.0, 0.999, "server momentum β")),
    ),
    ServerOptimizer(
        name="fedadam",
        summary="Adam on the pseudo-gradient: x += η·m / (√v + τ)",
        step="models.optimizers.fedadam:fedadam_step",
        params=_ADAPTIVE,
    ),
    ServerOptimizer(
        name="fedyogi",
        summary="Yogi on the pseudo-gradient (v grows additively)",
        step="models.optimizers.fedyogi:fedyogi_step",
        params=_ADAPTIVE,
    ),
)
OPTIMIZER_NAMES: Final[tuple[str, ...]] = tuple(o.name for o in OPTIMIZERS)


def optimizer_named(name: str) -> ServerOptimizer:
    """The registered optimizer `name`; an `UnknownRuleError` listing the registered ones if none."""
    for optimizer in OPTIMIZERS:
        if optimizer.name == name:
            return optimizer
    raise UnknownRuleError(
        f"unknown server optimizer {name!r}; registered optimizers: {', '.join(OPTIMIZER_NAMES)}"
    )
