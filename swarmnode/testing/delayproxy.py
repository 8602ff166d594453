"""A transparent TCP forwarder that delays every byte by a fixed time in each direction.

    python -m swarmnode.testing.delayproxy --port 7999 --one-way-ms 20 --lifetime 3600

The kernel here has no ``netem``, so the lab (`swarmnode.testing.linkshape`) emulates link
delay in user space: inside a site's namespace an iptables ``nat OUTPUT`` rule redirects
every outgoing TCP connection to the lab's addresses to this forwarder, which reads the
original destination (``SO_ORIGINAL_DST``), connects to it with the socket mark the rule
exempts, and forwards each chunk in each direction once it is `one_way` seconds old. Every
connection between two lab sites passes exactly one forwarder (the dialler's), so it sees
a round trip of twice `one_way` on top of the links' own.

What it does not emulate: TCP on the delayed path does not see the delay (the dialler's
kernel gets its ACKs from the local forwarder), so slow start and window limits behave as
on a short link; each direction buffers at most `_QUEUE_CHUNKS` chunks (back-pressure
beyond that). The process ends after `lifetime` seconds.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import socket
import struct
import sys
from typing import Final

import trio

SO_ORIGINAL_DST: Final = 80  # linux/netfilter_ipv4.h
SO_MARK: Final = 36  # asm-generic/socket.h
BYPASS_MARK: Final = 0x5A  # outgoing connections of the forwarder itself: not redirected
_CHUNK: Final = 1 << 16
_QUEUE_CHUNKS: Final = 64  # at most 4 MiB in flight per direction


def original_destination(sock: trio.socket.SocketType) -> tuple[str, int]:
    """The address a redirected connection was dialled to (before the nat rule)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return str(ipaddress.IPv4Address(packed)), int(port)


_LINK_ERRORS: Final = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


async def _delayed_pump(
    source: trio.SocketStream, sink: trio.SocketStream, one_way: float, connection: trio.CancelScope
) -> None:
    """Bytes from `source` to `sink`, each chunk sent `one_way` s after it arrived; EOF too.
    A failure on either side ends the whole `connection` (as a broken link would)."""
    send, receive = trio.open_memory_channel[tuple[float, bytes]](_QUEUE_CHUNKS)

    async def read() -> None:
        async with send:
            try:
                while True:
                    chunk = await source.receive_some(_CHUNK)
                    await send.send((trio.current_time() + one_way, chunk))
                    if not chunk:
                        return
            except _LINK_ERRORS:
                connection.cancel()

    async def write() -> None:
        async with receive:
            try:
                async for due, chunk in receive:
                    await trio.sleep_until(due)
                    if not chunk:
                        await sink.send_eof()
                        return
                    await sink.send_all(chunk)
            except _LINK_ERRORS:
                connection.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        nursery.start_soon(write)


async def _forward(client: trio.SocketStream, one_way: float) -> None:
    async with client:
        upstream_socket = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            host, port = original_destination(client.socket)
            upstream_socket.setsockopt(socket.SOL_SOCKET, SO_MARK, BYPASS_MARK)
            with trio.fail_after(10):
                await upstream_socket.connect((host, port))
        except (OSError, trio.TooSlowError):
            upstream_socket.close()
            return  # the destination does not answer: drop the connection, as a link would
        async with trio.SocketStream(upstream_socket) as upstream, trio.open_nursery() as nursery:
            nursery.start_soon(_delayed_pump, client, upstream, one_way, nursery.cancel_scope)
            nursery.start_soon(_delayed_pump, upstream, client, one_way, nursery.cancel_scope)


async def serve(port: int, one_way: float, lifetime: float) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print("ready", flush=True)
    with trio.move_on_after(lifetime):
        await trio.serve_listeners(lambda stream: _forward(stream, one_way), listeners)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--one-way-ms", type=float, required=True)
    parser.add_argument("--lifetime", type=float, required=True, help="seconds before the process ends")
    args = parser.parse_args(argv)
    if not (args.one_way_ms >= 0 and math.isfinite(args.lifetime) and args.lifetime > 0):
        parser.error("--one-way-ms must be >= 0 and --lifetime a positive number of seconds")
    trio.run(serve, args.port, args.one_way_ms / 1000.0, args.lifetime)
    return 0


if __name__ == "__main__":
    sys.exit(main())
