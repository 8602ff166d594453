"""How `swarmnode` starts: `--help` and usage errors without the heavy imports, and the
refusals a site gets at once (with the field or file at fault) instead of a silent wait."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from consensus.genesis import Genesis
from consensus.store import LedgerStore
from consensus.transactions import JoinRequest, TxSigner
from crypto.identity import NodeIdentity
from swarmnode.cli import main
from swarmnode.config import ConfigError, NodeConfig
from swarmnode.scaffold import JOIN_REQUEST_FILE
from swarmnode.startup import StartRefused, check_membership

HEAVY_MODULES = ("torch", "tenseal", "libp2p", "numpy", "trio", "sklearn")

_IMPORTED_BY = """
import sys
from swarmnode.cli import main
code = main(sys.argv[1:])
print("CODE", code)
print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules))
"""


def _imports_of(*argv: str) -> tuple[int, list[str], str]:
    """Exit code and heavy modules loaded when a fresh interpreter runs ``swarmnode ARGV``."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTED_BY.format(heavy=HEAVY_MODULES), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    marked = (line.partition(" ") for line in done.stdout.splitlines())
    lines = {key: value for key, _, value in marked if key in ("CODE", "HEAVY")}
    return int(lines["CODE"]), ast.literal_eval(lines["HEAVY"]), done.stdout + done.stderr


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (("--help",), 0),
        (("--version",), 0),
        (("run", "--help"), 0),
        (("genesis", "--help"), 0),
        (("relay", "--help"), 0),
        (("init",), 2),  # --name missing: a usage error
        (("run", "--no-such-option"), 2),
        (("no-such-command",), 2),
    ],
)
def test_help_and_usage_errors_import_nothing_heavy(argv: tuple[str, ...], code: int) -> None:
    exit_code, heavy, output = _imports_of(*argv)
    assert exit_code == code, output
    assert heavy == [], f"swarmnode {' '.join(argv)} imported {heavy}"


# -- listen vs advertised addresses ----------------------------------------------------


def _init(tmp_path: Path, name: str, *extra: str) -> int:
    return main(
        ["init", "--name", name, "--dir", str(tmp_path / name), "--features", "30", "--classes", "2", *extra]
    )


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_init_advertises_a_dns_name_while_listening_on_every_interface(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        _init(tmp_path, "b", "--listen", "0.0.0.0", "--port", "7401", "--advertise", "hospital-b.example.org")
        == 0
    )
    out = capsys.readouterr().out
    peer = NodeIdentity.load(tmp_path / "b" / "node.key").node_id.peer_id
    assert f"--member b={peer}@/dns4/hospital-b.example.org/tcp/7401" in out
    network = NodeConfig.load(tmp_path / "b" / "site.toml").network
    assert (network.listen, network.port, network.advertise) == ("0.0.0.0", 7401, ("hospital-b.example.org",))
    assert network.advertised() == ("/dns4/hospital-b.example.org/tcp/7401",)
    # a forwarded port and a second address: multiaddrs are taken as they are
    assert (
        _init(tmp_path, "c", "--advertise", "/dns4/gw.example.org/tcp/9000", "--advertise", "203.0.113.7")
        == 0
    )
    assert "@/dns4/gw.example.org/tcp/9000,/ip4/203.0.113.7/tcp/7000\n" in capsys.readouterr().out
    # port 0 and nothing advertised: a site that only dials out; its member line has no address
    assert _init(tmp_path, "d", "--listen", "0.0.0.0", "--port", "0") == 0
    peer = NodeIdentity.load(tmp_path / "d" / "node.key").node_id.peer_id
    out = capsys.readouterr().out
    assert f"--member d={peer}\n" in out
    assert "only dials out" in out


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (("--listen", "0.0.0.0"), "--advertise"),  # nothing a peer could dial
        (("--advertise", "0.0.0.0"), "wildcard"),
        (("--advertise", "/ip4/0.0.0.0/tcp/7000"), "wildcard"),
        (("--advertise", "/ip4/hospital-b.example.org/tcp/7000"), "/dns4/hospital-b.example.org/tcp/7000"),
        (("--advertise", "224.0.0.1"), "multicast"),
        (("--advertise", "/ip4/192.0.2.1/tcp/7000/p2p/12D3KooWxyz"), "leave out /p2p/"),
        (("--advertise", "/dns4/b.example.org/tcp/0"), "PORT"),
        (("--listen", "hospital-b.example.org"), "network.advertise"),
    ],
)
def test_init_refuses_addresses_no_peer_can_dial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: tuple[str, ...], named: str
) -> None:
    assert _init(tmp_path, "b", *options) == 2
    assert named in _one_error_line(capsys)
    assert not (tmp_path / "b" / "node.key").exists()  # refused before anything was written


def test_genesis_refuses_wildcard_and_host_name_in_ip4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init(tmp_path, "a", "--port", "7411") == 0
    capsys.readouterr()
    key = tmp_path / "a" / "node.key"
    config = str(tmp_path / "a" / "site.toml")

    def genesis(address: str) -> int:
        out = str(tmp_path / f"genesis-{abs(hash(address))}.cbor")
        return main(
            ["genesis", "--member", f"a={key}@{address}", "--model-from", config, "--no-secure", "--out", out]
        )

    assert genesis("/ip4/0.0.0.0/tcp/7411") == 2
    err = _one_error_line(capsys)
    assert "members[a].addresses[0]" in err
    assert "wildcard" in err
    assert genesis("/ip4/hospital-a.example.org/tcp/7411") == 2
    assert "/dns4/hospital-a.example.org/tcp/7411" in _one_error_line(capsys)
    assert genesis("/dns4/hospital-a.example.org/tcp/7411") == 0


def test_site_toml_advertise_and_listen_are_checked_when_loaded(tmp_path: Path) -> None:
    assert _init(tmp_path, "a", "--port", "7421") == 0
    path = tmp_path / "a" / "site.toml"
    with pytest.raises(ConfigError, match=r"network: advertise\[0\] = '0.0.0.0': .*wildcard"):
        NodeConfig.load(path, ['network.advertise=["0.0.0.0"]'])
    with pytest.raises(ConfigError, match=r"network: listen = 'a.example.org': .*network.advertise"):
        NodeConfig.load(path, ["network.listen=a.example.org"])
    with pytest.raises(ConfigError, match=r"needs a fixed network\.port"):
        NodeConfig.load(path, ["network.port=0", 'network.advertise=["a.example.org"]'])
    with pytest.raises(ConfigError, match=r"unknown key network\.host"):
        NodeConfig.load(path, ["network.host=127.0.0.1"])


# -- refusals at start -----------------------------------------------------------------


def _swarmnode(*argv: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("swarmnode")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "swarmnode"]
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [*command, *argv], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _founded(tmp_path: Path, capsys: pytest.CaptureFixture[str], *outsiders: str) -> tuple[Path, Genesis]:
    """Site "a" founds a chain alone; each outsider is a site with a key but no membership."""
    port = _free_port()
    assert _init(tmp_path, "a", "--port", str(port)) == 0
    for name in outsiders:
        assert _init(tmp_path, name, "--port", str(_free_port())) == 0
    key = tmp_path / "a" / "node.key"
    out = tmp_path / "genesis.cbor"
    config = str(tmp_path / "a" / "site.toml")
    argv = [
        "genesis",
        "--member",
        f"a={key}@/ip4/127.0.0.1/tcp/{port}",
        "--model-from",
        config,
        "--no-secure",  # a secure swarm needs t + 1 founders; these tests are about start-up
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    capsys.readouterr()
    return out, Genesis.load(out)


def _run_refused(config: Path, genesis: Path, *more: str) -> str:
    done = _swarmnode(
        "run", "--plain", "--config", str(config), "--set", f'ledger.genesis="{genesis}"', *more
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("swarmnode: error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


@pytest.mark.parametrize("stored_ledger", [False, True])
def test_a_site_that_is_not_a_member_is_refused_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stored_ledger: bool
) -> None:
    genesis_path, genesis = _founded(tmp_path, capsys, "outsider")
    ledger = tmp_path / "outsider" / "state" / "ledger.sqlite"
    if stored_ledger:  # e.g. it ran before: checked against the ledger the node replays
        ledger.parent.mkdir(mode=0o700)
        LedgerStore(ledger, genesis.chain_id).close()
    error = _run_refused(tmp_path / "outsider" / "site.toml", genesis_path)
    peer = NodeIdentity.load(tmp_path / "outsider" / "node.key").node_id.peer_id
    assert f"identity {peer} is not a member of chain {genesis.chain_id.hex()}" in error
    assert "swarmnode join" in error
    assert ledger.exists() == stored_ledger  # a fresh site is refused before it opens a ledger


def test_a_port_in_use_is_reported_with_its_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    genesis_path, _ = _founded(tmp_path, capsys)
    config = NodeConfig.load(tmp_path / "a" / "site.toml")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", config.network.port))
        holder.listen()
        error = _run_refused(tmp_path / "a" / "site.toml", genesis_path)
    assert f"network.port: 127.0.0.1:{config.network.port} is in use" in error


@pytest.mark.parametrize(
    ("content", "mode", "named"),
    [
        (b"not a key\n", 0o600, "expected exactly one line"),
        (b"\xff\xfe garbage", 0o600, "cannot read key file"),
        (None, 0o600, "key file not found"),
        (b"keep", 0o644, "chmod 600"),  # the right key, readable by others
    ],
)
def test_a_wrong_identity_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, mode: int, named: str
) -> None:
    genesis_path, _ = _founded(tmp_path, capsys)
    key = tmp_path / "a" / "node.key"
    if content != b"keep":
        key.unlink()
        if content is not None:
            key.write_bytes(content)
    if key.exists():
        key.chmod(mode)
    error = _run_refused(tmp_path / "a" / "site.toml", genesis_path)
    assert str(key) in error
    assert named in error


def test_a_joiner_starts_with_its_own_join_request_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, genesis = _founded(tmp_path, capsys, "joiner")
    joiner = NodeIdentity.load(tmp_path / "joiner" / "node.key")
    request = tmp_path / "joiner" / JOIN_REQUEST_FILE
    founders = [m.node_id for m in genesis.members]

    def check() -> None:
        check_membership(
            joiner.node_id, chain_id=genesis.chain_id, members=founders, pending=(), join_request=request
        )

    with pytest.raises(StartRefused, match="no join request"):
        check()
    request.write_bytes(TxSigner(genesis.chain_id, joiner).sign(JoinRequest(name="joiner", addresses=())))
    check()  # a joiner waiting for admission starts
    request.write_bytes(TxSigner(b"\x01" * 32, joiner).sign(JoinRequest(name="joiner", addresses=())))
    with pytest.raises(StartRefused, match=f"not a join request for chain {genesis.chain_id.hex()}"):
        check()
    someone = NodeIdentity.load(tmp_path / "a" / "node.key")
    request.write_bytes(TxSigner(genesis.chain_id, someone).sign(JoinRequest(name="a", addresses=())))
    with pytest.raises(StartRefused, match="not a join request signed by this site's identity"):
        check()
    check_membership(  # a pending joiner (its request on the ledger) needs no file
        joiner.node_id, chain_id=genesis.chain_id, members=founders, pending=[joiner.node_id],
        join_request=tmp_path / "nowhere",
    )  # fmt: skip
