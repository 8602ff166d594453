"""The model's structure is its identity on the ledger: a site whose model has the genesis's
parameter count but another structure is refused, naming the differing tensors, at start
and before it contributes (instead of merging unrelated numbers silently)."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from consensus.genesis import Genesis
from models.flatten import spec_layout
from models.spec import factory_model, mlp
from models.structure import StructureMismatch
from swarmnode.api import SwarmNode, create_local_swarm, local_swarm
from swarmnode.learners import SwarmSetupError
from swarmnode.node import SwarmError
from swarmnode.simswarm import SIM_TIMEOUTS
from swarmnode.trainer import SwarmTrainer

pytestmark = pytest.mark.timeout(120)

SPEC = mlp(4, 2, hidden=(2,))  # head.0 [2, 4] + [2], head.2 [2, 2] + [2]: 16 values


class SameCountOtherShapes(nn.Module):
    """The attacker's (or a confused site's) network: the spec's tensor names and parameter
    count, other shapes. Only the count was checked before."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(1, 2))


def test_same_count_other_shapes_is_a_different_model() -> None:
    other = SameCountOtherShapes()
    assert sum(p.numel() for p in other.parameters()) == spec_layout(SPEC).size
    assert [n for n, _ in other.named_parameters()] == [n for n, _ in SPEC_NAMES]


SPEC_NAMES = [
    ("head.0.weight", (2, 4)), ("head.0.bias", (2,)), ("head.2.weight", (2, 2)), ("head.2.bias", (2,)),
]  # fmt: skip


def test_merge_refuses_a_module_of_another_structure_before_offering_it(tmp_path: Path) -> None:
    configs = create_local_swarm(tmp_path, 2, model=SPEC, max_rounds=2, timeouts=SIM_TIMEOUTS, secure=False)
    with local_swarm(configs) as (a, _):
        with pytest.raises(StructureMismatch) as caught:
            a.merge(SameCountOtherShapes(), 10, timeout=2.0)
        message = str(caught.value)
        assert message.startswith("site-0: the model offered to merge() (swarm 'local-swarm')")
        assert "head.0.weight: [4, 2] float32, agreed [2, 4] float32" in message
        assert "head.2.weight: [2, 1] float32, agreed [2, 2] float32" in message
        assert a.status().round == 1  # nothing was offered: the swarm is still in its first round


def test_a_trainer_refuses_a_model_of_another_structure_at_start(tmp_path: Path) -> None:
    configs = create_local_swarm(tmp_path, 2, model=SPEC, max_rounds=2, timeouts=SIM_TIMEOUTS, secure=False)
    genesis = Genesis.load(configs[0].ledger.genesis)
    model = SameCountOtherShapes()
    loader = DataLoader(TensorDataset(torch.zeros(4, 4), torch.zeros(4, dtype=torch.long)), batch_size=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(SwarmSetupError, match=r"this site's model \(swarm 'local-swarm'\).*head\.0\.weight"):
        SwarmTrainer.from_torch(model, loader, optimizer, genesis)


def test_a_site_whose_factory_builds_another_structure_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same spec (same factory name, so the same spec hash), but this site's code for it
    builds another network of the same size: its node does not start."""
    package = tmp_path / "code"
    package.mkdir()
    source = package / "site_nets.py"
    source.write_text(
        textwrap.dedent("""
        from torch import nn

        def net(n_features, n_classes):
            return nn.Sequential(nn.Linear(n_features, 2), nn.ReLU(), nn.Linear(2, n_classes))
    """)
    )
    monkeypatch.syspath_prepend(str(package))
    spec = factory_model("site_nets:net", 4, 2)
    configs = create_local_swarm(
        tmp_path / "swarm", 2, model=spec, max_rounds=2, timeouts=SIM_TIMEOUTS, secure=False
    )
    source.write_text(
        textwrap.dedent("""
        from torch import nn

        def net(n_features, n_classes):  # 2x4+2 and 2x2+2 as before, the layers swapped
            return nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(1, n_classes))
    """)
    )
    sys.modules.pop("site_nets", None)
    importlib.invalidate_caches()
    with pytest.raises(SwarmError, match=r"\[model\].*0\.weight: \[4, 2\] float32, agreed \[2, 4\] float32"):
        SwarmNode(configs[0])


SITE_TOML = """
[node]
name = "a"

[data]
source = "breast_cancer"

[model]
kind = "factory"
factory = "site_nets:net"
n_features = 30
n_classes = 2

[training]
device = "cpu"
amp = false
"""


def test_site_toml_takes_a_factory_model_and_a_device(tmp_path: Path) -> None:
    from swarmnode.config import ConfigError, NodeConfig

    path = tmp_path / "site.toml"
    path.write_text(SITE_TOML)
    config = NodeConfig.load(path)
    assert config.model == factory_model("site_nets:net", 30, 2)
    assert config.training.device == "cpu"
    with pytest.raises(ConfigError, match=r"training.device = 'tpu': expected one of 'auto', 'cpu'"):
        NodeConfig.load(path, overrides=["training.device=tpu"])
    with pytest.raises(ConfigError, match=r"model: factory must be .package\.module:function."):
        NodeConfig.load(path, overrides=["model.factory=site_nets.net"])
    text = SITE_TOML.replace('kind = "factory"\nfactory = "site_nets:net"', 'kind = "mlp"\nhidden = [4]')
    path.write_text(text + "binary_head = true\n")
    with pytest.raises(ConfigError, match=r"unknown key training\.binary_head"):
        NodeConfig.load(path)  # [model] keys belong in [model]
    path.write_text(text.replace("n_classes = 2", "n_classes = 3\nbinary_head = true"))
    with pytest.raises(ConfigError, match="model: binary_head needs n_classes = 2"):
        NodeConfig.load(path)
