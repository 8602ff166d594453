"""Node identities: one Ed25519 key per node.

The same key signs every envelope, is the member record on the ledger and is
the libp2p transport identity (its peer ID is derived here without importing
libp2p, and a test checks it equals what py-libp2p derives). X25519 keys for
sealed boxes are the birational images of the Ed25519 keys, so a member's
sealing key is known from its ledger record alone.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

from .errors import BadSignature, KeyFileError, SealedBoxError

PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
SEED_SIZE: Final = 32

_KEY_FILE_HEADER: Final = "# swarmnode node key (Ed25519 seed). Keep this file private: mode 0600.\n"
_KEY_FIELD: Final = "ed25519-seed"

# libp2p peer IDs of Ed25519 keys are "identity" multihashes of the protobuf
# PublicKey{Type: Ed25519 (1), Data: 32 bytes}: 0x00 (identity) 0x24 (length 36),
# then the protobuf bytes 0x08 0x01 0x12 0x20 || key.
_PEER_ID_PREFIX: Final = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
_B58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _base58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    leading_zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading_zeros + "".join(reversed(out))


@functools.lru_cache(maxsize=4096)
def _peer_id_of(public_key: bytes) -> str:
    # Cached: envelopes, logs and the transport ask for the same few ids hundreds of
    # thousands of times in a long simulation, and base58 is a bignum loop.
    return _base58(_PEER_ID_PREFIX + public_key)


@final
@dataclass(frozen=True, slots=True)
class NodeId:
    """A node's public identity: its Ed25519 public key."""

    public_key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, bytes) or len(self.public_key) != PUBLIC_KEY_SIZE:
            raise ValueError(f"a node id is a {PUBLIC_KEY_SIZE}-byte Ed25519 public key")

    @property
    def peer_id(self) -> str:
        """The libp2p peer ID (base58, ``12D3KooW...``) of this key."""
        return _peer_id_of(self.public_key)

    @property
    def short(self) -> str:
        """A short, human-friendly form for logs and tables."""
        return self.peer_id[-8:]

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise `BadSignature` unless `signature` is ours over `message`."""
        if len(signature) != SIGNATURE_SIZE:
            raise BadSignature(f"signature of {self.short} has {len(signature)} bytes, not 64")
        try:
            nacl.signing.VerifyKey(self.public_key).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError) as exc:
            raise BadSignature(f"signature does not verify under the key of {self.short}") from exc

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt `plaintext` so that only this node can read it (X25519 sealed box)."""
        return nacl.public.SealedBox(self.x25519_public_key()).encrypt(plaintext)

    def x25519_public_key(self) -> nacl.public.PublicKey:
        try:
            raw = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(self.public_key)
        except nacl.exceptions.RuntimeError as exc:
            raise ValueError(f"{self.short} is not a valid Ed25519 point") from exc
        return nacl.public.PublicKey(raw)

    def __str__(self) -> str:
        return self.peer_id

    def __repr__(self) -> str:
        return f"NodeId({self.peer_id})"


@final
class NodeIdentity:
    """A node's private key. Create with `generate`, `from_seed` or `load`."""

    __slots__ = ("_signing_key", "node_id")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self.node_id: Final = NodeId(bytes(signing_key.verify_key))

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeIdentity:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"an Ed25519 seed has {SEED_SIZE} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def seed(self) -> bytes:
        """The 32-byte private seed (what libp2p's key pair is built from)."""
        return bytes(self._signing_key)

    @property
    def public_key(self) -> bytes:
        return self.node_id.public_key

    def sign(self, message: bytes) -> bytes:
        return self._signing_key.sign(message).signature

    def unseal(self, box: bytes) -> bytes:
        """Open a sealed box addressed to this node, or raise `SealedBoxError`."""
        private = self._signing_key.to_curve25519_private_key()
        try:
            return nacl.public.SealedBox(private).decrypt(box)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise SealedBoxError("sealed box is not for this node or was tampered with") from exc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key to `path` with mode 0600; refuse to overwrite an existing file."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        if target.exists():
            raise KeyFileError(f"{target}: refusing to overwrite an existing key file")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the umask may have removed bits, never added: make it exact
            os.write(fd, f"{_KEY_FILE_HEADER}{_KEY_FIELD}: {self.seed.hex()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, target)  # fails if the target appeared meanwhile: never clobber a key
        except FileExistsError as exc:
            raise KeyFileError(f"{target}: refusing to overwrite an existing key file") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NodeIdentity:
        """Read a key file written by `save`; refuse one that others can read."""
        source = Path(path)
        try:
            info = source.stat()
            text = source.read_text(encoding="ascii")
        except FileNotFoundError:
            raise KeyFileError(f"{source}: key file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"{source}: cannot read key file ({exc})") from None
        loose = stat.S_IMODE(info.st_mode) & 0o077
        if loose:
            raise KeyFileError(
                f"{source}: key file is readable or writable by group/others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {source}`"
            )
        fields = [
            tuple(part.strip() for part in line.split(":", 1))
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if len(fields) != 1 or fields[0][0] != _KEY_FIELD or len(fields[0]) != 2:
            raise KeyFileError(f"{source}: expected exactly one line '{_KEY_FIELD}: <64 hex digits>'")
        try:
            seed = bytes.fromhex(fields[0][1])
        except ValueError:
            raise KeyFileError(f"{source}: '{_KEY_FIELD}' is not hexadecimal") from None
        if len(seed) != SEED_SIZE:
            raise KeyFileError(f"{source}: '{_KEY_FIELD}' must be {SEED_SIZE} bytes (64 hex digits)")
        return cls.from_seed(seed)

    def __repr__(self) -> str:
        return f"NodeIdentity({self.node_id.peer_id})"
