"""Circuit relay addresses (issue 22): how a site behind NAT is named, configured and learned."""

from __future__ import annotations

import pytest
import trio

from swarmnode.addresses import check_dialable, circuit_address
from swarmnode.config import ConfigError, NetworkSection, from_mapping
from swarmnode.net import wire
from swarmnode.net.libp2p import open_libp2p_transport
from swarmnode.testing import make_identity

RELAY = make_identity(0, "relay-addresses").node_id
SITE = make_identity(1, "relay-addresses").node_id
OTHER = make_identity(2, "relay-addresses").node_id
RELAY_ADDR = f"/ip4/198.18.0.10/tcp/7000/p2p/{RELAY.peer_id}"


def test_a_circuit_address_is_a_relay_address_with_its_id_then_p2p_circuit() -> None:
    assert circuit_address(RELAY_ADDR) == RELAY_ADDR + "/p2p-circuit"
    check_dialable(RELAY_ADDR + "/p2p-circuit")
    for bad in ("/ip4/198.18.0.10/tcp/7000", "/ip4/0.0.0.0/tcp/7000/p2p/" + RELAY.peer_id):
        with pytest.raises(ValueError, match=r"/p2p/|wildcard"):
            circuit_address(bad)
    with pytest.raises(ValueError, match="relay"):
        check_dialable("/ip4/198.18.0.10/tcp/7000/p2p-circuit")


def test_relays_are_checked_when_the_site_config_loads_and_advertised_as_circuits() -> None:
    network = from_mapping(NetworkSection, {"relays": [RELAY_ADDR]}, source="site.toml")
    assert network.advertised() == (RELAY_ADDR + "/p2p-circuit",)
    with pytest.raises(ConfigError, match=r"relays\[0\]"):
        from_mapping(NetworkSection, {"relays": ["/ip4/198.18.0.10/tcp/7000"]}, source="site.toml")


def test_peer_lists_carry_circuit_addresses_but_no_one_elses_id() -> None:
    wire.PeerEntry(SITE, (RELAY_ADDR + "/p2p-circuit", "/ip4/198.19.1.10/tcp/7000"))
    for bad in (RELAY_ADDR, RELAY_ADDR + "/p2p-circuit/p2p/" + OTHER.peer_id, "/p2p-circuit"):
        with pytest.raises(ValueError, match="not a transport multiaddr"):
            wire.PeerEntry(SITE, (bad,))


async def test_a_transport_learns_circuit_addresses_only_for_the_peer_they_name() -> None:
    with trio.fail_after(30):
        async with open_libp2p_transport(make_identity(3, "relay-addresses")) as transport:
            transport.add_peer_addresses(SITE, [RELAY_ADDR + "/p2p-circuit"])
            transport.add_peer_addresses(SITE, [f"{RELAY_ADDR}/p2p-circuit/p2p/{SITE.peer_id}"])
            with pytest.raises(ValueError, match="circuit address"):
                transport.add_peer_addresses(SITE, [f"{RELAY_ADDR}/p2p-circuit/p2p/{OTHER.peer_id}"])
