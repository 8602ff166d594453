"""The shared transport conformance suite, against both implementations."""

from __future__ import annotations

import functools

import trio
import trio.testing

from swarmnode.net import LinkFaults
from swarmnode.testing import check_transport, libp2p_pair, memory_pair


async def test_memory_transport_conforms(autojump_clock: trio.testing.MockClock) -> None:
    await check_transport(memory_pair)


async def test_libp2p_transport_conforms() -> None:
    with trio.fail_after(120):
        await check_transport(libp2p_pair)


async def test_memory_transport_conforms_with_duplicates_and_reordering(
    autojump_clock: trio.testing.MockClock,
) -> None:
    faults = LinkFaults(duplicate=0.5, min_delay=0.001, max_delay=0.3)
    await check_transport(functools.partial(memory_pair, seed=5, faults=faults))
