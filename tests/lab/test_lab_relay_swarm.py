"""Sites behind NAT take full part through a circuit relay (issue 22), with real processes.

The lab (tests/lab/conftest.py): sites 0 and 1 on the "internet", site 0 running the relay
service; sites 2 and 3 are each behind NAT with an outbound-only firewall, so neither can be
dialled by anyone, and each reserves a slot on site 0 (``network.relays``), advertises its
``/p2p-circuit`` address in the genesis, and is dialled through it, also by the other
NATed site. Every site is a `swarmnode` process in its own namespace (the same process
as tests/node/test_e2e_libp2p.py); the swarm runs secure rounds to the same final model,
with both NATed sites contributing to and decrypting merged rounds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from consensus.contract import MERGED
from crypto.identity import NodeIdentity
from swarmnode.testing.labswarm import PORT, SwarmSite, site_toml, write_swarm
from swarmnode.testing.netlab import NetLab
from swarmnode.testing.siteprocs import SiteProcesses, SiteTimeout

SCRIPT = Path(__file__).resolve().parents[1] / "node" / "e2e_site_main.py"
ROUNDS = 2
DEADLINE_S = 360.0
pytestmark = pytest.mark.timeout(480)


def write_lab_sites(root: Path, lab: NetLab) -> list[Path]:
    """Genesis and site.toml files: site 0 is public and relays; the others are reached through it."""
    identities = [NodeIdentity.generate() for _ in lab.sites]
    relay = f"/ip4/{lab.sites[0].address}/tcp/{PORT}/p2p/{identities[0].node_id.peer_id}"
    addresses = [
        (relay + "/p2p-circuit",) if site.natted else (f"/ip4/{site.address}/tcp/{PORT}",)
        for site in lab.sites
    ]
    sites = [
        SwarmSite(
            f"site{i}",
            ident,
            addresses[i],
            site_toml(
                f"site{i}",
                site.address,
                seed=i,
                bootstrap=[relay] if site.natted else [],
                relays=[relay] if site.natted else [],
                relay_service=i == 0,
            ),
        )
        for i, (ident, site) in enumerate(zip(identities, lab.sites, strict=True))
    ]
    return write_swarm(root, sites, name="nat-lab", rounds=ROUNDS)


def run_lab_sites(root: Path, lab: NetLab, configs: list[Path]) -> list[dict[str, Any]]:
    with SiteProcesses(root) as sites:
        for i, (config, site) in enumerate(zip(configs, lab.sites, strict=True)):
            command = [sys.executable, str(SCRIPT), str(config), str(i), str(len(configs)), "0"]
            sites.start(f"site{i}", lab.exec_in(site, *command, str(root / f"r{i}.json")))
        try:
            codes = sites.wait_all(DEADLINE_S)
        except SiteTimeout as exc:
            pytest.fail(f"lab sites did not finish in time:\n{exc}")
        assert codes == [0] * len(configs), f"exit codes {codes}\n" + sites.tails()
    return [json.loads((root / f"r{i}.json").read_text()) for i in range(len(configs))]


def test_sites_behind_nat_train_a_secure_swarm_through_a_relay(tmp_path: Path, swarm_lab: NetLab) -> None:
    results = run_lab_sites(tmp_path, swarm_lab, write_lab_sites(tmp_path, swarm_lab))
    finals = {r["final_hash"] for r in results}
    assert len(finals) == 1
    assert None not in finals
    assert {r["ledger_final_hash"] for r in results} == finals
    natted = {r["peer_id"] for r, site in zip(results, swarm_lab.sites, strict=True) if site.natted}
    for r in results:
        assert r["rounds"] == list(range(1, ROUNDS + 1))
        merged = [c for c in r["closed_rounds"] if c["outcome"] == MERGED]
        assert len(merged) == ROUNDS
        for closed in merged:
            assert natted <= set(closed["contributors"]), closed
    logs = [(tmp_path / f"site{i}.log").read_text(errors="replace") for i in range(len(results))]
    for i, site in enumerate(swarm_lab.sites):
        if site.natted:
            assert "reserved a slot on relay" in logs[i], f"site{i} never reserved on the relay"
    natted_logs = [log for log, site in zip(logs, swarm_lab.sites, strict=True) if site.natted]
    assert any("through relay" in log for log in natted_logs), "no NATed site was ever dialled via the relay"
