"""A network lab on Linux network namespaces: sites on an "internet" bridge, some behind NAT.

    with NetLab.build(public=1, natted=2) as lab:
        subprocess.run(lab.exec_in(lab.sites[1], "python", "-c", "..."), timeout=30)

One namespace ``<prefix>-hub`` holds the bridge (the internet, 198.18.0.0/24). A public site
is a namespace with one address on it (198.18.0.10 + i). A site behind NAT is a host
namespace (198.19.i.10) behind a router namespace (WAN 198.18.0.100 + i) that masquerades
outbound traffic and drops every inbound connection that is not a reply (conntrack), as an
outbound-only hospital firewall does. Nothing is connected to the namespace the lab was
built from: there is no route out of the machine, and the lab only uses addresses of its own.

`build` needs root, ``ip netns`` and iptables; `NetLab.unavailable` says why not (tests skip
on it). Every command is time-bounded, and leaving the block (also on failure) kills every
process in the lab's namespaces and deletes them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from .linkshape import LinkShape, apply_shape, stop_forwarders

COMMAND_TIMEOUT: Final = 15.0
HUB_PREFIX: Final = "198.18.0"


class LabError(RuntimeError):
    """A lab command failed; the message has the command and its output."""


@dataclass(frozen=True, slots=True)
class LabSite:
    """One site's host namespace and the address its processes listen on."""

    namespace: str
    address: str
    natted: bool
    router: str | None = None  # the NAT router's namespace (natted sites only)


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    if result.returncode != 0:
        raise LabError(f"{' '.join(command)}: exit {result.returncode}: {result.stderr.strip()}")


class NetLab:
    """A built lab. Create with `NetLab.build`."""

    def __init__(self, prefix: str) -> None:
        self.prefix: Final = prefix
        self.hub: Final = f"{prefix}-hub"
        self.sites: list[LabSite] = []
        self._namespaces: list[str] = []

    @staticmethod
    def unavailable() -> str | None:
        """Why no lab can be built here (not root, no ``ip netns``), or None."""
        if os.geteuid() != 0:
            return "the network lab needs root (ip netns, veth, iptables)"
        if shutil.which("ip") is None:
            return "the network lab needs iproute2's ip command"
        probe = f"snprobe-{uuid.uuid4().hex[:6]}"
        try:
            _run("ip", "netns", "add", probe)
        except (LabError, OSError, subprocess.TimeoutExpired) as exc:
            return f"ip netns is not permitted here: {exc}"
        _run("ip", "netns", "del", probe)
        return None

    @classmethod
    @contextlib.contextmanager
    def build(
        cls, *, public: int, natted: int, symmetric_nat: bool = False, shape: LinkShape | None = None
    ) -> Iterator[NetLab]:
        """Sites 0..public-1 on the bridge, then `natted` sites each behind its own NAT router;
        with `shape`, every site link rate-limited and delayed (`swarmnode.testing.linkshape`).

        The routers keep a connection's source port where they can (as most home and many
        hospital NATs do: hole punching works through them); `symmetric_nat` picks a random
        source port per connection instead (``--random-fully``), which defeats hole punching."""
        if shutil.which("iptables") is None:
            raise LabError("iptables is not installed (apt-get install -y iptables; .ci/run does)")
        lab = cls(f"sn{uuid.uuid4().hex[:5]}")
        forwarders: list[subprocess.Popen[bytes]] = []
        try:
            lab._add_namespace(lab.hub)
            _run("ip", "-n", lab.hub, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", lab.hub, "link", "set", "br0", "up")
            for i in range(public + natted):
                if i < public:
                    lab.sites.append(lab._public_site(i))
                else:
                    lab.sites.append(lab._natted_site(i, symmetric=symmetric_nat))
            if shape is not None:
                forwarders = apply_shape(lab, shape)
            yield lab
        finally:
            lab.destroy()
            stop_forwarders(forwarders)

    def _add_namespace(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _plug_into_hub(self, namespace: str, index: int, address: str) -> None:
        port = f"hub{index}"
        _run("ip", "link", "add", port, "netns", self.hub, "type", "veth", "peer", "name", "wan0",
             "netns", namespace)  # fmt: skip
        _run("ip", "-n", self.hub, "link", "set", port, "master", "br0", "up")
        _run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "wan0")
        _run("ip", "-n", namespace, "link", "set", "wan0", "up")

    def _public_site(self, index: int) -> LabSite:
        namespace = f"{self.prefix}-s{index}"
        self._add_namespace(namespace)
        address = f"{HUB_PREFIX}.{10 + index}"
        self._plug_into_hub(namespace, index, address)
        return LabSite(namespace, address, natted=False)

    def _natted_site(self, index: int, *, symmetric: bool = False) -> LabSite:
        router, host = f"{self.prefix}-r{index}", f"{self.prefix}-s{index}"
        self._add_namespace(router)
        self._add_namespace(host)
        self._plug_into_hub(router, index, f"{HUB_PREFIX}.{100 + index}")
        lan = f"198.19.{index}"
        _run("ip", "link", "add", "lan0", "netns", router, "type", "veth", "peer", "name", "eth0",
             "netns", host)  # fmt: skip
        _run("ip", "-n", router, "addr", "add", f"{lan}.1/24", "dev", "lan0")
        _run("ip", "-n", router, "link", "set", "lan0", "up")
        _run("ip", "-n", host, "addr", "add", f"{lan}.10/24", "dev", "eth0")
        _run("ip", "-n", host, "link", "set", "eth0", "up")
        _run("ip", "-n", host, "route", "add", "default", "via", f"{lan}.1")
        in_router = ("ip", "netns", "exec", router)
        _run(*in_router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        masquerade = ("-j", "MASQUERADE", *(("--random-fully",) if symmetric else ()))
        _run(*in_router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", *masquerade)
        _run(*in_router, "iptables", "-P", "FORWARD", "DROP")
        _run(*in_router, "iptables", "-A", "FORWARD", "-i", "lan0", "-o", "wan0", "-j", "ACCEPT")
        replies = ("-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
        _run(*in_router, "iptables", "-A", "FORWARD", "-i", "wan0", "-o", "lan0", *replies)
        _run(*in_router, "iptables", "-A", "INPUT", "-i", "wan0", *replies)
        _run(*in_router, "iptables", "-A", "INPUT", "-i", "wan0", "-j", "DROP")
        return LabSite(host, f"{lan}.10", natted=True, router=router)

    def exec_in(self, site: LabSite, *command: str) -> list[str]:
        """`command` as run inside `site`'s namespace (for subprocess)."""
        return ["ip", "netns", "exec", site.namespace, *command]

    def destroy(self) -> None:
        """Kill every process in the lab and delete its namespaces. Idempotent; never raises."""
        for namespace in reversed(self._namespaces):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                pids = subprocess.run(
                    ["ip", "netns", "pids", namespace],
                    capture_output=True,
                    text=True,
                    timeout=COMMAND_TIMEOUT,
                ).stdout.split()
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), 9)
        for namespace in reversed(self._namespaces):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    ["ip", "netns", "del", namespace], capture_output=True, timeout=COMMAND_TIMEOUT
                )
        self._namespaces.clear()

    def namespaces(self) -> Sequence[str]:
        return tuple(self._namespaces)
