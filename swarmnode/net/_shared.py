"""Behaviour both transports share, so they cannot drift apart."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence

import trio

from crypto.errors import BlobHashMismatch
from crypto.identity import NodeId

from . import wire
from .base import BlobNotFound, RequestHandler, TransportError

log = logging.getLogger("swarmnode.net")

FetchOne = Callable[[NodeId, bytes, float], Awaitable[bytes]]


async def answer_request(
    handlers: dict[str, RequestHandler], max_size: int, peer: NodeId, request: wire.RpcRequest
) -> wire.RpcResponse:
    """Run the handler for one request and turn its outcome into a response."""
    handler = handlers.get(request.protocol)
    if handler is None:
        return wire.RpcResponse(ok=False, data=b"", error=f"no handler for {request.protocol!r}")
    try:
        data = await handler(peer, request.data)
    except Exception as exc:  # a failing handler refuses this request; the transport keeps serving
        log.info(
            "handler %r refused a request of %s: %s: %s",
            request.protocol,
            peer.short,
            type(exc).__name__,
            exc,
        )
        return wire.RpcResponse(ok=False, data=b"", error=f"{type(exc).__name__}: {exc}"[:512])
    if len(data) > max_size:
        log.error("handler %r answered %d bytes, above %d", request.protocol, len(data), max_size)
        return wire.RpcResponse(ok=False, data=b"", error="response too large")
    return wire.RpcResponse(ok=True, data=bytes(data), error="")


async def fetch_from_any(
    fetch_one: FetchOne, peers: Sequence[NodeId], digest: bytes, timeout: float
) -> bytes:
    """Ask `peers` in order for a blob until one delivers verified bytes, within `timeout` overall."""
    mismatched: list[NodeId] = []
    failures: list[str] = []
    deadline = trio.current_time() + timeout
    for peer in peers:
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            failures.append("timeout")
            break
        try:
            return await fetch_one(peer, digest, remaining)
        except BlobHashMismatch as exc:
            log.warning("%s", exc)  # named and skipped: another peer may have the real bytes
            mismatched.append(peer)
        except TransportError as exc:
            failures.append(f"{peer.short}: {exc}")
    detail = "; ".join(failures[:8]) or "no connected peers"
    if mismatched:
        detail += f"; served wrong bytes: {', '.join(p.peer_id for p in mismatched)}"
    raise BlobNotFound(f"no peer delivered blob {digest.hex()} ({detail})", tuple(mismatched))


@contextlib.contextmanager
def unwrap_single_exception() -> Iterator[None]:
    """Re-raise a nursery's lone exception as itself.

    Our ``open_*`` context managers yield inside a nursery, and trio wraps
    whatever leaves a nursery in an ExceptionGroup. A user's own exception
    from the ``async with`` body should reach them as it was raised.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
