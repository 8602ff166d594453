"""Real node processes killed mid-training (CI size of `scripts/chaos.py`), and their ledgers audited.

One chaos run: 4 `swarmnode run` processes on 127.0.0.1 train 4 secure rounds; a
random site is SIGKILLed in the contribute phase and restarted, then all four are
SIGKILLed at once in a ready phase from round 2 on and restarted (4 rounds, not 2: a
round takes about a second, and a phase the script does not see cannot be hit). Training must finish with
one final model, every ledger verified, zero lost commits and identical blocks
everywhere (the script's own checks, exit status 0). The long version is ``python
scripts/chaos.py`` (every phase, full restarts in later phases, partitions).

Then the CLI over one of those real ledgers with a tampered block: `swarmnode ledger
verify` names the height and field, `swarmnode ledger show` and the node's startup
(`consensus.store.recover`) refuse the store.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from consensus.blocks import Block
from consensus.contract import Contract
from consensus.errors import StoreError
from consensus.genesis import Genesis
from consensus.store import LedgerStore, recover
from crypto import cbor
from swarmnode.cli import main

if TYPE_CHECKING:  # the fixtures' types; conftest is not importable at run time
    from conftest import ChaosRunner

pytestmark = pytest.mark.timeout(600)
RUN_LIMIT = 480.0


@pytest.fixture(scope="module")
def chaos_run(
    tmp_path_factory: pytest.TempPathFactory, run_chaos: ChaosRunner
) -> tuple[Path, dict[str, Any], str]:
    workdir = tmp_path_factory.mktemp("chaos") / "net"
    result, text = run_chaos(
        workdir,
        ["--nodes", "4", "--rounds", "4", "--phases", "contribute",
        "--restart-all-phase", "ready", "--partitions", "--seed", "3"],
        limit=RUN_LIMIT,
    )
    return workdir, result, text


def test_sigkill_of_a_site_and_of_all_sites_mid_training(chaos_run: tuple[Path, dict[str, Any], str]) -> None:
    _, result, text = chaos_run
    assert result["ok"]
    assert [f["kind"] for f in result["faults"]] == ["kill@contribute", "restart-all"]
    assert all(f["outcome"] == "recovered" for f in result["faults"])
    assert result["lost_commits"] == 0
    assert result["divergent_blocks"] == 0
    assert result["divergent_models"] == 0
    assert len(set(result["final_hashes"].values())) == 1
    assert all(result["ledgers_ok"].values())
    assert "lost commits: 0" in text


def test_cli_ledger_verify_names_a_tampered_block_and_the_node_refuses_it(
    chaos_run: tuple[Path, dict[str, Any], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _, _ = chaos_run
    workdir = tmp_path / "net"  # a copy: site.toml paths are relative (../genesis.cbor, ../data)
    shutil.copytree(source, workdir, ignore=shutil.ignore_patterns("report", "*.log"))
    config = workdir / "site0" / "site.toml"
    ledger = workdir / "site0" / "state" / "ledger.sqlite"
    assert main(["ledger", "verify", "--config", str(config)]) == 0
    capsys.readouterr()
    # Flip one byte inside a transaction's signature in the newest block that has one.
    with LedgerStore.open_existing(ledger) as store:
        height = max(s.block.height for s in store.blocks() if s.block.txs)
        raw = next(b for h, _, b, _ in store.raw_blocks(height) if h == height)
    block = cbor.loads_dataclass(Block, raw)
    tx = bytearray(block.txs[0])
    tx[-5] ^= 0x01
    forged = Block(
        height=block.height,
        prev_hash=block.prev_hash,
        proposer=block.proposer,
        txs=(bytes(tx), *block.txs[1:]),
        app_hash=block.app_hash,
        last_commit=block.last_commit,
    )
    with sqlite3.connect(ledger) as db:
        db.execute("UPDATE blocks SET block = ? WHERE height = ?", (cbor.dumps_dataclass(forged), height))
    db.close()
    assert main(["ledger", "verify", "--config", str(config)]) == 1
    out = capsys.readouterr()
    report = out.out + out.err
    assert f"height {height}: hash" in report, report
    assert f"height {height}: certificate" in report, report
    assert main(["ledger", "show", "--config", str(config)]) != 0
    shown = capsys.readouterr()
    assert "cannot replay the ledger" in shown.out + shown.err
    genesis = Genesis.load(workdir / "genesis.cbor")
    with LedgerStore(ledger, genesis.chain_id) as store, pytest.raises(StoreError, match=f"height {height}"):
        recover(store, lambda: Contract(genesis))
