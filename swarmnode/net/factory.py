"""Which `Transport` a site runs: chosen by ``[network] transport`` in its ``site.toml``.

A transport is added by writing its ``open_*`` context manager and registering an opener
here that builds it from the ``[network]`` section; the node only ever calls
`open_transport` and then the `Transport` interface. Only transports that connect separate
processes are offered: `MemoryTransport` lives in one process, so tests build it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from crypto.identity import NodeIdentity

from .base import Transport

if TYPE_CHECKING:
    from ..config import NetworkSection

TransportOpener = Callable[["NetworkSection", NodeIdentity], AbstractAsyncContextManager[Transport]]


def _open_libp2p(network: NetworkSection, identity: NodeIdentity) -> AbstractAsyncContextManager[Transport]:
    from .libp2p import open_libp2p_transport  # libp2p loads only when a site uses it

    return open_libp2p_transport(
        identity,
        listen_host=network.listen,
        listen_port=network.port,
        advertise=network.advertised(),
        bootstrap=network.bootstrap,
        relays=network.relays,
        relay_service=network.relay_service,
    )


OPENERS: Final[Mapping[str, TransportOpener]] = MappingProxyType({"libp2p": _open_libp2p})
TRANSPORT_NAMES: Final = tuple(OPENERS)


def open_transport(network: NetworkSection, identity: NodeIdentity) -> AbstractAsyncContextManager[Transport]:
    """The running transport ``network.transport`` names, set up from `network`; closed on exit."""
    opener = OPENERS.get(network.transport)
    if opener is None:
        raise ValueError(
            f"network.transport = {network.transport!r}: expected one of {', '.join(TRANSPORT_NAMES)}"
        )
    return opener(network, identity)
