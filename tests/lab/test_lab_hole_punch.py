"""Hole punching (DCUtR) between two sites behind NAT (issue 22), in the lab.

Site 1 reserves on the relay (site 0); site 2, behind another NAT, knows it only by its
circuit address and asks it every half second (tests/lab/relay_site_main.py). Where the NAT
routers keep source ports, the relayed connection is upgraded to a direct one and the
answers go on; where they pick random ports (symmetric NAT) the punch cannot work and the
answers go on through the relay.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from swarmnode.testing.netlab import LabSite, NetLab
from swarmnode.testing.siteprocs import SiteProcesses

SCRIPT = Path(__file__).with_name("relay_site_main.py")
PORT = 7300
WAIT_S = 60.0
PUNCH_S = 90.0  # DCUtR drives every 2 s; a plain dial to the private address times out first
MORE_ANSWERS = 20  # about 10 s of answers at one every half second
pytestmark = pytest.mark.timeout(300)


def _start(processes: SiteProcesses, lab: NetLab, role: str, site: LabSite, relay: LabSite) -> None:
    command = [sys.executable, str(SCRIPT), role, site.address, str(PORT), relay.address]
    processes.start(role, lab.exec_in(site, *command))


def _count(processes: SiteProcesses, name: str, event: str) -> int:
    return processes.log(name).splitlines().count(event)


def _relayed_answers(processes: SiteProcesses, lab: NetLab) -> None:
    """Relay, site and dialler up; the dialler has had an answer through the relay."""
    relay, site, dialler = lab.sites
    _start(processes, lab, "relay", relay, relay)
    processes.wait_for("the relay", lambda: _count(processes, "relay", "ready") > 0, WAIT_S)
    _start(processes, lab, "site", site, relay)
    processes.wait_for("a reservation", lambda: _count(processes, "site", "reserved") > 0, WAIT_S)
    _start(processes, lab, "dialler", dialler, relay)
    processes.wait_for("an answer", lambda: _count(processes, "dialler", "answer") > 0, WAIT_S)


def test_behind_port_preserving_nats_the_relayed_connection_becomes_direct(
    tmp_path: Path, nat_lab: NetLab
) -> None:
    with SiteProcesses(tmp_path) as processes:
        _relayed_answers(processes, nat_lab)
        processes.wait_for("a direct connection", lambda: _count(processes, "dialler", "direct") > 0, PUNCH_S)
        answered = _count(processes, "dialler", "answer")
        processes.wait_for(
            "answers over the direct connection",
            lambda: _count(processes, "dialler", "answer") >= answered + MORE_ANSWERS,
            WAIT_S,
        )


def test_behind_symmetric_nats_the_sites_stay_connected_through_the_relay(
    tmp_path: Path, symmetric_nat_lab: NetLab
) -> None:
    with SiteProcesses(tmp_path) as processes:
        _relayed_answers(processes, symmetric_nat_lab)
        answered = _count(processes, "dialler", "answer")
        # long enough for DCUtR to try (and fail) several times while the answers go on
        processes.wait_for(
            "answers through the relay",
            lambda: _count(processes, "dialler", "answer") >= answered + 3 * MORE_ANSWERS,
            PUNCH_S,
        )
        assert _count(processes, "dialler", "direct") == 0, processes.tails()
