"""The decryption-share log: durable, one record per (key epoch, aggregate), torn tails dropped."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from crypto.identity import NodeIdentity
from swarmnode.sharelog import SHARE_LOG_NAME, ShareLog, ShareLogError, ShareRecord

NODES = tuple(NodeIdentity.from_seed(hashlib.sha256(b"log %d" % i).digest()).node_id for i in range(3))


def record(epoch: int, label: bytes) -> ShareRecord:
    return ShareRecord(
        epoch=epoch,
        aggregate_hash=hashlib.sha256(label).digest(),
        decrypt_set=NODES[:2],
        share_hash=hashlib.sha256(b"share " + label).digest(),
    )


def test_records_survive_a_reopen_and_a_second_share_is_refused(tmp_path: Path) -> None:
    log = ShareLog(tmp_path)
    first, second = record(1, b"a"), record(2, b"a")
    log.record(first)
    log.record(second)  # another key epoch: another aggregate
    with pytest.raises(ValueError, match="already has a decryption share"):
        log.record(
            ShareRecord(
                epoch=1, aggregate_hash=first.aggregate_hash, decrypt_set=NODES[1:], share_hash=b"x" * 32
            )
        )
    again = ShareLog(tmp_path)
    assert again.get(1, first.aggregate_hash) == first
    assert again.get(2, first.aggregate_hash) == second
    assert again.get(3, first.aggregate_hash) is None
    assert (tmp_path / SHARE_LOG_NAME).stat().st_mode & 0o777 == 0o600


def test_a_torn_last_record_is_dropped_and_damage_is_refused(tmp_path: Path) -> None:
    ShareLog(tmp_path).record(record(1, b"a"))
    path = tmp_path / SHARE_LOG_NAME
    whole = path.read_bytes()
    path.write_bytes(whole + whole[:-5])  # a crash while appending a second record
    log = ShareLog(tmp_path)
    assert log.get(1, record(1, b"a").aggregate_hash) is not None
    assert path.read_bytes() == whole
    log.record(record(1, b"b"))
    assert ShareLog(tmp_path).get(1, record(1, b"b").aggregate_hash) is not None
    path.write_bytes(whole[:4] + b"\xff" * (len(whole) - 4))
    with pytest.raises(ShareLogError, match=SHARE_LOG_NAME):
        ShareLog(tmp_path)
