"""The transport's own byte formats: round trips and adversarial input."""

from __future__ import annotations

import contextlib

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import cbor
from crypto.errors import MalformedMessage, MessageTooLarge, ProtocolError, SchemaError
from swarmnode.net import wire
from swarmnode.net.base import BlobStore, blob_hash
from swarmnode.testing import make_identity

NODE = make_identity(0, "wire-test").node_id

VALUES = [
    wire.RpcRequest("consensus/catch-up", b"\x00\x01"),
    wire.RpcResponse(ok=True, data=b"answer", error=""),
    wire.RpcResponse(ok=False, data=b"", error="no handler"),
    wire.BlobHeader(found=True, size=50 << 20),
    wire.BlobHeader(found=False, size=0),
    wire.PeerList((wire.PeerEntry(NODE, ("/ip4/127.0.0.1/tcp/4001",)),)),
    wire.PeerList(()),
]
DECODERS = {
    wire.RpcRequest: wire.decode_rpc_request,
    wire.RpcResponse: wire.decode_rpc_response,
    wire.BlobHeader: wire.decode_blob_header,
    wire.PeerList: wire.decode_peer_list,
}


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_round_trip(value: object) -> None:
    decode = DECODERS[type(value)]
    assert decode(wire.encode(value)) == value  # type: ignore[arg-type]


def test_frame_length_is_checked_before_reading() -> None:
    assert wire.frame_length(wire.frame(b"abc")[:4], limit=3) == 3
    with pytest.raises(MessageTooLarge, match="4294967295"):
        wire.frame_length(b"\xff\xff\xff\xff", limit=1 << 20)
    with pytest.raises(ValueError, match="4 bytes"):
        wire.frame_length(b"\x00\x00", limit=10)


@pytest.mark.parametrize(
    ("decode", "value"),
    [
        (wire.decode_rpc_response, {"ok": True, "data": b"x", "error": "and an error"}),
        (wire.decode_rpc_response, {"ok": False, "data": b"data on refusal", "error": "e"}),
        (wire.decode_blob_header, {"found": False, "size": 5}),
        (wire.decode_blob_header, {"found": True, "size": -1}),
        (wire.decode_blob_header, {"found": True, "size": 1, "extra": 0}),
        (wire.decode_blob_header, {"found": True}),
        (wire.decode_blob_header, {"found": 1, "size": 1}),
        (wire.decode_rpc_request, {"protocol": "", "data": b""}),
        (wire.decode_rpc_request, {"protocol": "p" * 129, "data": b""}),
        (
            wire.decode_peer_list,
            {"peers": [{"node": NODE.public_key, "addrs": ["/ip4/1.2.3.4/tcp/1/p2p/x"]}]},
        ),
        (wire.decode_peer_list, {"peers": [{"node": NODE.public_key, "addrs": ["not-a-multiaddr"]}]}),
        (wire.decode_peer_list, {"peers": [{"node": NODE.public_key, "addrs": ["/ip4/1.2.3.4/tcp/1"] * 9}]}),
        (wire.decode_peer_list, {"peers": [{"node": b"short", "addrs": []}]}),
        (wire.decode_peer_list, {"peers": [{"node": NODE.public_key, "addrs": []}] * 513}),
    ],
)
def test_invalid_structures_are_schema_errors(decode: object, value: cbor.CborValue) -> None:
    with pytest.raises(SchemaError):
        decode(cbor.dumps(value))  # type: ignore[operator]


def test_non_canonical_and_truncated_input_is_refused() -> None:
    good = wire.encode(wire.BlobHeader(found=True, size=7))
    with pytest.raises(MalformedMessage):
        wire.decode_blob_header(good[:-1])
    with pytest.raises(MalformedMessage):
        wire.decode_blob_header(good + b"\x00")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    for decode in DECODERS.values():
        with contextlib.suppress(ProtocolError):  # anything else propagates and fails the test
            decode(data)


class _FakeStream:
    """Hands out scripted chunks, and counts how many bytes were read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.read_bytes = 0

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        size = min(n or len(self.data), 3)  # short reads, as Yamux gives them
        chunk, self.data = self.data[:size], self.data[size:]
        self.read_bytes += len(chunk)
        return chunk


async def test_oversized_frame_is_refused_before_its_payload_is_read() -> None:
    pytest.importorskip("libp2p")
    from swarmnode.net.libp2p_streams import read_frame as _read_frame

    stream = _FakeStream(wire.frame(b"x" * 1000))
    with pytest.raises(MessageTooLarge):
        await _read_frame(stream, limit=999)
    assert stream.read_bytes == 4
    assert await _read_frame(_FakeStream(wire.frame(b"y" * 10)), limit=10) == b"y" * 10
    with pytest.raises(EOFError, match="after 4 of 10"):
        await _read_frame(_FakeStream(wire.frame(b"y" * 10)[:8]), limit=10)


def test_blob_store_evicts_least_recently_used() -> None:
    store = BlobStore(capacity_bytes=10)
    first, second = store.put(b"aaaa"), store.put(b"bbbb")
    assert first == blob_hash(b"aaaa")
    assert store.get(first) == b"aaaa"  # now `second` is the least recently used
    third = store.put(b"cccc")
    assert second not in store
    assert first in store
    assert third in store
    assert len(store) == 2
    with pytest.raises(ValueError, match="capacity"):
        store.put(b"x" * 11)


def test_blob_store_names_the_hash_of_its_own_objects_only() -> None:
    store = BlobStore(capacity_bytes=100)
    data = bytes(range(40))
    digest = store.put(data)
    held = store.get(digest)
    assert held is not None
    assert store.digest_of(held) == digest
    assert store.digest_of(bytes(bytearray(data))) is None  # equal bytes, another object: hash it
    assert store.digest_of(b"not stored") is None
    assert store.put(held) == digest  # known object: no re-hash needed, same answer
    other = bytes(range(50, 100))
    assert store.put(other, digest=blob_hash(other)) == blob_hash(other)  # a verified download
    store.put(bytes(range(100, 140)))  # evicts `data`
    assert digest not in store
    assert store.digest_of(held) is None  # evicted objects are forgotten


async def test_read_some_never_hands_out_more_than_asked() -> None:
    pytest.importorskip("libp2p")
    from swarmnode.net.libp2p_streams import read_some as _read_some

    assert await _read_some(_FakeStream(b"abcdef"), 4) == b"abc"  # what the stream has, up to 4
    with pytest.raises(EOFError, match="mid-blob"):
        await _read_some(_FakeStream(b""), 4)

    class _Greedy:
        async def read(self, n: int | None = None) -> bytes:
            return b"x" * 10

    with pytest.raises(EOFError, match="asked for at most 4"):
        await _read_some(_Greedy(), 4)
