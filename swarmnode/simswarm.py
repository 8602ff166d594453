"""Build a small swarm in one process: genesis, per-node configs and identities.

Used by the simulation tests (nodes on `MemoryTransport` under trio's MockClock)
and by anything that wants N nodes quickly::

    swarm = SwarmPlan.create(tmp_path, spec, n=4, timeouts=FAST_TIMEOUTS, max_rounds=5)
    async with open_memory_network(seed=1) as net:
        async with swarm.open_node(0, net) as node: ...
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from consensus.genesis import (
    DecryptionThreshold,
    FoundingMember,
    Genesis,
    JoinPolicy,
    StoppingRule,
    Timeouts,
    TrainingParams,
)
from crypto.identity import NodeId, NodeIdentity
from models.spec import ModelSpec
from models.structure import spec_structure
from models.training import LocalTrainer, TrainConfig

from .config import DataSection, LedgerSection, NodeConfig, NodeSection, SwarmSection
from .net.memory import MemoryNetwork
from .node import MergeResult, Node, StopInfo, SwarmStopped, open_swarm_node

SIM_TIMEOUTS: Final = Timeouts(ready_wait=30.0, contribute=20.0, aggregate=20.0, verify=20.0, decrypt=20.0)


def sim_identity(index: int, namespace: str = "swarmnode-sim") -> NodeIdentity:
    """Deterministic node keys for simulations and tests (never for real use)."""
    return NodeIdentity.from_seed(hashlib.sha256(f"{namespace}/{index}".encode()).digest())


@dataclass(frozen=True, slots=True)
class SwarmPlan:
    """Everything N nodes of one test swarm need (plus spare identities for joiners)."""

    genesis: Genesis
    identities: tuple[NodeIdentity, ...]
    configs: tuple[NodeConfig, ...]
    founders: int
    root: Path
    spec: ModelSpec

    @property
    def ids(self) -> tuple[NodeId, ...]:
        return tuple(i.node_id for i in self.identities)

    def open_node(
        self, index: int, network: MemoryNetwork, *, genesis: Genesis | None = None
    ) -> AbstractAsyncContextManager[Node]:
        """Node `index` on `network`, computing inline (virtual-time simulations); `genesis`
        overrides the plan's."""
        return open_swarm_node(
            self.configs[index],
            transport=network.transport(self.ids[index]),
            identity=self.identities[index],
            genesis=self.genesis if genesis is None else genesis,
            inline_compute=True,
        )

    @classmethod
    def create(
        cls,
        root: Path,
        spec: ModelSpec,
        *,
        founders: int,
        joiners: int = 0,
        timeouts: Timeouts = SIM_TIMEOUTS,
        max_rounds: int = 5,
        statistics_rounds: int = 0,
        patience: int = 0,
        min_peers: int = 2,
        secure: bool = True,
        threshold: DecryptionThreshold | None = None,
        approvals: int = 1,
        propose_timeout: float = 1.0,
        addresses: tuple[tuple[str, ...], ...] | None = None,
        train: TrainConfig | None = None,
        namespace: str = "swarmnode-sim",
    ) -> SwarmPlan:
        identities = tuple(sim_identity(i, namespace) for i in range(founders + joiners))
        members = tuple(
            FoundingMember(
                name=f"site{i}",
                node_id=identities[i].node_id,
                addresses=() if addresses is None else addresses[i],
            )
            for i in range(founders)
        )
        genesis = Genesis(
            name="sim-swarm",
            members=members,
            training=TrainingParams(
                model_spec_hash=spec.spec_hash(),
                model_structure=spec_structure(spec),
                min_peers=min_peers,
                secure=secure,
                threshold=threshold if threshold is not None else DecryptionThreshold(),
                timeouts=timeouts,
                stopping=StoppingRule(
                    max_rounds=max_rounds, patience=patience, statistics_rounds=statistics_rounds
                ),
            ),
            join_policy=JoinPolicy(approvals=approvals),
            nonce=namespace.encode()[:32],
        )
        configs = tuple(
            NodeConfig(
                node=NodeSection(name=f"site{i}", storage_dir=root / f"site{i}"),
                data=DataSection(source="breast_cancer"),
                model=spec,
                ledger=LedgerSection(propose_timeout=propose_timeout),
                training=train if train is not None else TrainConfig(),
                swarm=SwarmSection(seed=i),
            )
            for i in range(founders + joiners)
        )
        return cls(genesis, identities, configs, founders, root, spec)


# -- a training loop over Node.merge, for simulations and tests ---------------------------------


@dataclass(frozen=True, slots=True)
class SiteOutcome:
    """What one simulated site ended with."""

    name: str
    rounds: tuple[int, ...]  # the rounds whose merged model it received
    final_hash: bytes | None
    final_parameters: npt.NDArray[np.float32] | None
    stop: StopInfo | None
    error: str | None = None


async def train_with_swarm(
    node: Node,
    trainer: LocalTrainer,
    *,
    epochs_per_round: int,
    start: npt.NDArray[np.float32] | None = None,
    merge_timeout: float = 600.0,
    on_round: Callable[[MergeResult], Awaitable[None]] | None = None,
) -> SiteOutcome:
    """The Swarm Learning loop of one site: train k epochs, merge, load, until the swarm stops."""
    params = trainer.parameters() if start is None else start
    rounds: list[int] = []
    last: MergeResult | None = None
    while True:
        result = trainer.train_epochs(epochs_per_round, start=params)
        metric = None if result.validation is None else result.validation.roc_auc
        if metric is not None and not math.isfinite(metric):
            metric = None
        try:
            merged = await node.merge(
                result.parameters, result.num_samples, val_metric=metric, timeout=merge_timeout
            )
        except SwarmStopped as stopped:
            last = stopped.final if stopped.final is not None else last
            break
        rounds.append(merged.round)
        last = merged
        params = merged.parameters
        trainer.load_parameters(params)
        if on_round is not None:
            await on_round(merged)
        if merged.stopped:
            break
    info = await node.wait_stopped()
    final = info.final if info.final is not None else last
    if final is not None:
        trainer.load_parameters(final.parameters)
    return SiteOutcome(
        name=node.config.node.name,
        rounds=tuple(rounds),
        final_hash=None if final is None else final.params_hash,
        final_parameters=None if final is None else final.parameters,
        stop=info,
    )
