"""Mempool: pending transactions, deduplicated by hash, bounded in count and bytes.

Admission asks the application (`check_tx`) against its current state. After a
commit, `update` removes the committed transactions and re-checks the rest
against the new state, dropping those that became invalid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, final

from .blocks import MAX_BLOCK_TX_BYTES, MAX_BLOCK_TXS, MAX_TX_BYTES, sha256

_REMEMBERED_COMMITS: Final = 100_000


@final
@dataclass(frozen=True, slots=True)
class MempoolLimits:
    max_tx_bytes: int = MAX_TX_BYTES
    max_total_bytes: int = 8 * 1024 * 1024
    max_txs: int = 10_000

    def __post_init__(self) -> None:
        if not 0 < self.max_tx_bytes <= MAX_TX_BYTES:
            raise ValueError(f"max_tx_bytes must be in (0, {MAX_TX_BYTES}]")
        if self.max_total_bytes < self.max_tx_bytes or self.max_txs < 1:
            raise ValueError("mempool must hold at least one largest transaction")


@final
class Mempool:
    """Insertion-ordered pending transactions. The order is the proposal order."""

    __slots__ = ("_bytes", "_check", "_pending", "_seen_committed", "limits")

    def __init__(
        self, check_tx: Callable[[bytes], str | None], limits: MempoolLimits = MempoolLimits()
    ) -> None:
        self._check = check_tx
        self.limits: Final = limits
        self._pending: dict[bytes, bytes] = {}  # tx hash -> tx, in arrival order
        self._bytes = 0
        # Hashes of recently committed txs (bounded, oldest forgotten first): refuses replays
        # gossiped late. Older replays reach the application, whose check_tx must refuse them.
        self._seen_committed: dict[bytes, None] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, tx: bytes) -> bool:
        return sha256(tx) in self._pending

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def add(self, tx: bytes) -> str | None:
        """Admit `tx`; None if it was added, else why not (duplicate, too large, full, invalid)."""
        if not 0 < len(tx) <= self.limits.max_tx_bytes:
            return f"transaction of {len(tx)} bytes outside (0, {self.limits.max_tx_bytes}]"
        digest = sha256(tx)
        if digest in self._pending:
            return "duplicate: already pending"
        if digest in self._seen_committed:
            return "duplicate: already committed"
        if len(self._pending) >= self.limits.max_txs or self._bytes + len(tx) > self.limits.max_total_bytes:
            return "mempool full"
        reason = self._check(tx)
        if reason is not None:
            return reason
        self._pending[digest] = tx
        self._bytes += len(tx)
        return None

    def reap(self, max_bytes: int = MAX_BLOCK_TX_BYTES, max_txs: int = MAX_BLOCK_TXS) -> tuple[bytes, ...]:
        """The oldest pending transactions that fit in one block (they stay pending)."""
        out: list[bytes] = []
        size = 0
        for tx in self._pending.values():
            if len(out) >= max_txs:
                break
            if size + len(tx) > max_bytes:
                continue
            out.append(tx)
            size += len(tx)
        return tuple(out)

    def pending(self) -> tuple[bytes, ...]:
        return tuple(self._pending.values())

    def update(self, committed: Iterable[bytes]) -> None:
        """Remove committed transactions, then drop pending ones the new state refuses."""
        for tx in committed:
            digest = sha256(tx)
            self._seen_committed[digest] = None
            if len(self._seen_committed) > _REMEMBERED_COMMITS:
                del self._seen_committed[next(iter(self._seen_committed))]
            removed = self._pending.pop(digest, None)
            if removed is not None:
                self._bytes -= len(removed)
        for digest, tx in list(self._pending.items()):
            if self._check(tx) is not None:
                del self._pending[digest]
                self._bytes -= len(tx)
