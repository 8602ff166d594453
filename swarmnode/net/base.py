"""The network interface every layer above the transport uses.

`Transport` is deliberately small (httpcore's backend interface is the model):
topics for gossip, request/response to one peer, and content-addressed blobs.
Only `bytes`, `str` and `NodeId` cross it; no libp2p type, no libp2p or trio
exception. Implementations map every failure of their machinery to
`TransportError` (or its subclass `PeerUnreachable`) at the boundary, and
report a peer that served bytes not matching a hash as `BlobHashMismatch`
(a `ProtocolError`: the peer misbehaved).

Permissioning is the ledger's decision, so the allow-list is pushed in from
above with `set_allowed_peers`. Until it is first set, a transport talks to
anyone (a node that has not read its ledger yet must still reach its
bootstrap peers). Once set, nothing a peer outside the set sends (gossip,
requests, blob requests) reaches the layer above or gets an answer.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Final, final

import trio

from crypto.identity import NodeId

HASH_SIZE: Final = 32
DEFAULT_MAX_BLOB_SIZE: Final = 256 << 20  # a CKKS aggregate of a ~8M-parameter model fits
DEFAULT_MAX_MESSAGE_SIZE: Final = 1 << 20  # gossip and request payloads: small control messages
DEFAULT_REQUEST_TIMEOUT: Final = 10.0
DEFAULT_BLOB_TIMEOUT: Final = 120.0
SUBSCRIPTION_BUFFER: Final = 1024  # a subscriber this far behind loses messages (logged)


class TransportError(Exception):
    """The network could not do what was asked. Raised by every `Transport` method."""


class PeerUnreachable(TransportError):
    """The peer could not be reached, or did not answer in time."""


class RequestRefused(TransportError):
    """The peer answered, but refused: no handler for the protocol, or the handler failed."""


class BlobNotFound(TransportError):
    """No peer asked had the blob (or every answer failed verification; see `mismatched`)."""

    def __init__(self, message: str, mismatched: tuple[NodeId, ...] = ()) -> None:
        super().__init__(message)
        self.mismatched: Final = mismatched


class TransportClosed(TransportError):
    """The transport was closed; it cannot be used again."""


@final
@dataclass(frozen=True, slots=True)
class Inbound:
    """One gossip message as the layer above sees it: who published it, where, what."""

    sender: NodeId
    topic: str
    data: bytes


RequestHandler = Callable[[NodeId, bytes], Awaitable[bytes]]
"""Serves one request: ``await handler(sender, request_bytes) -> response_bytes``.

Raising refuses the request: the requester gets `RequestRefused`; the
transport logs the error and keeps serving.
"""


def blob_hash(data: bytes) -> bytes:
    """The content address of a blob: its SHA-256."""
    return hashlib.sha256(data).digest()


def check_hash(digest: bytes) -> None:
    if not isinstance(digest, bytes) or len(digest) != HASH_SIZE:
        raise ValueError(f"a blob hash is {HASH_SIZE} bytes (SHA-256)")


class BlobStore:
    """Blobs this node serves, keyed by SHA-256, bounded in total bytes.

    When full, the least recently used blobs are evicted first (a node serves
    the blobs of the current round; old rounds' blobs are on the ledger only
    as hashes). Injectable so tests can build a peer that lies about its blobs.

    The store remembers which bytes *objects* it holds (immutable, hashed on the way
    in): `digest_of` names the hash of a blob it handed out without hashing 30 MB again,
    which a node otherwise did some ten times per blob and round.
    """

    def __init__(self, capacity_bytes: int = 4 << 30) -> None:
        if capacity_bytes <= 0:
            raise ValueError("capacity_bytes must be positive")
        self.capacity_bytes: Final = capacity_bytes
        self._blobs: OrderedDict[bytes, bytes] = OrderedDict()
        self._digests: dict[int, bytes] = {}  # id(stored object) -> its hash, while stored
        self._size = 0

    def put(self, data: bytes, *, digest: bytes | None = None) -> bytes:
        """Store `data`; returns its hash. `digest`: the SHA-256 the caller just computed over
        these very bytes (a verified download), so it is not computed again."""
        if digest is None:
            digest = self.digest_of(data) or blob_hash(data)
        if digest in self._blobs:
            self._blobs.move_to_end(digest)
            return digest
        if len(data) > self.capacity_bytes:
            raise ValueError(f"blob of {len(data)} bytes exceeds the store capacity")
        while self._size + len(data) > self.capacity_bytes:
            _, evicted = self._blobs.popitem(last=False)
            self._digests.pop(id(evicted), None)
            self._size -= len(evicted)
        stored = bytes(data)
        self._blobs[digest] = stored
        self._digests[id(stored)] = digest
        self._size += len(data)
        return digest

    def get(self, digest: bytes) -> bytes | None:
        data = self._blobs.get(digest)
        if data is not None:
            self._blobs.move_to_end(digest)
        return data

    def digest_of(self, data: bytes) -> bytes | None:
        """The hash of `data` if it is the very object this store holds (no hashing), else None."""
        digest = self._digests.get(id(data))
        if digest is None or self._blobs.get(digest) is not data:
            return None
        return digest

    def __contains__(self, digest: object) -> bool:
        return digest in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)


class Transport(trio.abc.AsyncResource):
    """What the node needs from a network. See the module docstring.

    Every transport has a fixed `node_id` (its own identity),
    `max_blob_size` and `max_message_size`. Subscribers do not receive their own publications.
    Closing (`aclose`, or leaving ``async with``) is idempotent and always
    releases everything, also when a graceful close fails.
    """

    node_id: NodeId
    max_blob_size: int
    max_message_size: int  # gossip payloads and request/response bodies

    async def publish(self, topic: str, data: bytes) -> None:
        """Gossip `data` on `topic` to every peer subscribed to it (best effort)."""
        raise NotImplementedError  # pragma: no cover

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[Inbound]:
        """A new channel receiving every message other allowed peers publish on `topic`."""
        raise NotImplementedError  # pragma: no cover

    async def request(
        self, peer: NodeId, protocol: str, data: bytes, *, timeout: float = DEFAULT_REQUEST_TIMEOUT
    ) -> bytes:
        """Send `data` to `peer`'s handler for `protocol` and return its answer.

        Raises `PeerUnreachable` (also on timeout) or `RequestRefused`.
        """
        raise NotImplementedError  # pragma: no cover

    def set_handler(self, protocol: str, handler: RequestHandler) -> None:
        """Serve requests for `protocol`. A second handler for one protocol is a ValueError."""
        raise NotImplementedError  # pragma: no cover

    def put_blob(self, data: bytes) -> bytes:
        """Store `data` for peers to fetch; return its SHA-256. ValueError above `max_blob_size`."""
        raise NotImplementedError  # pragma: no cover

    async def get_blob(
        self, digest: bytes, *, peer: NodeId | None = None, timeout: float = DEFAULT_BLOB_TIMEOUT
    ) -> bytes:
        """The blob with SHA-256 `digest`, verified, from the local store, `peer`, or any peer.

        From one named `peer`: `BlobHashMismatch` if its bytes do not match,
        `BlobNotFound` if it lacks the blob, `PeerUnreachable` if it cannot
        be reached in `timeout`. From any peer (``peer=None``): connected
        peers are asked in turn, liars and failures skipped (and logged), and
        `BlobNotFound` (listing the liars) if nobody delivers. A verified
        blob is kept in the local store, so this node serves it too.
        """
        raise NotImplementedError  # pragma: no cover

    def set_allowed_peers(self, peers: AbstractSet[NodeId]) -> None:
        """Talk only to these peers from now on (our own id is always allowed)."""
        raise NotImplementedError  # pragma: no cover

    def add_peer_addresses(self, peer: NodeId, addrs: Sequence[str]) -> None:
        """Remember where `peer` can be reached (the addresses of its ledger member record).

        `addrs` are multiaddrs, with or without a /p2p/ part, which must then name `peer`.
        ValueError (naming the address) if one is malformed or names another peer; an
        empty `addrs` changes nothing.
        """
        raise NotImplementedError  # pragma: no cover

    def peers(self) -> frozenset[NodeId]:
        """The allowed peers this transport is connected to right now."""
        raise NotImplementedError  # pragma: no cover
