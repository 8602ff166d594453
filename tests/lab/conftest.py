"""The namespace lab for these tests: skipped only where it cannot be built (not root, no ip netns)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from swarmnode.testing.netlab import NetLab


@pytest.fixture
def nat_lab() -> Iterator[NetLab]:
    """Site 0 public (the relay), sites 1 and 2 each behind NAT with an outbound-only firewall."""
    reason = NetLab.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with NetLab.build(public=1, natted=2) as lab:
        yield lab
