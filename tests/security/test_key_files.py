"""Key files on disk, attacked by whoever can write to the node's storage directory (another
local account, a restored backup, an operator's slip) but does not hold the node key.

* A key-epoch file that was changed, cut short or copied to another epoch's or kind's name
  is refused, and the log names the file: the node never runs on keys it did not write.
* A key file open to group/others stops the node with the `chmod 600` fix; it is not used.
* A temporary file left over by a crash (mode 0644, or a symlink) never becomes, or
  redirects, the written file.
* A state directory of another node or chain stops the node, naming both ids (embedding
  API, and `swarmnode run` with exit code 2).

The node state they attack is made once: two sim nodes complete key epoch 1 (virtual time).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest
import trio
import trio.testing

from consensus.genesis import Genesis, StoppingRule
from crypto.errors import KeyFileError
from crypto.identity import NodeIdentity
from models import logistic_regression
from swarmnode.cli import main
from swarmnode.config import NodeConfig
from swarmnode.keystore import NodeFiles, write_private
from swarmnode.net.memory import open_memory_network
from swarmnode.node import Node, open_swarm_node
from swarmnode.simswarm import SwarmPlan
from swarmnode.testing import make_identity, wait_until

SPEC = logistic_regression(30, 2)
pytestmark = pytest.mark.timeout(300)


@dataclasses.dataclass(frozen=True)
class Site:
    """Site 0 of a plan whose two nodes completed key epoch 1, and the directory it left."""

    plan: SwarmPlan
    state: Path

    def config(self, storage_dir: Path) -> NodeConfig:
        config = self.plan.configs[0]
        return dataclasses.replace(config, node=dataclasses.replace(config.node, storage_dir=storage_dir))


async def _complete_key_epoch_1(plan: SwarmPlan) -> None:
    async with (
        open_memory_network(seed=20) as net,
        plan.open_node(0, net) as a,
        plan.open_node(1, net) as b,
        plan.open_node(2, net) as c,
    ):
        await wait_until(
            lambda: all(keys_file(n.storage_dir, 1).exists() for n in (a, b, c)),
            timeout=600,
            what="key epoch 1",
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    root = tmp_path_factory.mktemp("key-files")
    plan = SwarmPlan.create(root, SPEC, founders=3, max_rounds=3)  # a secure swarm has t + 1 founders
    trio.run(_complete_key_epoch_1, plan, clock=trio.testing.MockClock(autojump_threshold=0))
    return Site(plan, Path(plan.configs[0].node.storage_dir))


@pytest.fixture
def state(site: Site, tmp_path: Path) -> Path:
    """A fresh copy of site 0's storage directory (modes kept)."""
    copy = tmp_path / "site0"
    shutil.copytree(site.state, copy)
    return copy


def other_chain(genesis: Genesis) -> Genesis:
    """The same members on another chain (one more round to train)."""
    stopping = StoppingRule(max_rounds=genesis.training.stopping.max_rounds + 1)
    other = dataclasses.replace(genesis, training=dataclasses.replace(genesis.training, stopping=stopping))
    assert other.chain_id != genesis.chain_id
    return other


async def open_site0(
    site: Site, state: Path, *, identity: NodeIdentity | None = None, genesis: Genesis | None = None
) -> Node:
    """Open and close site 0's node on `state`; the node as it stood after its start."""
    identity = site.plan.identities[0] if identity is None else identity
    async with open_memory_network(seed=21) as net, open_swarm_node(
        site.config(state), transport=net.transport(identity.node_id), identity=identity,
        genesis=site.plan.genesis if genesis is None else genesis, inline_compute=True,
    ) as node:  # fmt: skip
        return node


def keys_file(state: Path, epoch: int, kind: str = "keys") -> Path:
    return state / "keys" / f"epoch-{epoch}.{kind}"


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and text in r.getMessage()]


async def test_the_untouched_state_loads_its_keys(
    site: Site, state: Path, autojump_clock: trio.testing.MockClock
) -> None:
    node = await open_site0(site, state)
    assert 1 in node.epochs.keys


@pytest.mark.parametrize("mutation", ["flipped-bit", "truncated", "appended", "other-node"])
async def test_a_tampered_key_file_is_refused_with_its_name(
    site: Site,
    state: Path,
    mutation: str,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    path = keys_file(state, 1)
    data = bytearray(path.read_bytes())
    if mutation == "flipped-bit":
        # The low bit of one coefficient of a stored Shamir share (the last field, packed two
        # coefficients per 15 bytes): an unsealed file still parses, with a wrong share.
        data[len(data) - 15 * 1000] ^= 0x01
    elif mutation == "other-node":  # site 1's own, valid key file of the same epoch
        data = bytearray(keys_file(Path(site.plan.configs[1].node.storage_dir), 1).read_bytes())
    elif mutation == "truncated":
        del data[len(data) // 2 :]
    else:
        data += b"\0"
    path.write_bytes(bytes(data))
    caplog.set_level(logging.ERROR)
    node = await open_site0(site, state)
    assert 1 not in node.epochs.keys, "the node runs on a key file it did not write"
    assert logged(caplog, str(path)), "the refusal does not name the file"


async def test_a_key_file_of_the_unsealed_format_is_refused_saying_what_to_do(
    site: Site, state: Path, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    """What swarmnode wrote before key files were sealed: the node's own, but unverifiable."""
    node = await open_site0(site, state)
    path = keys_file(state, 1)
    write_private(path, node.epochs.keys[1].export_secret())
    caplog.set_level(logging.ERROR)
    node = await open_site0(site, state)
    assert 1 not in node.epochs.keys
    [message] = logged(caplog, str(path))
    assert "not a sealed key file of format version 3" in message
    assert "delete it" in message


async def test_a_key_file_copied_to_another_epoch_or_kind_is_refused(
    site: Site, state: Path, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    # Old keys replayed as a later epoch's (say epoch 1's after a member was excluded in 2).
    shutil.copy2(keys_file(state, 1), keys_file(state, 2))
    # And a secret file put where a served file is expected (the bundle goes to peers).
    shutil.copy2(keys_file(state, 1), keys_file(state, 1, "bundle"))
    caplog.set_level(logging.ERROR)
    node = await open_site0(site, state)
    assert 1 in node.epochs.keys
    assert 2 not in node.epochs.keys, "epoch 1's keys were taken for epoch 2"
    assert logged(caplog, str(keys_file(state, 2)))
    with pytest.raises(KeyFileError, match=str(keys_file(state, 1, "bundle"))):
        node.files.load_epoch(1, "bundle")


@pytest.mark.parametrize("kind", ["keys", "bundle"])
async def test_a_loosely_permissioned_key_file_stops_the_node(
    site: Site, state: Path, kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    path = keys_file(state, 1, kind)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError) as refused:
        await open_site0(site, state)
    assert str(path) in str(refused.value)
    assert f"chmod 600 {path}" in str(refused.value)


async def test_a_key_file_behind_a_symlink_stops_the_node(
    site: Site, state: Path, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = keys_file(state, 1)
    elsewhere = tmp_path / "elsewhere.keys"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    with pytest.raises(KeyFileError, match=f"{path}: .*symlink"):
        await open_site0(site, state)


@pytest.mark.parametrize("leftover", ["mode-0644", "symlink"])
def test_a_leftover_temp_file_does_not_expose_the_written_file(tmp_path: Path, leftover: str) -> None:
    path = tmp_path / "keys" / "epoch-1.keys"
    path.parent.mkdir()
    temporary = path.with_name(f".{path.name}.tmp")
    target = tmp_path / "readable-by-all"
    if leftover == "mode-0644":
        temporary.write_bytes(b"old")
        os.chmod(temporary, 0o644)
    else:
        target.write_bytes(b"")
        os.chmod(target, 0o644)
        temporary.symlink_to(target)
    write_private(path, b"secret")
    assert not path.is_symlink()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"secret"
    assert not temporary.exists()
    if leftover == "symlink":
        assert target.read_bytes() == b"", "the write went through the leftover symlink"


@pytest.mark.parametrize("foreign", ["identity", "chain", "chain-ledger-gone"])
async def test_a_foreign_state_directory_stops_the_node(
    site: Site, state: Path, foreign: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Site 1's key on site 0's directory, or site 0 on another chain (also once its ledger
    is gone, which the ledger's own chain check cannot see): refused, naming both ids."""
    owner, chain = site.plan.identities[0].node_id.peer_id, site.plan.genesis.chain_id.hex()
    if foreign == "identity":
        intruder, intruder_chain = site.plan.identities[1].node_id.peer_id, chain
        opening = open_site0(site, state, identity=site.plan.identities[1])
    else:
        if foreign == "chain-ledger-gone":
            for ledger in state.glob("ledger.sqlite*"):
                ledger.unlink()
        genesis = other_chain(site.plan.genesis)
        intruder, intruder_chain = owner, genesis.chain_id.hex()
        opening = open_site0(site, state, genesis=genesis)
    with pytest.raises(KeyFileError) as refused:
        await opening
    message = str(refused.value)
    assert str(state) in message
    assert f"belongs to node {owner} on chain {chain}" in message
    assert f"not to node {intruder} on chain {intruder_chain}" in message


def test_swarmnode_run_on_a_foreign_state_directory_exits_naming_both_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "a"
    assert main(["init", "--name", "a", "--dir", str(site), "--port", "0"]) == 0
    assert main(["genesis", "--member", f"a={site / 'node.key'}@/ip4/127.0.0.1/tcp/1",
                 "--member", f"b={'ab' * 32}@/ip4/127.0.0.1/tcp/2",
                 "--model-from", str(site / "site.toml"), "--no-secure",
                 "--out", str(site / "genesis.cbor")]) == 0  # fmt: skip
    config = NodeConfig.load(site / "site.toml")
    chain = Genesis.load(site / "genesis.cbor").chain_id
    other = make_identity(7)
    NodeFiles(config.node.storage_dir, other, chain)  # another node ran on this directory first
    capsys.readouterr()
    assert main(["run", "--plain", "--config", str(site / "site.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    me = NodeIdentity.load(config.node.key_file).node_id
    assert f"belongs to node {other.node_id.peer_id} on chain {chain.hex()}" in err
    assert f"not to node {me.peer_id} on chain {chain.hex()}" in err
