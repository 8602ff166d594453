"""The transport a site runs is chosen by ``[network] transport``, through the interface."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from swarmnode.config import ConfigError, NetworkSection, from_mapping
from swarmnode.net.base import Transport
from swarmnode.net.factory import TRANSPORT_NAMES, open_transport
from swarmnode.testing import make_identity


def test_an_unknown_transport_is_refused_naming_the_field_and_the_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping(NetworkSection, {"transport": "carrier-pigeon"}, source="site.toml")
    message = str(caught.value)
    assert "site.toml" in message
    assert "transport = 'carrier-pigeon'" in message
    assert all(name in message for name in TRANSPORT_NAMES)


def test_open_transport_refuses_a_section_built_around_the_check() -> None:
    network = NetworkSection()
    object.__setattr__(network, "transport", "memory")  # frozen: only a bypass gets here
    with pytest.raises(ValueError, match=r"network\.transport = 'memory'"):
        open_transport(network, make_identity(0))


async def test_the_configured_transport_opens_and_takes_peer_addresses_through_the_interface() -> None:
    network = dataclasses.replace(NetworkSection(), transport="libp2p")
    with trio.fail_after(30):
        async with open_transport(network, make_identity(0, "factory")) as transport:
            assert isinstance(transport, Transport)
            assert transport.node_id == make_identity(0, "factory").node_id
            peer = make_identity(1, "factory").node_id
            transport.add_peer_addresses(peer, [f"/ip4/127.0.0.1/tcp/9/p2p/{peer.peer_id}"])
            with pytest.raises(ValueError, match="another peer"):
                transport.add_peer_addresses(peer, [f"/ip4/127.0.0.1/tcp/9/p2p/{transport.node_id.peer_id}"])
