"""libp2p plumbing below `Libp2pTransport`: peer ids, stream reads, error mapping, blob streams.

No libp2p type or exception leaves through the transport: `errors_to_transport` maps them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from typing import Final, Protocol

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from crypto.errors import BlobHashMismatch, ProtocolError
from crypto.identity import NodeId, NodeIdentity

from . import wire
from .base import BlobNotFound, PeerUnreachable, TransportError

log = logging.getLogger("swarmnode.net.libp2p")

BLOB_CHUNK: Final = 1 << 20
SERVE_TIMEOUT: Final = 30.0  # a peer that stalls mid-request loses its stream (blobs: per chunk)

# identity multihash of the protobuf Ed25519 public key (as in crypto/identity.py)
_PEER_ID_PREFIX: Final = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


def new_secure_host(identity: NodeIdentity, listen: multiaddr.Multiaddr) -> IHost:
    """A libp2p host with `identity`'s key, Noise only and Yamux only (what every swarmnode
    host speaks: a site's transport and a relay alike)."""
    key_pair = create_new_key_pair(identity.seed)
    return new_host(
        key_pair=key_pair,
        sec_opt={
            TProtocol(NOISE_PROTOCOL_ID): NoiseTransport(
                key_pair, noise_privkey=create_new_x25519_key_pair().private_key
            )
        },
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=[listen],
    )


def libp2p_id(node: NodeId) -> ID:
    return ID(_PEER_ID_PREFIX + node.public_key)


def node_id_of(peer: ID) -> NodeId | None:
    """The NodeId of an Ed25519 libp2p peer ID; None for any other key type."""
    raw = peer.to_bytes()
    if len(raw) != len(_PEER_ID_PREFIX) + 32 or not raw.startswith(_PEER_ID_PREFIX):
        return None
    return NodeId(raw[len(_PEER_ID_PREFIX) :])


def forget_failed_dials(host: IHost, peer: ID) -> None:
    """Let `host` dial `peer` now: the swarm refuses a peer for 60 s after a failed dial, and
    our callers have their own backoff."""
    unblock = getattr(host.get_network(), "unblock_peer", None)
    if unblock is not None:
        unblock(peer)


def parse_peer_multiaddr(address: str) -> tuple[NodeId, str]:
    """Split ``/ip4/1.2.3.4/tcp/5/p2p/12D3KooW...`` into (NodeId, transport address)."""
    try:
        info = info_from_p2p_addr(multiaddr.Multiaddr(address))
    except Exception as exc:
        raise ValueError(f"not a multiaddr with a /p2p/ peer id: {address!r} ({exc})") from None
    node = node_id_of(info.peer_id)
    if node is None or not info.addrs:
        raise ValueError(f"{address!r}: expected an Ed25519 peer id and a transport address")
    return node, str(info.addrs[0])


@contextlib.contextmanager
def errors_to_transport(peer: NodeId, what: str, timeout: float) -> Iterator[None]:
    """httpcore's map_exceptions: nothing but our own errors leaves a peer operation."""
    try:
        yield
    except (TransportError, BlobHashMismatch):
        raise
    except trio.TooSlowError:
        raise PeerUnreachable(f"{what}: {peer.short} did not answer within {timeout:g} s") from None
    except ProtocolError as exc:
        raise TransportError(f"{what}: {peer.short} answered malformed data: {exc}") from exc
    except Exception as exc:  # libp2p raises many unrelated types for "that peer is gone"
        raise PeerUnreachable(f"{what}: {peer.short}: {type(exc).__name__}: {exc}") from exc


class _Readable(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...


async def read_exact(stream: _Readable, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        buf += await read_some(stream, min(BLOB_CHUNK, n - len(buf)), f"after {len(buf)} of {n} bytes")
    return bytes(buf)


async def read_some(stream: _Readable, n: int, where: str = "mid-blob") -> bytes:
    """Between 1 and `n` bytes, as the stream has them (no copy); EOFError if it ended."""
    try:
        data = await stream.read(n)
    except StreamEOF:  # py-libp2p 0.8.1 raises at EOF instead of returning b""
        data = b""
    if not data:
        raise EOFError(f"stream closed {where}")
    if len(data) > n:  # a stream must not hand out more than asked; never trust it to
        raise EOFError(f"stream returned {len(data)} bytes, asked for at most {n}")
    return data


async def read_frame(stream: _Readable, limit: int) -> bytes:
    length = wire.frame_length(await read_exact(stream, wire.FRAME_HEADER.size), limit)
    return await read_exact(stream, length)


async def receive_blob(stream: INetStream, peer: NodeId, digest: bytes, max_blob_size: int) -> bytes:
    """Ask `stream` for blob `digest` and read it, hashing as it comes; BlobHashMismatch if the
    bytes are not the blob, BlobNotFound if the peer lacks it. The caller closes the stream."""
    await stream.write(wire.frame(digest))
    header = wire.decode_blob_header(await read_frame(stream, wire.BLOB_HEADER_LIMIT))
    if not header.found:
        raise BlobNotFound(f"{peer.short} does not have blob {digest.hex()}")
    if header.size > max_blob_size:
        raise TransportError(
            f"{peer.short} offers blob {digest.hex()[:12]} of {header.size} bytes, "
            f"above max_blob_size {max_blob_size}"
        )
    # The pieces as the stream hands them over, hashed as they come and joined once
    # at the end: one copy of the blob instead of three.
    hasher = hashlib.sha256()
    pieces: list[bytes] = []
    received = 0
    while received < header.size:
        piece = await read_some(stream, min(BLOB_CHUNK, header.size - received))
        hasher.update(piece)
        pieces.append(piece)
        received += len(piece)
    if hasher.digest() != digest:
        raise BlobHashMismatch(
            f"peer {peer.peer_id} served {received} bytes for blob {digest.hex()} "
            f"whose SHA-256 is {hasher.hexdigest()}"
        )
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


async def send_blob(stream: INetStream, data: bytes | None) -> None:
    """Answer a blob request on `stream` with `data` (None: not found), chunk by chunk."""
    header = wire.BlobHeader(found=data is not None, size=0 if data is None else len(data))
    with trio.fail_after(SERVE_TIMEOUT):
        await stream.write(wire.frame(wire.encode(header)))
    view = memoryview(data or b"")
    for offset in range(0, len(view), BLOB_CHUNK):
        with trio.fail_after(SERVE_TIMEOUT):  # per chunk: big blobs take as long as they need
            # A view, not a copy: yamux slices it into frames (and copies those) anyway.
            await stream.write(view[offset : offset + BLOB_CHUNK])  # type: ignore[arg-type]


async def close_quietly(stream: INetStream) -> None:
    with trio.move_on_after(1.0):
        try:
            await stream.close()
        except Exception as exc:  # the peer may be gone already; nothing to release on our side
            log.debug("closing stream: %r", exc)
