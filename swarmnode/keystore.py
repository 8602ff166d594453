"""The node's local state files besides the ledger: key-epoch secrets, own epoch blobs, models.

Everything is written atomically (an exclusively created temporary file, fchmod 0600,
fsync, rename, fsync of the directory), because the key-epoch files hold this node's
secret and decryption key shares. The runtime writes a file *before* it publishes the hash
that refers to it (persist before send): a node killed at any instant finds on
restart every secret or blob it has announced on the ledger.

Key-epoch files are sealed (format version 3): XChaCha20-Poly1305 under a storage key
derived from the node's Ed25519 seed, with the chain id, the file's kind and its epoch as
associated data. A file that was changed, cut short, copied to another epoch's or kind's
name or written by another node (or chain) does not open (`KeyFileRefused`); one that a
symlink, a non-regular file or group/other permission bits make unsafe is never read
(`UnsafeKeyFile`). The directory records which node and chain own it (``owner``); another
identity or chain cannot open it (`ForeignStateDir`).

Layout under ``storage_dir``::

    owner                    node id and chain id this directory belongs to
    keys/epoch-<n>.keys      EpochKeys.export_secret() of key epoch n (secret, sealed)
    keys/epoch-<n>.dealing   KeyEpoch.export_secret() of the unfinished key epoch n (secret:
                             our s_i and own Shamir share; sealed); written before our
                             commitment is submitted, deleted once epoch n's keys are saved
    keys/epoch-<n>.bundle    our revealed public share + sealed Shamir shares of epoch n (sealed)
    models/<sha256 hex>.f32  merged parameters (little-endian float32), by hash
    blobs/<sha256 hex>       blobs of the open round (contributions, aggregates, decryption
                             shares), re-served after a restart; deleted once their round closed

Models and blobs are checked against the hash they are named by, and are no key material
(contributions are ciphertexts, decryption shares and models are what peers receive).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Set
from pathlib import Path
from typing import Final, final

import nacl.bindings
import nacl.exceptions
import nacl.utils

from crypto.errors import KeyFileError
from crypto.identity import NodeIdentity

_MODE: Final = 0o600
_EPOCH_KINDS: Final = ("keys", "dealing", "bundle")
# The first line of a sealed key-epoch file, the storage key's domain and the start of
# every file's associated data: changing the format changes all three.
_SEALED_HEADER: Final = b"swarmnode/keystore/v3\n"
_STORAGE_KEY_DOMAIN: Final = b"swarmnode/keystore/v3"
_NONCE_SIZE: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
_TAG_SIZE: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES
_OWNER_FILE: Final = "owner"
_OWNER_HEADER: Final = "# swarmnode state directory: the node and chain it belongs to. Do not copy or edit.\n"


class UnsafeKeyFile(KeyFileError):
    """A secret file is a symlink, not a regular file, or open to group/others: never read."""


class KeyFileRefused(KeyFileError):
    """A sealed key-epoch file does not open: changed, cut short, moved to another epoch's
    or kind's name, written by another node or chain, or of the old unsealed format."""


class ForeignStateDir(KeyFileError):
    """The storage directory belongs to another node identity or another chain (or its
    owner record is unreadable): the node does not start on it."""


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` by `data`, readable by the owner only, durable on return."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.tmp")
    # A temporary file left by a crash may have any mode (or be a link): start afresh,
    # exclusively, so what we write never lands in a file someone else can open.
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _MODE)  # O_EXCL: no symlink followed
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _MODE)  # the umask may have removed bits, never added: make it exact
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def read_private(path: Path) -> bytes | None:
    """The bytes of the secret file `path` (None if absent), after checking that it is a
    regular file (not a symlink) with no group/other permission bits; `UnsafeKeyFile` if not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO must not block us
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink (O_NOFOLLOW)
        if path.is_symlink():
            raise UnsafeKeyFile(
                f"{path}: a secret file must not be a symlink; replace it by the file"
            ) from None
        raise UnsafeKeyFile(f"{path}: cannot open ({exc})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeKeyFile(f"{path}: a secret file must be a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise UnsafeKeyFile(
                f"{path}: secret file is readable or writable by group/others (mode {mode:04o}); "
                f"run `chmod 600 {path}`"
            )
        return f.read()


def _fsync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def storage_key(identity: NodeIdentity) -> bytes:
    """The key sealing this node's key-epoch files: keyed BLAKE2b of the node's Ed25519 seed
    over a domain of its own (independent of the signing key expanded from the same seed)."""
    return hashlib.blake2b(_STORAGE_KEY_DOMAIN, key=identity.seed, digest_size=32).digest()


def _claim(root: Path, identity: NodeIdentity, chain_id: bytes) -> None:
    """Record (first start) or check that `root` belongs to this node and chain."""
    path = root / _OWNER_FILE
    mine = {"node-id": identity.node_id.peer_id, "chain-id": chain_id.hex()}
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        lines = "".join(f"{k}: {v}\n" for k, v in mine.items())
        write_private(path, f"{_OWNER_HEADER}{lines}".encode())
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise ForeignStateDir(f"{path}: cannot read the state directory's owner ({exc})") from None
    recorded = dict(
        (key.strip(), value.strip())
        for key, sep, value in (line.partition(":") for line in text.splitlines())
        if sep and not key.lstrip().startswith("#")
    )
    if recorded.keys() != mine.keys():
        raise ForeignStateDir(f"{path}: expected the lines 'node-id: ...' and 'chain-id: ...'")
    if recorded != mine:
        raise ForeignStateDir(
            f"{root}: this state directory belongs to node {recorded['node-id']} on chain "
            f"{recorded['chain-id']}, not to node {mine['node-id']} on chain {mine['chain-id']}; "
            "give this node its own [node] storage_dir"
        )


@final
class NodeFiles:
    """Key-epoch files and merged models of one node (see the module docstring).

    Opening claims `storage_dir` for `identity` on chain `chain_id` (the ``owner`` file) or
    raises `ForeignStateDir` if another node or chain already owns it."""

    __slots__ = ("_chain_id", "_storage_key", "blobs", "keys", "models", "root")

    def __init__(self, storage_dir: str | os.PathLike[str], identity: NodeIdentity, chain_id: bytes) -> None:
        self.root: Final = Path(storage_dir)
        self.keys: Final = self.root / "keys"
        self.models: Final = self.root / "models"
        self.blobs: Final = self.root / "blobs"
        self._storage_key: Final = storage_key(identity)
        self._chain_id: Final = chain_id
        _claim(self.root, identity, chain_id)

    # key epochs ------------------------------------------------------------------------

    def epoch_file(self, epoch: int, kind: str) -> Path:
        if kind not in _EPOCH_KINDS:
            raise ValueError(f"unknown key-epoch file kind {kind!r}")
        if epoch < 1:
            raise ValueError("key epochs are numbered from 1")
        return self.keys / f"epoch-{epoch}.{kind}"

    def _associated_data(self, epoch: int, kind: str) -> bytes:
        # Binds a sealed file to its name: a valid file copied to another epoch, kind or
        # chain does not open.
        return b"%s%s%s %d" % (_SEALED_HEADER, self._chain_id, kind.encode(), epoch)

    def save_epoch(self, epoch: int, kind: str, data: bytes) -> None:
        """kind: "keys" (secret), "dealing" (secret: our part of an unfinished epoch) or
        "bundle" (our announced reveal, served to peers). Stored sealed (module docstring)."""
        path = self.epoch_file(epoch, kind)
        nonce = nacl.utils.random(_NONCE_SIZE)
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            data, self._associated_data(epoch, kind), nonce, self._storage_key
        )
        write_private(path, _SEALED_HEADER + nonce + sealed)

    def delete_epoch(self, epoch: int, kind: str) -> None:
        """Remove one key-epoch file (durably: the directory is fsynced); absent is fine."""
        path = self.epoch_file(epoch, kind)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_directory(path.parent)

    def load_epoch(self, epoch: int, kind: str) -> bytes | None:
        """The bytes saved by `save_epoch`, or None if there is no such file. Raises
        `UnsafeKeyFile` (the file is not private: not read) or `KeyFileRefused` (it does not
        open under this node's key for this chain, epoch and kind), both naming the file."""
        path = self.epoch_file(epoch, kind)
        stored = read_private(path)
        if stored is None:
            return None
        if not stored.startswith(_SEALED_HEADER):
            raise KeyFileRefused(
                f"{path}: not a sealed key file of format version 3 (an unauthenticated file of an "
                "older swarmnode, or no key file at all), so it is not used; delete it: the node runs "
                f"without it and holds keys again from the next key epoch that includes it"
            )
        body = stored[len(_SEALED_HEADER) :]
        if len(body) < _NONCE_SIZE + _TAG_SIZE:
            raise KeyFileRefused(f"{path}: sealed key file is truncated ({len(stored)} bytes)")
        try:
            return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                body[_NONCE_SIZE:], self._associated_data(epoch, kind), body[:_NONCE_SIZE], self._storage_key
            )
        except nacl.exceptions.CryptoError:
            raise KeyFileRefused(
                f"{path}: sealed key file does not authenticate under this node's storage key: it was "
                "changed or cut short, copied from another epoch's or kind's file, or written by "
                "another node or chain"
            ) from None

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
