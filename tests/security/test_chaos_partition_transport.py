"""Fault injection in the real transport: `Libp2pTransport.partition` / `heal`, and who may use it.

A partition must cut exactly the blocked links (connections closed and kept closed,
inbound dials refused, gossip, requests and blob fetches stopped, in both
directions when both sides cut) and `heal` must restore a full mesh. It is reachable
from outside the process only through the local control endpoint, and only when the
node was started with ``SWARMNODE_FAULT_INJECTION=1``. The node-level scenarios (4
`swarmnode run` processes split 2+2 and 3+1, then healed) are in
`test_chaos_partition_processes.py` and `scripts/chaos.py`.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from crypto.identity import NodeId, NodeIdentity
from swarmnode.control import CONTROL_FILE, ControlError, request_control, serve_control
from swarmnode.net.base import BlobNotFound, Inbound, PeerUnreachable, TransportClosed
from swarmnode.net.libp2p import Libp2pTransport, libp2p_id, node_id_of, open_libp2p_transport
from swarmnode.testing import make_identity, wait_until
from swarmnode.testing.nodeproc import NodeProcess, spawn_node

IDS = [make_identity(i, "chaos-partition") for i in range(4)]
MEMBERS = frozenset(i.node_id for i in IDS)
TOPIC = "chaos/partition"


def connected(transport: Libp2pTransport) -> set[NodeId]:
    """Peers with an open libp2p connection, blocked or not (`peers()` hides blocked ones)."""
    return {n for n in MEMBERS if libp2p_id(n) in transport._host.get_connected_peers()}


async def gossip_round(
    senders: Sequence[Libp2pTransport], receivers: dict[NodeId, trio.MemoryReceiveChannel[Inbound]], tag: str
) -> dict[NodeId, set[NodeId]]:
    """Everyone publishes `tag` every 250 ms for 3 s; who heard `tag` from whom."""
    heard: dict[NodeId, set[NodeId]] = {n: set() for n in receivers}
    for _ in range(12):
        for sender in senders:
            await sender.publish(TOPIC, f"{tag}:{sender.node_id.peer_id}".encode())
        await trio.sleep(0.25)
        for node, channel in receivers.items():
            while True:
                try:
                    message = channel.receive_nowait()
                except trio.WouldBlock:
                    break
                if message.data.startswith(tag.encode() + b":"):
                    heard[node].add(message.sender)
    return heard


async def test_two_plus_two_partition_cuts_every_path_and_heal_restores_the_mesh() -> None:
    async def echo(sender: NodeId, data: bytes) -> bytes:
        return data

    with trio.fail_after(180):
        async with (
            open_libp2p_transport(IDS[0], allowed_peers=MEMBERS) as a,
            open_libp2p_transport(IDS[1], allowed_peers=MEMBERS, bootstrap=a.listen_addrs) as b,
            open_libp2p_transport(IDS[2], allowed_peers=MEMBERS, bootstrap=a.listen_addrs) as c,
            open_libp2p_transport(IDS[3], allowed_peers=MEMBERS, bootstrap=a.listen_addrs) as d,
        ):
            nodes = [a, b, c, d]
            everyone = {n.node_id for n in nodes}
            for node in nodes:
                node.set_handler("echo", echo)
            channels = {n.node_id: await n.subscribe(TOPIC) for n in nodes}
            await wait_until(
                lambda: all(n.peers() == everyone - {n.node_id} for n in nodes), timeout=60, what="full mesh"
            )
            assert await a.request(c.node_id, "echo", b"before", timeout=10) == b"before"

            left, right = [a, b], [c, d]
            for side, other in ((left, right), (right, left)):
                for node in side:
                    node.partition({o.node_id for o in other})
            await wait_until(
                lambda: all(connected(n) == {m.node_id for m in side if m is not n}
                            for side in (left, right) for n in side),
                timeout=30,
                what="cross-partition connections closed",
            )  # fmt: skip
            assert a.blocked == {c.node_id, d.node_id}
            assert a.peers() == {b.node_id}
            assert c.peers() == {d.node_id}
            for _ in range(2):  # the membership refresh the node runs every height must not undo the cut
                a.set_allowed_peers(MEMBERS)
            heard = await gossip_round(nodes, channels, "cut")
            assert heard[a.node_id] == {b.node_id}
            assert heard[b.node_id] == {a.node_id}
            assert heard[c.node_id] == {d.node_id}
            assert heard[d.node_id] == {c.node_id}
            with pytest.raises(PeerUnreachable):
                await a.request(c.node_id, "echo", b"x", timeout=5)
            with pytest.raises(PeerUnreachable):
                await d.request(b.node_id, "echo", b"x", timeout=5)
            with pytest.raises(PeerUnreachable):
                await a.exchange_peers(d.node_id)
            digest = c.put_blob(b"only c has this blob")
            with pytest.raises(PeerUnreachable):
                await a.get_blob(digest, peer=c.node_id, timeout=5)
            with pytest.raises(BlobNotFound):  # asked everyone a can reach: only b
                await a.get_blob(digest, timeout=5)
            assert await d.get_blob(digest, timeout=10) == b"only c has this blob"
            assert await a.request(b.node_id, "echo", b"same side", timeout=10) == b"same side"
            # Several backoff periods later nobody has redialled across the cut.
            assert all(connected(n) == {m.node_id for m in side if m is not n} for side in (left, right)
                       for n in side)  # fmt: skip

            for node in nodes:
                node.heal()
            assert a.blocked == frozenset()
            await wait_until(
                lambda: all(n.peers() == everyone - {n.node_id} for n in nodes),
                timeout=60,
                what="healed mesh",
            )
            assert await a.request(c.node_id, "echo", b"healed", timeout=10) == b"healed"
            assert await a.get_blob(digest, timeout=10) == b"only c has this blob"
            with trio.fail_after(60):
                while True:
                    heard = await gossip_round(nodes, channels, "healed")
                    if all(heard[n.node_id] == everyone - {n.node_id} for n in nodes):
                        break


async def test_one_sided_cut_refuses_the_other_sides_dials_and_gossip() -> None:
    """Only `a` cuts `b`; `b` keeps dialling `a` (it knows a's address): every connection is closed."""
    with trio.fail_after(120):
        async with (
            open_libp2p_transport(IDS[0], allowed_peers=MEMBERS) as a,
            open_libp2p_transport(IDS[1], allowed_peers=MEMBERS, bootstrap=a.listen_addrs) as b,
        ):
            from_b = await a.subscribe(TOPIC)
            await b.subscribe(TOPIC)
            await wait_until(lambda: a.node_id in b.peers() and b.node_id in a.peers(), what="connected")
            a.partition({b.node_id})
            await wait_until(lambda: not connected(a), timeout=30, what="a closed b's connection")
            with pytest.raises(ValueError, match="itself"):
                a.partition({a.node_id})
            received: list[Inbound] = []
            b_dialled_again = False
            for step in range(40):  # 10 s: b's backoff redials a several times
                b_dialled_again = b_dialled_again or a.node_id in b.peers()
                await b.publish(TOPIC, f"b {step}".encode())
                await trio.sleep(0.25)
                while True:
                    try:
                        received.append(from_b.receive_nowait())
                    except trio.WouldBlock:
                        break
            assert received == []
            assert b.node_id not in a.peers()
            a.heal()
            await wait_until(lambda: b.node_id in a.peers(), timeout=30, what="reconnected after heal")
        with pytest.raises(TransportClosed):
            a.partition({b.node_id})


def count_dials(transport: Libp2pTransport) -> collections.Counter[NodeId]:
    """Every dial `transport`'s libp2p host makes from now on, by peer (any caller: ours,
    pubsub's, the library's auto-connector)."""
    dials: collections.Counter[NodeId] = collections.Counter()
    network = transport._host.get_network()
    dial_peer = network.dial_peer

    async def counting(peer_id: Any, *args: Any, **kwargs: Any) -> Any:
        node = node_id_of(peer_id)
        if node is not None:
            dials[node] += 1
        return await dial_peer(peer_id, *args, **kwargs)

    network.dial_peer = counting  # type: ignore[method-assign]
    return dials


async def test_a_peer_we_may_not_talk_to_is_not_redialled_by_gossip() -> None:
    """A cut peer, or a non-member that dials us, must not make us dial it over and over.

    py-libp2p's pubsub opens its stream to every connected peer and redials while that fails;
    against a peer our guard disconnects, that was hundreds of dials a minute, and the
    connection slots they leaked kept the two apart minutes after the cut healed (a 3+1
    chaos run never caught up). Both attacks are the same loop: a cut peer, and an outsider
    that connects to us only to have us dial it back."""
    outsider = make_identity(9, "chaos-partition")
    with trio.fail_after(120):
        async with (
            open_libp2p_transport(IDS[0], allowed_peers=MEMBERS) as a,
            open_libp2p_transport(IDS[1], allowed_peers=MEMBERS, bootstrap=a.listen_addrs) as b,
            open_libp2p_transport(
                outsider, allowed_peers=MEMBERS | {outsider.node_id}, bootstrap=a.listen_addrs
            ) as c,
        ):
            await a.subscribe(TOPIC)
            await b.subscribe(TOPIC)
            await c.subscribe(TOPIC)
            await wait_until(lambda: b.node_id in a.peers(), what="a and b connected")
            dials = count_dials(a)
            a.partition({b.node_id})
            b.partition({a.node_id})
            for step in range(24):  # 6 s of traffic on both sides of the cut
                for node in (a, b, c):
                    await node.publish(TOPIC, f"{step}".encode())
                await trio.sleep(0.25)
            assert dials[b.node_id] <= 1, dials
            assert dials[outsider.node_id] <= 1, dials
            for node in (a, b):
                node.heal()
            await wait_until(
                lambda: b.node_id in a.peers() and a.node_id in b.peers(), timeout=30, what="healed"
            )
            from_b = await a.subscribe(TOPIC + "/healed")
            await b.subscribe(TOPIC + "/healed")
            with trio.fail_after(30):  # gossip between the two flows again
                while True:
                    await b.publish(TOPIC + "/healed", b"again")
                    with trio.move_on_after(0.5):
                        if (await from_b.receive()).data == b"again":
                            break


# ---------------------------------------------------------------- control endpoint gating


@dataclass
class RecordingTransport:
    blocked: frozenset[NodeId] = frozenset()

    def partition(self, blocked: set[NodeId]) -> None:
        self.blocked = frozenset(blocked)

    def heal(self) -> None:
        self.blocked = frozenset()


@dataclass
class FakeNode:
    transport: RecordingTransport

    def status(self) -> dict[str, int]:
        return {"height": 1}


async def test_control_endpoint_refuses_fault_commands_unless_enabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = NodeIdentity.generate().node_id
    node = FakeNode(RecordingTransport())
    monkeypatch.delenv("SWARMNODE_FAULT_INJECTION", raising=False)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, node, tmp_path / "off")
            for command in ("partition", "heal"):
                with pytest.raises(ControlError, match="fault injection is off"):
                    await trio.to_thread.run_sync(
                        lambda c=command: request_control(
                            tmp_path / "off", c, args={"peer_ids": [peer.peer_id]}
                        )
                    )
            assert node.transport.blocked == frozenset()

            monkeypatch.setenv("SWARMNODE_FAULT_INJECTION", "yes")  # only exactly "1" enables it
            await nursery.start(serve_control, node, tmp_path / "yes")
            with pytest.raises(ControlError, match="fault injection is off"):
                await trio.to_thread.run_sync(lambda: request_control(tmp_path / "yes", "heal"))

            monkeypatch.setenv("SWARMNODE_FAULT_INJECTION", "1")
            await nursery.start(serve_control, node, tmp_path / "on")
            on = tmp_path / "on"
            answer = await trio.to_thread.run_sync(
                lambda: request_control(on, "partition", args={"peer_ids": [peer.peer_id]})
            )
            assert answer == {"blocked": [peer.peer_id]}
            assert node.transport.blocked == {peer}
            for bad in ({"peer_ids": "not a list"}, {"peer_ids": ["12D3KooWnot-base58!"]}, {}):
                with pytest.raises(ControlError, match="ValueError"):
                    await trio.to_thread.run_sync(lambda b=bad: request_control(on, "partition", args=b))
            assert node.transport.blocked == {peer}  # refused requests change nothing
            token = json.loads((on / CONTROL_FILE).read_text())["token"]
            assert len(token) == 32
            assert await trio.to_thread.run_sync(lambda: request_control(on, "heal")) == {"blocked": []}
            assert node.transport.blocked == frozenset()
            # The switch is read when the endpoint starts, not per request.
            monkeypatch.delenv("SWARMNODE_FAULT_INJECTION")
            await trio.to_thread.run_sync(
                lambda: request_control(on, "partition", args={"peer_ids": [peer.peer_id]})
            )
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- real processes (nodeproc children)


async def until_heard(nodes: Sequence[NodeProcess], tag: str, expected: dict[int, set[int]]) -> None:
    """Publish `tag` from everyone every 300 ms until each node heard at least `expected` of it."""
    round_number = 0
    while True:
        round_number += 1
        for node in nodes:
            await node.check("publish", topic=TOPIC, data=f"{tag}:{node.index}:{round_number}".encode().hex())
        await trio.sleep(0.3)
        if all(heard_from(n, tag) >= expected[n.index] for n in nodes):
            return


def heard_from(node: NodeProcess, tag: str) -> set[int]:
    return {
        int(m["sender"])
        for m in node.messages
        if m["topic"] == TOPIC and bytes.fromhex(m["data"]).startswith(tag.encode() + b":")
    }


async def test_child_processes_partition_and_heal_over_the_command_loop() -> None:
    namespace = "chaos-partition-procs"
    members = (0, 1, 2)
    with trio.fail_after(240):
        async with (
            spawn_node(0, namespace=namespace, allowed=members) as first,
            spawn_node(1, namespace=namespace, bootstrap=first.addrs, allowed=members) as second,
            spawn_node(2, namespace=namespace, bootstrap=first.addrs, allowed=members) as third,
        ):
            nodes = [first, second, third]
            for node in nodes:
                await node.check("subscribe", topic=TOPIC)
            with trio.fail_after(60):
                await until_heard(nodes, "before", {0: {1, 2}, 1: {0, 2}, 2: {0, 1}})
            # 2 alone | 0, 1
            await third.check("partition", peers=[0, 1])
            await first.check("partition", peers=[2])
            await second.check("partition", peers=[2])
            with trio.fail_after(30):
                while (await third.check("peers"))["peers"] or (await first.check("peers"))["peers"] != [1]:
                    await trio.sleep(0.2)
            with trio.fail_after(60):
                await until_heard([first, second], "cut", {0: {1}, 1: {0}})
            for _ in range(5):
                await third.check("publish", topic=TOPIC, data=b"cut:2:0".hex())
                await trio.sleep(0.3)
            assert heard_from(first, "cut") == {1}
            assert heard_from(second, "cut") == {0}
            assert heard_from(third, "cut") == set()
            refused = await first.call("request", peer=2, protocol="echo", data="00", timeout=5)
            assert refused["error"] == "PeerUnreachable", refused
            for node in nodes:
                await node.check("heal")
            with trio.fail_after(60):
                await until_heard(nodes, "healed", {0: {1, 2}, 1: {0, 2}, 2: {0, 1}})
            for node in nodes:
                assert await node.quit() == 0
