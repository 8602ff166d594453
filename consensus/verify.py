"""`verify_chain`: re-check a whole stored ledger from genesis, offline.

For every stored block, in order: it decodes; its stored hash is the hash of
its header; it links to the previous block; its proposer was a validator; the
certificate of the previous block it carries and its own certificate hold
>2/3 valid precommit signatures (on this chain id) of that height's
validators; its `app_hash` equals the state a fresh application reaches by
replaying every earlier block; stored snapshots match the replayed state.
The report names each problem by height and field; `swarmnode ledger verify`
prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from crypto import cbor
from crypto.envelope import EnvelopeCodec
from crypto.errors import ProtocolError

from .app import AppFactory
from .blocks import GENESIS_PREV_HASH, Block, CommitCertificate, EnvelopeOpener, verify_certificate
from .messages import CONSENSUS_MESSAGES
from .store import LedgerStore


@final
@dataclass(frozen=True, slots=True)
class ChainProblem:
    height: int
    field: str  # "height", "block", "hash", "prev_hash", "proposer", "app_hash", "last_commit", ...
    message: str

    def __str__(self) -> str:
        return f"height {self.height}: {self.field}: {self.message}"


@final
@dataclass(frozen=True, slots=True)
class ChainReport:
    chain_id: bytes
    blocks: int  # blocks examined
    verified_height: int  # last height up to which everything checked out (0: none)
    app_hash: bytes | None  # replayed application hash after the last examined block
    problems: tuple[ChainProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"chain {self.chain_id.hex()[:16]}: {self.blocks} blocks"
        if self.ok:
            return f"{head}, all valid (app hash {(self.app_hash or b'').hex()[:16]})"
        return "\n".join([f"{head}, {len(self.problems)} problem(s):", *(f"  {p}" for p in self.problems)])


def verify_chain(store: LedgerStore, app_factory: AppFactory) -> ChainReport:
    """Re-verify every block, certificate and transaction in `store` from genesis."""
    opener = EnvelopeOpener(EnvelopeCodec(store.chain_id, CONSENSUS_MESSAGES))
    app = app_factory()
    problems: list[ChainProblem] = []
    snapshots = dict(store.snapshot_hashes())
    prev_hash = GENESIS_PREV_HASH
    expected = 1
    verified = 0
    examined = 0
    app_hash: bytes | None = app.app_hash()
    for height, stored_hash, raw_block, raw_certificate in store.raw_blocks():
        examined += 1
        found: list[ChainProblem] = []

        def problem(
            field: str, message: str, height: int = height, found: list[ChainProblem] = found
        ) -> None:
            found.append(ChainProblem(height, field, message))

        if height != expected:
            problem("height", f"expected block {expected} next: the chain has a gap")
            problems.extend(found)
            break
        try:
            block = cbor.loads_dataclass(Block, raw_block)
        except ProtocolError as exc:
            problem("block", f"does not decode: {exc}")
            problems.extend(found)
            break  # nothing after an undecodable block can be replayed
        digest = block.hash
        if block.height != height:
            problem("block.height", f"block says height {block.height}")
        if stored_hash != digest:
            problem("hash", "stored hash is not the hash of the block header")
        if block.prev_hash != prev_hash:
            problem("prev_hash", f"does not link to block {height - 1}")
        validators = app.validators(height)
        if block.proposer not in validators:
            problem("proposer", f"{block.proposer.short} was not a validator of height {height}")
        if block.app_hash != app.app_hash():
            problem("app_hash", f"differs from the replayed state after block {height - 1}")
        if block.last_commit is not None:
            try:
                if block.last_commit.block_hash != prev_hash:
                    problem("last_commit", f"certifies another block than block {height - 1}")
                verify_certificate(block.last_commit, opener, app.validators(height - 1))
            except ProtocolError as exc:
                problem("last_commit", str(exc))
        try:
            certificate = cbor.loads_dataclass(CommitCertificate, raw_certificate)
            if certificate.height != height or certificate.block_hash != digest:
                problem("certificate", "certifies another height or block")
            verify_certificate(certificate, opener, validators)
        except ProtocolError as exc:
            problem("certificate", str(exc))
        app.apply_block(height, block.txs)
        app_hash = app.app_hash()
        if height in snapshots:
            problem_text = _check_snapshot(store, app_factory, height, app_hash)
            if problem_text is not None:
                problem("snapshot", problem_text)
        problems.extend(found)
        if not problems:
            verified = height
        prev_hash = digest
        expected = height + 1
    return ChainReport(store.chain_id, examined, verified, app_hash, tuple(problems))


def _check_snapshot(store: LedgerStore, app_factory: AppFactory, height: int, replayed: bytes) -> str | None:
    """Why the snapshot after `height` is wrong (recorded hash or restored state), or None."""
    stored = store.snapshot(height)
    if stored is None:
        return "snapshot vanished while verifying"
    recorded, state = stored
    if recorded != replayed:
        return "recorded snapshot hash differs from the replayed state"
    fresh = app_factory()
    try:
        fresh.restore(state)
    except (ProtocolError, ValueError, TypeError, KeyError) as exc:
        return f"snapshot state does not restore: {exc}"
    if fresh.app_hash() != replayed:
        return "snapshot state restores to another state than the replayed one"
    return None
