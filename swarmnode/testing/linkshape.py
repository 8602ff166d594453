"""Rate limit and delay on every site link of a `NetLab` (the lab's WAN).

    with NetLab.build(public=4, natted=0, shape=LinkShape(rate_mbit=100, rtt_ms=40)) as lab:
        ...

Rate: a ``tbf`` qdisc on both ends of each site's link to the hub (the site's or its NAT
router's ``wan0`` for upload, the hub's port for download), so every site has its own
`rate_mbit` each way and the hub (the internet) is not a bottleneck.

Delay: this kernel has no ``netem``, so each site runs `swarmnode.testing.delayproxy`, a
transparent forwarder that an iptables ``nat OUTPUT`` rule puts in front of every TCP
connection the site opens to a lab address; it holds every chunk `rtt_ms / 2` in each
direction. Every connection between two lab hosts (a site and another site, or the hub's
own address `HUB_ADDRESS`) passes exactly one forwarder, the dialler's, so its round trip
is `rtt_ms` plus the links' own (well under a millisecond). TCP only: UDP and ICMP are not
delayed. The forwarders are processes in the sites' namespaces: the lab's teardown kills
them, and each ends by itself after `lifetime_s`.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .delayproxy import BYPASS_MARK

if TYPE_CHECKING:
    from .netlab import LabSite, NetLab

HUB_ADDRESS: Final = "198.18.0.1"  # the hub namespace's own address on the bridge
LAB_NETWORKS: Final = "198.18.0.0/15"  # the internet bridge and the NATed sites' LANs
PROXY_PORT: Final = 7999
_READY_TIMEOUT: Final = 15.0


@dataclass(frozen=True, slots=True)
class LinkShape:
    """Each site link: `rate_mbit` each way (None: unlimited), `rtt_ms` added round trip."""

    rate_mbit: float | None = None
    rtt_ms: float = 0.0
    lifetime_s: float = 3600.0  # the delay forwarders end by themselves after this

    def __post_init__(self) -> None:
        if self.rate_mbit is not None and not self.rate_mbit > 0:
            raise ValueError(f"LinkShape.rate_mbit must be > 0 Mbit/s, got {self.rate_mbit}")
        if not 0 <= self.rtt_ms <= 10_000:
            raise ValueError(f"LinkShape.rtt_ms must be in [0, 10000], got {self.rtt_ms}")
        if not self.lifetime_s > 0:
            raise ValueError(f"LinkShape.lifetime_s must be > 0, got {self.lifetime_s}")


def _tbf(run: list[str], device: str, rate_mbit: float) -> list[str]:
    # The bucket holds at least one 64 KiB GSO packet (veths hand tbf whole GSO packets) and
    # 4 ms at the rate; the queue holds 50 ms at the rate before tbf drops.
    burst = max(128 * 1024, int(rate_mbit * 1e6 / 8 * 0.004))
    return [*run, "tc", "qdisc", "replace", "dev", device, "root", "tbf", "rate", f"{rate_mbit}mbit",
            "burst", str(burst), "latency", "50ms"]  # fmt: skip


def apply_shape(lab: NetLab, shape: LinkShape) -> list[subprocess.Popen[bytes]]:
    """Shape every site link of `lab`; returns the delay forwarders it started."""
    from .netlab import _run

    _run("ip", "-n", lab.hub, "addr", "add", f"{HUB_ADDRESS}/24", "dev", "br0")
    if shape.rate_mbit is not None:
        for index, site in enumerate(lab.sites):
            _run(*_tbf(["ip", "netns", "exec", site.router or site.namespace], "wan0", shape.rate_mbit))
            _run(*_tbf(["ip", "netns", "exec", lab.hub], f"hub{index}", shape.rate_mbit))
    forwarders: list[subprocess.Popen[bytes]] = []
    if shape.rtt_ms > 0:
        try:
            for site in lab.sites:
                forwarders.append(_start_forwarder(lab, site, shape))
        except BaseException:
            stop_forwarders(forwarders)
            raise
    return forwarders


def hub_site(lab: NetLab) -> LabSite:
    """The hub namespace as a host at `HUB_ADDRESS` (a server "in the internet")."""
    from .netlab import LabSite

    return LabSite(lab.hub, HUB_ADDRESS, natted=False)


def _start_forwarder(lab: NetLab, site: LabSite, shape: LinkShape) -> subprocess.Popen[bytes]:
    from .netlab import LabError, _run

    command = [sys.executable, "-m", "swarmnode.testing.delayproxy", "--port", str(PROXY_PORT),
               "--one-way-ms", str(shape.rtt_ms / 2), "--lifetime", str(shape.lifetime_s)]  # fmt: skip
    proc = subprocess.Popen(lab.exec_in(site, *command), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ready = _read_line(proc, _READY_TIMEOUT)
    if ready != b"ready\n":
        proc.kill()
        _, err = proc.communicate(timeout=_READY_TIMEOUT)
        raise LabError(f"delay forwarder in {site.namespace} did not start: {err.decode()[-400:]}")
    _run(*lab.exec_in(site, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", LAB_NETWORKS,
                      "-m", "mark", "!", "--mark", hex(BYPASS_MARK), "-j", "REDIRECT",
                      "--to-ports", str(PROXY_PORT)))  # fmt: skip
    return proc


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The process's first stdout line, or b"" if none came within `timeout` s."""
    import threading

    line: list[bytes] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return line[0] if line else b""


def stop_forwarders(forwarders: list[subprocess.Popen[bytes]]) -> None:
    for proc in forwarders:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.SubprocessError):
            proc.communicate(timeout=10)
    forwarders.clear()
