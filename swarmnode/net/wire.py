"""Byte formats of the libp2p transport's own stream protocols (sans-I/O).

Every stream message is a *frame*: a 4-byte big-endian length, then that many
bytes. The length is checked against the limit of what is expected before a
single payload byte is read, so a peer cannot make us buffer more than the
limit. Structured payloads are canonical CBOR of the frozen dataclasses below
(`crypto.cbor`), decoded strictly: anything malformed raises a
`ProtocolError` subclass.

Protocols (one request per stream, then both sides close):
- ``/swarmnode/rpc/1.0.0``: `RpcRequest` frame -> `RpcResponse` frame.
- ``/swarmnode/blob/1.0.0``: a raw 32-byte SHA-256 frame -> a `BlobHeader`
  frame, then (if found) exactly ``size`` raw bytes, unframed, in chunks.
- ``/swarmnode/peers/1.0.0``: `PeerList` frame (the asker: who it is and where
  it listens) -> `PeerList` frame (the answerer and the peers it is connected
  to, with their listen addresses).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, final

from crypto import cbor
from crypto.errors import MessageTooLarge
from crypto.identity import NodeId

FRAME_HEADER: Final = struct.Struct(">I")
MAX_PROTOCOL_NAME: Final = 128
MAX_PEER_ENTRIES: Final = 512
MAX_ADDRS_PER_PEER: Final = 8
MAX_ADDR_LENGTH: Final = 256
RPC_OVERHEAD: Final = 1024  # CBOR map keys, protocol name, error text around the payload
BLOB_HEADER_LIMIT: Final = 64
PEER_LIST_LIMIT: Final = 1 << 20


@final
@dataclass(frozen=True, slots=True)
class RpcRequest:
    protocol: str
    data: bytes

    def __post_init__(self) -> None:
        if not 0 < len(self.protocol) <= MAX_PROTOCOL_NAME:
            raise ValueError(f"protocol names have 1 to {MAX_PROTOCOL_NAME} characters")


@final
@dataclass(frozen=True, slots=True)
class RpcResponse:
    ok: bool
    data: bytes  # the handler's answer when ok, else empty
    error: str  # why the request was refused when not ok, else empty

    def __post_init__(self) -> None:
        if self.ok and self.error:
            raise ValueError("a successful response carries no error")
        if not self.ok and self.data:
            raise ValueError("a refusal carries no data")


@final
@dataclass(frozen=True, slots=True)
class BlobHeader:
    found: bool
    size: int  # bytes that follow; 0 when not found

    def __post_init__(self) -> None:
        if self.size < 0 or (not self.found and self.size != 0):
            raise ValueError("blob size must be >= 0, and 0 when the blob is not found")


@final
@dataclass(frozen=True, slots=True)
class PeerEntry:
    node: NodeId
    addrs: tuple[str, ...]  # without our /p2p/ part: /ip4/127.0.0.1/tcp/4001 or <relay>/p2p-circuit

    def __post_init__(self) -> None:
        if len(self.addrs) > MAX_ADDRS_PER_PEER:
            raise ValueError(f"at most {MAX_ADDRS_PER_PEER} addresses per peer")
        for addr in self.addrs:
            _, circuit, rest = addr.partition("/p2p-circuit")
            own_id = addr.count("/p2p/") != (1 if circuit else 0)  # only a relay's id may be in it
            if not addr.startswith("/") or len(addr) > MAX_ADDR_LENGTH or rest or own_id:
                raise ValueError(f"not a transport multiaddr: {addr[:64]!r}")


@final
@dataclass(frozen=True, slots=True)
class PeerList:
    peers: tuple[PeerEntry, ...]

    def __post_init__(self) -> None:
        if len(self.peers) > MAX_PEER_ENTRIES:
            raise ValueError(f"at most {MAX_PEER_ENTRIES} peers in a list")


def frame(payload: bytes) -> bytes:
    """`payload` with its length prefix."""
    return FRAME_HEADER.pack(len(payload)) + payload


def frame_length(header: bytes, limit: int) -> int:
    """The payload length announced by a 4-byte frame header; `MessageTooLarge` above `limit`."""
    if len(header) != FRAME_HEADER.size:
        raise ValueError("a frame header has 4 bytes")
    (length,) = FRAME_HEADER.unpack(header)
    if length > limit:
        raise MessageTooLarge(f"frame of {length} bytes exceeds the limit of {limit}")
    return int(length)


def encode(value: RpcRequest | RpcResponse | BlobHeader | PeerList) -> bytes:
    return cbor.dumps_dataclass(value)


def decode_rpc_request(data: bytes) -> RpcRequest:
    return cbor.loads_dataclass(RpcRequest, data)


def decode_rpc_response(data: bytes) -> RpcResponse:
    return cbor.loads_dataclass(RpcResponse, data)


def decode_blob_header(data: bytes) -> BlobHeader:
    return cbor.loads_dataclass(BlobHeader, data)


def decode_peer_list(data: bytes) -> PeerList:
    return cbor.loads_dataclass(PeerList, data)
