"""`swarmnode relay`: the organiser's relay-only process, on 127.0.0.1.

It creates its key (0600), prints the `network.relays` entry, serves the hop role: a site
reserves on it and a member that knows that site only by its circuit address reaches it
through the relay, although the relay is no member and not among the member's own relays
(the member keeps the relay's connection; its handlers still serve members only). A port
in use is refused at once (exit 2). It serves the members of its genesis and members file
only: a non-member can neither reserve nor reach a site through it, until the organiser
adds it to the members file. And `init --relay`: a site behind NAT whose member line is its
circuit address through the relay.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from consensus.genesis import FoundingMember, Genesis, TrainingParams
from crypto.identity import NodeId, NodeIdentity
from models.spec import logistic_regression
from swarmnode.cli import main
from swarmnode.config import NodeConfig
from swarmnode.net.base import TransportError
from swarmnode.net.libp2p import Libp2pTransport, open_libp2p_transport
from swarmnode.testing import make_identity
from swarmnode.testing.siteprocs import SiteProcesses
from swarmnode.testnet import free_ports

STARTUP_S = 60.0


def _relay_command(key: Path, port: int, genesis: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "swarmnode", "relay", "--key-file", str(key), "--genesis", str(genesis),
        "--listen", "127.0.0.1", "--port", str(port), "--advertise", "127.0.0.1", *extra,
    ]  # fmt: skip


def _genesis_of(path: Path, *founders: NodeIdentity) -> Path:
    members = tuple(FoundingMember(name=f"site{i}", node_id=f.node_id) for i, f in enumerate(founders))
    spec_hash = logistic_regression(30, 2).spec_hash()
    training = TrainingParams(model_spec_hash=spec_hash, secure=False)
    Genesis(name="relay-test", members=members, training=training).save(path)
    return path


async def _start_relay(processes: SiteProcesses, command: list[str]) -> str:
    """Start the relay process; its printed ``network.relays`` entry."""
    processes.start("relay", command)
    await trio.to_thread.run_sync(
        processes.wait_for,
        "the relay",
        lambda: "add to [network] relays" in processes.log("relay"),
        STARTUP_S,
    )
    return next(line.strip() for line in processes.log("relay").splitlines() if line.startswith("  /"))


async def _echo_through(member: Libp2pTransport, site: NodeId) -> None:
    """Ask `site` (known to `member` only by its circuit address) until it answers."""
    while True:
        try:
            if await member.request(site, "test/echo", b"ping", timeout=5) == b"ping":
                return
        except TransportError:  # the relayed dial may take a few tries
            await trio.sleep(0.5)


async def echo(sender: NodeId, data: bytes) -> bytes:
    return data


async def test_a_member_reaches_a_site_through_a_relay_process(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    key = tmp_path / "relay.key"
    site_identity, member_identity = make_identity(0, "cli-relay"), make_identity(1, "cli-relay")
    genesis = _genesis_of(tmp_path / "genesis.cbor", site_identity, member_identity)
    with SiteProcesses(tmp_path) as processes:
        entry = await _start_relay(processes, _relay_command(key, port, genesis))
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert entry.startswith(f"/ip4/127.0.0.1/tcp/{port}/p2p/12D3KooW")

        again = subprocess.run(
            _relay_command(key, port, genesis), capture_output=True, text=True, timeout=STARTUP_S
        )
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
                await _echo_through(member, site_identity.node_id)


async def test_a_non_member_can_neither_reserve_nor_connect_through_the_relay_process(tmp_path: Path) -> None:
    """Attack: an outsider uses the organiser's relay, holding a slot there and reaching a site
    through it (the site here has no allow-list of its own, so only the relay stands in the
    way). The relay refuses both, logs the outsider's peer id once, and still serves members;
    once the organiser adds the outsider to the members file it is served, without a restart."""
    (port,) = free_ports(1)
    site_identity, member_identity = make_identity(0, "cli-relay"), make_identity(1, "cli-relay")
    outsider_identity = make_identity(2, "cli-relay")
    outsider = outsider_identity.node_id.peer_id
    genesis = _genesis_of(tmp_path / "genesis.cbor", site_identity, member_identity)
    members_file = tmp_path / "members.txt"
    members_file.write_text("# sites that joined after genesis\n")
    command = _relay_command(tmp_path / "relay.key", port, genesis, "--members", str(members_file))
    with SiteProcesses(tmp_path) as processes:
        entry = await _start_relay(processes, command)
        async with (
            open_libp2p_transport(site_identity, relays=[entry]) as site,
            open_libp2p_transport(outsider_identity, relays=[entry]) as intruder,
            open_libp2p_transport(member_identity) as member,
        ):
            site.set_handler("test/echo", echo)
            with trio.fail_after(STARTUP_S):
                await site.relay.reserved_event.wait()
                while f"from {outsider}" not in processes.log("relay") and not intruder.relay.reserved:
                    await trio.sleep(0.2)
            assert not intruder.relay.reserved, "the relay gave a non-member a reservation"

            intruder.add_peer_addresses(site_identity.node_id, [entry + "/p2p-circuit"])
            for _ in range(3):
                with pytest.raises(TransportError):
                    await intruder.request(site_identity.node_id, "test/echo", b"ping", timeout=5)
            refusals = [line for line in processes.log("relay").splitlines() if "refused a" in line]
            assert len([line for line in refusals if outsider in line]) == 1, refusals  # once per peer

            member.add_peer_addresses(site_identity.node_id, [entry + "/p2p-circuit"])
            with trio.fail_after(STARTUP_S):
                await _echo_through(member, site_identity.node_id)

            members_file.write_text(f"late-joiner={outsider}\n")
            with trio.fail_after(STARTUP_S):
                await intruder.relay.reserved_event.wait()
            # A removal (`-PEER_ID`) is checked where it is decided, in
            # tests/net/test_net_relay_members.py: here the peers, none with an allow-list of
            # its own, may find a direct path that bypasses the relay.


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
