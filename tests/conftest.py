"""Suite-wide setup: the tests' temporary directories go on tmpfs (/dev/shm) where there is one.

Every node's ledger commits with ``synchronous=FULL`` (consensus/store.py): an fsync per
block per node. On a disk-backed /tmp a simulated swarm waits for those fsyncs about as
long as it computes (test_swarm_sim_faults.py, three tests: 19-27 s wall for 13.5 s CPU on
/tmp, 13-19 s wall for 12.5 s CPU on /dev/shm). No test relies on fsync reaching a disk:
the storage tests kill processes and tamper with files, and a killed process's writes
survive in the page cache on tmpfs as on a disk. The bench scripts use /dev/shm for the
same reason (scripts/bench_round.py). An explicit ``--basetemp`` or
``PYTEST_DEBUG_TEMPROOT`` (pytest's own setting of the temporary root) wins.
"""

from __future__ import annotations

import os

import pytest

TMPFS = "/dev/shm"


def pytest_configure(config: pytest.Config) -> None:
    if config.option.basetemp is not None or "PYTEST_DEBUG_TEMPROOT" in os.environ:
        return
    if os.path.isdir(TMPFS) and os.access(TMPFS, os.W_OK):
        os.environ["PYTEST_DEBUG_TEMPROOT"] = TMPFS
