"""SQLite store (blocks, own votes, snapshots, recovery) and verify_chain on tampered ledgers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from consensus.blocks import GENESIS_PREV_HASH, Block, CommitCertificate
from consensus.errors import EquivocationRefused, StoreError
from consensus.messages import BlockRequest
from consensus.simulator import KVApp, Simulation, kv_set
from consensus.store import LedgerStore, recover
from consensus.verify import verify_chain
from crypto import cbor


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Simulation]:
    """A 4-validator ledger of 8+ blocks with transactions, stored on disk."""
    directory = tmp_path_factory.mktemp("ledger")
    sim = Simulation(4, 11, store_dir=str(directory), snapshot_every=3)
    for k in range(5):
        sim.submit(k % 4, kv_set(f"key{k}", k))
    assert sim.run_until(lambda: sim.min_honest_height() >= 8, max_time=60)
    sim.close()
    return directory / "v0.sqlite", sim


def copy_of(path: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.sqlite"
    source = sqlite3.connect(path)
    with sqlite3.connect(target) as dest:
        source.backup(dest)
    source.close()
    return target


def app_factory(sim: Simulation) -> KVApp:
    return KVApp(sim.genesis_validators)


def test_store_pragmas_and_contents(chain: tuple[Path, Simulation]) -> None:
    path, _ = chain
    with LedgerStore.open_existing(path) as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        tip = store.tip_height()
        assert tip >= 8
        assert [b.block.height for b in store.blocks()] == list(range(1, tip + 1))
        assert store.block(tip + 1) is None
        assert [h for h, _ in store.snapshot_hashes()] == list(range(3, tip + 1, 3))
        response = store.block_response(BlockRequest(from_height=2))
        assert response.blocks[0].block.height == 2
        assert response.tip == tip


def test_verify_chain_accepts_an_honest_ledger(chain: tuple[Path, Simulation]) -> None:
    path, sim = chain
    with LedgerStore.open_existing(path) as store:
        report = verify_chain(store, lambda: app_factory(sim))
    assert report.ok, str(report)
    assert report.verified_height == report.blocks >= 8
    replayed = KVApp(sim.genesis_validators)
    with LedgerStore.open_existing(path) as store:
        for stored in store.blocks():
            replayed.apply_block(stored.block.height, stored.block.txs)
    assert replayed.state == {f"key{k}": k for k in range(5)}
    assert report.app_hash == replayed.app_hash()
    assert "all valid" in str(report)


def tamper(path: Path, sql: str, *args: object) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql, args)
    db.close()


def problems(path: Path, sim: Simulation) -> list[tuple[int, str]]:
    with LedgerStore.open_existing(path) as store:
        report = verify_chain(store, lambda: app_factory(sim))
    assert not report.ok
    return [(p.height, p.field) for p in report.problems]


def test_verify_chain_names_a_rewritten_transaction(chain: tuple[Path, Simulation], tmp_path: Path) -> None:
    path, sim = chain
    copy = copy_of(path, tmp_path)
    with LedgerStore.open_existing(copy) as store:
        block = store.block(3)
    assert block is not None
    forged = Block(
        height=3,
        prev_hash=block.prev_hash,
        proposer=block.proposer,
        txs=(kv_set("key0", 999),),
        app_hash=block.app_hash,
        last_commit=block.last_commit,
    )
    tamper(copy, "UPDATE blocks SET block = ? WHERE height = 3", cbor.dumps_dataclass(forged))
    found = problems(copy, sim)
    assert (3, "hash") in found
    assert (3, "certificate") in found  # the certificate is for the original block
    assert (4, "prev_hash") in found
    assert (4, "app_hash") in found  # replaying the forged tx changes the state


def test_verify_chain_names_a_weakened_certificate(chain: tuple[Path, Simulation], tmp_path: Path) -> None:
    path, sim = chain
    copy = copy_of(path, tmp_path)
    with LedgerStore.open_existing(copy) as store:
        cert = store.certificate(5)
    assert cert is not None
    weak = CommitCertificate(cert.height, cert.round, cert.block_hash, cert.precommits[:2])
    tamper(copy, "UPDATE blocks SET certificate = ? WHERE height = 5", cbor.dumps_dataclass(weak))
    assert problems(copy, sim) == [(5, "certificate")]


def test_verify_chain_names_gaps_bad_snapshots_and_wrong_validators(
    chain: tuple[Path, Simulation], tmp_path: Path
) -> None:
    path, sim = chain
    copy = copy_of(path, tmp_path)
    tamper(copy, "UPDATE snapshots SET app_hash = ? WHERE height = 3", b"\x00" * 32)
    assert problems(copy, sim) == [(3, "snapshot")]
    tamper(copy, "DELETE FROM blocks WHERE height = 4")
    assert problems(copy, sim)[-1] == (5, "height")
    # Verified against another validator set, every certificate is wrong.
    from consensus.simulator import sim_identity

    strangers = tuple(sim_identity(50 + i).node_id for i in range(4))
    with LedgerStore.open_existing(path) as store:
        report = verify_chain(store, lambda: KVApp(strangers))
    assert (1, "certificate") in [(p.height, p.field) for p in report.problems]
    assert (1, "proposer") in [(p.height, p.field) for p in report.problems]


def test_append_refuses_gaps_forks_and_foreign_certificates(
    chain: tuple[Path, Simulation], tmp_path: Path
) -> None:
    path, _ = chain
    source = LedgerStore.open_existing(path)
    b1, c1 = source.block(1), source.certificate(1)
    b2, c2 = source.block(2), source.certificate(2)
    source.close()
    assert b1 is not None
    assert c1 is not None
    assert b2 is not None
    assert c2 is not None
    store = LedgerStore(":memory:", b"\x05" * 32)
    with pytest.raises(StoreError, match="does not follow"):
        store.append_block(b2, c2)
    with pytest.raises(StoreError, match="certify"):
        store.append_block(b1, c2)
    store.append_block(b1, c1)
    store.append_block(b1, c1)  # idempotent
    fork = Block(
        height=1,
        prev_hash=GENESIS_PREV_HASH,
        proposer=b1.proposer,
        txs=(b"x",),
        app_hash=b1.app_hash,
        last_commit=None,
    )
    with pytest.raises(StoreError):
        store.append_block(fork, CommitCertificate(1, 0, fork.hash, c1.precommits))
    assert store.tip_height() == 1
    store.close()


def test_persist_signed_refuses_a_second_different_message_even_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    with LedgerStore(path, b"\x01" * 32) as store:
        store.persist_signed(1, 0, "prevote", b"first")
        store.persist_signed(1, 0, "prevote", b"first")  # idempotent
    with LedgerStore(path, b"\x01" * 32) as store:
        with pytest.raises(EquivocationRefused):
            store.persist_signed(1, 0, "prevote", b"second")
        assert store.signed_at(1) == {(0, "prevote"): b"first"}
    with pytest.raises(StoreError, match="belongs to chain"):
        LedgerStore(path, b"\x02" * 32)


def test_recover_from_snapshot_plus_replay_matches_full_replay(chain: tuple[Path, Simulation]) -> None:
    path, sim = chain
    with LedgerStore.open_existing(path) as store:
        app, resume = recover(store, lambda: app_factory(sim))
        tip = store.tip_height()
        assert resume.height == tip + 1
        last = store.block(tip)
        assert last is not None
        assert resume.last_block_hash == last.hash
        assert resume.last_certificate == store.certificate(tip)
    full = KVApp(sim.genesis_validators)
    with LedgerStore.open_existing(path) as store:
        for stored in store.blocks():
            full.apply_block(stored.block.height, stored.block.txs)
    assert app.app_hash() == full.app_hash()


def test_open_existing_refuses_missing_files(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such"):
        LedgerStore.open_existing(tmp_path / "nope.sqlite")


def test_verify_chain_restores_each_snapshot(chain: tuple[Path, Simulation], tmp_path: Path) -> None:
    path, sim = chain
    copy = copy_of(path, tmp_path)
    with LedgerStore.open_existing(copy) as store:
        later = store.snapshot(6)
    assert later is not None
    tamper(copy, "UPDATE snapshots SET state = ? WHERE height = 3", later[1])  # right hash, wrong state
    tamper(copy, "UPDATE snapshots SET state = ? WHERE height = 6", b"\xff")  # garbage
    assert problems(copy, sim) == [(3, "snapshot"), (6, "snapshot")]
