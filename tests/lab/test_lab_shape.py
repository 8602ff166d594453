"""The shaped lab: a site link's round trip is about the configured delay, its throughput about
the rate limit (plain TCP sockets between namespaces; loose bounds: the host is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from swarmnode.testing.linkshape import HUB_ADDRESS, LinkShape, hub_site
from swarmnode.testing.netlab import LabSite, NetLab

PORT = 7200
RTT_MS = 40.0
RATE_MBIT = 20.0
PAYLOAD = 2_500_000  # 1 s at the rate limit
# Echo one byte per byte; `PAYLOAD` bytes then one reply byte. Exits after 20 s idle.
SERVE = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen(); s.settimeout(20)
print("listening", flush=True)
while True:
    try:
        c = s.accept()[0]
    except OSError:
        break
    c.settimeout(20)
    kind = c.recv(1)
    if kind == b"e":
        while (b := c.recv(1)):
            c.sendall(b)
    elif kind == b"s":
        left = {PAYLOAD}
        while left > 0 and (b := c.recv(1 << 16)):
            left -= len(b)
        c.sendall(b"k")
    c.close()
"""
PROBE = f"""
import json, socket, statistics, sys, time
host = sys.argv[1]
c = socket.create_connection((host, {PORT}), timeout=20)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.sendall(b"e")
rtts = []
for _ in range(6):
    t = time.perf_counter(); c.sendall(b"x"); c.recv(1); rtts.append(time.perf_counter() - t)
c.close()
c = socket.create_connection((host, {PORT}), timeout=20)
c.sendall(b"s")
t = time.perf_counter(); c.sendall(bytes({PAYLOAD})); c.recv(1); took = time.perf_counter() - t
print(json.dumps({{"rtt_ms": 1000 * statistics.median(rtts[1:]), "mbit_s": {PAYLOAD} * 8 / took / 1e6}}))
"""


@pytest.fixture
def shaped_lab() -> Iterator[NetLab]:
    """Site 0 public, site 1 behind NAT; every site link 20 Mbit/s each way, 40 ms round trip."""
    reason = NetLab.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with NetLab.build(public=1, natted=1, shape=LinkShape(rate_mbit=RATE_MBIT, rtt_ms=RTT_MS)) as lab:
        yield lab


def _probe(lab: NetLab, source: LabSite, address: str) -> dict[str, float]:
    command = lab.exec_in(source, sys.executable, "-c", PROBE, address)
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    measured: dict[str, float] = json.loads(result.stdout)
    return measured


def test_site_links_have_the_configured_delay_and_rate(shaped_lab: NetLab) -> None:
    public, natted = shaped_lab.sites
    hub = hub_site(shaped_lab)
    servers = [
        subprocess.Popen(shaped_lab.exec_in(site, sys.executable, "-c", SERVE), stdout=subprocess.PIPE)
        for site in (public, hub)
    ]
    try:
        for server in servers:
            assert server.stdout is not None
            assert server.stdout.readline() == b"listening\n"  # bounded: the server exits after 20 s idle
        paths = {
            "site to site": _probe(shaped_lab, natted, public.address),  # through the NAT router
            "site to hub": _probe(shaped_lab, public, HUB_ADDRESS),
        }
        for path, measured in paths.items():
            # The delay is a floor (nothing arrives early); the ceilings only catch a missing or
            # doubled shaping, with room for a loaded host.
            assert 0.9 * RTT_MS <= measured["rtt_ms"] < 3 * RTT_MS, (path, measured)
            assert 0.3 * RATE_MBIT < measured["mbit_s"] <= 1.15 * RATE_MBIT, (path, measured)
    finally:
        for server in servers:
            server.kill()
            server.wait(timeout=10)
