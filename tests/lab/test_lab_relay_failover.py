"""A relay dies and the swarm goes on through another path (issue 22), with real processes.

The lab (tests/lab/conftest.py, `two_relay_lab`): members site0 (public, relaying with
``network.relay_service``) and site1 (public); a `swarmnode relay` process (the organiser's,
no member, no ledger) on a third public host; members site3 and site4 each behind a
symmetric NAT (so no hole punch replaces their relayed connection) with an outbound-only
firewall, reserving on both relays, the relay process first (so the NATed sites reach
each other through it; it serves the genesis members). Once a round merged, the relay
process is SIGKILLed: the NATed sites keep their reservations on site0, are dialled through it, and
contribute to every round that merges after the kill; every site ends with the same model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from consensus.contract import MERGED
from crypto.identity import NodeIdentity
from swarmnode.testing.labswarm import PORT, LabMember, stored_contract, swarmnode_command, write_lab_swarm
from swarmnode.testing.netlab import NetLab
from swarmnode.testing.siteprocs import SiteProcesses

SCRIPT = Path(__file__).resolve().parents[1] / "node" / "e2e_site_main.py"
ROUNDS = 5
DEADLINE_S = 480.0
START_S = 240.0
pytestmark = pytest.mark.timeout(720)


def _merged(site_dir: Path) -> int:
    contract = stored_contract(site_dir)
    return 0 if contract is None else sum(1 for r in contract.transparency() if r.outcome == MERGED)


def test_natted_sites_keep_contributing_after_a_relay_is_killed(
    tmp_path: Path, two_relay_lab: NetLab
) -> None:
    hub0, hub1, relay_host, nat3, nat4 = two_relay_lab.sites
    relay_key = tmp_path / "relay.key"
    relay_identity = NodeIdentity.generate()
    relay_identity.save(relay_key)
    relay = f"/ip4/{relay_host.address}/tcp/{PORT}/p2p/{relay_identity.node_id.peer_id}"
    site0 = LabMember("site0", hub0, relay_service=True)
    relays = (relay, site0.peer_address)  # the relay process first: NAT-to-NAT traffic starts there
    members = [
        site0,
        LabMember("site1", hub1),
        LabMember("site3", nat3, relays=relays),
        LabMember("site4", nat4, relays=relays),
    ]
    configs = write_lab_swarm(tmp_path, members, rounds=ROUNDS)
    natted = {m.identity.node_id for m in members if m.relays}
    with SiteProcesses(tmp_path) as sites:
        sites.start(
            "relay",
            two_relay_lab.exec_in(
                relay_host,
                *swarmnode_command(
                    "relay", "--key-file", str(relay_key), "--genesis", str(tmp_path / "genesis.cbor"),
                    "--listen", relay_host.address, "--port", str(PORT), "--advertise", relay_host.address,
                ),
            ),
        )  # fmt: skip
        sites.wait_for("the relay process", lambda: "add to [network] relays" in sites.log("relay"), 60)
        for i, (member, config) in enumerate(zip(members, configs, strict=True)):
            command = [sys.executable, str(SCRIPT), str(config), str(i), str(len(members)), "0"]
            sites.start(
                member.name, two_relay_lab.exec_in(member.site, *command, str(tmp_path / f"r{i}.json"))
            )
        relay_short = relay_identity.node_id.short
        for name in ("site3", "site4"):
            sites.wait_for(
                f"{name} reserving on the relay process",
                lambda name=name: f"reserved a slot on relay {relay_short}" in sites.log(name),
                START_S,
            )
        sites.wait_for("a merged round", lambda: ": merged model " in sites.log("site0"), START_S)
        sites.kill("relay")
        merged_at_kill = _merged(tmp_path / "site0")
        logs_at_kill = {name: len(sites.log(name)) for name in ("site3", "site4")}
        codes = sites.wait_all(DEADLINE_S, names=[m.name for m in members])
        assert codes == [0] * len(members), f"exit codes {codes}\n" + sites.tails()
        after_kill = {name: sites.log(name)[logs_at_kill[name] :] for name in logs_at_kill}

    results = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(len(members))]
    finals = {r["final_hash"] for r in results}
    assert len(finals) == 1
    assert None not in finals
    contract = stored_contract(tmp_path / "site0")
    assert contract is not None
    # the round in flight at the kill may close without the NATed sites; every later merge has them
    later = [r for r in contract.transparency() if r.outcome == MERGED][merged_at_kill + 1 :]
    assert len(later) >= 2, f"only {len(later)} rounds merged after the relay process was killed"
    for summary in later:
        assert natted <= {c.node_id for c in summary.contributors}, summary
    site0_short = site0.identity.node_id.short
    assert any(f"through relay {site0_short}" in log for log in after_kill.values()), (
        "no NATed site was reached through site0 after the kill"
    )
