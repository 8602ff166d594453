"""Signed envelopes: the one format of every message between nodes.

Wire form (canonical CBOR map)::

    {"v": 1, "chain": <32-byte chain id>, "type": <registered name>,
     "from": <32-byte Ed25519 public key>, "body": <canonical CBOR of the body>,
     "sig": <64-byte Ed25519 signature>}

The signature covers ``DOMAIN || canonical CBOR of the map without "sig"``, so
the chain id, type and sender are signed with the body, and the domain prefix
keeps these signatures apart from anything else the node key signs (libp2p
signs with the same key, under its own prefixes).

The body rides as a byte string so that `EnvelopeCodec.open` can check the
size limit of the claimed type and the signature *before* it parses the body.
Every check raises a `ProtocolError` subclass; nothing else escapes `open`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, final

from . import cbor
from .errors import (
    MalformedMessage,
    MessageTooLarge,
    ProtocolError,
    SchemaError,
    UnknownMessageType,
    UnsupportedVersion,
    WrongChain,
)
from .identity import NodeId, NodeIdentity

VERSION: Final = 1
CHAIN_ID_SIZE: Final = 32
DOMAIN: Final = b"swarmnode/envelope/v1\x00"
# Bytes an envelope adds around its body: map header, keys, chain id, sender, signature,
# version, the longest type name we allow and the length prefixes. Checked by a test.
ENVELOPE_OVERHEAD: Final = 256
MAX_TYPE_NAME: Final = 48
_FIELDS: Final = frozenset({"v", "chain", "type", "from", "body", "sig"})


@final
@dataclass(frozen=True, slots=True)
class MessageType:
    """A registered message type: its wire name, body schema and size limit."""

    name: str
    body: type
    max_size: int  # of the whole encoded envelope, in bytes


@final
class MessageTypes:
    """The registry of message types a codec accepts.

    Each layer (ledger, round protocol, ...) builds its own registry; the node
    combines them with `merge`. A name or body class is registered once.
    """

    __slots__ = ("_by_class", "_by_name")

    def __init__(self, *types: MessageType) -> None:
        self._by_name: dict[str, MessageType] = {}
        self._by_class: dict[type, MessageType] = {}
        for message_type in types:
            self._add(message_type)

    def register(self, name: str, body: type, *, max_size: int) -> None:
        self._add(MessageType(name, body, max_size))

    def _add(self, message_type: MessageType) -> None:
        name, body = message_type.name, message_type.body
        if not name or len(name) > MAX_TYPE_NAME or not name.isascii():
            raise ValueError(f"message type name {name!r} must be 1-{MAX_TYPE_NAME} ASCII chars")
        if not (isinstance(body, type) and dataclasses.is_dataclass(body)):
            raise ValueError(f"message type {name!r}: body must be a dataclass")
        if message_type.max_size <= ENVELOPE_OVERHEAD:
            raise ValueError(f"message type {name!r}: max_size must exceed {ENVELOPE_OVERHEAD}")
        if name in self._by_name:
            raise ValueError(f"message type {name!r} is already registered")
        if body in self._by_class:
            raise ValueError(f"{body.__name__} is already registered as {self._by_class[body].name!r}")
        cbor.check_schema(body)  # an unsupported field type fails here, not on first use
        self._by_name[name] = message_type
        self._by_class[body] = message_type

    def merge(self, other: MessageTypes) -> MessageTypes:
        return MessageTypes(*self._by_name.values(), *other._by_name.values())

    def by_name(self, name: str) -> MessageType | None:
        return self._by_name.get(name)

    def by_class(self, body: type) -> MessageType:
        try:
            return self._by_class[body]
        except KeyError:
            raise ValueError(f"{body.__name__} is not a registered message body") from None

    @property
    def max_size(self) -> int:
        return max((t.max_size for t in self._by_name.values()), default=0)

    def __iter__(self) -> Iterator[MessageType]:
        return iter(self._by_name.values())


@final
@dataclass(frozen=True, slots=True)
class Envelope:
    """A verified message: who sent which body on which chain."""

    chain: bytes
    type: str
    sender: NodeId
    body: object
    signature: bytes
    wire: bytes  # the exact bytes received or sent

    @property
    def digest(self) -> bytes:
        """SHA-256 of the wire bytes: a stable id for deduplication and evidence."""
        return hashlib.sha256(self.wire).digest()


@final
class EnvelopeCodec:
    """Seals and opens envelopes for one chain and one set of message types."""

    __slots__ = ("_chain_id", "_types")

    def __init__(self, chain_id: bytes, types: MessageTypes) -> None:
        if len(chain_id) != CHAIN_ID_SIZE:
            raise ValueError(f"chain id must be {CHAIN_ID_SIZE} bytes")
        self._chain_id = chain_id
        self._types = types

    @property
    def chain_id(self) -> bytes:
        return self._chain_id

    def seal(self, identity: NodeIdentity, body: object) -> bytes:
        """Sign `body` as `identity` and return the envelope's wire bytes."""
        message_type = self._types.by_class(type(body))
        unsigned: dict[str, cbor.CborValue] = {
            "v": VERSION,
            "chain": self._chain_id,
            "type": message_type.name,
            "from": identity.public_key,
            "body": cbor.dumps_dataclass(body),
        }
        signature = identity.sign(DOMAIN + cbor.dumps(unsigned))
        wire = cbor.dumps({**unsigned, "sig": signature})
        if len(wire) > message_type.max_size:
            raise ValueError(
                f"{message_type.name} envelope is {len(wire)} bytes, over its limit "
                f"of {message_type.max_size}"
            )
        return wire

    def open(self, data: bytes) -> Envelope:
        """Verify and decode wire bytes. Raises only `ProtocolError` subclasses."""
        try:
            return self._open(data)
        except ProtocolError:
            raise
        except RecursionError:
            raise MalformedMessage("message nested too deeply") from None

    def _open(self, data: bytes) -> Envelope:
        if not isinstance(data, bytes):
            raise MalformedMessage(f"expected bytes, got {type(data).__name__}")
        limit = self._types.max_size
        if len(data) > limit:
            raise MessageTooLarge(f"message of {len(data)} bytes exceeds the largest limit, {limit}")
        outer = cbor.loads(data, max_depth=1)
        if not isinstance(outer, dict):
            raise MalformedMessage("an envelope is a CBOR map")
        if outer.keys() != _FIELDS:
            unknown = sorted(outer.keys() - _FIELDS)
            missing = sorted(_FIELDS - outer.keys())
            raise SchemaError(f"envelope fields: unknown {unknown}, missing {missing}")
        version, chain, name = outer["v"], outer["chain"], outer["type"]
        sender, body, signature = outer["from"], outer["body"], outer["sig"]
        if type(version) is not int or version != VERSION:
            raise UnsupportedVersion(f"envelope version {version!r}, this node speaks {VERSION}")
        if type(chain) is not bytes or len(chain) != CHAIN_ID_SIZE:
            raise SchemaError(f"envelope chain id must be {CHAIN_ID_SIZE} bytes")
        if chain != self._chain_id:
            raise WrongChain(
                f"message for chain {chain.hex()[:16]}, ours is {self._chain_id.hex()[:16]}",
                theirs=chain,
                ours=self._chain_id,
            )
        if type(name) is not str:
            raise SchemaError("envelope type must be a text string")
        message_type = self._types.by_name(name)
        if message_type is None:
            raise UnknownMessageType(f"unknown message type {name[:MAX_TYPE_NAME]!r}")
        if len(data) > message_type.max_size:
            raise MessageTooLarge(
                f"{name} message of {len(data)} bytes exceeds its limit of {message_type.max_size}"
            )
        if type(sender) is not bytes or len(sender) != 32:
            raise SchemaError("envelope sender must be a 32-byte public key")
        if type(body) is not bytes:
            raise SchemaError("envelope body must be a byte string")
        if type(signature) is not bytes:
            raise SchemaError("envelope signature must be a byte string")
        sender_id = NodeId(sender)
        unsigned = {k: v for k, v in outer.items() if k != "sig"}
        sender_id.verify(DOMAIN + cbor.dumps(unsigned), signature)
        decoded: object = cbor.loads_dataclass(message_type.body, body)
        return Envelope(self._chain_id, name, sender_id, decoded, signature, data)
