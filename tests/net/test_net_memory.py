"""MemoryNetwork / MemoryTransport: seeded faults, partitions, crashes, in virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from crypto.errors import BlobHashMismatch
from crypto.identity import NodeId
from swarmnode.net.base import BlobNotFound, PeerUnreachable
from swarmnode.net.memory import LinkFaults, open_memory_network
from swarmnode.testing import LyingBlobStore, make_identity

NODES = [make_identity(i, "memory-test").node_id for i in range(4)]
TOPIC = "memory-test"


async def _echo(sender: NodeId, data: bytes) -> bytes:
    return data


async def _trace(seed: int, faults: LinkFaults) -> list[tuple[float, int, bytes]]:
    """What node 1 receives from node 0's 40 messages: (virtual time since start, order, data)."""
    async with open_memory_network(seed, faults) as network:
        a, b = network.transport(NODES[0]), network.transport(NODES[1])
        received = await b.subscribe(TOPIC)
        start = trio.current_time()
        for k in range(40):
            await a.publish(TOPIC, b"m%d" % k)
            await trio.sleep(0.01)
        await trio.sleep(5)
        trace = []
        while True:
            try:
                message = received.receive_nowait()
            except trio.WouldBlock:
                return trace
            trace.append((round(trio.current_time() - start, 9), len(trace), message.data))


async def test_same_seed_same_deliveries_other_seed_others(autojump_clock: trio.testing.MockClock) -> None:
    faults = LinkFaults(drop=0.2, duplicate=0.2, min_delay=0.001, max_delay=0.5)
    first = await _trace(11, faults)
    assert first == await _trace(11, faults)
    assert first != await _trace(12, faults)
    data = [d for _, _, d in first]
    assert len(set(data)) < 40  # some were dropped ...
    assert len(data) > len(set(data))  # ... some duplicated ...
    assert data != sorted(set(data), key=lambda d: int(d[1:]))  # ... and some overtook others


async def test_perfect_links_deliver_everything_in_order(autojump_clock: trio.testing.MockClock) -> None:
    trace = await _trace(3, LinkFaults(min_delay=0.002, max_delay=0.002))
    assert [d for _, _, d in trace] == [b"m%d" % k for k in range(40)]


async def test_lost_request_times_out_in_exact_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_network(1, LinkFaults(drop=1.0)) as network:
        a, b = network.transport(NODES[0]), network.transport(NODES[1])
        b.set_handler("echo", _echo)
        start = trio.current_time()
        with pytest.raises(PeerUnreachable, match="did not answer within 30 s"):
            await a.request(b.node_id, "echo", b"x", timeout=30)
        assert trio.current_time() - start == pytest.approx(30)
        assert network.stats.dropped == network.stats.sent == 1


async def test_partition_and_heal(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_network(2) as network:
        a, b, c = (network.transport(n) for n in NODES[:3])
        subs = {t.node_id: await t.subscribe(TOPIC) for t in (a, b, c)}
        network.partition([a.node_id], [b.node_id, c.node_id])
        assert a.peers() == frozenset()
        assert b.peers() == {c.node_id}
        await a.publish(TOPIC, b"alone")
        await b.publish(TOPIC, b"together")
        await trio.sleep(1)
        assert [m.data for m in _drain(subs[c.node_id])] == [b"together"]
        assert _drain(subs[a.node_id]) == []
        assert _drain(subs[b.node_id]) == []

        network.heal()
        assert a.peers() == {b.node_id, c.node_id}
        await a.publish(TOPIC, b"healed")
        await trio.sleep(1)
        assert [m.data for m in _drain(subs[b.node_id])] == [b"healed"]
        assert [m.data for m in _drain(subs[c.node_id])] == [b"healed"]


async def test_crash_loses_in_flight_messages_and_restart_recovers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_network(3, LinkFaults(min_delay=1.0, max_delay=1.0)) as network:
        a, b = network.transport(NODES[0]), network.transport(NODES[1])
        b.set_handler("echo", _echo)
        received = await b.subscribe(TOPIC)
        await a.publish(TOPIC, b"in flight")
        await trio.sleep(0.5)
        network.crash(b.node_id)
        network.restart(b.node_id)  # back before the delivery time: the message is still lost
        await trio.sleep(2)
        assert _drain(received) == []
        network.crash(b.node_id)
        assert b.node_id not in a.peers()
        with pytest.raises(PeerUnreachable):
            await a.request(b.node_id, "echo", b"?", timeout=5)
        network.restart(b.node_id)
        assert await a.request(b.node_id, "echo", b"back", timeout=5) == b"back"


async def test_closed_transport_can_be_replaced_by_a_restarted_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_network(4) as network:
        a, b = network.transport(NODES[0]), network.transport(NODES[1])
        with pytest.raises(ValueError, match="already on the network"):
            network.transport(NODES[1])
        await b.aclose()
        assert a.peers() == frozenset()
        reborn = network.transport(NODES[1])
        reborn.set_handler("echo", _echo)
        assert await a.request(NODES[1], "echo", b"hi") == b"hi"


async def test_lying_peer_is_named_and_skipped(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_network(5) as network:
        liar = network.transport(NODES[0], blob_store=LyingBlobStore())
        honest = network.transport(NODES[1])
        fetcher = network.transport(NODES[2])
        data = b"the merged model" * 1000
        digest = liar.put_blob(data)
        with pytest.raises(BlobHashMismatch, match=liar.node_id.peer_id):
            await fetcher.get_blob(digest, peer=liar.node_id)
        with pytest.raises(BlobNotFound) as only_liars:
            await fetcher.get_blob(digest)
        assert only_liars.value.mismatched == (liar.node_id,)
        honest.put_blob(data)
        assert await fetcher.get_blob(digest) == data  # the liar comes first in order, and is skipped


async def test_non_member_is_ignored_both_ways(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_network(6) as network:
        member = network.transport(NODES[0], allowed_peers={NODES[1]})
        other_member = network.transport(NODES[1], allowed_peers={NODES[0]})
        outsider = network.transport(NODES[2])
        member.set_handler("echo", _echo)
        received = await member.subscribe(TOPIC)
        outsider_received = await outsider.subscribe(TOPIC)
        await outsider.publish(TOPIC, b"let me in")
        await other_member.publish(TOPIC, b"hello member")
        await member.publish(TOPIC, b"members only")
        await trio.sleep(1)
        assert [(m.sender, m.data) for m in _drain(received)] == [(NODES[1], b"hello member")]
        assert _drain(outsider_received) == []
        assert member.peers() == {NODES[1]}
        assert NODES[0] not in outsider.peers()
        with pytest.raises(PeerUnreachable):
            await outsider.request(NODES[0], "echo", b"?", timeout=3)
        with pytest.raises(PeerUnreachable, match="not an allowed peer"):
            await member.request(NODES[2], "echo", b"?")


async def test_duplicated_requests_are_answered_once_to_the_caller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0

    async def counting(sender: NodeId, data: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return data

    async with open_memory_network(7, LinkFaults(duplicate=1.0)) as network:
        a, b = network.transport(NODES[0]), network.transport(NODES[1])
        b.set_handler("count", counting)
        assert await a.request(b.node_id, "count", b"once") == b"once"
        await trio.sleep(1)
        assert calls == 2  # at-least-once: the handler ran for both copies, the caller saw one answer


def _drain(channel: trio.MemoryReceiveChannel[object]) -> list[object]:
    out = []
    while True:
        try:
            out.append(channel.receive_nowait())
        except trio.WouldBlock:
            return out


async def test_errors_from_the_body_leave_the_network_unwrapped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        async with open_memory_network(8) as network:
            network.transport(NODES[0])
            raise KeyError("from the body")

    with pytest.raises(KeyError, match="from the body"):
        await body()
