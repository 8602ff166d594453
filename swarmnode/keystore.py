"""The node's local state files besides the ledger: key-epoch secrets, own epoch blobs, models.

Everything is written atomically (temporary file, fsync, rename, fsync of the
directory) with mode 0600, because the key-epoch files hold this node's
secret and decryption key shares. The runtime writes a file *before* it publishes the hash
that refers to it (persist before send): a node killed at any instant finds on
restart every secret or blob it has announced on the ledger.

Layout under ``storage_dir``::

    keys/epoch-<n>.keys      EpochKeys.export_secret() of key epoch n (secret)
    keys/epoch-<n>.dealing   KeyEpoch.export_secret() of the unfinished key epoch n (secret:
                             our s_i and own Shamir share); written before our commitment is
                             submitted, deleted once epoch n's keys are saved
    keys/epoch-<n>.bundle    our revealed public share + sealed Shamir shares of epoch n
    models/<sha256 hex>.f32  merged parameters (little-endian float32), by hash
    blobs/<sha256 hex>       blobs of the open round (contributions, aggregates, decryption
                             shares), re-served after a restart; deleted once their round closed
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Set
from pathlib import Path
from typing import Final, final

_MODE: Final = 0o600
_EPOCH_KINDS: Final = ("keys", "dealing", "bundle")


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` by `data`, readable by the owner only, durable on return."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@final
class NodeFiles:
    """Key-epoch files and merged models of one node (see the module docstring)."""

    __slots__ = ("blobs", "keys", "models", "root")

    def __init__(self, storage_dir: str | os.PathLike[str]) -> None:
        self.root: Final = Path(storage_dir)
        self.keys: Final = self.root / "keys"
        self.models: Final = self.root / "models"
        self.blobs: Final = self.root / "blobs"

    # key epochs ------------------------------------------------------------------------

    def _epoch_file(self, epoch: int, kind: str) -> Path:
        if epoch < 1:
            raise ValueError("key epochs are numbered from 1")
        return self.keys / f"epoch-{epoch}.{kind}"

    def save_epoch(self, epoch: int, kind: str, data: bytes) -> None:
        """kind: "keys" (secret), "dealing" (secret: our part of an unfinished epoch) or
        "bundle" (our announced reveal, served to peers)."""
        if kind not in _EPOCH_KINDS:
            raise ValueError(f"unknown key-epoch file kind {kind!r}")
        write_private(self._epoch_file(epoch, kind), data)

    def delete_epoch(self, epoch: int, kind: str) -> None:
        """Remove one key-epoch file (durably: the directory is fsynced); absent is fine."""
        if kind not in _EPOCH_KINDS:
            raise ValueError(f"unknown key-epoch file kind {kind!r}")
        path = self._epoch_file(epoch, kind)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_directory(path.parent)

    def load_epoch(self, epoch: int, kind: str) -> bytes | None:
        try:
            return self._epoch_file(epoch, kind).read_bytes()
        except FileNotFoundError:
            return None

    def epochs_with_keys(self) -> list[int]:
        return self.epochs_with("keys")

    def epochs_with(self, kind: str) -> list[int]:
        """Numbers of the key epochs that have a file of `kind`, ascending."""
        if not self.keys.is_dir():
            return []
        numbers = []
        for path in self.keys.glob(f"epoch-*.{kind}"):
            stem = path.name[len("epoch-") : -len(f".{kind}")]
            if stem.isdigit():
                numbers.append(int(stem))
        return sorted(numbers)

    # merged models ---------------------------------------------------------------------

    def save_model(self, data: bytes) -> bytes:
        """Store merged float32 bytes under their SHA-256; returns the hash."""
        digest = hashlib.sha256(data).digest()
        target = self.models / f"{digest.hex()}.f32"
        if not target.exists():
            write_private(target, data)
        return digest

    def load_model(self, digest: bytes) -> bytes | None:
        try:
            data = (self.models / f"{digest.hex()}.f32").read_bytes()
        except FileNotFoundError:
            return None
        return data if hashlib.sha256(data).digest() == digest else None

    # round blobs -----------------------------------------------------------------------

    def save_blob(self, data: bytes, *, digest: bytes | None = None) -> bytes:
        """Store a round blob under its SHA-256 (durable on return); returns the hash.
        `digest`: the hash the caller already holds for these very bytes (not computed again)."""
        if digest is None:
            digest = hashlib.sha256(data).digest()
        target = self.blobs / digest.hex()
        if not target.exists():
            write_private(target, data)
        return digest

    def stored_blobs(self) -> Iterator[tuple[bytes, bytes]]:
        """(hash, bytes) of every stored round blob whose content matches its name."""
        if not self.blobs.is_dir():
            return
        for path in sorted(self.blobs.iterdir()):
            try:
                digest = bytes.fromhex(path.name)
            except ValueError:
                continue  # a temporary file of an interrupted write, or a stranger
            if len(digest) != 32:
                continue
            data = path.read_bytes()
            if hashlib.sha256(data).digest() == digest:
                yield digest, data

    def delete_blobs_except(self, keep: Set[bytes]) -> int:
        """Delete every stored round blob not in `keep`; returns how many went."""
        if not self.blobs.is_dir():
            return 0
        deleted = 0
        for path in self.blobs.iterdir():
            try:
                digest = bytes.fromhex(path.name)
            except ValueError:
                continue
            if digest not in keep:
                path.unlink(missing_ok=True)
                deleted += 1
        return deleted
