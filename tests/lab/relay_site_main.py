"""One transport of the relay lab test, run as its own process in a lab namespace (not collected).

    python relay_site_main.py relay|site|dialler LISTEN_IP PORT RELAY_IP

Identities are `make_identity(0|1|2, "lab-relay")` for relay, site and dialler. The relay
serves the hop role; the site reserves on it and answers echo requests; the dialler knows
the site only by its circuit address and asks it every half second. Every event is one
line on stdout: ``reserved`` / ``lost`` (site), ``answer`` (dialler), and ``direct`` (dialler,
once) when its connection to the site is no longer only through the relay (hole punched).
"""

from __future__ import annotations

import sys

import trio

from crypto.identity import NodeId
from swarmnode.net.base import TransportError
from swarmnode.net.libp2p import open_libp2p_transport
from swarmnode.testing import make_identity

RELAY, SITE, DIALLER = (make_identity(i, "lab-relay") for i in range(3))
LIFETIME_S = 120.0  # the test kills us sooner; never outlive it by much


def say(event: str) -> None:
    print(event, flush=True)


async def echo(sender: NodeId, data: bytes) -> bytes:
    return data


async def main(role: str, listen: str, port: int, relay_ip: str) -> None:
    with trio.move_on_after(LIFETIME_S):
        await run(role, listen, port, relay_ip)


async def run(role: str, listen: str, port: int, relay_ip: str) -> None:
    relay_addr = f"/ip4/{relay_ip}/tcp/{port}/p2p/{RELAY.node_id.peer_id}"
    if role == "relay":
        async with open_libp2p_transport(RELAY, listen_host=listen, listen_port=port, relay_service=True):
            say("ready")
            await trio.sleep_forever()
    if role == "site":
        async with open_libp2p_transport(SITE, listen_host=listen, relays=[relay_addr]) as site:
            site.set_handler("lab/echo", echo)
            reserved = False
            while True:
                if bool(site.relay.reserved) != reserved:
                    reserved = not reserved
                    say("reserved" if reserved else "lost")
                await trio.sleep(0.1)
    async with open_libp2p_transport(DIALLER, listen_host=listen) as dialler:
        dialler.add_peer_addresses(SITE.node_id, [relay_addr + "/p2p-circuit"])
        direct = False
        while True:
            try:
                if await dialler.request(SITE.node_id, "lab/echo", b"ping", timeout=5) == b"ping":
                    say("answer")
            except TransportError as exc:
                say(f"no answer: {exc}")
            if not direct and dialler.relay.path_to(SITE.node_id) == "direct":
                direct = True
                say("direct")
            await trio.sleep(0.5)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
