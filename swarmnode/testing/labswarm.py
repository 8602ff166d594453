"""A swarm of node processes written to disk: genesis, site directories and what tests read
back from a site's stored ledger. `write_swarm` lays out any founding sites (on 127.0.0.1 or
in the network lab, `swarmnode.testing.netlab`); `write_lab_swarm` lays out lab members.

    members = [LabMember("site0", lab.sites[0], relay_service=True), ...]
    configs = write_lab_swarm(tmp_path, members, rounds=4)

A member on a public lab site is dialled at ``/ip4/<its address>/tcp/PORT``; a member behind
NAT lists `relays` (multiaddrs with ``/p2p/<relay id>``, a member relaying or a
`swarmnode relay` process), and its genesis addresses are the circuit addresses through
them, in that order. Each site gets ``<root>/<name>/`` with ``node.key`` and ``site.toml``
(breast cancer, logistic regression), and the genesis at ``<root>/genesis.cbor``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, cast

from consensus.contract import Contract
from consensus.genesis import (
    DecryptionThreshold,
    FoundingMember,
    Genesis,
    JoinPolicy,
    StoppingRule,
    Timeouts,
    TrainingParams,
)
from consensus.store import LedgerStore, recover
from crypto.identity import NodeIdentity
from models import logistic_regression

from ..addresses import circuit_address
from .netlab import LabSite

PORT: Final = 7000
PHASE_TIMEOUT_S: Final = 60.0


def site_toml(
    name: str,
    listen: str,
    *,
    seed: int,
    port: int = PORT,
    bootstrap: Sequence[str] = (),
    relays: Sequence[str] = (),
    relay_service: bool = False,
    extra: str = "",
) -> str:
    """A site.toml for a site listening on `listen`:`port` (breast cancer, logistic regression)."""
    return f"""
[node]
name = "{name}"
key_file = "node.key"
storage_dir = "state"

[network]
listen = "{listen}"
port = {port}
bootstrap = [{", ".join(f'"{b}"' for b in bootstrap)}]
relay_service = {"true" if relay_service else "false"}
relays = [{", ".join(f'"{r}"' for r in relays)}]

[ledger]
genesis = "../genesis.cbor"
propose_timeout = 2.0
block_interval = 0.05

[data]
source = "breast_cancer"

[model]
kind = "logreg"
n_features = 30
n_classes = 2

[training]
lr = 0.01

[swarm]
seed = {seed}
{extra}"""


@dataclass(frozen=True)
class LabMember:
    """One founding member of a lab swarm (its identity is generated once, here)."""

    name: str
    site: LabSite
    relays: tuple[str, ...] = ()
    relay_service: bool = False
    identity: NodeIdentity = field(default_factory=NodeIdentity.generate)

    @property
    def peer_address(self) -> str:
        """Where a public member is dialled, with its peer id (for bootstrap and relay lists)."""
        return f"/ip4/{self.site.address}/tcp/{PORT}/p2p/{self.identity.node_id.peer_id}"

    @property
    def addresses(self) -> tuple[str, ...]:
        if self.relays:
            return tuple(circuit_address(relay) for relay in self.relays)
        return (f"/ip4/{self.site.address}/tcp/{PORT}",)


@dataclass(frozen=True)
class SwarmSite:
    """One founding site as `write_swarm` writes it."""

    name: str
    identity: NodeIdentity
    addresses: tuple[str, ...]  # in genesis
    site_toml: str


def write_swarm(
    root: Path,
    sites: Sequence[SwarmSite],
    *,
    name: str,
    rounds: int,
    threshold: DecryptionThreshold | None = None,
    key_epoch_timeout: float = 300.0,
    join_policy: JoinPolicy | None = None,
) -> list[Path]:
    """The genesis (logistic regression on 30 features, every phase `PHASE_TIMEOUT_S`) and every
    site's directory with its key and site.toml; the site.toml paths, in `sites` order."""
    spec = logistic_regression(30, 2)
    Genesis(
        name=name,
        members=tuple(
            FoundingMember(name=site.name, node_id=site.identity.node_id, addresses=site.addresses)
            for site in sites
        ),
        training=TrainingParams(
            model_spec_hash=spec.spec_hash(),
            min_peers=2,
            threshold=threshold or DecryptionThreshold(),
            timeouts=Timeouts(
                ready_wait=PHASE_TIMEOUT_S,
                contribute=PHASE_TIMEOUT_S,
                aggregate=PHASE_TIMEOUT_S,
                verify=PHASE_TIMEOUT_S,
                decrypt=PHASE_TIMEOUT_S,
                key_epoch=key_epoch_timeout,
            ),
            stopping=StoppingRule(max_rounds=rounds),
        ),
        join_policy=join_policy or JoinPolicy(),
    ).save(root / "genesis.cbor")
    configs = []
    for site in sites:
        directory = root / site.name
        directory.mkdir()
        site.identity.save(directory / "node.key")
        (directory / "site.toml").write_text(site.site_toml)
        configs.append(directory / "site.toml")
    return configs


def write_lab_swarm(
    root: Path,
    members: Sequence[LabMember],
    *,
    rounds: int,
    key_epoch_timeout: float = 300.0,
    join_policy: JoinPolicy | None = None,
    extra_toml: str = "",
) -> list[Path]:
    """`write_swarm` for lab members. Members behind NAT bootstrap from every public member;
    public ones find each other in genesis."""
    public = [m.peer_address for m in members if not m.site.natted]
    sites = [
        SwarmSite(
            member.name,
            member.identity,
            member.addresses,
            site_toml(
                member.name,
                member.site.address,
                seed=seed,
                bootstrap=public if member.site.natted else (),
                relays=member.relays,
                relay_service=member.relay_service,
                extra=extra_toml,
            ),
        )
        for seed, member in enumerate(members)
    ]
    return write_swarm(
        root, sites, name="lab", rounds=rounds, key_epoch_timeout=key_epoch_timeout, join_policy=join_policy
    )


def swarmnode_command(*args: str) -> list[str]:
    """The ``swarmnode`` CLI in this interpreter (for `NetLab.exec_in`)."""
    return [sys.executable, "-m", "swarmnode", *args]


def stored_contract(site_dir: Path) -> Contract | None:
    """The site's ledger as its store holds it now (read-only: the node may be running), or
    None before its first block. The genesis is the lab's, next to the site directories."""
    path = site_dir / "state" / "ledger.sqlite"
    if not path.exists():
        return None
    genesis = Genesis.load(site_dir.parent / "genesis.cbor")
    with LedgerStore.open_existing(path, read_only=True) as store:
        app, _ = recover(store, lambda: Contract(genesis))
    return cast(Contract, app)
