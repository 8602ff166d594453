"""Error types of the `crypto` package.

`ProtocolError` and its subclasses mean *a peer* sent something we refuse:
the caller logs it once with the sender, drops the input and carries on.
Nothing that raises one of these has changed any state.

`KeyFileError` means a local key file is missing, malformed or unsafe; it is
the operator's to fix and names the file.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Input from a peer violates the protocol. Never raised directly."""


class MessageTooLarge(ProtocolError):
    """The encoded message exceeds the size limit of its type (or of any type)."""


class MalformedMessage(ProtocolError):
    """The bytes are not a well-formed message (not CBOR, wrong structure)."""


class NonCanonicalEncoding(MalformedMessage):
    """The bytes decode, but are not the canonical CBOR encoding of what they hold."""


class UnsupportedVersion(ProtocolError):
    """The envelope version is not one this node speaks."""


class WrongChain(ProtocolError):
    """The message was signed for another chain (network) than ours: `theirs`, not `ours`."""

    def __init__(self, message: str, *, theirs: bytes = b"", ours: bytes = b"") -> None:
        super().__init__(message)
        self.theirs = theirs
        self.ours = ours


class UnknownMessageType(ProtocolError):
    """The message type is not registered."""


class SchemaError(ProtocolError):
    """A body field is unknown, missing or of the wrong type."""


class BadSignature(ProtocolError):
    """The signature does not verify under the claimed sender's key."""


class SealedBoxError(ProtocolError):
    """A sealed box could not be opened with our key (wrong recipient or tampered)."""


class KeyFileError(Exception):
    """A node key file is missing, malformed, or readable by others."""


class BlobHashMismatch(ProtocolError):
    """A peer served bytes whose SHA-256 is not the hash they were requested by.

    The message names the peer; the bytes are discarded before anyone sees them.
    """


class InvalidCiphertext(ProtocolError):
    """A ciphertext blob is malformed: wrong parameters, shape, length, or a coefficient out of range."""


class InvalidKeyShare(ProtocolError):
    """A key-epoch message (public share or sealed Shamir share) is malformed, misaddressed or conflicting."""


class InvalidDecryptionShare(ProtocolError):
    """A decryption share is malformed or does not belong to the aggregate / decrypt set being combined."""


class InvalidAggregate(ProtocolError):
    """A decrypted aggregate is implausible (weight sum not in (0, 1]): a contribution or share is bad."""
