"""Real libp2p hosts, one OS process each, on 127.0.0.1 (issue #6 "done when").

Every test runs under `trio.fail_after`, and `spawn_node` SIGKILLs its child
when its block exits, also when the test fails, so no process outlives a test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import AsyncExitStack

import trio

from swarmnode.testing import make_identity, pseudo_random_bytes
from swarmnode.testing.nodeproc import NodeProcess, spawn_node

TOPIC = "net-test/gossip"


async def publish_round(nodes: Sequence[NodeProcess], tag: str, round_number: int) -> None:
    async with trio.open_nursery() as nursery:
        for node in nodes:
            data = f"{tag}:{node.index}:{round_number}".encode().hex()
            nursery.start_soon(lambda n=node, d=data: n.check("publish", topic=TOPIC, data=d))


def heard(node: NodeProcess, tag: str) -> set[int]:
    return {
        int(m["sender"])
        for m in node.messages
        if m["topic"] == TOPIC and bytes.fromhex(m["data"]).startswith(tag.encode() + b":")
    }


async def until_all_heard(nodes: Sequence[NodeProcess], tag: str) -> int:
    """Publish rounds every 300 ms until each node heard `tag` from every other; the rounds used."""
    everyone = {n.index for n in nodes}
    round_number = 0
    while not all(heard(n, tag) >= everyone - {n.index} for n in nodes):
        round_number += 1
        await publish_round(nodes, tag, round_number)
        await trio.sleep(0.3)
    return round_number


async def until_full_mesh(nodes: Sequence[NodeProcess]) -> None:
    everyone = {n.index for n in nodes}
    while True:
        views = [set((await n.check("peers"))["peers"]) for n in nodes]
        if all(view == everyone - {n.index} for n, view in zip(nodes, views, strict=True)):
            return
        await trio.sleep(0.2)


async def test_five_hosts_gossip_then_one_is_killed_restarted_and_rejoins() -> None:
    namespace = "net-test-five"
    members = range(5)
    with trio.fail_after(300):
        async with AsyncExitStack() as stack:
            nodes = [await stack.enter_async_context(spawn_node(0, namespace=namespace, allowed=members))]
            for index in range(1, 5):
                nodes.append(
                    await stack.enter_async_context(
                        spawn_node(index, namespace=namespace, bootstrap=nodes[0].addrs, allowed=members)
                    )
                )
            for node in nodes:
                await node.check("subscribe", topic=TOPIC)
            with trio.fail_after(60):  # 5 hosts from one bootstrap address: everyone hears everyone
                await until_all_heard(nodes, "before")
            with trio.fail_after(60):  # peer exchange turns the one bootstrap address into a full mesh
                await until_full_mesh(nodes)

            victim = nodes[3]
            victim.kill()
            with trio.fail_after(10):
                await victim.process.wait()
            survivors = [n for n in nodes if n is not victim]
            with trio.fail_after(60):  # the others notice the crash and keep gossiping
                await until_all_heard(survivors, "during")

            async with spawn_node(
                3, namespace=namespace, bootstrap=nodes[0].addrs, allowed=members
            ) as reborn:
                await reborn.check("subscribe", topic=TOPIC)
                rejoined = [*survivors, reborn]
                with trio.fail_after(60):  # the restarted host (new port, same key) rejoins and receives
                    await until_all_heard(rejoined, "after")
                assert heard(reborn, "after") == {0, 1, 2, 4}
                for node in rejoined:
                    assert await node.quit() == 0, f"node {node.index} did not shut down cleanly"


async def test_fifty_megabyte_blob_is_fetched_and_a_lying_peer_is_detected() -> None:
    namespace = "net-test-blob"
    size = 50 << 20
    digest = hashlib.sha256(pseudo_random_bytes(size, seed=50)).hexdigest()
    with trio.fail_after(240):
        async with (
            spawn_node(0, namespace=namespace) as honest,
            spawn_node(1, namespace=namespace, bootstrap=honest.addrs, lying=True) as liar,
            spawn_node(2, namespace=namespace, bootstrap=honest.addrs) as fetcher,
        ):
            with trio.fail_after(60):
                await until_full_mesh([honest, liar, fetcher])
            assert (await honest.check("put_blob", size=size, seed=50))["digest"] == digest
            assert (await liar.check("put_blob", size=size, seed=50))["digest"] == digest

            lie = await fetcher.call("get_blob", digest=digest, peer=1, timeout=60)
            assert not lie["ok"], lie
            assert lie["error"] == "BlobHashMismatch", lie
            assert make_identity(1, namespace).node_id.peer_id in lie["message"]

            got = await fetcher.check("get_blob", digest=digest, peer=0, timeout=60)
            assert got["size"] == size
            assert got["sha256"] == digest

            missing = await fetcher.call("get_blob", digest="00" * 32, peer=0, timeout=10)
            assert missing["error"] == "BlobNotFound"


async def test_non_member_is_refused_and_none_of_its_messages_arrive() -> None:
    namespace = "net-test-members"
    members = (0, 1)
    with trio.fail_after(240):
        async with (
            spawn_node(0, namespace=namespace, allowed=members) as first,
            spawn_node(1, namespace=namespace, bootstrap=first.addrs, allowed=members) as second,
            # the intruder knows the bootstrap address and has no allow-list of its own
            spawn_node(2, namespace=namespace, bootstrap=first.addrs) as intruder,
        ):
            for node in (first, second, intruder):
                await node.check("subscribe", topic=TOPIC)
            await first.check("set_handler", protocol="echo", prefix="member:")
            digest = (await first.check("put_blob", size=1000, seed=1))["digest"]

            with trio.fail_after(60):
                await until_all_heard([first, second], "members")
            for round_number in range(10):  # for ~3 s the intruder keeps trying while members gossip
                await intruder.call("publish", topic=TOPIC, data=f"intruder:{round_number}".encode().hex())
                await publish_round([first, second], "members-again", round_number)
                await trio.sleep(0.3)
            request = await intruder.call("request", peer=0, protocol="echo", data="00", timeout=3)
            blob = await intruder.call("get_blob", digest=digest, peer=0, timeout=3)
            member_request = await second.check("request", peer=0, protocol="echo", data="01")

            assert not request["ok"], request
            assert request["error"] in {"PeerUnreachable", "RequestRefused"}, request
            assert not blob["ok"], blob
            assert bytes.fromhex(member_request["data"]) == b"member:\x01"
            for member in (first, second):
                assert 2 not in {m["sender"] for m in member.messages}, "a non-member's gossip arrived"
                assert 2 not in (await member.check("peers"))["peers"]
            # the connections were closed, not just filtered: the intruder heard none of the members' gossip
            assert not intruder.messages, intruder.messages[:3]
            assert heard(first, "members") == {1}
            assert heard(second, "members") == {0}
            assert heard(second, "members-again") == {0}
