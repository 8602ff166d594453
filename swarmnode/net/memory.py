"""`MemoryNetwork` / `MemoryTransport`: the `Transport` in one process, deterministic.

There is one in-memory network in the code base: `consensus.simnet.SimNetwork`
(a standard-library-only module the consensus simulator uses too) decides, from one
seed, which message is dropped, duplicated or delayed by
how much (hence reordered), and enforces partitions and crashes. This module
only puts trio around it: a driver task sleeps on the trio clock until
`next_time()`, then hands every `pop_due(now)` delivery to its transport. On
trio's `MockClock(autojump_threshold=0)` the whole network runs in virtual
time, so a test of a 30 s timeout takes milliseconds.

Same behaviour as `Libp2pTransport` where the interface defines it (the
shared `check_transport` suite runs against both). Simulation choices:
gossip goes directly to every other node (no mesh), requests and blob
fetches are one message each way, a lost message shows up as a timeout
(`PeerUnreachable`), and a duplicated request runs its handler twice (the
layer above must be idempotent anyway: libp2p retries do the same).

    async with open_memory_network(seed=7, faults=LinkFaults(drop=0.05)) as net:
        a, b = net.transport(id_a), net.transport(id_b)
        net.partition([id_a], [id_b]); ...; net.heal()
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, final

import trio

from consensus.simnet import Delivery, LinkFaults, SimNetwork, SimStats
from crypto.errors import BlobHashMismatch
from crypto.identity import NodeId

from . import wire
from ._shared import answer_request, fetch_from_any, log, unwrap_single_exception
from .base import (
    DEFAULT_BLOB_TIMEOUT,
    DEFAULT_MAX_BLOB_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_REQUEST_TIMEOUT,
    SUBSCRIPTION_BUFFER,
    BlobNotFound,
    BlobStore,
    Inbound,
    PeerUnreachable,
    RequestHandler,
    RequestRefused,
    Transport,
    TransportClosed,
    TransportError,
    blob_hash,
    check_hash,
)

NO_FAULTS: Final = LinkFaults()  # perfect links: only the default 1-10 ms delays

__all__ = ["NO_FAULTS", "LinkFaults", "MemoryNetwork", "MemoryTransport", "SimStats", "open_memory_network"]


@final
@dataclass(frozen=True, slots=True)
class _Gossip:
    topic: str
    data: bytes


@final
@dataclass(frozen=True, slots=True)
class _Request:
    call: int
    request: wire.RpcRequest


@final
@dataclass(frozen=True, slots=True)
class _Response:
    call: int
    response: wire.RpcResponse


@final
@dataclass(frozen=True, slots=True)
class _BlobRequest:
    call: int
    digest: bytes


@final
@dataclass(frozen=True, slots=True)
class _BlobResponse:
    call: int
    data: bytes | None  # None: not found


_Packet = _Gossip | _Request | _Response | _BlobRequest | _BlobResponse


@final
class _Call:
    """A request waiting for its answer (the first copy wins; duplicates are ignored)."""

    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: _Response | _BlobResponse | None = None


@final
class MemoryNetwork:
    """The simulated network all `MemoryTransport`s of a test share. See the module docstring."""

    def __init__(self, seed: int, faults: LinkFaults = NO_FAULTS) -> None:
        self.sim: Final = SimNetwork[_Packet](seed, faults)
        self._transports: dict[str, MemoryTransport] = {}
        self._groups: tuple[frozenset[str], ...] | None = None
        self._wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._started = trio.Event()

    # ----------------------------------------------------------------- driver

    async def run(self) -> None:
        """Deliver messages on the trio clock until cancelled (`open_memory_network` runs this)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._started.set()
            while True:
                due = self.sim.next_time()
                with trio.move_on_at(math.inf if due is None else due):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                for delivery in self.sim.pop_due(trio.current_time()):
                    self._dispatch(delivery)

    def _dispatch(self, delivery: Delivery[_Packet]) -> None:
        target = self._transports.get(delivery.dst)
        source = self._transports.get(delivery.src)
        if target is not None and source is not None:
            target._receive(source.node_id, delivery.payload)

    def _send(self, src: NodeId, dst: NodeId, packet: _Packet) -> None:
        self.sim.send(trio.current_time(), src.peer_id, dst.peer_id, packet)
        self._wakeup.set()

    def _spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        if self._nursery is None:
            raise TransportError("the memory network is not running (use open_memory_network)")
        self._nursery.start_soon(task)

    # ----------------------------------------------------------------- membership and faults

    def transport(
        self,
        node: NodeId,
        *,
        allowed_peers: AbstractSet[NodeId] | None = None,
        max_blob_size: int = DEFAULT_MAX_BLOB_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        blob_store: BlobStore | None = None,
    ) -> MemoryTransport:
        """Attach `node`. A node whose previous transport was closed may attach again (a restart)."""
        address = node.peer_id
        old = self._transports.get(address)
        if old is not None and not old.closed:
            raise ValueError(f"{node.short} is already on the network")
        if old is None:
            self.sim.add(address)
        transport = MemoryTransport(self, node, allowed_peers, max_blob_size, max_message_size, blob_store)
        self._transports[address] = transport
        return transport

    def set_faults(self, faults: LinkFaults) -> None:
        self.sim.set_faults(faults)

    def crash(self, node: NodeId) -> None:
        """`node` stops sending and receiving; what is in flight to it is lost."""
        self.sim.crash(node.peer_id)

    def restart(self, node: NodeId) -> None:
        self.sim.restart(node.peer_id)

    def partition(self, *groups: Iterable[NodeId]) -> None:
        """Split the network; nodes in no group form one more group. Undo with `heal`."""
        addresses = tuple(frozenset(n.peer_id for n in group) for group in groups)
        self.sim.partition(*addresses)
        self._groups = addresses

    def heal(self) -> None:
        self.sim.heal()
        self._groups = None

    @property
    def stats(self) -> SimStats:
        return self.sim.stats

    def _reachable(self, a: str, b: str) -> bool:
        if not (self.sim.is_up(a) and self.sim.is_up(b)):
            return False
        if self._groups is None:
            return True
        return _group_of(self._groups, a) == _group_of(self._groups, b)

    def _live(self) -> list[MemoryTransport]:
        return [t for _, t in sorted(self._transports.items()) if not t.closed]


def _group_of(groups: tuple[frozenset[str], ...], address: str) -> int:
    for index, group in enumerate(groups):
        if address in group:
            return index
    return -1


@final
class MemoryTransport(Transport):
    """One node on a `MemoryNetwork`. Create with `MemoryNetwork.transport`."""

    def __init__(
        self,
        network: MemoryNetwork,
        node: NodeId,
        allowed_peers: AbstractSet[NodeId] | None,
        max_blob_size: int,
        max_message_size: int,
        blob_store: BlobStore | None,
    ) -> None:
        self.node_id = node
        self.max_blob_size = max_blob_size
        self.max_message_size = max_message_size
        self._network = network
        self._allowed: frozenset[NodeId] | None = (
            None if allowed_peers is None else frozenset(allowed_peers) | {node}
        )
        self._blobs = blob_store if blob_store is not None else BlobStore()
        self._handlers: dict[str, RequestHandler] = {}
        self._subscribers: dict[str, list[trio.MemorySendChannel[Inbound]]] = {}
        self._calls: dict[int, _Call] = {}
        self._call_ids = itertools.count(1)
        self._scopes: set[trio.CancelScope] = set()
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True
        for channels in self._subscribers.values():
            for channel in channels:
                channel.close()
        self._subscribers.clear()
        for scope in self._scopes:
            scope.cancel()
        for call in self._calls.values():
            call.done.set()  # waiting requests see no answer and raise
        await trio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self.closed:
            raise TransportClosed(f"transport of {self.node_id.short} is closed")

    def _is_allowed(self, peer: NodeId) -> bool:
        return self._allowed is None or peer in self._allowed

    def set_allowed_peers(self, peers: AbstractSet[NodeId]) -> None:
        self._allowed = frozenset(peers) | {self.node_id}

    def add_peer_addresses(self, peer: NodeId, addrs: Sequence[str]) -> None:
        """Checks `addrs` as `Libp2pTransport` does in outline; nothing to remember, since a
        `MemoryNetwork` reaches every node by its id."""
        for address in addrs:
            if not isinstance(address, str) or not address.startswith("/") or "//" in address:
                raise ValueError(f"{address!r} is not a multiaddr")
            parts = address.split("/")
            if parts[-2] == "p2p" and parts[-1] != peer.peer_id:  # a circuit's relay id comes earlier
                raise ValueError(f"{address!r} names another peer than {peer.short}")

    def peers(self) -> frozenset[NodeId]:
        me = self.node_id.peer_id
        return frozenset(
            t.node_id
            for t in self._network._live()
            if t is not self
            and self._is_allowed(t.node_id)
            and t._is_allowed(self.node_id)
            and self._network._reachable(me, t.node_id.peer_id)
        )

    # ----------------------------------------------------------------- gossip

    async def publish(self, topic: str, data: bytes) -> None:
        self._check_open()
        if len(data) > self.max_message_size:
            raise ValueError(f"gossip message of {len(data)} bytes exceeds {self.max_message_size}")
        for other in self._network._live():
            if other is not self and self._is_allowed(other.node_id):
                self._network._send(self.node_id, other.node_id, _Gossip(topic, bytes(data)))
        await trio.lowlevel.checkpoint()

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[Inbound]:
        self._check_open()
        send, receive = trio.open_memory_channel[Inbound](SUBSCRIPTION_BUFFER)
        self._subscribers.setdefault(topic, []).append(send)
        await trio.lowlevel.checkpoint()
        return receive

    # ----------------------------------------------------------------- request/response

    def set_handler(self, protocol: str, handler: RequestHandler) -> None:
        wire.RpcRequest(protocol, b"")  # validates the name
        if protocol in self._handlers:
            raise ValueError(f"a handler for {protocol!r} is already set")
        self._handlers[protocol] = handler

    async def _roundtrip(
        self, peer: NodeId, packet: _Request | _BlobRequest, timeout: float
    ) -> _Response | _BlobResponse:
        call = _Call()
        self._calls[packet.call] = call
        try:
            self._network._send(self.node_id, peer, packet)
            with trio.move_on_after(timeout):
                await call.done.wait()
        finally:
            del self._calls[packet.call]
        self._check_open()
        if call.answer is None:
            raise PeerUnreachable(f"{peer.short} did not answer within {timeout:g} s")
        return call.answer

    async def request(
        self, peer: NodeId, protocol: str, data: bytes, *, timeout: float = DEFAULT_REQUEST_TIMEOUT
    ) -> bytes:
        self._check_open()
        if len(data) > self.max_message_size:
            raise ValueError(f"request of {len(data)} bytes exceeds {self.max_message_size}")
        if not self._is_allowed(peer):
            raise PeerUnreachable(f"{peer.short} is not an allowed peer")
        packet = _Request(next(self._call_ids), wire.RpcRequest(protocol, bytes(data)))
        answer = await self._roundtrip(peer, packet, timeout)
        assert isinstance(answer, _Response)
        if not answer.response.ok:
            raise RequestRefused(f"{peer.short} refused {protocol!r}: {answer.response.error}")
        return answer.response.data

    # ----------------------------------------------------------------- blobs

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
        if local is not None and blob_hash(local) == digest:
            return local
        if peer is not None:
            if not self._is_allowed(peer):
                raise PeerUnreachable(f"{peer.short} is not an allowed peer")
            data = await self._fetch_blob(peer, digest, timeout)
        else:
            candidates = sorted(self.peers(), key=lambda n: n.public_key)
            data = await fetch_from_any(self._fetch_blob, candidates, digest, timeout)
        self._blobs.put(data)
        return data

    async def _fetch_blob(self, peer: NodeId, digest: bytes, timeout: float) -> bytes:
        answer = await self._roundtrip(peer, _BlobRequest(next(self._call_ids), digest), timeout)
        assert isinstance(answer, _BlobResponse)
        if answer.data is None:
            raise BlobNotFound(f"{peer.short} does not have blob {digest.hex()}")
        if len(answer.data) > self.max_blob_size:
            raise TransportError(f"{peer.short} offers blob {digest.hex()[:12]} above max_blob_size")
        actual = blob_hash(answer.data)
        if actual != digest:
            raise BlobHashMismatch(
                f"peer {peer.peer_id} served {len(answer.data)} bytes for blob {digest.hex()} "
                f"whose SHA-256 is {actual.hex()}"
            )
        return answer.data

    # ----------------------------------------------------------------- inbound

    def _receive(self, sender: NodeId, packet: _Packet) -> None:
        """One delivery from the network. Anything from a non-allowed peer is dropped here."""
        if self.closed or not self._is_allowed(sender):
            return
        match packet:
            case _Gossip(topic, data):
                channels = self._subscribers.get(topic, [])
                for channel in list(channels):
                    try:
                        channel.send_nowait(Inbound(sender, topic, data))
                    except trio.WouldBlock:
                        log.warning(
                            "subscriber of %r is %d messages behind: dropped one", topic, SUBSCRIPTION_BUFFER
                        )
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        channels.remove(channel)
            case _Request(call, request):
                self._network._spawn(lambda: self._serve(sender, call, request))
            case _BlobRequest(call, digest):
                self._network._send(self.node_id, sender, _BlobResponse(call, self._blobs.get(digest)))
            case _Response(call) | _BlobResponse(call):
                waiting = self._calls.get(call)
                if waiting is not None and waiting.answer is None:
                    waiting.answer = packet
                    waiting.done.set()

    async def _serve(self, sender: NodeId, call: int, request: wire.RpcRequest) -> None:
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                response = await answer_request(self._handlers, self.max_message_size, sender, request)
                if not self.closed:
                    self._network._send(self.node_id, sender, _Response(call, response))
            finally:
                self._scopes.discard(scope)


@asynccontextmanager
async def open_memory_network(seed: int, faults: LinkFaults = NO_FAULTS) -> AsyncIterator[MemoryNetwork]:
    """A running `MemoryNetwork`; every transport on it is closed on exit."""
    network = MemoryNetwork(seed, faults)
    with unwrap_single_exception():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(network.run)
            await network._started.wait()
            try:
                yield network
            finally:
                for transport in network._live():
                    await transport.aclose()
                nursery.cancel_scope.cancel()
