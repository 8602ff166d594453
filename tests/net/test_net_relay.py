"""Circuit relay v2 in one process on 127.0.0.1 (issue 22): reserve, be dialled through the
relay, notice when the relay is gone (the keeper then reserves again once it is back).

On loopback every host could dial every other; the dialler here knows the site only by its
circuit address, so the connection can only come through the relay. The namespace lab
(tests/lab) runs the same with a site that really cannot be dialled.
"""

from __future__ import annotations

import logging
import socket

import pytest
import trio

from crypto.identity import NodeId
from swarmnode.net.base import TransportError
from swarmnode.net.libp2p import open_libp2p_transport
from swarmnode.testing import make_identity, wait_until

RELAY, SITE, DIALLER = (make_identity(i, "relay-test") for i in range(3))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_a_site_is_dialled_through_its_relay_and_notices_when_the_relay_is_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="swarmnode.net.libp2p")
    port = _free_port()
    relay_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{RELAY.node_id.peer_id}"

    async def echo(sender: NodeId, data: bytes) -> bytes:
        return sender.public_key + data

    with trio.fail_after(120):
        async with open_libp2p_transport(SITE, relays=[relay_addr]) as site:
            site.set_handler("relay-test/echo", echo)
            async with (
                open_libp2p_transport(RELAY, listen_port=port, relay_service=True),
                open_libp2p_transport(DIALLER) as dialler,
            ):
                await wait_until(lambda: RELAY.node_id in site.relay.reserved, what="reservation")
                dialler.add_peer_addresses(SITE.node_id, [relay_addr + "/p2p-circuit"])
                answer = await dialler.request(SITE.node_id, "relay-test/echo", b"via relay", timeout=20)
                assert answer == DIALLER.node_id.public_key + b"via relay"
            await wait_until(lambda: not site.relay.reserved, what="the lost relay noticed")
    assert f"connected to {SITE.node_id.short} through relay {RELAY.node_id.short}" in caplog.text


async def test_a_non_member_gets_nothing_from_a_site_through_a_relay() -> None:
    """The attacker's move: a valid key that is no member dials a site through the site's own
    relay (a member, which forwards it). The site's permissioning sees the real peer id at the
    end of the Noise handshake, relayed or not: the request is refused and never served."""
    port = _free_port()
    relay_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{RELAY.node_id.peer_id}"
    served: list[NodeId] = []

    async def record(sender: NodeId, data: bytes) -> bytes:
        served.append(sender)
        return data

    with trio.fail_after(120):
        async with (
            open_libp2p_transport(RELAY, listen_port=port, relay_service=True),
            open_libp2p_transport(SITE, relays=[relay_addr]) as site,
            open_libp2p_transport(DIALLER) as outsider,
        ):
            site.set_allowed_peers({RELAY.node_id})
            site.set_handler("relay-test/secret", record)
            await wait_until(lambda: RELAY.node_id in site.relay.reserved, what="reservation")
            outsider.add_peer_addresses(SITE.node_id, [relay_addr + "/p2p-circuit"])
            for _ in range(3):
                with pytest.raises(TransportError):
                    await outsider.request(SITE.node_id, "relay-test/secret", b"let me in", timeout=5)
            assert DIALLER.node_id not in site.peers()
    assert served == []
