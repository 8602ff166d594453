"""The shared transport conformance suite, against both implementations."""

from __future__ import annotations

import trio
import trio.testing

from swarmnode.testing import check_transport, libp2p_pair, memory_pair


async def test_memory_transport_conforms(autojump_clock: trio.testing.MockClock) -> None:
    await check_transport(memory_pair)


async def test_libp2p_transport_conforms() -> None:
    with trio.fail_after(120):
        await check_transport(libp2p_pair)
