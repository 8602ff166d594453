"""The namespace lab for these tests: skipped only where it cannot be built (not root, no ip netns)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from swarmnode.testing.netlab import NetLab


def _lab(public: int, natted: int, *, symmetric_nat: bool = False) -> Iterator[NetLab]:
    reason = NetLab.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with NetLab.build(public=public, natted=natted, symmetric_nat=symmetric_nat) as lab:
        yield lab


@pytest.fixture
def nat_lab() -> Iterator[NetLab]:
    """Site 0 public (the relay), sites 1 and 2 each behind NAT with an outbound-only firewall."""
    yield from _lab(public=1, natted=2)


@pytest.fixture
def swarm_lab() -> Iterator[NetLab]:
    """Sites 0 (the relay) and 1 public, sites 2 and 3 each behind NAT."""
    yield from _lab(public=2, natted=2)


@pytest.fixture
def two_relay_lab() -> Iterator[NetLab]:
    """Sites 0, 1 and 2 public (2 for a `swarmnode relay` process), 3 and 4 each behind a
    symmetric NAT (no hole punching: traffic between them stays on a relay)."""
    yield from _lab(public=3, natted=2, symmetric_nat=True)


@pytest.fixture
def join_lab() -> Iterator[NetLab]:
    """Sites 0 (the relay) and 1 public, sites 2, 3 and 4 each behind NAT (4: the joiner)."""
    yield from _lab(public=2, natted=3)


@pytest.fixture
def symmetric_nat_lab() -> Iterator[NetLab]:
    """As `nat_lab`, but the NAT routers pick a random source port per connection."""
    yield from _lab(public=1, natted=2, symmetric_nat=True)
