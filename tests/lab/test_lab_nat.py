"""The lab itself: a NATed site reaches the internet, nobody reaches it (plain TCP sockets)."""

from __future__ import annotations

import subprocess
import sys

from swarmnode.testing.netlab import LabSite, NetLab

PORT = 7100
SERVE = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen(); s.settimeout(8)
print("listening", flush=True)
while True:
    try:
        s.accept()[0].close()
    except OSError:
        break
"""
DIAL = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except OSError as exc:
    print(exc); sys.exit(1)
"""


def _dials(lab: NetLab, source: LabSite, address: str) -> bool:
    command = lab.exec_in(source, sys.executable, "-c", DIAL, address, str(PORT))
    return subprocess.run(command, capture_output=True, timeout=15, check=False).returncode == 0


def test_a_natted_site_dials_out_and_accepts_nothing(nat_lab: NetLab) -> None:
    public, natted, other = nat_lab.sites
    servers = [
        subprocess.Popen(nat_lab.exec_in(site, sys.executable, "-c", SERVE), stdout=subprocess.PIPE)
        for site in nat_lab.sites
    ]
    try:
        for server in servers:
            assert server.stdout is not None
            assert server.stdout.readline() == b"listening\n"  # bounded: the server exits after 8 s idle
        assert _dials(nat_lab, natted, public.address)  # outbound through the NAT
        assert _dials(nat_lab, other, public.address)
        assert not _dials(nat_lab, public, natted.address)  # no route to a private LAN
        assert natted.router is not None
        wan = "198.18.0.101"  # the router of site 1 on the internet
        assert not _dials(nat_lab, public, wan)  # the firewall drops new inbound connections
        assert not _dials(nat_lab, other, wan)
    finally:
        for server in servers:
            server.kill()
            server.wait(timeout=10)
