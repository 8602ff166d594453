"""Where a site listens and where its peers reach it.

``[network] listen`` is the IPv4 address the node binds (``0.0.0.0``: every interface).
``[network] advertise`` is what goes into the site's member line, the genesis and the
peer exchange: the addresses other sites dial. Behind a router or with ``listen =
"0.0.0.0"`` they differ, and only the advertised ones mean anything to a peer: a wildcard
or a host name written into ``/ip4/`` is refused here, by name, when the member line is
made, when genesis is written and when ``site.toml`` is loaded (not after an hour of
failed dials).

Plain string checks (and the system resolver): this module imports neither libp2p nor
multiaddr, so the command line validates addresses without loading the network stack.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from typing import Final

import trio

log = logging.getLogger(__name__)

CIRCUIT: Final = "/p2p-circuit"
DNS_PROTOCOLS: Final = ("dns", "dns4", "dns6")
HOST_PROTOCOLS: Final = ("ip4", "ip6", *DNS_PROTOCOLS)
_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_dns_name(text: str) -> bool:
    """A host name peers can resolve: dot-separated labels of letters, digits and inner dashes."""
    name = text.removesuffix(".")
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _undialable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if ip.is_unspecified:
        return "a wildcard address (it means 'every interface' to a listener; no peer can dial it)"
    if ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        return "a multicast or broadcast address, not one host"
    return None


def check_listen(host: str) -> None:
    """`host` can be bound: an IPv4 address of this machine or 0.0.0.0 (ValueError if not)."""
    ip = _ip(host)
    if isinstance(ip, ipaddress.IPv4Address):
        return
    if ip is None and is_dns_name(host):
        raise ValueError(
            f"{host!r} is a host name: listen takes an IPv4 address of this machine "
            "(0.0.0.0 for every interface); put the name peers dial into network.advertise"
        )
    raise ValueError(f"{host!r}: expected an IPv4 address of this machine (0.0.0.0 for every interface)")


def check_dialable(address: str) -> None:
    """`address` is a multiaddr a peer can dial: ``/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT``,
    optionally ending in ``/p2p/<peer id>``, or a relay's such address (with its peer id)
    followed by ``/p2p-circuit`` (see `circuit_address`). ValueError says what is wrong and the fix."""
    if address.endswith(CIRCUIT):
        relay = address.removesuffix(CIRCUIT)
        check_dialable(relay)
        if "/p2p/" not in relay or CIRCUIT in relay:
            raise ValueError("a circuit address is a relay's /.../tcp/PORT/p2p/<relay id> + /p2p-circuit")
        return
    parts = address.split("/")
    if parts[0] != "" or len(parts) < 5:
        raise ValueError("expected a multiaddr like /ip4/203.0.113.7/tcp/7000 or /dns4/NAME/tcp/7000")
    _, protocol, host, transport, port_text, *rest = parts
    if protocol not in HOST_PROTOCOLS:
        raise ValueError(f"must start with one of {', '.join('/' + p + '/' for p in HOST_PROTOCOLS)}")
    if protocol in DNS_PROTOCOLS:
        if not is_dns_name(host):
            raise ValueError(f"{host!r} is not a DNS host name")
    else:
        ip = _ip(host)
        if ip is None or ip.version != int(protocol[-1]):
            hint = f"; write /dns4/{host}/tcp/{port_text} for a host name" if is_dns_name(host) else ""
            raise ValueError(f"{host!r} is not an IPv{protocol[-1]} address{hint}")
        problem = _undialable(ip)
        if problem is not None:
            raise ValueError(f"{host} is {problem}; advertise this site's reachable IP or DNS name")
    if transport != "tcp" or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(
            f"expected /tcp/PORT with PORT in 1-65535 after {host}, got /{transport}/{port_text}"
        )
    if rest and (len(rest) != 2 or rest[0] != "p2p" or not rest[1]):
        raise ValueError("only /p2p/<peer id> may follow the port")


def circuit_address(relay: str) -> str:
    """Where a site that reserved a slot on `relay` (a multiaddr with the relay's /p2p/ id) is
    reached: ``<relay>/p2p-circuit``; a dialer appends ``/p2p/<site id>``."""
    if "/p2p/" not in relay:
        raise ValueError(f"{relay!r}: a relay address needs its /p2p/<peer id>")
    address = relay + CIRCUIT
    check_dialable(address)
    return address


def is_dialable(address: str) -> bool:
    try:
        check_dialable(address)
    except ValueError:
        return False
    return True


async def resolve_dns(address: str) -> list[str]:
    """`address` with a /dns, /dns4 or /dns6 host replaced by its IP addresses, resolved by the
    system (hosts file included). py-libp2p 0.8.1 resolves with dnspython, which skips the
    hosts file and, finding nothing, dials the name unresolved, which always fails."""
    parts = address.split("/", 3)
    if len(parts) < 4 or parts[1] not in DNS_PROTOCOLS:
        return [address]
    _, protocol, host, rest = parts
    family = {"dns4": socket.AF_INET, "dns6": socket.AF_INET6}.get(protocol, socket.AF_UNSPEC)
    try:
        infos = await trio.socket.getaddrinfo(host, None, family=family, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.debug("cannot resolve %s: %s", host, exc)
        return []
    ips = dict.fromkeys(str(info[4][0]) for info in infos)
    return [f"/ip{6 if ':' in ip else 4}/{ip}/{rest}" for ip in ips]


def advertised_address(entry: str, port: int) -> str:
    """One ``network.advertise`` entry as a multiaddr: a full multiaddr is taken as it is,
    an IP address or DNS name gets ``port`` (the listen port; a router may forward another)."""
    if entry.startswith("/"):
        if "/p2p/" in entry:
            raise ValueError("leave out /p2p/<peer id>: the node adds its own where it is needed")
        address = entry
    else:
        if port == 0:
            raise ValueError(
                f"{entry!r} needs a fixed network.port (0 picks a random port no peer can know), "
                "or write a full multiaddr such as /dns4/NAME/tcp/PORT"
            )
        ip = _ip(entry)
        if ip is not None:
            address = f"/ip{ip.version}/{entry}/tcp/{port}"
        elif is_dns_name(entry):
            address = f"/dns4/{entry}/tcp/{port}"
        else:
            raise ValueError(f"{entry!r}: expected an IP address, a DNS name or a multiaddr")
    check_dialable(address)
    return address


def advertised_addresses(listen: str, port: int, advertise: Sequence[str]) -> tuple[str, ...]:
    """What peers dial: the `advertise` entries, else the listen address if it is a specific
    one on a fixed port; () when neither gives a dialable address."""
    if advertise:
        return tuple(dict.fromkeys(advertised_address(entry, port) for entry in advertise))
    ip = _ip(listen)
    if ip is None or port == 0 or _undialable(ip) is not None:
        return ()
    return (f"/ip{ip.version}/{listen}/tcp/{port}",)


def port_in_use(host: str, port: int) -> str | None:
    """Why `port` on `host` cannot be listened on (another process holds it), or None.

    py-libp2p listens with SO_REUSEPORT, so a second node on the same port would silently
    share (and split) its connections. A plain bind fails then.
    """
    if port == 0:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return f"{host}:{port} is in use ({exc.strerror})"
    return None
