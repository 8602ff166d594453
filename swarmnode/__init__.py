"""swarmnode: Swarm Learning in Python.

Sites train one shared model on data that never leaves them: nodes meet on a
libp2p mesh, agree on membership and rounds through a permissioned BFT ledger,
and merge parameters with threshold CKKS so no one sees another site's update.

This module is the public API (each name re-exported explicitly, as trio does):

- `SwarmNode`: a node in a background thread for ordinary synchronous code;
  ``merge(model_or_params, num_samples)`` at each sync point.
- `open_swarm_node`: the same node, trio-native (an async context manager).
- `SwarmTrainer`, `train_with_swarm`, `SwarmCallback`: local PyTorch training
  with a merge every k epochs; `run_site`: one site as ``swarmnode run`` runs it,
  `SiteObserver`: what monitoring of it hears.
- `local_swarm`, `create_local_swarm`: a whole swarm in one process.

The names are imported on first use (PEP 562): ``import swarmnode.net...`` in a
process that needs no training (a transport child, the CLI's ``--version``)
does not pay for torch and TenSEAL. Type checkers read the imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import SwarmNode as SwarmNode
    from .api import create_local_swarm as create_local_swarm
    from .api import local_swarm as local_swarm
    from .config import ConfigError as ConfigError
    from .config import NodeConfig as NodeConfig
    from .learners import SwarmSetupError as SwarmSetupError
    from .node import Node as Node
    from .node import open_swarm_node as open_swarm_node
    from .results import MergeResult as MergeResult
    from .results import MergeTimeout as MergeTimeout
    from .results import NodeClosed as NodeClosed
    from .results import NodeStatus as NodeStatus
    from .results import StopInfo as StopInfo
    from .results import SwarmError as SwarmError
    from .results import SwarmStopped as SwarmStopped
    from .siterun import SiteObserver as SiteObserver
    from .siterun import SiteReport as SiteReport
    from .siterun import run_site as run_site
    from .trainer import RoundRecord as RoundRecord
    from .trainer import SwarmCallback as SwarmCallback
    from .trainer import SwarmTrainer as SwarmTrainer
    from .trainer import TrainingSummary as TrainingSummary
    from .trainer import train_with_swarm as train_with_swarm

# public name -> the submodule defining it
_EXPORTS: Final[dict[str, str]] = {
    "SwarmNode": "api",
    "create_local_swarm": "api",
    "local_swarm": "api",
    "ConfigError": "config",
    "NodeConfig": "config",
    "MergeResult": "results",
    "MergeTimeout": "results",
    "Node": "node",
    "NodeClosed": "results",
    "NodeStatus": "results",
    "StopInfo": "results",
    "SwarmError": "results",
    "SwarmStopped": "results",
    "open_swarm_node": "node",
    "SiteObserver": "siterun",
    "SiteReport": "siterun",
    "run_site": "siterun",
    "RoundRecord": "trainer",
    "SwarmCallback": "trainer",
    "SwarmSetupError": "learners",
    "SwarmTrainer": "trainer",
    "TrainingSummary": "trainer",
    "train_with_swarm": "trainer",
}

__all__ = [
    "ConfigError",
    "MergeResult",
    "MergeTimeout",
    "Node",
    "NodeClosed",
    "NodeConfig",
    "NodeStatus",
    "RoundRecord",
    "SiteObserver",
    "SiteReport",
    "StopInfo",
    "SwarmCallback",
    "SwarmError",
    "SwarmNode",
    "SwarmSetupError",
    "SwarmStopped",
    "SwarmTrainer",
    "TrainingSummary",
    "__version__",
    "create_local_swarm",
    "local_swarm",
    "open_swarm_node",
    "run_site",
    "train_with_swarm",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'swarmnode' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
