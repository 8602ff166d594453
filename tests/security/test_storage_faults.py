"""Storage faults: torn writes, tampered stores, a full disk.

- **Torn write.** A child process runs a 4-validator ledger on real SQLite files
  (`consensus.simulator.Simulation` with a store directory) and is SIGKILLed, either
  from inside SQLite itself (a progress handler that kills the process while a write
  transaction is open: certainly mid-write) or from outside at a random instant.
  After each death: every store passes SQLite's integrity check, `verify_chain` and
  `recover`; no height the child saw committed is missing (zero lost commits); and
  the next child continues the same ledger from the stores.
- **Tampering.** One byte flipped in a stored block, certificate, stored hash or
  snapshot: `verify_chain` names the height and field, and `recover` (what a node
  runs at start) refuses with `StoreError` naming them, rather than replaying a
  corrupt ledger.
- **Full disk** (SQLite's ``max_page_count``, which fails writes exactly like a full
  file system: ``database or disk is full``): the failing write leaves the store as it
  was, the node's shell stops instead of running ahead of its store, and once space
  is back the ledger restarts from the store and catches up, nothing lost.
(The CLI over a real site's tampered ledger: `test_storage_faults_processes.py`.)

Run as a script (``python test_storage_faults.py child ...``) this file is the child.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

N_NODES = 4
RUNS = int(os.environ.get("SWARMNODE_STORAGE_RUNS", "6"))
CHILD_LIMIT = 60.0  # seconds a child may live before the parent kills it anyway


def _child(store_dir: str, mode: str, seed: int, log: str) -> None:
    """Run the ledger until killed; log every height after its block is durably stored."""
    from consensus.simulator import Simulation, kv_set

    rnd = random.Random(seed)
    sim = Simulation(N_NODES, 5, store_dir=store_dir, snapshot_every=3)
    out = open(log, "a", buffering=1)  # noqa: SIM115  (lives until the process dies)
    writes = 0
    kill_at = rnd.randrange(1, 400)

    def progress() -> int:
        nonlocal writes
        # Count VM steps only inside an open write transaction: the kill lands mid-write.
        if any(node.store._db.in_transaction for node in sim.nodes):
            writes += 1
            if writes >= kill_at:
                out.write("KILLED-MID-WRITE\n")
                os.kill(os.getpid(), signal.SIGKILL)
        return 0

    if mode == "inside":
        for node in sim.nodes:
            node.store._db.set_progress_handler(progress, rnd.randrange(1, 20))
    tips = [node.store.tip_height() for node in sim.nodes]
    out.write("START " + " ".join(map(str, tips)) + "\n")
    started = time.monotonic()
    k = 0
    while time.monotonic() - started < CHILD_LIMIT:
        if rnd.random() < 0.3:
            k += 1
            sim.submit(rnd.randrange(N_NODES), kv_set(f"key{seed}-{k}", k))
        if not sim.step():
            break
        for i, node in enumerate(sim.nodes):
            tip = node.store.tip_height()
            if tip != tips[i]:
                tips[i] = tip
                out.write(f"COMMITTED {i} {tip}\n")


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "child":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    sys.exit(0)

# -- the tests (parent side) ---------------------------------------------------------------------

import pytest  # noqa: E402

from consensus.errors import StoreError  # noqa: E402
from consensus.simulator import KVApp, Simulation, kv_set, sim_identity  # noqa: E402
from consensus.store import LedgerStore, recover  # noqa: E402
from consensus.verify import verify_chain  # noqa: E402

pytestmark = pytest.mark.timeout(300)
VALIDATORS = tuple(sim_identity(i).node_id for i in range(N_NODES))


def kv_factory() -> KVApp:
    return KVApp(VALIDATORS)


@dataclass
class TornRun:
    mode: str
    killed_mid_write: bool
    committed_seen: int  # highest height the child logged as stored, over all nodes
    lost: int  # logged heights missing from the stores afterwards
    recover_seconds: float  # all four stores: integrity check, verify_chain, recover


def check_stores(store_dir: Path, logged: list[int]) -> tuple[int, float]:
    """Lost commits over all stores, and the time to check and recover all of them."""
    started = time.perf_counter()
    lost = 0
    for i in range(N_NODES):
        path = store_dir / f"v{i}.sqlite"
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
        with LedgerStore.open_existing(path) as store:
            report = verify_chain(store, kv_factory)
            assert report.ok, str(report)
            app, resume = recover(store, kv_factory)
            assert resume.height == store.tip_height() + 1
            assert app.app_hash() == report.app_hash
            lost += max(0, logged[i] - store.tip_height())
    return lost, time.perf_counter() - started


def parse_log(log: Path) -> tuple[list[int], bool]:
    logged = [0] * N_NODES
    killed = False
    for line in log.read_text().splitlines():
        parts = line.split()
        if parts[0] == "COMMITTED":
            logged[int(parts[1])] = max(logged[int(parts[1])], int(parts[2]))
        elif parts[0] == "START":
            logged = [max(a, int(b)) for a, b in zip(logged, parts[1:], strict=True)]
        elif parts[0] == "KILLED-MID-WRITE":
            killed = True
    return logged, killed


def run_child(store_dir: Path, log: Path, mode: str, seed: int) -> int:
    """Start a child and make sure it dies by SIGKILL; returns its exit code."""
    command = [sys.executable, __file__, "child", str(store_dir), mode, str(seed), str(log)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if mode == "outside":
            # Wait for the child's first commit, then kill it at a random instant.
            deadline = time.monotonic() + CHILD_LIMIT
            while "COMMITTED" not in (log.read_text() if log.exists() else "") and proc.poll() is None:
                assert time.monotonic() < deadline, "child never committed"
                time.sleep(0.02)
            time.sleep(random.Random(seed).uniform(0.0, 0.8))
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=CHILD_LIMIT + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"child exited {proc.returncode}: {err[-2000:]}"
    return proc.returncode


def test_sigkill_mid_write_loses_no_commit_and_restarts(tmp_path: Path) -> None:
    store_dir = tmp_path / "stores"
    store_dir.mkdir()
    runs: list[TornRun] = []
    logged_total = [0] * N_NODES
    for k in range(RUNS):
        mode = "inside" if k % 2 == 0 else "outside"
        log = tmp_path / f"run{k}.log"
        run_child(store_dir, log, mode, seed=1000 + k)
        logged, killed = parse_log(log)
        assert killed == (mode == "inside")
        # A restarted child starts from what the stores hold: never below what was logged before.
        start_line = log.read_text().splitlines()[0].split()
        assert [int(x) for x in start_line[1:]] >= [0] * N_NODES
        assert all(int(x) >= prev for x, prev in zip(start_line[1:], logged_total, strict=True))
        logged_total = [max(a, b) for a, b in zip(logged_total, logged, strict=True)]
        lost, seconds = check_stores(store_dir, logged_total)
        runs.append(TornRun(mode, killed, max(logged), lost, seconds))
    print("\nrun  kill     mid-write  max-height  lost  check+recover s")
    for k, r in enumerate(runs):
        mid = str(r.killed_mid_write)
        print(f"{k:3d}  {r.mode:7s}  {mid:9s}  {r.committed_seen:10d}  {r.lost:4d}  {r.recover_seconds:.3f}")
    assert sum(r.lost for r in runs) == 0
    assert runs[-1].committed_seen > runs[0].committed_seen, "the ledger did not progress across restarts"


# -- tampering ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12+ block KV ledger on disk with snapshots every 5 heights."""
    directory = tmp_path_factory.mktemp("ledger")
    sim = Simulation(N_NODES, 21, store_dir=str(directory), snapshot_every=5)
    for k in range(8):
        sim.submit(k % N_NODES, kv_set(f"t{k}", k))
    assert sim.run_until(lambda: sim.min_honest_height() >= 12, max_time=120)
    sim.close()
    return directory / "v0.sqlite"


@pytest.fixture
def ledger_copy(sim_ledger: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.sqlite"
    source = sqlite3.connect(sim_ledger)
    with sqlite3.connect(target) as dest:
        source.backup(dest)
    source.close()
    dest.close()
    return target


def flip(path: Path, table: str, column: str, height: int, offset: int) -> None:
    with sqlite3.connect(path) as db:
        (value,) = db.execute(f"SELECT {column} FROM {table} WHERE height = ?", (height,)).fetchone()
        data = bytearray(value)
        data[offset % len(data)] ^= 0x01
        db.execute(f"UPDATE {table} SET {column} = ? WHERE height = ?", (bytes(data), height))
    db.close()


def problems_of(path: Path) -> list[tuple[int, str]]:
    with LedgerStore.open_existing(path) as store:
        report = verify_chain(store, kv_factory)
    return [(p.height, p.field) for p in report.problems]


def recover_error(path: Path) -> str:
    with LedgerStore.open_existing(path) as store, pytest.raises(StoreError) as caught:
        recover(store, kv_factory)
    return str(caught.value)


def tip_and_latest_snapshot(path: Path) -> tuple[int, int]:
    with LedgerStore.open_existing(path) as store:
        latest = store.latest_snapshot()
        assert latest is not None
        return store.tip_height(), latest[0]


@pytest.mark.parametrize("offset_seed", range(6))
@pytest.mark.parametrize(
    ("table", "column", "fields"),
    [
        ("blocks", "block", {"block", "hash", "block.height"}),
        ("blocks", "certificate", {"certificate"}),
        ("blocks", "hash", {"hash"}),
    ],
)
def test_a_flipped_byte_in_a_block_is_named_and_refused(
    ledger_copy: Path, table: str, column: str, fields: set[str], offset_seed: int
) -> None:
    tip, snapshot_height = tip_and_latest_snapshot(ledger_copy)
    height = snapshot_height + 1 + offset_seed % (tip - snapshot_height)  # replayed by recover
    offset = random.Random(offset_seed).randrange(1 << 20)
    flip(ledger_copy, table, column, height, offset)
    found = problems_of(ledger_copy)
    assert found, "verify_chain missed a flipped byte"
    assert found[0][0] == height
    assert found[0][1] in fields, found
    message = recover_error(ledger_copy)
    assert f"height {height}:" in message
    assert any(f": {f}:" in message or f"{f}:" in message for f in (*fields, "prev_hash")), message


def test_a_flipped_byte_in_an_old_block_is_named_by_verify(ledger_copy: Path) -> None:
    # Below the latest snapshot `recover` does not read blocks; `ledger verify` must name it.
    flip(ledger_copy, "blocks", "certificate", 2, 100)
    assert problems_of(ledger_copy)[0] == (2, "certificate")


@pytest.mark.parametrize("offset", [0, 5, 40, -3])
def test_a_flipped_byte_in_the_latest_snapshot_is_named_and_refused(ledger_copy: Path, offset: int) -> None:
    _, snapshot_height = tip_and_latest_snapshot(ledger_copy)
    flip(ledger_copy, "snapshots", "state", snapshot_height, offset)
    assert (snapshot_height, "snapshot") in problems_of(ledger_copy)
    message = recover_error(ledger_copy)
    assert f"height {snapshot_height}: snapshot" in message


def test_an_honest_copy_recovers(ledger_copy: Path) -> None:
    assert problems_of(ledger_copy) == []
    with LedgerStore.open_existing(ledger_copy) as store:
        _, resume = recover(store, kv_factory)
        assert resume.height == store.tip_height() + 1


# -- full disk ------------------------------------------------------------------------------------


def fill_disk(store: LedgerStore) -> None:
    """Cap the database at its current size: the next page it needs fails as on a full disk."""
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def free_disk(store: LedgerStore) -> None:
    store._db.execute("PRAGMA max_page_count = 1073741823")


def test_full_disk_fails_the_write_and_leaves_the_store_consistent(sim_ledger: Path, tmp_path: Path) -> None:
    with LedgerStore.open_existing(sim_ledger) as source:
        stored = source.blocks()
    path = tmp_path / "full.sqlite"
    with LedgerStore(path, LedgerStore.open_existing(sim_ledger).chain_id) as store:
        store.append_block(stored[0].block, stored[0].certificate)
        fill_disk(store)
        failures: list[tuple[int, str]] = []
        for s in stored[1:]:
            try:
                store.append_block(s.block, s.certificate)
            except sqlite3.OperationalError as exc:
                failures.append((s.block.height, str(exc)))
                break
        assert failures, "the capped store never filled up"
        failed_at, error = failures[0]
        assert "full" in error
        assert store.tip_height() == failed_at - 1  # the failed block is not half there
        with pytest.raises(sqlite3.OperationalError, match="full"):
            store.persist_signed(failed_at, 0, "prevote", b"x" * 20_000)
        assert store.signed_at(failed_at) == {}  # an unpersisted vote is never half stored
        free_disk(store)
        for s in stored[failed_at - 1 :]:
            store.append_block(s.block, s.certificate)
        assert store.tip_height() == len(stored)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    assert problems_of(path) == []


def test_full_disk_stops_the_node_and_it_catches_up_after(tmp_path: Path) -> None:
    """In the simulator's shell (the node's role): a commit that cannot be stored stops the
    node (the exception escapes its shell); restarted with space, it recovers and catches up."""
    directory = tmp_path / "stores"
    directory.mkdir()
    sim = Simulation(N_NODES, 3, store_dir=str(directory), snapshot_every=4)
    assert sim.run_until(lambda: sim.min_honest_height() >= 3, max_time=60)
    victim = sim.nodes[1]
    fill_disk(victim.store)
    stored_before = victim.store.tip_height()

    def run_until_the_store_fails() -> None:
        for k in range(10_000):
            sim.submit(k % N_NODES, kv_set(f"fill{k}-" + "x" * 1500, k))  # big blocks fill it fast
            sim.step()

    with pytest.raises(sqlite3.OperationalError, match="full"):
        run_until_the_store_fails()
    stopped_at = victim.store.tip_height()
    assert stopped_at >= stored_before
    committed = {i: n.store.tip_height() for i, n in enumerate(sim.nodes)}
    sim.close()
    for i in range(N_NODES):
        with LedgerStore.open_existing(directory / f"v{i}.sqlite") as store:
            report = verify_chain(store, kv_factory)
            assert report.ok, str(report)
    # Space is back (a new connection has no page cap): everyone restarts from its store.
    again = Simulation(N_NODES, 4, store_dir=str(directory), snapshot_every=4)
    target = max(committed.values()) + 3
    assert again.run_until(lambda: min(n.store.tip_height() for n in again.nodes) >= target, max_time=120)
    for i, node in enumerate(again.nodes):
        assert node.store.tip_height() >= committed[i]
        for height in range(1, committed[i] + 1):  # nothing committed before the fault was lost
            assert node.store.block(height) is not None
    again.close()
