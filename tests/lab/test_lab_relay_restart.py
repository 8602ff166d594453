"""A NATed site keeps its relay reservation across a relay crash (issue 22), in the lab.

Site 1 (behind NAT) reserves on the relay (site 0); the relay is SIGKILLed and restarted on
the same address; the site notices, reserves again (py-libp2p alone would not: its refresher
only renews near expiry, and the swarm refuses a failed peer for 60 s), and site 2, behind
another NAT and knowing site 1 only by its circuit address, then reaches it through the relay.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarmnode.testing.netlab import LabSite, NetLab

SCRIPT = Path(__file__).with_name("relay_site_main.py")
PORT = 7200
WAIT_S = 40.0
pytestmark = pytest.mark.timeout(300)


class _Processes:
    def __init__(self, lab: NetLab, root: Path) -> None:
        self.lab, self.root = lab, root
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, role: str, site: LabSite, relay: LabSite) -> None:
        command = [sys.executable, str(SCRIPT), role, site.address, str(PORT), relay.address]
        with (self.root / f"{name}.log").open("wb") as log:
            self.running[name] = subprocess.Popen(
                self.lab.exec_in(site, *command), stdout=log, stderr=subprocess.STDOUT
            )

    def wait_for(self, name: str, event: str, count: int = 1) -> None:
        deadline = time.monotonic() + WAIT_S
        path = self.root / f"{name}.log"
        while time.monotonic() < deadline:
            if path.read_text(errors="replace").splitlines().count(event) >= count:
                return
            if self.running[name].poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"{name} did not report {event!r} x{count}:\n" + self.tails())

    def kill(self, name: str) -> None:
        process = self.running[name]
        process.kill()
        process.wait(timeout=30)

    def tails(self) -> str:
        return "\n".join(
            f"--- {name} ---\n"
            + "\n".join((self.root / f"{name}.log").read_text(errors="replace").splitlines()[-20:])
            for name in self.running
        )

    def kill_all(self) -> None:
        for name, process in self.running.items():
            if process.poll() is None:
                self.kill(name)


def test_a_natted_site_reserves_again_after_a_relay_crash_and_is_reached_through_it(
    tmp_path: Path, nat_lab: NetLab
) -> None:
    relay, site, dialler = nat_lab.sites
    processes = _Processes(nat_lab, tmp_path)
    try:
        processes.start("relay", "relay", relay, relay)
        processes.wait_for("relay", "ready")
        processes.start("site", "site", site, relay)
        processes.wait_for("site", "reserved")
        processes.kill("relay")  # SIGKILL: connections die without a goodbye
        processes.wait_for("site", "lost")
        processes.start("relay-restarted", "relay", relay, relay)
        processes.wait_for("relay-restarted", "ready")
        processes.wait_for("site", "reserved", count=2)
        processes.start("dialler", "dialler", dialler, relay)
        processes.wait_for("dialler", "answer")
    finally:
        processes.kill_all()
