"""Changes to py-libp2p 0.8.1 that `Libp2pTransport` applies once per process (`patch_libp2p`).

Each one fixes a measured loss or cost in the library as pinned; each is checked against
the library's shape where it could silently stop applying after an upgrade.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio
from google.protobuf.message import DecodeError
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.pubsub import gossipsub as _gossipsub_module
from libp2p.pubsub import pubsub as _pubsub_module
from libp2p.pubsub import rpc_queue as _rpc_queue_module
from libp2p.stream_muxer.yamux import yamux as _yamux_module

log = logging.getLogger(__name__)
_libp2p_patched = False

RecordCheck = Callable[[Any, IHost, ID], bool]


def patch_libp2p() -> None:
    """Changes to py-libp2p 0.8.1, applied once per process before the first host.

    Two queue limits that silently lose gossip in bursts are raised:
    - `pubsub.SUBSCRIPTION_CHANNEL_SIZE` (32): a subscription further behind
      drops messages with only a WARNING. We drain it at once into our own
      channels, but a burst can still outrun one scheduling round.
    - `RpcQueue(max_size=32)` per peer: extra outbound RPCs are dropped with a
      DEBUG line. Verified: 200/200 delivered in a burst with both raised.
    The outbound per-message size limit (1 MiB) is kept: gossip stays small.

    And each sender's signed peer record is verified once per record, not once per RPC
    (`verify_each_record_once`), yamux returns receive credit in batches
    (`credit_in_batches`), pubsub writes one RPC at a time per stream
    (`one_write_at_a_time`), and an inbound RPC that does not parse costs only its
    sender's stream (`drop_malformed_rpcs`).
    """
    global _libp2p_patched
    if _libp2p_patched:
        return
    _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = 1024
    defaults = _rpc_queue_module.RpcQueue.__init__.__defaults__
    if defaults is None or len(defaults) != 2:  # pragma: no cover - guards a libp2p upgrade
        raise RuntimeError("py-libp2p RpcQueue changed; re-check the queue patch in libp2p_patches.py")
    _rpc_queue_module.RpcQueue.__init__.__defaults__ = (4096, defaults[1])
    check = verify_each_record_once(_pubsub_module.maybe_consume_signed_record)  # type: ignore[attr-defined]
    _pubsub_module.maybe_consume_signed_record = check  # type: ignore[attr-defined,assignment]
    _gossipsub_module.maybe_consume_signed_record = check  # type: ignore[attr-defined,assignment]
    _yamux_module.YamuxStream._auto_tune_and_send_window_update = credit_in_batches  # type: ignore[method-assign]
    _pubsub_module.Pubsub.write_msg = one_write_at_a_time(_pubsub_module.Pubsub.write_msg)  # type: ignore[method-assign,assignment]
    read_stream = _pubsub_module.Pubsub.continuously_read_stream
    _pubsub_module.Pubsub.continuously_read_stream = drop_malformed_rpcs(read_stream)  # type: ignore[method-assign,assignment]
    _libp2p_patched = True


YAMUX_WINDOW: Final = 4 * 1024 * 1024
"""Receive window a stream grows to with its first credit: a 7.5 MB blob (a 1M-parameter
contribution) then needs about 4 credits, not the 60 of the spec's fixed 256 KiB."""


async def credit_in_batches(self: Any, *, bytes_read: int = 0) -> None:
    """Yamux receive credit, go-yamux style: returned once half the window is consumed.

    py-libp2p 0.8.1 sends a WINDOW_UPDATE frame after every read (its "release on read"
    default): one more Noise-encrypted frame and send() per gossip message received,
    about a sixth of a node's event-loop time with 8 nodes (sampled). Here the bytes a
    stream's reader consumed are credited back in one frame when they reach half its
    window, and the first credit grows the window (py-libp2p's `target_recv_window`,
    the spec's 256 KiB at first) to `YAMUX_WINDOW`. Never deadlocks: a sender blocked
    on credit has a full window outstanding, so once the reader consumes it the pending
    count is past half.
    """
    async with self.window_lock:
        self._pending_recv_release += bytes_read
        pending = self._pending_recv_release
        window = self.target_recv_window
        if pending < window // 2:
            return
        self._pending_recv_release = 0
        self.target_recv_window = YAMUX_WINDOW
        increment = pending + YAMUX_WINDOW - window
        # The credit we grant is window the peer may use: the frame reader subtracts every
        # data frame from recv_window and warns once it would go below zero.
        self.recv_window += increment
    await self.send_window_update(increment)


WriteMsg = Callable[[Any, Any, Any], Awaitable[bool]]


def one_write_at_a_time(write_msg: WriteMsg) -> WriteMsg:
    """Wrap `Pubsub.write_msg` so that RPCs written to one stream never interleave.

    GossipSub writes to a peer's stream from the per-peer send loop and, directly, when a
    peer arrives (its pending messages and the recent ones from the message cache): a
    joiner gets both at once. Yamux sends one write as frames of at most the send window
    and takes its lock per frame, so two writes that wait for credit at the same time
    alternate frames, and the reader's next length prefix lands inside another RPC: the
    joiner died with `DecodeError: Error parsing message with type 'pubsub.pb.RPC'`.
    """
    locks: weakref.WeakKeyDictionary[Any, trio.Lock] = weakref.WeakKeyDictionary()

    async def write_whole(self: Any, stream: Any, rpc_msg: Any) -> bool:
        lock = locks.setdefault(stream, trio.Lock())
        async with lock:
            return await write_msg(self, stream, rpc_msg)

    return write_whole


ReadStream = Callable[[Any, Any], Awaitable[None]]


def drop_malformed_rpcs(read_stream: ReadStream) -> ReadStream:
    """Wrap `Pubsub.continuously_read_stream` so that bytes that are no pubsub RPC reset
    that peer's stream instead of ending the pubsub service.

    py-libp2p handles an oversized RPC this way but lets protobuf's `DecodeError` escape,
    which took the whole node down: one malformed RPC from any permitted peer was enough.
    """

    async def read_or_drop(self: Any, stream: Any) -> None:
        try:
            await read_stream(self, stream)
        except DecodeError as exc:
            peer_id = stream.muxed_conn.peer_id
            log.warning("peer %s sent a pubsub RPC that does not parse (%s); dropping it", peer_id, exc)
            with contextlib.suppress(Exception):  # the peer may already be gone
                await stream.reset()
            self._handle_dead_peer(peer_id)

    return read_or_drop


def verify_each_record_once(check: RecordCheck) -> RecordCheck:
    """Wrap py-libp2p's per-RPC check of the sender's signed peer record.

    py-libp2p attaches the sender's signed peer record to every pubsub RPC, and the
    receiver verifies it (Ed25519) and re-stores it on every RPC, twice for RPCs that
    carry control messages: ~5 % of a node's event-loop time in a 4-node 1M round
    (sampled). A record's bytes change only when the sender re-signs it, so bytes this
    host already accepted from this peer are accepted again without the work; anything
    new, and anything ever refused, goes through `check`.
    """
    accepted: weakref.WeakKeyDictionary[IHost, dict[ID, bytes]] = weakref.WeakKeyDictionary()

    def verify_once(rpc: Any, host: IHost, peer: ID) -> bool:
        record = bytes(rpc.senderRecord) if rpc.HasField("senderRecord") else None
        known = accepted.setdefault(host, {})
        if record is not None and known.get(peer) == record:
            return True
        ok = check(rpc, host, peer)
        if ok and record is not None:
            known[peer] = record
        return ok

    return verify_once
