"""The durable record of every decryption share this node released: one per aggregate.

Two shares of one aggregate M for two decrypt sets are ``lambda_1 * s * M + e_1`` and
``lambda_2 * s * M + e_2`` with public Lagrange coefficients: several of them form a
hidden-number problem that lattice reduction solves for the key share ``s``. So a
member makes at most one share of an aggregate, ever: before the share's hash is
submitted or the share is served, ``(key epoch, aggregate hash) -> (decrypt set, share
hash)`` is appended here and fsynced; later requests for the same aggregate get the
same share again (same decrypt set) or a refusal (any other set), also after a restart.

File ``storage_dir/decryption-shares.log``: records of a 4-byte big-endian length and the
canonical CBOR of a `ShareRecord`, appended, each fsynced before `ShareLog.record`
returns. A record cut short at the end (the node died while appending) is dropped on
open: its share was never released, since release waits for the fsync. Any other damage
refuses to open (`ShareLogError`, naming the file): forgetting a record would allow a
second share.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

from crypto import cbor
from crypto.errors import ProtocolError
from crypto.identity import NodeId

SHARE_LOG_NAME: Final = "decryption-shares.log"
_LENGTH: Final = struct.Struct(">I")
_MAX_RECORD: Final = 64 * 1024  # a decrypt set of at most 256 keys fits many times over


class ShareLogError(Exception):
    """The share log cannot be read or written; the message names the file."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ShareRecord:
    epoch: int
    aggregate_hash: bytes
    decrypt_set: tuple[NodeId, ...]
    share_hash: bytes


@final
class ShareLog:
    """(key epoch, aggregate hash) -> the one share this node released for it."""

    __slots__ = ("_path", "_records")

    def __init__(self, storage_dir: str | os.PathLike[str]) -> None:
        self._path: Final = Path(storage_dir) / SHARE_LOG_NAME
        self._records: dict[tuple[int, bytes], ShareRecord] = {}
        self._load()

    @property
    def path(self) -> Path:
        return self._path

    def get(self, epoch: int, aggregate_hash: bytes) -> ShareRecord | None:
        return self._records.get((epoch, aggregate_hash))

    def record(self, record: ShareRecord) -> None:
        """Append `record`, durable on return; ValueError if this aggregate has a share already."""
        key = (record.epoch, record.aggregate_hash)
        if key in self._records:
            raise ValueError(
                f"{self._path}: epoch {record.epoch} aggregate {record.aggregate_hash.hex()[:12]} "
                "already has a decryption share"
            )
        data = cbor.dumps_dataclass(record)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, _LENGTH.pack(len(data)) + data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise ShareLogError(f"{self._path}: cannot append ({exc.strerror})") from None
        self._records[key] = record

    def _load(self) -> None:
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ShareLogError(f"{self._path}: cannot read ({exc.strerror})") from None
        offset = 0
        while offset + _LENGTH.size <= len(data):
            (size,) = _LENGTH.unpack_from(data, offset)
            end = offset + _LENGTH.size + size
            if size > _MAX_RECORD:
                raise ShareLogError(f"{self._path}: record at byte {offset} is {size} bytes long")
            if end > len(data):
                break  # cut short by a crash while appending
            try:
                record = cbor.loads_dataclass(ShareRecord, data[offset + _LENGTH.size : end])
            except ProtocolError as exc:
                raise ShareLogError(f"{self._path}: record at byte {offset} is damaged: {exc}") from None
            self._records[(record.epoch, record.aggregate_hash)] = record
            offset = end
        if offset != len(data):
            self._truncate(offset)

    def _truncate(self, size: int) -> None:
        try:
            with self._path.open("r+b") as f:
                f.truncate(size)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise ShareLogError(f"{self._path}: cannot drop a torn record ({exc.strerror})") from None
