"""SQLite block store: blocks with certificates, own signed messages, app snapshots.

One database file per node, WAL journal with ``synchronous=FULL``: a write
that returned is on disk, so `persist_signed` before sending means a node
killed at any instant finds every message it may have sent (and refuses to
sign a different one for the same height/round/step, even after a restart).

Plain synchronous sqlite3: the trio shell calls it through
`trio.to_thread.run_sync`; the simulator calls it directly (``":memory:"``).
`recover` rebuilds the application and the core's `Resume` from a store.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

from crypto import cbor
from crypto.envelope import EnvelopeCodec
from crypto.errors import ProtocolError

from .app import AppFactory, Application
from .blocks import GENESIS_PREV_HASH, Block, CommitCertificate, EnvelopeOpener, verify_certificate
from .core import PRECOMMIT_STEP, Resume
from .errors import EquivocationRefused, StoreError
from .messages import CONSENSUS_MESSAGES, MAX_SYNC_BLOCKS, BlockRequest, BlockResponse, SyncedBlock

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE, block BLOB NOT NULL, certificate BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS signed (
    height INTEGER NOT NULL, round INTEGER NOT NULL, step TEXT NOT NULL, wire BLOB NOT NULL,
    locked_block BLOB, PRIMARY KEY (height, round, step));
CREATE TABLE IF NOT EXISTS snapshots (
    height INTEGER PRIMARY KEY, app_hash BLOB NOT NULL, state BLOB NOT NULL);
"""
_SYNC_BYTES_BUDGET: Final = 2 * 1024 * 1024  # per BlockResponse, well under its size limit


@final
@dataclass(frozen=True, slots=True)
class StoredBlock:
    block: Block
    certificate: CommitCertificate


def _connect_read_only(path: str) -> sqlite3.Connection:
    """A connection that never writes or creates a file: for views of another process's store
    (`swarmnode status` of a stopped node may run as another user than the node). Without a
    ``-wal`` file nobody has the store open, so it is opened immutable (SQLite then creates no
    ``-shm``/``-wal``); with one, read-only through the existing WAL (a running node's blocks)."""
    immutable = 0 if os.path.exists(f"{path}-wal") else 1
    uri = f"{Path(path).resolve().as_uri()}?mode=ro&immutable={immutable}"
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)


@final
class LedgerStore:
    """The ledger of one node on disk (or in memory for simulations)."""

    __slots__ = ("_db", "chain_id", "path")

    def __init__(self, path: str | os.PathLike[str], chain_id: bytes, *, read_only: bool = False) -> None:
        self.path: Final = str(path)
        self.chain_id: Final = chain_id
        if read_only:
            self._db = _connect_read_only(self.path)
            if self._meta("chain_id") != chain_id:
                raise StoreError(f"{self.path}: store belongs to another chain than {chain_id.hex()[:16]}")
            return
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        with self._transaction():
            stored = self._meta("chain_id")
            if stored is None:
                self._db.execute("INSERT INTO meta VALUES ('chain_id', ?)", (chain_id,))
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif stored != chain_id:
                other = stored.hex()[:16] if isinstance(stored, bytes) else repr(stored)
                raise StoreError(f"{self.path}: store belongs to chain {other}")

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str], *, read_only: bool = False) -> LedgerStore:
        """Open a store whose chain id is read from the file itself (for `verify_chain`);
        `read_only`: see `_connect_read_only`."""
        if not os.path.exists(path):
            raise StoreError(f"{path}: no such ledger store")
        probe = _connect_read_only(str(path)) if read_only else sqlite3.connect(str(path))
        try:
            row = probe.execute("SELECT value FROM meta WHERE key = 'chain_id'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: not a ledger store ({exc})") from None
        finally:
            probe.close()
        if row is None:
            raise StoreError(f"{path}: not a ledger store (no chain id)")
        return cls(path, bytes(row[0]), read_only=read_only)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, key: str) -> object:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self._db = db

        def __enter__(self) -> None:
            self._db.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type: object, *rest: object) -> None:
            if exc_type is None:
                self._db.execute("COMMIT")
            elif self._db.in_transaction:
                # SQLite rolls back by itself on some errors (SQLITE_FULL, SQLITE_IOERR): an
                # explicit ROLLBACK would then fail and hide the real error ("disk is full").
                self._db.execute("ROLLBACK")

    def _transaction(self) -> LedgerStore._Tx:
        return LedgerStore._Tx(self._db)

    # -- blocks ---------------------------------------------------------------------

    def tip_height(self) -> int:
        row = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()
        return 0 if row[0] is None else int(row[0])

    def append_block(self, block: Block, certificate: CommitCertificate) -> None:
        """Add the next block; refuse gaps, forks and a certificate for another block."""
        if certificate.height != block.height or certificate.block_hash != block.hash:
            raise StoreError(f"certificate does not certify block {block.height}")
        with self._transaction():
            tip = self.tip_height()
            if block.height != tip + 1:
                existing = self.block(block.height)
                if existing is not None and existing.hash == block.hash:
                    return  # idempotent re-append of the same block
                raise StoreError(f"block {block.height} does not follow the tip {tip}")
            prev = GENESIS_PREV_HASH if tip == 0 else self._hash(tip)
            if block.prev_hash != prev:
                raise StoreError(f"block {block.height} does not extend block {tip}")
            self._db.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, ?)",
                (block.height, block.hash, cbor.dumps_dataclass(block), cbor.dumps_dataclass(certificate)),
            )
            # Own messages below the new tip can no longer be re-sent or conflict: prune them.
            self._db.execute("DELETE FROM signed WHERE height <= ?", (block.height,))

    def _hash(self, height: int) -> bytes:
        row = self._db.execute("SELECT hash FROM blocks WHERE height = ?", (height,)).fetchone()
        if row is None:
            raise StoreError(f"no block at height {height}")
        return bytes(row[0])

    def block(self, height: int) -> Block | None:
        row = self._db.execute("SELECT block FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else cbor.loads_dataclass(Block, bytes(row[0]))

    def certificate(self, height: int) -> CommitCertificate | None:
        row = self._db.execute("SELECT certificate FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else cbor.loads_dataclass(CommitCertificate, bytes(row[0]))

    def raw_blocks(self, from_height: int = 1) -> Iterator[tuple[int, bytes, bytes, bytes]]:
        """(height, stored hash, block bytes, certificate bytes) in height order, undecoded."""
        cursor = self._db.execute(
            "SELECT height, hash, block, certificate FROM blocks WHERE height >= ? ORDER BY height",
            (from_height,),
        )
        for height, digest, block, certificate in cursor:
            yield int(height), bytes(digest), bytes(block), bytes(certificate)

    def blocks(self, from_height: int = 1, limit: int | None = None) -> list[StoredBlock]:
        out: list[StoredBlock] = []
        for _, _, block, certificate in self.raw_blocks(from_height):
            if limit is not None and len(out) >= limit:
                break
            out.append(
                StoredBlock(
                    cbor.loads_dataclass(Block, block), cbor.loads_dataclass(CommitCertificate, certificate)
                )
            )
        return out

    def block_response(self, request: BlockRequest) -> BlockResponse:
        """Answer a peer's block-sync request from this store (bounded in count and bytes)."""
        synced: list[SyncedBlock] = []
        size = 0
        for _, _, block, certificate in self.raw_blocks(request.from_height):
            if len(synced) >= MAX_SYNC_BLOCKS or (synced and size + len(block) > _SYNC_BYTES_BUDGET):
                break
            size += len(block) + len(certificate)
            synced.append(
                SyncedBlock(
                    block=cbor.loads_dataclass(Block, block),
                    certificate=cbor.loads_dataclass(CommitCertificate, certificate),
                )
            )
        return BlockResponse(blocks=tuple(synced), tip=self.tip_height())

    # -- own signed messages (persist before send) ------------------------------------------

    def persist_signed(
        self, height: int, round: int, step: str, wire: bytes, locked_block: Block | None = None
    ) -> None:
        """Durably record an own signed message; refuse a different one for the same slot."""
        locked = None if locked_block is None else cbor.dumps_dataclass(locked_block)
        with self._transaction():
            row = self._db.execute(
                "SELECT wire FROM signed WHERE height = ? AND round = ? AND step = ?", (height, round, step)
            ).fetchone()
            if row is not None:
                if bytes(row[0]) != wire:
                    raise EquivocationRefused(f"already signed a different {step} at {height}/{round}")
                return
            self._db.execute("INSERT INTO signed VALUES (?, ?, ?, ?, ?)", (height, round, step, wire, locked))

    def signed_at(self, height: int) -> dict[tuple[int, str], bytes]:
        rows = self._db.execute("SELECT round, step, wire FROM signed WHERE height = ?", (height,))
        return {(int(r), str(s)): bytes(w) for r, s, w in rows}

    def locked_at(self, height: int) -> tuple[Block, int] | None:
        """The block of our highest-round non-nil precommit at `height` (our lock), if any."""
        row = self._db.execute(
            "SELECT locked_block, round FROM signed WHERE height = ? AND step = ? "
            "AND locked_block IS NOT NULL ORDER BY round DESC LIMIT 1",
            (height, PRECOMMIT_STEP),
        ).fetchone()
        return None if row is None else (cbor.loads_dataclass(Block, bytes(row[0])), int(row[1]))

    # -- application snapshots ---------------------------------------------------------------

    def save_snapshot(self, height: int, app_hash: bytes, state: bytes) -> None:
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?)", (height, app_hash, state))

    def snapshot_hashes(self) -> list[tuple[int, bytes]]:
        """(height, app hash) of every stored snapshot."""
        rows = self._db.execute("SELECT height, app_hash FROM snapshots ORDER BY height")
        return [(int(h), bytes(a)) for h, a in rows]

    def snapshot(self, height: int) -> tuple[bytes, bytes] | None:
        """(app hash, state) of the snapshot taken after block `height`, if any."""
        row = self._db.execute("SELECT app_hash, state FROM snapshots WHERE height = ?", (height,)).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def latest_snapshot(self) -> tuple[int, bytes, bytes] | None:
        """(height, app hash, state) of the newest snapshot at or below the tip."""
        row = self._db.execute(
            "SELECT height, app_hash, state FROM snapshots WHERE height <= ? ORDER BY height DESC LIMIT 1",
            (self.tip_height(),),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), bytes(row[2]))


def recover(store: LedgerStore, app_factory: AppFactory) -> tuple[Application, Resume]:
    """Rebuild the application (newest snapshot + replay) and where the core resumes.

    Refuses (`StoreError`, naming height and field) to go on from a store whose replayed
    part is corrupt or tampered with: every block after the snapshot must decode, carry
    its stored hash, link to its predecessor, state the application hash the replay
    reached, and come with a certificate of >2/3 valid precommits of its validators; a
    tampered snapshot must restore to its recorded hash and to the hash the next block
    states. Blocks below the snapshot are not read here; `verify_chain` (`swarmnode
    ledger verify`) re-checks the whole chain from genesis.
    """
    app = app_factory()
    start = 1
    snapshot = store.latest_snapshot()
    if snapshot is not None:
        height, app_hash, state = snapshot
        try:
            app.restore(state)
        except (ProtocolError, ValueError) as exc:
            raise StoreError(f"{store.path}: height {height}: snapshot: does not restore ({exc})") from None
        if app.app_hash() != app_hash:
            raise StoreError(
                f"{store.path}: height {height}: snapshot: does not restore to its recorded app hash"
            )
        start = height + 1
    opener = EnvelopeOpener(EnvelopeCodec(store.chain_id, CONSENSUS_MESSAGES))
    prev_hash = GENESIS_PREV_HASH if start == 1 else store._hash(start - 1)
    for height, stored_hash, raw_block, raw_certificate in store.raw_blocks(start):

        def corrupt(field: str, message: str, height: int = height) -> StoreError:
            return StoreError(
                f"{store.path}: height {height}: {field}: {message}; refusing to start from a corrupt "
                "ledger (run `swarmnode ledger verify` for the full report)"
            )

        try:
            block = cbor.loads_dataclass(Block, raw_block)
        except ProtocolError as exc:
            raise corrupt("block", f"does not decode ({exc})") from None
        try:
            certificate = cbor.loads_dataclass(CommitCertificate, raw_certificate)
        except ProtocolError as exc:
            raise corrupt("certificate", f"does not decode ({exc})") from None
        if block.height != height or block.hash != stored_hash:
            raise corrupt("hash", "the stored block is not the block committed at this height")
        if block.prev_hash != prev_hash:
            raise corrupt("prev_hash", f"does not link to block {height - 1}")
        if block.app_hash != app.app_hash():
            raise corrupt("app_hash", f"differs from the state replayed up to block {height - 1}")
        if certificate.height != height or certificate.block_hash != stored_hash:
            raise corrupt("certificate", "certifies another height or block")
        try:
            verify_certificate(certificate, opener, app.validators(height))
        except ProtocolError as exc:
            raise corrupt("certificate", str(exc)) from None
        app.apply_block(height, block.txs)
        prev_hash = stored_hash
    tip = store.tip_height()
    last_hash = GENESIS_PREV_HASH if tip == 0 else store._hash(tip)
    resume = Resume(
        height=tip + 1,
        last_block_hash=last_hash,
        last_certificate=store.certificate(tip) if tip else None,
        signed=store.signed_at(tip + 1),
        locked=store.locked_at(tip + 1),
    )
    return app, resume
