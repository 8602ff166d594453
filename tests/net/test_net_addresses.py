"""Advertised addresses on the libp2p transport: DNS multiaddrs are dialled (resolved by the
system, hosts file included) and peers learn a node's advertised address, not its bound one."""

from __future__ import annotations

import socket

import pytest
import trio

from swarmnode.addresses import advertised_addresses, check_dialable
from swarmnode.net.libp2p import open_libp2p_transport
from swarmnode.testing import make_identity, wait_until

IDS = [make_identity(i, "addresses-test") for i in range(3)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_dns4_address_is_dialled() -> None:
    with trio.fail_after(30):
        async with open_libp2p_transport(IDS[0]) as a, open_libp2p_transport(IDS[1]) as b:
            port = a.listen_addrs[0].split("/tcp/")[1].split("/")[0]
            b.add_peer_addresses(a.node_id, [f"/dns4/localhost/tcp/{port}"])
            await wait_until(lambda: a.node_id in b.peers(), what="b dialled a by name")


async def test_peers_learn_the_advertised_address_and_dial_it() -> None:
    port = _free_port()
    advertised = f"/dns4/localhost/tcp/{port}"
    with trio.fail_after(60):
        async with (
            open_libp2p_transport(IDS[0], listen_port=port, advertise=[advertised]) as a,
            open_libp2p_transport(IDS[1], bootstrap=[f"{advertised}/p2p/{IDS[0].node_id.peer_id}"]) as b,
            open_libp2p_transport(IDS[2]) as c,
        ):
            c.add_peer_addresses(b.node_id, b.listen_addrs)
            # c hears of a only from b's peer list, which carries a's advertised (DNS) address
            await wait_until(lambda: a.node_id in c.peers(), what="c reached a through its advertised name")
            assert a.node_id in b.peers()


def test_wildcards_are_never_advertised() -> None:
    assert advertised_addresses("0.0.0.0", 7000, ()) == ()
    assert advertised_addresses("127.0.0.1", 0, ()) == ()
    assert advertised_addresses("127.0.0.1", 7000, ()) == ("/ip4/127.0.0.1/tcp/7000",)
    assert advertised_addresses("0.0.0.0", 7000, ("localhost", "::1")) == (
        "/dns4/localhost/tcp/7000",
        "/ip6/::1/tcp/7000",
    )
    for bad in ("/ip4/0.0.0.0/tcp/1", "/ip6/::/tcp/1", "/ip4/localhost/tcp/1", "/ip4/127.0.0.1/udp/1",
                "/dns4/-bad-/tcp/1", "/ip4/127.0.0.1/tcp/1/ws", "ip4/127.0.0.1/tcp/1"):  # fmt: skip
        with pytest.raises(ValueError):  # noqa: PT011 (the messages are checked by the CLI tests)
            check_dialable(bad)
    check_dialable(f"/ip4/127.0.0.1/tcp/1/p2p/{IDS[0].node_id.peer_id}")
