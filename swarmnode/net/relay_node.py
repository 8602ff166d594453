"""A relay-only host (`swarmnode relay`): circuit relay v2 hop for sites behind NAT.

An organiser runs it where every site can reach it, for a swarm with no publicly reachable
member (or as a second path beside a member relaying with ``network.relay_service``). It
has a key (its peer id, which sites name in ``network.relays``), a listen address, the
hop role within `swarmnode.net.libp2p_relay.RELAY_LIMITS` and the list of members it serves
(`swarmnode.net.relay_members.RelayAllowList`: reservations and circuits from or to anyone
else are refused, so outsiders cannot spend the organiser's bandwidth or reservation slots);
nothing else. It holds no ledger, data or key-epoch secret (only the public genesis, for its
member list), runs no pubsub and serves none of the swarm's protocols (rpc, blobs, peer
lists), so it cannot take part in consensus or rounds, and what it forwards is
Noise-encrypted end to end between the two sites (it sees who talks to whom, and how much).
Sites still check each other's membership: a relay is no member.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import multiaddr
import trio

from crypto.identity import NodeIdentity

from ..addresses import check_listen, port_in_use
from .base import TransportError
from .libp2p_patches import patch_libp2p
from .libp2p_relay import RelayClient
from .libp2p_streams import new_secure_host
from .relay_members import Admits

log = logging.getLogger("swarmnode.net.relay")


async def run_relay(
    identity: NodeIdentity,
    listen_host: str,
    listen_port: int,
    *,
    admits: Admits,
    on_ready: Callable[[tuple[str, ...]], None],
) -> None:
    """Serve the hop role, to the peers `admits` only, on `listen_host`:`listen_port` until
    cancelled; `on_ready` gets the bound addresses (with ``/p2p/<id>``) once it listens.
    TransportError at once if the port is taken or the address cannot be bound."""
    try:
        check_listen(listen_host)
    except ValueError as exc:
        raise TransportError(f"--listen: {exc}") from None
    busy = port_in_use(listen_host, listen_port)
    if busy is not None:
        raise TransportError(f"cannot listen: {busy}")
    patch_libp2p()
    listen = multiaddr.Multiaddr(f"/ip4/{listen_host}/tcp/{listen_port}")
    host = new_secure_host(identity, listen)
    relay = RelayClient(host, (), serve=True, admits=admits)
    async with host.run([listen]), relay.running():
        bound = tuple(str(a) for a in host.get_addrs())
        log.info("relay %s serving circuits (hop) at %s", identity.node_id.short, ", ".join(bound))
        on_ready(bound)
        await trio.sleep_forever()
