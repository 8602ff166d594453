"""swarmnode's network layer: one small `Transport` interface, two implementations.

A site's transport is chosen by ``[network] transport`` (`factory.open_transport`).

- `Libp2pTransport` (`open_libp2p_transport`): py-libp2p, TCP + Noise + Yamux,
  GossipSub, blobs over streams, peer exchange, permissioning. libp2p is
  imported on first use of these two names only, so everything else here
  (and the code above it) imports without libp2p.
- `MemoryTransport` on a `MemoryNetwork` (`open_memory_network`): in-process,
  deterministic, seeded faults; built on `consensus.simnet.SimNetwork`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (
    DEFAULT_BLOB_TIMEOUT as DEFAULT_BLOB_TIMEOUT,
)
from .base import (
    DEFAULT_MAX_BLOB_SIZE as DEFAULT_MAX_BLOB_SIZE,
)
from .base import (
    DEFAULT_MAX_MESSAGE_SIZE as DEFAULT_MAX_MESSAGE_SIZE,
)
from .base import (
    DEFAULT_REQUEST_TIMEOUT as DEFAULT_REQUEST_TIMEOUT,
)
from .base import BlobNotFound as BlobNotFound
from .base import BlobStore as BlobStore
from .base import Inbound as Inbound
from .base import PeerUnreachable as PeerUnreachable
from .base import RequestHandler as RequestHandler
from .base import RequestRefused as RequestRefused
from .base import Transport as Transport
from .base import TransportClosed as TransportClosed
from .base import TransportError as TransportError
from .base import blob_hash as blob_hash
from .memory import LinkFaults as LinkFaults
from .memory import MemoryNetwork as MemoryNetwork
from .memory import MemoryTransport as MemoryTransport
from .memory import open_memory_network as open_memory_network

if TYPE_CHECKING:
    from .libp2p import Libp2pTransport as Libp2pTransport
    from .libp2p import open_libp2p_transport as open_libp2p_transport

_LAZY = frozenset({"Libp2pTransport", "open_libp2p_transport"})


def __getattr__(name: str) -> object:
    if name in _LAZY:  # PEP 562: import libp2p only when its transport is asked for
        from . import libp2p

        return getattr(libp2p, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_BLOB_TIMEOUT",
    "DEFAULT_MAX_BLOB_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_REQUEST_TIMEOUT",
    "BlobNotFound",
    "BlobStore",
    "Inbound",
    "Libp2pTransport",
    "LinkFaults",
    "MemoryNetwork",
    "MemoryTransport",
    "PeerUnreachable",
    "RequestHandler",
    "RequestRefused",
    "Transport",
    "TransportClosed",
    "TransportError",
    "blob_hash",
    "open_libp2p_transport",
    "open_memory_network",
]
