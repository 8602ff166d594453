"""`Libp2pTransport`: the `Transport` on py-libp2p 0.8.1 under trio.

What was verified to work (tests/net/test_net_libp2p.py runs it) and is therefore what we use:
- TCP, **Noise only** (py-libp2p's default also offers PLAINTEXT), **Yamux only**
  (Mplex is 4x slower). The libp2p key pair is built from the node's Ed25519
  seed, so the libp2p peer ID is `identity.node_id.peer_id`.
- GossipSub for small messages, strict signing on, heartbeat 1 s, spam
  protection off, plus two queue-size patches and one signed-record check per record
  (`swarmnode.net.libp2p_patches`).
- Blobs over direct streams in chunks, never over GossipSub (which silently
  drops messages above 1 MiB).
- Discovery: a small peer-list protocol (ask a peer who it is connected to and
  where those listen; dial them all in parallel) on top of bootstrap
  addresses and addresses the ledger knows (`add_peer_addresses`). Every
  known, allowed, disconnected peer is redialled with exponential backoff, so
  a peer that restarts (even on a new port) is found again.
- Permissioning: once `set_allowed_peers` was called, a connection from any
  other peer is closed as soon as it is up, its streams are reset unread, and
  its gossip is rejected by a topic validator (not relayed) and filtered again
  before delivery (nothing of a non-member reaches the layer above).
- Fault injection (tests and chaos runs only): `partition(blocked)` treats the
  blocked peers exactly like non-members on that same path (connections
  closed, inbound streams reset, no dialling, gossip rejected, requests and
  blob fetches refused) until `heal()`. It is a local method call, off by
  default; no message a peer can send switches it on. Call it on both sides
  for a symmetric partition. A node process exposes it only through its local
  control endpoint, and only when started with ``SWARMNODE_FAULT_INJECTION=1``
  (`swarmnode.control`).

libp2p is imported only by this module and its ``libp2p_*`` helpers (never by
`swarmnode.net`'s ``__init__``), so the rest of the code base imports without it. No
libp2p type or exception leaves this module: `errors_to_transport` maps them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import PROTOCOL_ID as GOSSIPSUB_V10
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11 as GOSSIPSUB_V11
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from crypto.identity import NodeId, NodeIdentity

from ..addresses import CIRCUIT, check_dialable, is_dialable, port_in_use, resolve_dns
from . import wire
from ._shared import answer_request, fetch_from_any, unwrap_single_exception
from .base import (
    DEFAULT_BLOB_TIMEOUT,
    DEFAULT_MAX_BLOB_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_REQUEST_TIMEOUT,
    SUBSCRIPTION_BUFFER,
    BlobStore,
    Inbound,
    PeerUnreachable,
    RequestHandler,
    RequestRefused,
    Transport,
    TransportClosed,
    TransportError,
    check_hash,
)
from .libp2p_patches import patch_libp2p
from .libp2p_relay import RelayClient
from .libp2p_streams import (
    SERVE_TIMEOUT,
    close_quietly,
    errors_to_transport,
    forget_failed_dials,
    libp2p_id,
    new_secure_host,
    node_id_of,
    parse_peer_multiaddr,
    read_frame,
    receive_blob,
    send_blob,
)

log = logging.getLogger(__name__)

RPC_PROTOCOL: Final = TProtocol("/swarmnode/rpc/1.0.0")
BLOB_PROTOCOL: Final = TProtocol("/swarmnode/blob/1.0.0")
PEERS_PROTOCOL: Final = TProtocol("/swarmnode/peers/1.0.0")

DIAL_TIMEOUT: Final = 5.0
RELAYED_DIAL_TIMEOUT: Final = 10.0  # the relay is dialled first, if not connected
EXCHANGE_TIMEOUT: Final = 5.0
MAINTAIN_INTERVAL: Final = 0.25
EXCHANGE_INTERVAL: Final = 10.0  # dials exchange at once; this only catches late joiners
BACKOFF_INITIAL: Final = 0.5
BACKOFF_MAX: Final = 8.0
MAX_ADDRESS_BOOK: Final = 1024  # peers learned from peer lists (ledger-supplied ones are not capped)

# GossipSub mesh degrees: the libp2p spec's defaults (D 6, D_lo 4, D_hi 12). The notes'
# 3/2/4 (verified with 6 nodes) churned with 8 processes: a node grafted by more than D_hi
# peers prunes some, they re-graft within py-libp2p's 10 s flood window and are pruned again
# with a penalty ("GRAFT flood detected"), so some peers stayed outside every mesh. With
# D_hi 12 a swarm of up to 13 members is never over-grafted.
GOSSIP_DEGREE: Final = 6
GOSSIP_DEGREE_LOW: Final = 4
GOSSIP_DEGREE_HIGH: Final = 12
GOSSIP_HEARTBEAT_S: Final = 1  # libp2p's default is 120 s


@dataclass(slots=True)
class _Backoff:
    delay: float = BACKOFF_INITIAL
    next_attempt: float = -math.inf


class _PermissionNotifee(INotifee):
    """Tells the guard task about every new connection (it closes non-members)."""

    def __init__(self, send: trio.MemorySendChannel[ID]) -> None:
        self._send = send

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._send.send_nowait(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


class Libp2pTransport(Transport):
    """A `Transport` over py-libp2p. Build it with `open_libp2p_transport`."""

    def __init__(
        self,
        identity: NodeIdentity,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        advertise: Sequence[str] = (),
        bootstrap: Sequence[str] = (),
        allowed_peers: AbstractSet[NodeId] | None = None,
        max_blob_size: int = DEFAULT_MAX_BLOB_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        blob_store: BlobStore | None = None,
        relays: Sequence[str] = (),
        relay_service: bool = False,
    ) -> None:
        if max_message_size > DEFAULT_MAX_MESSAGE_SIZE:
            raise ValueError("gossip messages are capped at 1 MiB by py-libp2p's outbound queue")
        patch_libp2p()
        self.node_id = identity.node_id
        self.max_blob_size = max_blob_size
        self.max_message_size = max_message_size
        self._listen = multiaddr.Multiaddr(f"/ip4/{listen_host}/tcp/{listen_port}")
        for address in advertise:
            check_dialable(address)
        self._advertise = tuple(advertise)[: wire.MAX_ADDRS_PER_PEER]
        self._host: IHost = new_secure_host(identity, self._listen)
        if self._host.get_id().to_base58() != self.node_id.peer_id:
            raise TransportError("libp2p derived a different peer id from the node key")
        self._gossipsub = GossipSub(
            # Not v1.2: its IDONTWANT goes to every mesh peer for every message, however small
            # (Go sends it only above 1 KB), which doubled the RPCs per vote at 8 processes.
            protocols=[GOSSIPSUB_V11, GOSSIPSUB_V10],
            degree=GOSSIP_DEGREE,
            degree_low=GOSSIP_DEGREE_LOW,
            degree_high=GOSSIP_DEGREE_HIGH,
            heartbeat_interval=GOSSIP_HEARTBEAT_S,
            spam_protection_enabled=False,
        )
        self._pubsub = Pubsub(
            self._host, self._gossipsub, strict_signing=True, max_inbound_rpc_size=max_message_size + 4096
        )
        self.relay: Final = RelayClient(self._host, relays, serve=relay_service, admits=self._is_member)
        self._blobs = blob_store if blob_store is not None else BlobStore()
        self._allowed: frozenset[NodeId] | None = (
            None if allowed_peers is None else frozenset(allowed_peers) | {self.node_id}
        )
        self._blocked: frozenset[NodeId] = frozenset()  # fault injection: `partition`
        self._handlers: dict[str, RequestHandler] = {}
        self._subscribers: dict[str, list[trio.MemorySendChannel[Inbound]]] = {}
        self._address_book: dict[NodeId, tuple[str, ...]] = {}
        self._backoff: dict[NodeId, _Backoff] = {}
        self._dialing: set[NodeId] = set()
        for address in bootstrap:
            node, transport_addr = parse_peer_multiaddr(address)
            if node != self.node_id:
                self._address_book[node] = (transport_addr,)
        self._guard_send, self._guard_receive = trio.open_memory_channel[ID](1024)
        self._cancel_scope = trio.CancelScope()
        self._stopped = trio.Event()
        self.started = trio.Event()
        self._startup_error: Exception | None = None
        self._closed = False
        self._nursery: trio.Nursery | None = None
        self._operations: set[trio.CancelScope] = set()  # callers' in-flight peer operations

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run the host until `aclose`; `started` is set once it listens and serves.

        (No ``task_status``: the trio-stubs package that py-libp2p pulls in
        shadows trio's own annotations and lacks ``trio.TaskStatus``.)
        """
        try:
            with self._cancel_scope:
                self._check_port_free()
                async with (
                    self._host.run([self._listen]),
                    background_trio_service(self._pubsub),
                    background_trio_service(self._gossipsub),
                    self.relay.running(),
                ):
                    await self._pubsub.wait_until_ready()
                    self._host.get_network().register_notifee(_PermissionNotifee(self._guard_send))
                    self._host.set_stream_handler(RPC_PROTOCOL, self._serve_rpc)
                    self._host.set_stream_handler(BLOB_PROTOCOL, self._serve_blob)
                    self._host.set_stream_handler(PEERS_PROTOCOL, self._serve_peers)
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        nursery.start_soon(self._guard)
                        nursery.start_soon(self._maintain)
                        nursery.start_soon(self.relay.keep_reservations)
                        self.started.set()
                        await trio.sleep_forever()
        except Exception as exc:
            if self.started.is_set():
                raise
            self._startup_error = exc  # reported by open_libp2p_transport as a TransportError
        finally:
            self._closed = True
            self._close_subscribers()
            self._stopped.set()
            self.started.set()

    def _check_port_free(self) -> None:
        """Refuse a fixed port another process listens on (see `port_in_use`)."""
        host, port = self._listen.value_for_protocol("ip4"), self._listen.value_for_protocol("tcp")
        busy = port_in_use(host, int(port))
        if busy is not None:
            raise OSError(busy)

    async def aclose(self) -> None:
        """Stop everything this transport runs. Idempotent; never raises."""
        self._closed = True
        self._close_subscribers()
        self._cancel_scope.cancel()
        for scope in self._operations:  # py-libp2p leaves reads of a closed host blocked forever
            scope.cancel()
        if self._nursery is not None:  # started: wait until the host is down
            await self._stopped.wait()
        await trio.lowlevel.checkpoint()

    def _close_subscribers(self) -> None:
        for channels in self._subscribers.values():
            for channel in channels:
                channel.close()
        self._subscribers.clear()

    @contextlib.contextmanager
    def _peer_operation(self, peer: NodeId, what: str, timeout: float) -> Iterator[None]:
        """One caller's operation with `peer`: bounded, errors mapped, cancelled by `aclose`."""
        self._check_open()
        scope = trio.CancelScope()
        self._operations.add(scope)
        try:
            with scope, errors_to_transport(peer, what, timeout), trio.fail_after(timeout):
                yield
        finally:
            self._operations.discard(scope)
        if scope.cancelled_caught:
            raise TransportClosed(f"{what}: transport of {self.node_id.short} was closed")

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed(f"transport of {self.node_id.short} is closed")

    @property
    def _running(self) -> trio.Nursery:
        self._check_open()
        if self._nursery is None:
            raise TransportError("transport is not running (use open_libp2p_transport)")
        return self._nursery

    # ------------------------------------------------------------------ addresses

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        """Our full multiaddrs (with /p2p/<peer id>), for bootstrap lists and member records."""
        return tuple(str(a) for a in self._host.get_addrs())

    def _transport_addrs(self) -> tuple[str, ...]:
        """Where peers reach us: the advertised addresses, else the bound ones a peer can
        dial (a wildcard such as 0.0.0.0 would send a peer to its own machine)."""
        if self._advertise:
            return self._advertise
        bound = (str(a) for a in self._host.get_transport_addrs())
        return tuple(a for a in bound if is_dialable(a))[: wire.MAX_ADDRS_PER_PEER]

    def add_peer_addresses(self, peer: NodeId, addrs: Sequence[str]) -> None:
        """Remember where `peer` listens (from its ledger member record); it will be dialled.

        `addrs` are multiaddrs, with or without the /p2p/ part (which must then be `peer`),
        or circuit addresses ``<relay>/p2p-circuit[/p2p/<peer>]``, dialled through that relay.
        """
        cleaned: list[str] = []
        for address in addrs:
            relay, circuit, rest = address.partition(CIRCUIT)
            if circuit:
                if rest not in ("", f"/p2p/{peer.peer_id}"):
                    raise ValueError(f"{address!r} is not a circuit address of {peer.short}")
                parse_peer_multiaddr(relay)  # the relay's address, with its id
                cleaned.append(relay + CIRCUIT)
                continue
            if "/p2p/" in address:
                node, address = parse_peer_multiaddr(address)
                if node != peer:
                    raise ValueError(f"{address!r} names another peer than {peer.short}")
            multiaddr.Multiaddr(address)  # raises on garbage
            cleaned.append(address)
        self._learn(peer, tuple(cleaned))

    def _learn(self, peer: NodeId, addrs: tuple[str, ...], *, hearsay: bool = False) -> None:
        """Remember `peer`'s addresses. Hearsay (a peer list) about non-members is ignored,
        and never grows the book past MAX_ADDRESS_BOOK, so a peer cannot flood it.
        Addresses of a member we partitioned away are still learned: they are needed at `heal`."""
        if peer == self.node_id or not addrs:
            return
        if hearsay and (
            not self._is_member(peer)
            or (peer not in self._address_book and len(self._address_book) >= MAX_ADDRESS_BOOK)
        ):
            return
        if self._address_book.get(peer) != addrs:
            self._address_book[peer] = addrs
            self._backoff.pop(peer, None)  # a new address deserves an immediate dial

    # ------------------------------------------------------------------ permissioning

    def _is_member(self, peer: NodeId | None) -> bool:
        """On the allow-list (or no allow-list set), whatever the injected faults."""
        if peer is None:
            return False
        return self._allowed is None or peer in self._allowed

    def _is_allowed(self, peer: NodeId | None) -> bool:
        """May we talk to `peer` now: a member and not partitioned away."""
        return self._is_member(peer) and peer not in self._blocked

    def set_allowed_peers(self, peers: AbstractSet[NodeId]) -> None:
        self._allowed = frozenset(peers) | {self.node_id}
        self._unbar_allowed()
        self._recheck_connections()

    def _bar_from_gossip(self, peer_id: ID) -> None:
        """Put `peer_id` on pubsub's blacklist while we may not talk to it.

        Pubsub opens its stream to every connected peer and, when that fails while the peer
        still looks connected, dials it again and again. Against a peer whose connections our
        guard closes, that was a dial storm (hundreds a minute) that leaked py-libp2p's
        per-peer connection slots until, minutes into a partition, no connection between the
        two came up any more, also after it healed."""
        # The set itself, not `add_to_blacklist`: that also spawns a stream teardown which
        # races pubsub's own dead-peer cleanup (`del peers[id]`: KeyError) and takes the
        # pubsub service, and so the node, down. Our guard closes the connection anyway.
        self._pubsub.blacklisted_peers.add(peer_id)

    def _unbar_allowed(self) -> None:
        """Take the peers we may talk to again off pubsub's blacklist (we are its only writer)."""
        barred = self._pubsub.blacklisted_peers
        barred.difference_update([p for p in barred if self._is_allowed(node_id_of(p))])

    def _recheck_connections(self) -> None:
        """Hand every open connection to the guard, which closes those no longer allowed."""
        for peer_id in self._host.get_connected_peers():
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                self._guard_send.send_nowait(peer_id)

    def peers(self) -> frozenset[NodeId]:
        nodes = (node_id_of(p) for p in self._host.get_connected_peers())
        return frozenset(n for n in nodes if n is not None and n != self.node_id and self._is_allowed(n))

    # ------------------------------------------------------------------ fault injection

    @property
    def blocked(self) -> frozenset[NodeId]:
        """The peers cut off by `partition` (empty unless a test injected a partition)."""
        return self._blocked

    def partition(self, blocked: AbstractSet[NodeId]) -> None:
        """Fault injection: cut this node off from `blocked` until `heal` (replaces an earlier cut).

        Blocked peers go through the permissioning path as if they were non-members: their
        connections are closed now, new ones as soon as they are up, their streams are reset
        unread, they are not dialled, their gossip (originated or relayed) is dropped, and our
        requests and blob fetches to them fail with `PeerUnreachable`. The allow-list itself is
        untouched, so `set_allowed_peers` (membership changes) does not undo the cut.
        """
        self._check_open()
        if self.node_id in blocked:
            raise ValueError("a node cannot partition itself away")
        self._blocked = frozenset(blocked)
        log.warning("fault injection: partitioned from %s", sorted(p.short for p in self._blocked))
        self._unbar_allowed()
        for node in self._blocked:
            self._bar_from_gossip(libp2p_id(node))
        self._recheck_connections()

    def heal(self) -> None:
        """Undo `partition`: the maintainer redials the formerly blocked peers at once."""
        self._check_open()
        healed, self._blocked = self._blocked, frozenset()
        for peer in healed:
            self._backoff.pop(peer, None)
        self._unbar_allowed()
        if healed:
            log.warning("fault injection: healed, redialling %s", sorted(p.short for p in healed))

    async def _guard(self) -> None:
        """Close every connection of a peer outside the allow-list (or blocked), as soon as we learn of it."""
        async with trio.open_nursery() as nursery:
            async for peer_id in self._guard_receive:
                node = node_id_of(peer_id)
                if not self._is_allowed(node) and not self.relay.is_relay(node):
                    self._bar_from_gossip(peer_id)
                    nursery.start_soon(self._disconnect, peer_id)

    async def _disconnect(self, peer_id: ID) -> None:
        log.info("closing connection of non-member or blocked peer %s", peer_id.to_base58())
        with trio.move_on_after(DIAL_TIMEOUT):
            try:
                await self._host.disconnect(peer_id)
            except Exception as exc:  # closing a half-dead connection can fail in many ways
                log.debug("closing %s: %r", peer_id, exc)

    # ------------------------------------------------------------------ discovery and reconnection

    async def _maintain(self) -> None:
        """Dial known, allowed, disconnected peers (backoff per peer); exchange peer lists."""
        next_exchange = trio.current_time()
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                connected = set(self.peers())
                for peer in connected:
                    self._backoff.pop(peer, None)
                for peer in sorted(self._address_book, key=lambda n: n.public_key):
                    if peer in connected or peer in self._dialing or not self._is_allowed(peer):
                        continue
                    backoff = self._backoff.setdefault(peer, _Backoff())
                    if now >= backoff.next_attempt:
                        backoff.next_attempt = now + backoff.delay
                        backoff.delay = min(BACKOFF_MAX, backoff.delay * 2)
                        self._dialing.add(peer)
                        nursery.start_soon(self._dial, peer)
                if now >= next_exchange:
                    next_exchange = now + EXCHANGE_INTERVAL
                    for peer in connected:
                        nursery.start_soon(self._exchange_quietly, peer)
                await trio.sleep(MAINTAIN_INTERVAL)

    async def _connect(self, peer: NodeId) -> None:
        """Dial `peer` at the addresses we know (no-op when connected): direct ones first, then
        through the relays of its circuit addresses; raises what libp2p raises."""
        peer_id = libp2p_id(peer)
        known = self._address_book.get(peer, ())
        circuits = [a for a in known if a.endswith(CIRCUIT)]
        direct = [a for a in known if not a.endswith(CIRCUIT)]
        if direct or not circuits:
            resolved = [await resolve_dns(a) for a in direct]
            addrs = [multiaddr.Multiaddr(a) for group in resolved for a in group]
            forget_failed_dials(self._host, peer_id)
            if not circuits:
                await self._host.connect(PeerInfo(peer_id, addrs))
                return
            with trio.move_on_after(DIAL_TIMEOUT):
                try:
                    await self._host.connect(PeerInfo(peer_id, addrs))
                    return
                except Exception as exc:  # behind NAT, as likely as not: try its relays
                    log.debug("direct dial of %s failed (%r); trying its relays", peer.short, exc)
        await self.relay.dial(peer, circuits)

    async def _open_stream(self, peer: NodeId, protocol: TProtocol) -> INetStream:
        if not self._is_allowed(peer):
            raise PeerUnreachable(f"{peer.short} is not an allowed peer")
        if peer not in self.peers() and peer in self._address_book:
            await self._connect(peer)  # e.g. right after add_peer_addresses, before the maintainer ran
        return await self._host.new_stream(libp2p_id(peer), [protocol])

    async def _dial(self, peer: NodeId) -> None:
        try:
            with trio.fail_after(DIAL_TIMEOUT + RELAYED_DIAL_TIMEOUT):
                await self._connect(peer)
        except Exception as exc:  # unreachable for now: the backoff decides when to retry
            log.debug("dial %s failed: %r", peer.short, exc)
            return
        finally:
            self._dialing.discard(peer)
        self._backoff.pop(peer, None)
        await self._exchange_quietly(peer)

    async def _exchange_quietly(self, peer: NodeId) -> None:
        try:
            await self.exchange_peers(peer)
        except TransportError as exc:
            log.debug("peer exchange with %s failed: %s", peer.short, exc)

    def _my_entry(self) -> wire.PeerEntry:
        return wire.PeerEntry(self.node_id, self._transport_addrs())

    async def exchange_peers(self, peer: NodeId) -> None:
        """Tell `peer` where we listen, learn whom it is connected to, and dial them."""
        with self._peer_operation(peer, "peer exchange", EXCHANGE_TIMEOUT):
            stream = await self._open_stream(peer, PEERS_PROTOCOL)
            try:
                await stream.write(wire.frame(wire.encode(wire.PeerList((self._my_entry(),)))))
                answer = wire.decode_peer_list(await read_frame(stream, wire.PEER_LIST_LIMIT))
            finally:
                await close_quietly(stream)
        for entry in answer.peers:
            self._learn(entry.node, entry.addrs, hearsay=True)

    async def _serve_peers(self, stream: INetStream) -> None:
        peer = await self._accept(stream)
        if peer is None:
            return
        try:
            with trio.fail_after(EXCHANGE_TIMEOUT):
                hello = wire.decode_peer_list(await read_frame(stream, wire.PEER_LIST_LIMIT))
                for entry in hello.peers:
                    if entry.node == peer:  # a peer speaks only for its own addresses here
                        self._learn(entry.node, entry.addrs, hearsay=True)
                known = [self._my_entry()]
                for other in sorted(self.peers(), key=lambda n: n.public_key):
                    addrs = self._address_book.get(other)
                    if other != peer and addrs and len(known) < wire.MAX_PEER_ENTRIES:
                        known.append(wire.PeerEntry(other, addrs))
                await stream.write(wire.frame(wire.encode(wire.PeerList(tuple(known)))))
        except Exception as exc:  # a misbehaving or vanished peer loses its stream, nothing else
            log.debug("serving peer list to %s: %r", peer.short, exc)
        finally:
            await close_quietly(stream)

    async def _accept(self, stream: INetStream) -> NodeId | None:
        """The remote NodeId of an inbound stream, or None (stream reset) if not allowed."""
        peer = node_id_of(stream.muxed_conn.peer_id)
        if peer is None or not self._is_allowed(peer) or self._closed:
            with contextlib.suppress(Exception):
                await stream.reset()
            return None
        return peer

    # ------------------------------------------------------------------ gossip

    async def publish(self, topic: str, data: bytes) -> None:
        self._check_open()
        if len(data) > self.max_message_size:
            raise ValueError(f"gossip message of {len(data)} bytes exceeds {self.max_message_size}")
        try:
            await self._pubsub.publish(topic, data)
        except Exception as exc:
            raise TransportError(f"publish on {topic!r} failed: {type(exc).__name__}: {exc}") from exc

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[Inbound]:
        nursery = self._running
        send, receive = trio.open_memory_channel[Inbound](SUBSCRIPTION_BUFFER)
        if topic not in self._subscribers:
            self._subscribers[topic] = []
            self._pubsub.set_topic_validator(topic, self._validate_gossip, False)
            try:
                subscription = await self._pubsub.subscribe(topic)
            except Exception as exc:
                del self._subscribers[topic]
                raise TransportError(f"subscribe to {topic!r} failed: {exc}") from exc
            nursery.start_soon(self._pump, topic, subscription)
        self._subscribers[topic].append(send)
        return receive

    def _validate_gossip(self, forwarder: ID, message: Any) -> bool:
        """Reject (and do not relay) gossip originated or forwarded by a non-member or blocked peer."""
        if self._allowed is None and not self._blocked:
            return True
        origin = node_id_of(ID(message.from_id))
        return self._is_allowed(origin) and (
            forwarder == self._host.get_id() or self._is_allowed(node_id_of(forwarder))
        )

    async def _pump(self, topic: str, subscription: Any) -> None:
        async for message in subscription:
            sender = node_id_of(ID(message.from_id))
            # Checked again here: the allow-list may have shrunk since validation.
            if sender is None or sender == self.node_id or not self._is_allowed(sender):
                continue
            inbound = Inbound(sender, topic, bytes(message.data))
            channels = self._subscribers.get(topic, [])
            for channel in list(channels):
                try:
                    channel.send_nowait(inbound)
                except trio.WouldBlock:
                    log.warning(
                        "subscriber of %r is %d messages behind: dropped one", topic, SUBSCRIPTION_BUFFER
                    )
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    channels.remove(channel)

    # ------------------------------------------------------------------ request/response

    def set_handler(self, protocol: str, handler: RequestHandler) -> None:
        wire.RpcRequest(protocol, b"")  # validates the name
        if protocol in self._handlers:
            raise ValueError(f"a handler for {protocol!r} is already set")
        self._handlers[protocol] = handler

    async def request(
        self, peer: NodeId, protocol: str, data: bytes, *, timeout: float = DEFAULT_REQUEST_TIMEOUT
    ) -> bytes:
        self._check_open()
        if len(data) > self.max_message_size:
            raise ValueError(f"request of {len(data)} bytes exceeds {self.max_message_size}")
        if not self._is_allowed(peer):
            raise PeerUnreachable(f"{peer.short} is not an allowed peer")
        payload = wire.frame(wire.encode(wire.RpcRequest(protocol, data)))
        with self._peer_operation(peer, f"request {protocol!r}", timeout):
            stream = await self._open_stream(peer, RPC_PROTOCOL)
            try:
                await stream.write(payload)
                answer = wire.decode_rpc_response(
                    await read_frame(stream, self.max_message_size + wire.RPC_OVERHEAD)
                )
            finally:
                await close_quietly(stream)
        if not answer.ok:
            raise RequestRefused(f"{peer.short} refused {protocol!r}: {answer.error}")
        return answer.data

    async def _serve_rpc(self, stream: INetStream) -> None:
        peer = await self._accept(stream)
        if peer is None:
            return
        try:
            with trio.fail_after(SERVE_TIMEOUT):
                request = wire.decode_rpc_request(
                    await read_frame(stream, self.max_message_size + wire.RPC_OVERHEAD)
                )
                response = await answer_request(self._handlers, self.max_message_size, peer, request)
                await stream.write(wire.frame(wire.encode(response)))
        except Exception as exc:  # a misbehaving or vanished peer loses its stream, nothing else
            log.info("request from %s dropped: %s: %s", peer.short, type(exc).__name__, exc)
        finally:
            await close_quietly(stream)

    # ------------------------------------------------------------------ blobs

    def put_blob(self, data: bytes) -> bytes:
        self._check_open()
        if len(data) > self.max_blob_size:
            raise ValueError(f"blob of {len(data)} bytes exceeds max_blob_size {self.max_blob_size}")
        return self._blobs.put(data)

    async def get_blob(
        self, digest: bytes, *, peer: NodeId | None = None, timeout: float = DEFAULT_BLOB_TIMEOUT
    ) -> bytes:
        self._check_open()
        check_hash(digest)
        local = self._blobs.get(digest)
        # A blob the store holds was hashed on the way in: only a store that hands out other
        # bytes than it was given (a lying test peer) costs a second hash here.
        if local is not None and (
            self._blobs.digest_of(local) == digest or hashlib.sha256(local).digest() == digest
        ):
            return local
        if peer is not None:
            if not self._is_allowed(peer):
                raise PeerUnreachable(f"{peer.short} is not an allowed peer")
            data = await self._fetch_blob(peer, digest, timeout)
        else:
            data = await fetch_from_any(self._fetch_blob, sorted(self.peers(), key=_order), digest, timeout)
        self._blobs.put(data, digest=digest)  # `_fetch_blob` verified the hash while receiving
        return data

    async def _fetch_blob(self, peer: NodeId, digest: bytes, timeout: float) -> bytes:
        with self._peer_operation(peer, f"blob {digest.hex()[:12]}", timeout):
            stream = await self._open_stream(peer, BLOB_PROTOCOL)
            try:
                return await receive_blob(stream, peer, digest, self.max_blob_size)
            finally:
                await close_quietly(stream)

    async def _serve_blob(self, stream: INetStream) -> None:
        peer = await self._accept(stream)
        if peer is None:
            return
        try:
            with trio.fail_after(SERVE_TIMEOUT):
                digest = await read_frame(stream, wire.BLOB_HEADER_LIMIT)
                check_hash(digest)
            await send_blob(stream, self._blobs.get(digest))
        except Exception as exc:  # a misbehaving or vanished peer loses its stream, nothing else
            log.info("blob request from %s dropped: %s: %s", peer.short, type(exc).__name__, exc)
        finally:
            await close_quietly(stream)


def _order(node: NodeId) -> bytes:
    return node.public_key


@asynccontextmanager
async def open_libp2p_transport(
    identity: NodeIdentity,
    *,
    listen_host: str = "127.0.0.1",
    listen_port: int = 0,
    advertise: Sequence[str] = (),
    bootstrap: Sequence[str] = (),
    allowed_peers: AbstractSet[NodeId] | None = None,
    max_blob_size: int = DEFAULT_MAX_BLOB_SIZE,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    blob_store: BlobStore | None = None,
    relays: Sequence[str] = (),
    relay_service: bool = False,
) -> AsyncIterator[Libp2pTransport]:
    """A running `Libp2pTransport`, listening and dialling its bootstrap peers; closed on exit."""
    transport = Libp2pTransport(
        identity,
        listen_host=listen_host,
        listen_port=listen_port,
        advertise=advertise,
        bootstrap=bootstrap,
        allowed_peers=allowed_peers,
        max_blob_size=max_blob_size,
        max_message_size=max_message_size,
        blob_store=blob_store,
        relays=relays,
        relay_service=relay_service,
    )
    with unwrap_single_exception():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.run)
            await transport.started.wait()
            if transport._startup_error is None:
                try:
                    yield transport
                finally:
                    await transport.aclose()
    if transport._startup_error is not None:
        error = transport._startup_error
        raise TransportError(f"cannot start libp2p on {listen_host}:{listen_port}: {error}") from error
