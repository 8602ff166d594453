"""Circuit relay v2 for sites that accept no inbound connection (behind NAT or a firewall).

A site with ``[network] relays`` reserves a slot on each of those relays and keeps it: py-libp2p
0.8.1 renews a reservation only near its expiry, so when the connection to a relay drops,
`RelayClient.keep_reservations` reconnects and reserves again (clearing the swarm's 60 s
failed-dial cache first). The site advertises ``<relay>/p2p-circuit`` addresses (see
`swarmnode.addresses.circuit_address`); a peer dials them with `RelayClient.dial`, because the
swarm's own `connect` drops every ``/p2p-circuit`` address. Noise and Yamux run end to end
through the relay, so a relay forwards bytes it cannot read.

A site with ``relay_service = true`` also serves the hop role, within `RELAY_LIMITS`, for
members only (`swarmnode.net.relay_members.MemberHop`).
Every site answers STOP (an incoming relayed connection) and can dial circuits.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Final

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from crypto.identity import NodeId

from ..addresses import CIRCUIT
from .libp2p_streams import close_quietly, forget_failed_dials, libp2p_id, parse_peer_multiaddr
from .relay_members import Admits, MemberHop

log = logging.getLogger("swarmnode.net.libp2p")

RESERVE_TIMEOUT: Final = 10.0
KEEP_INTERVAL: Final = 1.0
# Sized for blob rounds, not go-libp2p's 128 KiB / 2 min: a relayed site sends and fetches its
# contributions, shares and the merged model through the relay (the stream layer hashes every
# blob, so a circuit the relay cuts shows up as a failed fetch, retried elsewhere).
RELAY_LIMITS: Final = RelayLimits(
    duration=3600, data=4 << 30, max_circuit_conns=64, max_reservations=64, reservation_ttl=3600
)


class RelayClient:
    """The relay roles of one host: STOP and dialling always, reservations on `relays`,
    hop if `serve` (reservations and circuits only for peers `admits`). Run `run` once the
    host listens."""

    def __init__(self, host: IHost, relays: Sequence[str], *, serve: bool, admits: Admits) -> None:
        self._host = host
        self.relays: Final = tuple(parse_peer_multiaddr(address) for address in relays)
        self.relay_nodes: Final = frozenset(node for node, _ in self.relays)
        self.serves: Final = serve
        self._protocol = MemberHop(host, limits=RELAY_LIMITS, allow_hop=serve, admits=admits)
        roles = RelayRole.STOP | RelayRole.CLIENT | (RelayRole.HOP if serve else RelayRole(0))
        self._transport = CircuitV2Transport(host, self._protocol, RelayConfig(roles=roles))
        # Hole punching: every 2 s DCUtR tries to replace each relayed connection by a direct one
        # (a plain dial first, then a simultaneous open from both ends' listen ports), which
        # works through NATs that keep source ports; otherwise the relayed connection stays.
        self._hole_punch = DCUtRProtocol(host)
        self._reserved: set[NodeId] = set()
        self._dialled_through: set[NodeId] = set()  # relays of members' circuit addresses we used
        self.reserved_event = trio.Event()  # set at the first reservation (tests and logs)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The relay and hole-punching protocols, running for the block's duration."""
        async with background_trio_service(self._protocol), background_trio_service(self._hole_punch):
            await self._protocol.event_started.wait()
            await self._hole_punch.event_started.wait()
            yield

    def is_relay(self, node: NodeId | None) -> bool:
        """A relay this host reserves on or dials through: its connection is kept although it
        is no member (it gets no stream of ours: every handler checks membership itself)."""
        return node in self.relay_nodes or node in self._dialled_through

    def path_to(self, node: NodeId) -> str | None:
        """How this host is connected to `node` now: "direct" if any connection is (also after
        a hole punch), "relayed" if only through a relay, None if not connected."""
        connections = self._host.get_network().get_connections(libp2p_id(node))
        if not connections:
            return None
        relayed = [any(CIRCUIT in str(a) for a in c.get_transport_addresses()) for c in connections]
        return "relayed" if all(relayed) else "direct"

    @property
    def reserved(self) -> frozenset[NodeId]:
        """The relays this host holds a live reservation on right now."""
        return frozenset(self._reserved)

    async def keep_reservations(self) -> None:
        """Reserve on every relay, and again whenever the connection to one is gone."""
        if not self.relays:
            return
        async with trio.open_nursery() as nursery:  # the library's reservation refresher runs here
            while True:
                for node, address in self.relays:
                    if not self._connected(libp2p_id(node)):
                        self._reserved.discard(node)
                    if node not in self._reserved:
                        await self._reserve_quietly(node, address, nursery)
                await trio.sleep(KEEP_INTERVAL)

    def _connected(self, peer: ID) -> bool:
        return bool(self._host.get_network().get_connections(peer))

    async def _reserve_quietly(self, node: NodeId, address: str, nursery: trio.Nursery) -> None:
        relay = libp2p_id(node)
        try:
            with trio.fail_after(RESERVE_TIMEOUT):
                await self._connect(relay, address)
                stream = await self._host.new_stream(relay, [HOP_PROTOCOL])
                try:
                    ok = await self._transport.reserve(stream, relay, nursery)
                finally:
                    await close_quietly(stream)
        except Exception as exc:  # relay down or refusing: retried every KEEP_INTERVAL
            log.info("no reservation on relay %s yet: %s: %s", node.short, type(exc).__name__, exc)
            return
        if not ok:
            log.info("relay %s refused a reservation", node.short)
            return
        if node not in self._reserved:
            log.info("reserved a slot on relay %s; reachable through it", node.short)
        self._reserved.add(node)
        self.reserved_event.set()

    async def _connect(self, relay: ID, address: str) -> None:
        if self._connected(relay):
            return
        forget_failed_dials(self._host, relay)
        await self._host.connect(PeerInfo(relay, [multiaddr.Multiaddr(address)]))

    async def dial(self, peer: NodeId, circuits: Sequence[str]) -> None:
        """Connect to `peer` through the first of its ``<relay>/p2p-circuit`` addresses that works;
        raises the last failure if none does."""
        failure: Exception | None = None
        for circuit in circuits:
            relay_address = circuit.removesuffix(CIRCUIT)
            relay_node, relay_transport = parse_peer_multiaddr(relay_address)
            self._dialled_through.add(relay_node)  # before connecting: the guard sees it at once
            try:
                await self._connect(libp2p_id(relay_node), relay_transport)
                await self._transport.dial(multiaddr.Multiaddr(f"{circuit}/p2p/{peer.peer_id}"))
            except Exception as exc:  # this relay is down or refused: try the next one
                failure = exc
                continue
            log.info("connected to %s through relay %s", peer.short, relay_node.short)
            return
        raise ConnectionError(f"no relay reached {peer.short}: {failure!r}")
