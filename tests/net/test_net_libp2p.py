"""Libp2pTransport in one process on 127.0.0.1: identity, discovery, liars, startup and shutdown."""

from __future__ import annotations

import pytest
import trio
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE, YamuxStream

from crypto.errors import BlobHashMismatch
from crypto.identity import NodeId
from swarmnode.net.base import BlobNotFound, PeerUnreachable, TransportClosed, TransportError
from swarmnode.net.libp2p import Libp2pTransport, libp2p_id, open_libp2p_transport, parse_peer_multiaddr
from swarmnode.net.libp2p_patches import YAMUX_WINDOW
from swarmnode.net.libp2p_patches import credit_in_batches as _credit_in_batches
from swarmnode.net.libp2p_patches import verify_each_record_once as _verify_each_record_once
from swarmnode.testing import LyingBlobStore, make_identity, pseudo_random_bytes, wait_until

IDS = [make_identity(i, "libp2p-test") for i in range(4)]


async def test_peer_id_is_the_node_identity_and_addresses_name_it() -> None:
    with trio.fail_after(20):
        async with open_libp2p_transport(IDS[0]) as transport:
            assert transport.node_id == IDS[0].node_id
            (address,) = transport.listen_addrs
            assert address.startswith("/ip4/127.0.0.1/tcp/")
            assert address.endswith(f"/p2p/{IDS[0].node_id.peer_id}")
            node, transport_addr = parse_peer_multiaddr(address)
            assert node == IDS[0].node_id
            assert "/p2p/" not in transport_addr


def test_bad_addresses_are_value_errors() -> None:
    with pytest.raises(ValueError, match="/p2p/"):
        parse_peer_multiaddr("/ip4/127.0.0.1/tcp/1")
    with pytest.raises(ValueError, match="garbage"):
        Libp2pTransport(IDS[0], bootstrap=["garbage"])


async def test_address_from_a_member_record_and_peer_exchange_give_a_full_mesh() -> None:
    with trio.fail_after(60):
        async with (
            open_libp2p_transport(IDS[0]) as a,
            open_libp2p_transport(IDS[1], bootstrap=a.listen_addrs) as b,
            open_libp2p_transport(IDS[2]) as c,  # no bootstrap at all
        ):
            c.add_peer_addresses(a.node_id, a.listen_addrs)  # as read from a's ledger member record
            with pytest.raises(ValueError, match="another peer"):
                c.add_peer_addresses(b.node_id, a.listen_addrs)
            # c reaches a, learns of b from a, dials b: nobody told c about b directly
            await wait_until(lambda: c.peers() == {a.node_id, b.node_id}, what="c meshed")
            await wait_until(lambda: b.peers() == {a.node_id, c.node_id}, what="b meshed")


async def test_lying_peer_is_detected_and_skipped() -> None:
    data = pseudo_random_bytes(2_500_000, seed=9)
    with trio.fail_after(60):
        async with (
            open_libp2p_transport(IDS[0], blob_store=LyingBlobStore()) as liar,
            open_libp2p_transport(IDS[1], bootstrap=liar.listen_addrs) as fetcher,
        ):
            digest = liar.put_blob(data)
            await wait_until(lambda: liar.node_id in fetcher.peers(), what="connected")
            with pytest.raises(BlobHashMismatch, match=liar.node_id.peer_id):
                await fetcher.get_blob(digest, peer=liar.node_id)
            with pytest.raises(BlobNotFound) as only_liars:
                await fetcher.get_blob(digest)
            assert only_liars.value.mismatched == (liar.node_id,)
            async with open_libp2p_transport(IDS[2], bootstrap=liar.listen_addrs) as honest:
                honest.put_blob(data)
                await wait_until(lambda: honest.node_id in fetcher.peers(), what="honest peer found")
                assert await fetcher.get_blob(digest) == data


async def test_blob_above_the_fetchers_limit_is_refused_before_transfer() -> None:
    with trio.fail_after(60):
        async with (
            open_libp2p_transport(IDS[0]) as big,
            open_libp2p_transport(IDS[1], bootstrap=big.listen_addrs, max_blob_size=1000) as small,
        ):
            digest = big.put_blob(bytes(5000))
            await wait_until(lambda: big.node_id in small.peers(), what="connected")
            with pytest.raises(TransportError, match="above max_blob_size 1000"):
                await small.get_blob(digest, peer=big.node_id)


async def test_port_in_use_is_a_transport_error() -> None:
    with trio.fail_after(20):
        async with open_libp2p_transport(IDS[0]) as first:
            port = int(first.listen_addrs[0].split("/tcp/")[1].split("/")[0])
            with pytest.raises(TransportError, match="cannot start libp2p"):
                async with open_libp2p_transport(IDS[1], listen_port=port):
                    pass


async def test_unknown_peer_is_unreachable_quickly() -> None:
    with trio.fail_after(20):
        async with open_libp2p_transport(IDS[0]) as lonely:
            with pytest.raises(PeerUnreachable):
                await lonely.request(IDS[3].node_id, "echo", b"?", timeout=3)


async def test_closing_mid_transfer_ends_the_fetch_and_does_not_hang() -> None:
    with trio.fail_after(60):
        async with open_libp2p_transport(IDS[0]) as server:
            digest = server.put_blob(pseudo_random_bytes(30 << 20, seed=3))
            outcome: list[BaseException] = []
            async with open_libp2p_transport(IDS[1], bootstrap=server.listen_addrs) as client:
                await wait_until(lambda: server.node_id in client.peers(), what="connected")

                async def fetch() -> None:
                    try:
                        await client.get_blob(digest, peer=server.node_id)
                    except TransportError as exc:
                        outcome.append(exc)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(fetch)
                    await trio.sleep(0.05)
                    await client.aclose()
                    await client.aclose()
            assert len(outcome) == 1
            assert isinstance(outcome[0], TransportError)
            with pytest.raises(TransportClosed):
                client.put_blob(b"late")


async def test_request_right_after_learning_an_address_dials_first() -> None:
    async def echo(sender: NodeId, data: bytes) -> bytes:
        return data

    with trio.fail_after(30):
        async with open_libp2p_transport(IDS[0]) as a, open_libp2p_transport(IDS[1]) as b:
            a.set_handler("echo", echo)
            b.add_peer_addresses(a.node_id, a.listen_addrs)
            assert await b.request(a.node_id, "echo", b"now") == b"now"


class _Rpc:
    def __init__(self, record: bytes | None) -> None:
        self.senderRecord = record or b""
        self._has = record is not None

    def HasField(self, name: str) -> bool:  # noqa: N802 - protobuf's spelling
        return name == "senderRecord" and self._has


class _Host:
    """Stands in for a libp2p host: only its identity (and weak-referenceability) matters."""


def test_signed_peer_records_are_verified_once_per_record_and_host() -> None:
    calls: list[bytes] = []
    refused = {b"forged"}

    def check(rpc: _Rpc, host: object, peer: object) -> bool:
        calls.append(rpc.senderRecord)
        return rpc.senderRecord not in refused

    verify = _verify_each_record_once(check)  # type: ignore[arg-type]
    host, other_host = _Host(), _Host()
    alice, bob = libp2p_id(IDS[0].node_id), libp2p_id(IDS[1].node_id)
    for _ in range(3):
        assert verify(_Rpc(b"record-1"), host, alice)  # type: ignore[arg-type]
    assert calls == [b"record-1"]
    assert verify(_Rpc(b"record-1"), other_host, alice)  # type: ignore[arg-type]  # another host: its own check
    assert verify(_Rpc(b"record-1"), host, bob)  # type: ignore[arg-type]  # the same bytes from another peer
    assert verify(_Rpc(b"record-2"), host, alice)  # type: ignore[arg-type]  # re-signed: checked again
    assert calls == [b"record-1"] * 3 + [b"record-2"]
    for _ in range(2):  # a refused record is never remembered
        assert not verify(_Rpc(b"forged"), host, alice)  # type: ignore[arg-type]
    assert calls[-2:] == [b"forged", b"forged"]
    assert verify(_Rpc(b"record-2"), host, alice)  # type: ignore[arg-type]
    assert calls[-1] == b"forged"  # the latest record accepted from alice is still remembered
    assert verify(_Rpc(None), host, alice)  # type: ignore[arg-type]  # no record: libp2p's own answer
    assert calls[-1] == b""


class _YamuxStream:
    """The parts of py-libp2p's YamuxStream that receive-credit accounting touches."""

    def __init__(self) -> None:
        self.window_lock = trio.Lock()
        self._pending_recv_release = 0
        self.target_recv_window = DEFAULT_WINDOW_SIZE  # the spec's initial 256 KiB
        self.recv_window = DEFAULT_WINDOW_SIZE  # what the peer may still send
        self.updates: list[int] = []

    async def read(self, size: int) -> None:
        """A data frame arrives (py-libp2p's frame reader takes it off the window), then is read."""
        self.recv_window -= size
        assert self.recv_window >= 0, "the peer was allowed to send more than we credited"
        await _credit_in_batches(self, bytes_read=size)

    async def send_window_update(self, increment: int, skip_lock: bool = False) -> None:
        self.updates.append(increment)


async def test_yamux_credit_goes_back_in_batches_of_half_a_window() -> None:
    stream = _YamuxStream()
    message = 1000
    reads_to_half = -(-(DEFAULT_WINDOW_SIZE // 2) // message)
    for _ in range(reads_to_half - 1):
        await stream.read(message)
    assert stream.updates == []  # a gossip message no longer costs a WINDOW_UPDATE frame
    await stream.read(message)
    consumed = reads_to_half * message
    # Everything consumed comes back, and the window grows from the spec's 256 KiB.
    assert stream.updates == [consumed + YAMUX_WINDOW - DEFAULT_WINDOW_SIZE]
    assert stream.recv_window == YAMUX_WINDOW  # all read: the whole grown window is the peer's
    await stream.read(YAMUX_WINDOW // 2 - 1)
    assert len(stream.updates) == 1  # the grown window batches at its own half
    await stream.read(1)
    assert stream.updates[1:] == [YAMUX_WINDOW // 2]
    assert stream.recv_window == YAMUX_WINDOW
    for _ in range(3):  # a peer that keeps sending full windows never exceeds what we credit
        await stream.read(YAMUX_WINDOW // 2)
        await stream.read(YAMUX_WINDOW // 2)


async def test_a_large_blob_moves_with_a_handful_of_window_updates(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    updates: list[int] = []
    send_update = YamuxStream.send_window_update

    async def counted(self: YamuxStream, increment: int, skip_lock: bool = False) -> None:
        updates.append(increment)
        await send_update(self, increment, skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counted)
    data = pseudo_random_bytes(12 << 20, seed=11)
    with trio.fail_after(60):
        async with open_libp2p_transport(IDS[0]) as server:
            digest = server.put_blob(data)
            async with open_libp2p_transport(IDS[1], bootstrap=server.listen_addrs) as client:
                await wait_until(lambda: server.node_id in client.peers(), what="connected")
                updates.clear()
                assert await client.get_blob(digest, peer=server.node_id) == data
    # 12 MiB in 64 KiB frames was ~190 updates with py-libp2p's credit-on-every-read.
    assert 0 < len(updates) <= 12
    # and the receiver's own window accounting agrees with the credit it granted
    assert not [r for r in caplog.records if "exceeded receive window" in r.getMessage()]


async def test_concurrent_pubsub_writes_to_one_stream_arrive_whole() -> None:
    """Regression (issue 22): a joiner crashed with `DecodeError: Error parsing message with
    type 'pubsub.pb.RPC'`. py-libp2p's GossipSub writes to a peer's pubsub stream from its
    per-peer send loop and, directly, from the new-peer path (recent and pending messages);
    yamux sends a write in window-sized frames, so two writes that wait for credit at once
    interleave their frames and the reader parses a mix of both."""
    from libp2p.custom_types import TProtocol
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.utils.varint import read_varint_prefixed_bytes_limited

    protocol = TProtocol("/swarmnode-test/pubsub-writes/1")
    payloads = [pseudo_random_bytes(700_000, seed=i) for i in range(4)]
    received: list[bytes] = []
    done = trio.Event()
    with trio.fail_after(60):
        async with open_libp2p_transport(IDS[0]) as server:

            async def read_all(stream: object) -> None:
                await trio.sleep(0.3)  # let every writer run out of send window first
                for _ in payloads:
                    raw = await read_varint_prefixed_bytes_limited(stream, 8 << 20)  # type: ignore[arg-type]
                    rpc = rpc_pb2.RPC()
                    rpc.ParseFromString(raw)  # DecodeError when the frames interleaved
                    received.append(rpc.publish[0].data)
                done.set()

            server._host.set_stream_handler(protocol, read_all)  # type: ignore[arg-type]
            async with open_libp2p_transport(IDS[1], bootstrap=server.listen_addrs) as client:
                await wait_until(lambda: server.node_id in client.peers(), what="connected")
                stream = await client._open_stream(server.node_id, protocol)
                async with trio.open_nursery() as nursery:
                    for payload in payloads:
                        rpc = rpc_pb2.RPC(publish=[rpc_pb2.Message(data=payload, topicIDs=["t"])])
                        nursery.start_soon(client._pubsub.write_msg, stream, rpc)
                await done.wait()
    assert sorted(received) == sorted(payloads)


async def test_a_peer_sending_a_malformed_pubsub_rpc_is_dropped_not_fatal() -> None:
    """The attacker's move against the same read loop: a permitted peer writes bytes that
    are no pubsub RPC. py-libp2p lets the DecodeError escape its pubsub service, which
    took the whole node down; now only that peer's stream is reset."""
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
    from libp2p.utils.varint import encode_varint_prefixed

    with trio.fail_after(60):
        async with open_libp2p_transport(IDS[0]) as server:
            inbox = await server.subscribe("t")
            async with open_libp2p_transport(IDS[1], bootstrap=server.listen_addrs) as client:
                await wait_until(lambda: server.node_id in client.peers(), what="connected")
                stream = await client._open_stream(server.node_id, PROTOCOL_ID_V11)
                await stream.write(encode_varint_prefixed(b"\xff" * 64))
                await trio.sleep(0.5)
            async with open_libp2p_transport(IDS[2], bootstrap=server.listen_addrs) as other:
                await other.subscribe("t")
                await wait_until(lambda: server.node_id in other.peers(), what="connected")
                while True:  # the server's pubsub still runs: a third peer's gossip arrives
                    await other.publish("t", b"still here")
                    with trio.move_on_after(1):
                        message = await inbox.receive()
                        break
    assert message.data == b"still here"
    assert message.sender == IDS[2].node_id
