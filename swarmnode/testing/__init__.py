"""The test kit swarmnode ships for its own tests and for users' tests (trio.testing style).

- `check_transport(make_pair)`: one conformance suite any `Transport` must pass
  (gossip, request/response, blobs, permissioning, peer addresses, close). It runs against
  `MemoryTransport` and `Libp2pTransport` alike.
- `memory_pair`, `libp2p_pair`: ready-made pair factories for it.
- `make_identity(n)`: deterministic node keys; `LyingBlobStore`: a blob store
  that serves wrong bytes, to check that fetchers detect it.
- `wait_until`: poll a condition on the trio clock (works in virtual time).

libp2p is imported only inside `libp2p_pair`, so this module imports without it.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Final

import trio

from consensus.simnet import LinkFaults
from crypto.errors import BlobHashMismatch
from crypto.identity import NodeId, NodeIdentity

from ..net.base import (
    BlobNotFound,
    BlobStore,
    Inbound,
    PeerUnreachable,
    RequestRefused,
    Transport,
    TransportClosed,
    TransportError,
    blob_hash,
)
from ..net.memory import NO_FAULTS, MemoryNetwork, MemoryTransport, open_memory_network

__all__ = [
    "LyingBlobStore",
    "MemoryNetwork",
    "MemoryTransport",
    "TransportPairFactory",
    "check_transport",
    "libp2p_pair",
    "make_identity",
    "memory_pair",
    "pseudo_random_bytes",
    "wait_connected",
    "wait_until",
]

TransportPairFactory = Callable[[], AbstractAsyncContextManager[tuple[Transport, Transport]]]

CHECK_TIMEOUT: Final = 60.0  # per check, on the trio clock (virtual under MockClock)
POLL: Final = 0.05
SMALL_BLOB_LIMIT: Final = 8 << 20  # the pair factories below cap blobs here


def make_identity(index: int, namespace: str = "swarmnode-test") -> NodeIdentity:
    """The same key for the same (index, namespace), in every process."""
    return NodeIdentity.from_seed(hashlib.sha256(f"{namespace}/{index}".encode()).digest())


def pseudo_random_bytes(size: int, seed: int) -> bytes:
    """Deterministic incompressible bytes (SHA-256 in counter mode), cheap for tens of MB."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed.to_bytes(8, "big") + counter.to_bytes(8, "big")).digest() * 64
        counter += 1
    return bytes(out[:size])


class LyingBlobStore(BlobStore):
    """Serves every blob with its first byte flipped: a peer whose bytes do not match the hash."""

    def get(self, digest: bytes) -> bytes | None:
        data = super().get(digest)
        if not data:
            return data
        return bytes([data[0] ^ 0xFF]) + data[1:]


async def wait_until(
    condition: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll `condition` every 50 ms on the trio clock; `TooSlowError` naming `what` after `timeout`."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(POLL)
        return
    raise trio.TooSlowError(f"{what} did not hold within {timeout:g} s")


async def wait_connected(a: Transport, b: Transport, timeout: float = 30.0) -> None:
    await wait_until(
        lambda: b.node_id in a.peers() and a.node_id in b.peers(),
        timeout=timeout,
        what=f"{a.node_id.short} <-> {b.node_id.short} connected",
    )


async def _publish_until_received(
    sender: Transport, topic: str, data: bytes, channel: trio.MemoryReceiveChannel[Inbound]
) -> Inbound:
    """Publish every 250 ms until `channel` receives `data` (a fresh mesh needs a heartbeat)."""
    while True:
        await sender.publish(topic, data)
        with trio.move_on_after(0.25):
            while True:
                message = await channel.receive()
                if message.data == data:
                    return message


def _drain(channel: trio.MemoryReceiveChannel[Inbound]) -> list[Inbound]:
    out: list[Inbound] = []
    while True:
        try:
            out.append(channel.receive_nowait())
        except trio.WouldBlock:
            return out


async def _check_gossip(a: Transport, b: Transport) -> None:
    b_first = await b.subscribe("conformance/t1")
    b_second = await b.subscribe("conformance/t1")
    b_other = await b.subscribe("conformance/t2")
    a_own = await a.subscribe("conformance/t1")
    await wait_connected(a, b)

    got = await _publish_until_received(a, "conformance/t1", b"from a on t1", b_first)
    assert got == Inbound(a.node_id, "conformance/t1", b"from a on t1"), got
    with trio.fail_after(10):  # every subscriber of a topic gets every message
        while (await b_second.receive()).data != b"from a on t1":
            pass
    assert all(m.sender == b.node_id for m in _drain(a_own)), "a publisher must not receive its own messages"

    got = await _publish_until_received(a, "conformance/t2", b"from a on t2", b_other)
    assert got.topic == "conformance/t2", got
    assert got.sender == a.node_id, got
    leaked = [m for m in _drain(b_other) if m.topic != "conformance/t2"]
    assert not leaked, f"messages of other topics on a t2 subscription: {leaked}"

    got = await _publish_until_received(b, "conformance/t1", b"from b on t1", a_own)
    assert got == Inbound(b.node_id, "conformance/t1", b"from b on t1"), got

    try:
        await a.publish("conformance/t1", bytes(a.max_message_size + 1))
    except ValueError:
        pass
    else:
        raise AssertionError("a gossip message above max_message_size must be refused with ValueError")


async def _check_request(a: Transport, b: Transport) -> None:
    async def echo(sender: NodeId, data: bytes) -> bytes:
        return sender.public_key + data[::-1]

    async def broken(sender: NodeId, data: bytes) -> bytes:
        raise KeyError("no such round")

    b.set_handler("conformance/echo", echo)
    b.set_handler("conformance/broken", broken)
    try:
        b.set_handler("conformance/echo", echo)
    except ValueError:
        pass
    else:
        raise AssertionError("a second handler for one protocol must be a ValueError")
    await wait_connected(a, b)

    assert await a.request(b.node_id, "conformance/echo", b"abc") == a.node_id.public_key + b"cba"
    assert await a.request(b.node_id, "conformance/echo", b"") == a.node_id.public_key
    for protocol in ("conformance/broken", "conformance/unknown"):
        try:
            await a.request(b.node_id, protocol, b"?", timeout=10)
        except RequestRefused:
            pass
        else:
            raise AssertionError(f"request to {protocol} must raise RequestRefused")
    # the transport keeps serving after a handler failed
    big = bytes(range(256)) * 1024
    assert await a.request(b.node_id, "conformance/echo", big) == a.node_id.public_key + big[::-1]
    try:
        await b.request(a.node_id, "conformance/echo", b"abc", timeout=10)
    except RequestRefused:  # a has no handler: refused, not a timeout
        pass
    else:
        raise AssertionError("a protocol without handler must be refused")


async def _check_blobs(a: Transport, b: Transport) -> None:
    first = pseudo_random_bytes(3 << 20, seed=1)  # several 1 MiB chunks
    second = pseudo_random_bytes(100_001, seed=2)
    digest = a.put_blob(first)
    assert digest == hashlib.sha256(first).digest()
    assert await a.get_blob(digest) == first  # local
    await wait_connected(a, b)

    assert await b.get_blob(digest, peer=a.node_id) == first
    other = a.put_blob(second)
    assert await b.get_blob(other) == second  # from any peer that has it
    assert await b.get_blob(other, timeout=0.001) == second  # now b holds it: no network needed
    assert await b.get_blob(a.put_blob(b""), peer=a.node_id) == b""

    missing = blob_hash(b"nobody has this")
    for peer in (a.node_id, None):
        try:
            await b.get_blob(missing, peer=peer, timeout=10)
        except BlobNotFound:
            pass
        else:
            raise AssertionError("a blob nobody has must raise BlobNotFound")
    try:
        await b.get_blob(b"short", peer=a.node_id)
    except ValueError:
        pass
    else:
        raise AssertionError("a malformed hash must be a ValueError")
    if a.max_blob_size <= SMALL_BLOB_LIMIT:
        try:
            a.put_blob(bytes(a.max_blob_size + 1))
        except ValueError:
            pass
        else:
            raise AssertionError("a blob above max_blob_size must be refused")


async def _check_permissioning(a: Transport, b: Transport) -> None:
    async def echo(sender: NodeId, data: bytes) -> bytes:
        return data

    b.set_handler("conformance/echo", echo)
    b_sub = await b.subscribe("conformance/members")
    digest = b.put_blob(b"members only")
    await wait_connected(a, b)
    await _publish_until_received(a, "conformance/members", b"before", b_sub)

    b.set_allowed_peers({b.node_id})  # a is no member any more
    await wait_until(lambda: a.node_id not in b.peers(), timeout=10, what="b drops a")
    _drain(b_sub)
    for attempt in range(8):
        with suppress(TransportError):  # refusing to send is conforming too
            await a.publish("conformance/members", b"intruder %d" % attempt)
        await trio.sleep(0.25)
    for call in (
        a.request(b.node_id, "conformance/echo", b"?", timeout=2),
        a.get_blob(digest, peer=b.node_id, timeout=2),
    ):
        try:
            await call
        except (PeerUnreachable, RequestRefused, BlobNotFound):
            pass
        else:
            raise AssertionError("a non-member got an answer")
    assert not _drain(b_sub), "a non-member's gossip reached the layer above"

    b.set_allowed_peers({a.node_id, b.node_id})  # a is a member again: reconnects
    with trio.fail_after(30):
        while True:
            try:
                assert await a.request(b.node_id, "conformance/echo", b"back", timeout=2) == b"back"
                break
            except PeerUnreachable:
                await trio.sleep(0.25)
    await _publish_until_received(a, "conformance/members", b"after", b_sub)


async def _check_close(a: Transport, b: Transport) -> None:
    a_sub = await a.subscribe("conformance/close")
    await wait_connected(a, b)
    await a.aclose()
    await a.aclose()  # idempotent
    try:
        await a.publish("conformance/close", b"late")
    except TransportClosed:
        pass
    else:
        raise AssertionError("publish after aclose must raise TransportClosed")
    try:
        await a_sub.receive()
    except trio.EndOfChannel:
        pass
    else:
        raise AssertionError("subscriptions end when their transport closes")
    await wait_until(
        lambda: a.node_id not in b.peers(), timeout=30, what="peer sees a closed transport leave"
    )
    try:
        await b.request(a.node_id, "conformance/echo", b"?", timeout=2)
    except TransportError:
        pass
    else:
        raise AssertionError("a closed transport must not answer")


async def _check_peer_addresses(a: Transport, b: Transport) -> None:
    await wait_connected(a, b)
    a.add_peer_addresses(b.node_id, ())  # nothing to learn: no change
    for bad in ("not a multiaddr", f"/ip4/127.0.0.1/tcp/7000/p2p/{a.node_id.peer_id}"):
        try:
            a.add_peer_addresses(b.node_id, [bad])
        except ValueError:
            pass
        else:
            raise AssertionError(f"add_peer_addresses must refuse {bad!r} for {b.node_id.short}")
    await _check_request(a, b)  # refused addresses left the peer reachable


CHECKS: Final[tuple[Callable[[Transport, Transport], Awaitable[None]], ...]] = (
    _check_gossip,
    _check_request,
    _check_blobs,
    _check_permissioning,
    _check_peer_addresses,
    _check_close,
)


async def check_transport(make_pair: TransportPairFactory) -> None:
    """Run the conformance suite; each check gets a fresh pair from `make_pair`.

    `make_pair()` is an async context manager yielding two running transports
    that can reach each other (connected, or connecting on their own), with
    ``max_blob_size <= 8 MiB`` to also check the size cap cheaply. Raises
    AssertionError naming what does not conform (or trio.TooSlowError).
    """
    for check in CHECKS:
        async with make_pair() as (a, b):
            with trio.fail_after(CHECK_TIMEOUT):
                try:
                    await check(a, b)
                except BlobHashMismatch as exc:  # pragma: no cover - only a broken transport gets here
                    raise AssertionError(f"{check.__name__}: honest peers reported a hash mismatch") from exc


@asynccontextmanager
async def memory_pair(
    seed: int = 0, faults: LinkFaults = NO_FAULTS
) -> AsyncIterator[tuple[Transport, Transport]]:
    """Two `MemoryTransport`s on a fresh `MemoryNetwork`."""
    async with open_memory_network(seed, faults) as network:
        a = network.transport(make_identity(0).node_id, max_blob_size=SMALL_BLOB_LIMIT)
        b = network.transport(make_identity(1).node_id, max_blob_size=SMALL_BLOB_LIMIT)
        yield a, b


@asynccontextmanager
async def libp2p_pair() -> AsyncIterator[tuple[Transport, Transport]]:
    """Two `Libp2pTransport`s in this process on 127.0.0.1; b bootstraps from a."""
    from ..net.libp2p import open_libp2p_transport  # libp2p is optional for the rest of the kit

    async with (
        open_libp2p_transport(make_identity(0), max_blob_size=SMALL_BLOB_LIMIT) as a,
        open_libp2p_transport(
            make_identity(1), bootstrap=a.listen_addrs, max_blob_size=SMALL_BLOB_LIMIT
        ) as b,
    ):
        yield a, b
