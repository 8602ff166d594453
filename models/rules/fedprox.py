"""FedProx (Li et al., 2020): the weighted-mean merge, and local training that minimises
``loss(w) + (mu / 2) * ||w - w_merged||²``, so a site's local steps stay near the merged
model it started from (less client drift on heterogeneous sites). Its merge is the plain
weighted mean, so it runs on encrypted updates; ``mu`` is genesis ``merge_params``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

import torch
from torch import nn

from models.merge import weighted_mean

from . import RuleMath


def proximal_term(current: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor], mu: float) -> torch.Tensor:
    """(mu / 2) * sum of squared differences between `current` and `anchor` tensors."""
    squared = [torch.sum((w - w0) ** 2) for w, w0 in zip(current, anchor, strict=True)]
    return (mu / 2.0) * torch.stack(squared).sum()


def proximal_objective(model: nn.Module, settings: Mapping[str, float]) -> Callable[[], torch.Tensor]:
    """The penalty for one stretch of local training: anchored at `model`'s parameters now
    (the merged model the stretch starts from)."""
    mu = settings["mu"]
    parameters = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in parameters]
    return lambda: proximal_term(parameters, anchor, mu)


FEDPROX: Final = RuleMath(
    merge=lambda vectors, weights, _: weighted_mean(vectors, weights), local_objective=proximal_objective
)
