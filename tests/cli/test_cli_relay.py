"""`swarmnode relay`: the organiser's relay-only process, on 127.0.0.1.

It creates its key (0600), prints the `network.relays` entry, serves the hop role: a site
reserves on it and a member that knows that site only by its circuit address reaches it
through the relay, although the relay is no member and not among the member's own relays
(the member keeps the relay's connection; its handlers still serve members only). A port
in use is refused at once (exit 2). And `init --relay`: a site behind NAT whose member line
is its circuit address through the relay.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from crypto.identity import NodeId
from swarmnode.cli import main
from swarmnode.config import NodeConfig
from swarmnode.net.libp2p import open_libp2p_transport
from swarmnode.testing import make_identity
from swarmnode.testing.siteprocs import SiteProcesses
from swarmnode.testnet import free_ports

STARTUP_S = 60.0


def _relay_command(key: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "swarmnode", "relay", "--key-file", str(key),
        "--listen", "127.0.0.1", "--port", str(port), "--advertise", "127.0.0.1",
    ]  # fmt: skip


async def echo(sender: NodeId, data: bytes) -> bytes:
    return data


async def test_a_member_reaches_a_site_through_a_relay_process(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    key = tmp_path / "relay.key"
    site_identity, member_identity = make_identity(0, "cli-relay"), make_identity(1, "cli-relay")
    with SiteProcesses(tmp_path) as processes:
        processes.start("relay", _relay_command(key, port))
        await trio.to_thread.run_sync(
            processes.wait_for,
            "the relay",
            lambda: "add to [network] relays" in processes.log("relay"),
            STARTUP_S,
        )
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        entry = next(line.strip() for line in processes.log("relay").splitlines() if line.startswith("  /"))
        assert entry.startswith(f"/ip4/127.0.0.1/tcp/{port}/p2p/12D3KooW")

        again = subprocess.run(_relay_command(key, port), capture_output=True, text=True, timeout=STARTUP_S)
        assert again.returncode == 2
        assert f"127.0.0.1:{port} is in use" in again.stderr

        async with (
            open_libp2p_transport(site_identity, relays=[entry]) as site,
            open_libp2p_transport(member_identity, allowed_peers={site_identity.node_id}) as member,
        ):
            site.set_handler("test/echo", echo)
            with trio.fail_after(STARTUP_S):
                await site.relay.reserved_event.wait()
            member.add_peer_addresses(site_identity.node_id, [entry + "/p2p-circuit"])
            with trio.fail_after(STARTUP_S):
                while True:
                    try:
                        if (
                            await member.request(site_identity.node_id, "test/echo", b"ping", timeout=5)
                            == b"ping"
                        ):
                            break
                    except Exception:  # the relayed dial may take a few tries
                        await trio.sleep(0.5)


def test_init_behind_nat_advertises_the_circuit_through_its_relay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    relay = f"/ip4/198.51.100.7/tcp/7000/p2p/{make_identity(2, 'cli-relay').node_id.peer_id}"
    site = tmp_path / "site"
    argv = ["init", "--name", "nat-site", "--dir", str(site), "--listen", "10.1.2.3", "--relay", relay]
    assert main([*argv, "--features", "30", "--classes", "2"]) == 0
    member = next(line.strip() for line in capsys.readouterr().out.splitlines() if "--member" in line)
    assert member.endswith(f"@{relay}/p2p-circuit")  # not its private address: nobody can dial that
    assert NodeConfig.load(site / "site.toml").network.relays == (relay,)

    no_id = "/ip4/198.51.100.7/tcp/7000"
    assert main(["init", "--name", "x", "--dir", str(tmp_path / "bad"), "--relay", no_id]) == 2
    assert "--relay" in capsys.readouterr().err
