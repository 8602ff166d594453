"""The swarm's model identity: what genesis records about the model and the checks every
site makes against it.

Genesis fixes the model twice: ``model_spec_hash`` (the `models.spec.ModelSpec`, which for
a "factory" model names its function) and ``model_structure`` (every state-dict entry's
name, shape and dtype: `models.structure.spec_structure` of the spec). A site checks its
model's structure when its node starts (`check_config_model`), when a trainer wraps its
model (`check_module`) and at every `SwarmNode.merge` of a module, before anything is
offered. A vector offered without
its module can only be checked for its length (`swarmnode.node.Node.merge`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from models.nets import build_network
from models.structure import check_structure, structure_of

if TYPE_CHECKING:
    from torch import nn

    from consensus.genesis import Genesis
    from models.spec import ModelSpec


def check_module(genesis: Genesis, model: nn.Module, where: str) -> None:
    """`models.structure.StructureMismatch` naming `where` and every difference, unless
    `model` has the structure genesis records (nothing to check if it records none)."""
    expected = genesis.training.model_structure
    if expected:
        check_structure(expected, structure_of(model), f"{where} (swarm {genesis.name!r})")


def check_config_model(genesis: Genesis, spec: ModelSpec, where: str) -> None:
    """As `check_module` for the model `spec` builds (a site's [model] section): built here,
    not taken from `spec_structure`'s cache, so a factory is checked as its code is now."""
    expected = genesis.training.model_structure
    if expected:
        model = build_network(spec, torch.Generator().manual_seed(0))
        check_structure(expected, structure_of(model), f"{where} (swarm {genesis.name!r})")
