"""Mempool: dedup by hash, size and count limits, app re-check after commits."""

from __future__ import annotations

import pytest

from consensus.blocks import MAX_TX_BYTES, sha256
from consensus.mempool import Mempool, MempoolLimits


def check(tx: bytes) -> str | None:
    return "odd" if tx.startswith(b"bad") else None


def test_dedup_limits_and_app_check() -> None:
    pool = Mempool(check, MempoolLimits(max_tx_bytes=8, max_total_bytes=16, max_txs=3))
    assert pool.add(b"a") is None
    assert pool.add(b"a") == "duplicate: already pending"
    assert pool.add(b"") is not None
    assert pool.add(b"123456789") is not None  # over the per-tx limit
    assert pool.add(b"bad") == "odd"
    assert pool.add(b"12345678") is None
    assert pool.add(b"1234567") is None  # 16 bytes in total now
    assert pool.add(b"x") == "mempool full"
    assert (len(pool), pool.total_bytes) == (3, 16)
    assert b"a" in pool


def test_reap_is_ordered_and_bounded() -> None:
    pool = Mempool(check)
    for tx in (b"one", b"two-two", b"three"):
        pool.add(tx)
    assert pool.reap() == (b"one", b"two-two", b"three")
    assert pool.reap(max_bytes=8) == (b"one", b"three")  # skips what does not fit
    assert pool.reap(max_txs=1) == (b"one",)


def test_update_removes_committed_rechecks_and_refuses_replays() -> None:
    state = {"bad-now": False}

    def stateful(tx: bytes) -> str | None:
        return "became invalid" if state["bad-now"] and tx == b"later" else None

    pool = Mempool(stateful)
    pool.add(b"done")
    pool.add(b"later")
    pool.add(b"stays")
    state["bad-now"] = True
    pool.update([b"done"])
    assert pool.pending() == (b"stays",)
    assert pool.total_bytes == len(b"stays")
    assert pool.add(b"done") == "duplicate: already committed"
    assert sha256(b"done") not in {sha256(t) for t in pool.pending()}


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_tx_bytes"):
        MempoolLimits(max_tx_bytes=MAX_TX_BYTES + 1)
    with pytest.raises(ValueError, match="at least one"):
        MempoolLimits(max_tx_bytes=10, max_total_bytes=5)
