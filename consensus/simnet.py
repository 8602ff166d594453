"""The one in-memory network of swarmnode: seeded, virtual-time, with fault injection.

`SimNetwork` carries opaque payloads between named addresses. It owns no clock:
the caller passes the virtual time of every `send` and asks for the deliveries
that are due (`pop_due`), and `next_time` tells it when the next one is. The
consensus simulator (`consensus/simulator.py`) and swarmnode's `MemoryTransport`
(`swarmnode/net/memory.py`) both drive it this way.

A neutral module, neither a consensus part nor a test helper: it imports only the
standard library and knows nothing of blocks, votes or transports, so the network
layer builds on it without depending on the ledger (`tests/test_layering.py` keeps
both true). It sits in this package because that is the lowest one both users import.

Every random choice comes from one `random.Random(seed)`, consumed in a fixed
order per `send` (drop, then duplicate, then one delay per copy), so the same
seed and the same calls give the same deliveries, byte for byte and in order.

Fault model, per message: lost with probability `drop`, delivered twice with
probability `duplicate`, each copy delayed uniformly in ``[min_delay,
max_delay]`` virtual seconds (so messages overtake each other when
``max_delay > min_delay``). On top of that: partitions (messages between
different groups are dropped when sent, until `heal`), and crashes (a crashed
address sends nothing and receives nothing; what was in flight to it when it
crashed is lost, even if it restarts before the delivery time).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar, final

P = TypeVar("P")

_REST_GROUP: Final = -1  # addresses named in no partition group form one group together


@final
@dataclass(frozen=True, slots=True)
class LinkFaults:
    """The per-message fault model of every link."""

    drop: float = 0.0  # probability a message is lost
    duplicate: float = 0.0  # probability it is delivered twice
    min_delay: float = 0.001  # virtual seconds
    max_delay: float = 0.010  # delay ~ uniform[min, max]: reordering arises when max > min

    def __post_init__(self) -> None:
        if not (0.0 <= self.drop <= 1.0 and 0.0 <= self.duplicate <= 1.0):
            raise ValueError("drop and duplicate are probabilities in [0, 1]")
        if not (0.0 <= self.min_delay <= self.max_delay):
            raise ValueError("delays must satisfy 0 <= min_delay <= max_delay")


@final
@dataclass(frozen=True, slots=True)
class Delivery(Generic[P]):
    """One message arriving at `dst` at virtual time `at`."""

    at: float
    src: str
    dst: str
    payload: P


@final
@dataclass(frozen=True, slots=True)
class SimStats:
    """Counters since the network was created. Each duplicate counts once in `sent`."""

    sent: int = 0  # send() calls
    dropped: int = 0  # copies lost: link drop, partition, crashed or unknown endpoint
    duplicated: int = 0  # extra copies created by the duplicate fault
    delivered: int = 0  # copies returned by pop_due


@dataclass(order=True, slots=True)
class _Queued(Generic[P]):
    at: float
    seq: int
    incarnation: int = field(compare=False)  # of dst at send time: a crash voids the copy
    delivery: Delivery[P] = field(compare=False)


@final
class SimNetwork(Generic[P]):
    """A seeded in-memory network over virtual time. See the module docstring."""

    __slots__ = ("_down", "_faults", "_group", "_incarnation", "_queue", "_rng", "_seq", "_stats")

    def __init__(self, seed: int, faults: LinkFaults = LinkFaults()) -> None:
        self._rng = random.Random(seed)
        self._faults = faults
        self._incarnation: dict[str, int] = {}
        self._down: set[str] = set()
        self._group: dict[str, int] | None = None
        self._queue: list[_Queued[P]] = []
        self._seq = 0
        self._stats = SimStats()

    @property
    def faults(self) -> LinkFaults:
        return self._faults

    def set_faults(self, faults: LinkFaults) -> None:
        self._faults = faults

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(sorted(self._incarnation))

    def add(self, address: str) -> None:
        if address in self._incarnation:
            raise ValueError(f"address {address!r} is already on the network")
        self._incarnation[address] = 0

    def _known(self, address: str) -> None:
        if address not in self._incarnation:
            raise ValueError(f"unknown address {address!r}")

    def crash(self, address: str) -> None:
        """Take `address` down: its sends are dropped and what is in flight to it is lost."""
        self._known(address)
        self._down.add(address)
        self._incarnation[address] += 1

    def restart(self, address: str) -> None:
        self._known(address)
        self._down.discard(address)

    def is_up(self, address: str) -> bool:
        self._known(address)
        return address not in self._down

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: a message between two different groups is dropped when sent.

        Addresses named in no group form one more group together.
        """
        assignment: dict[str, int] = {}
        for index, group in enumerate(groups):
            for address in group:
                self._known(address)
                if address in assignment:
                    raise ValueError(f"address {address!r} is in two partition groups")
                assignment[address] = index
        self._group = assignment

    def heal(self) -> None:
        self._group = None

    def _separated(self, src: str, dst: str) -> bool:
        if self._group is None:
            return False
        return self._group.get(src, _REST_GROUP) != self._group.get(dst, _REST_GROUP)

    def send(self, now: float, src: str, dst: str, payload: P) -> None:
        """Queue `payload` from `src` to `dst`, sent at virtual time `now`."""
        faults = self._faults
        # Draw every random number up front, in a fixed order, whatever the outcome:
        # then a fault decision never shifts the random stream of later messages.
        lost = self._rng.random() < faults.drop
        doubled = self._rng.random() < faults.duplicate
        delays = [self._rng.uniform(faults.min_delay, faults.max_delay) for _ in range(2)]
        copies = 2 if doubled else 1
        self._stats = _bump(self._stats, sent=1, duplicated=copies - 1)
        if (
            lost
            or src not in self._incarnation
            or dst not in self._incarnation
            or src in self._down
            or dst in self._down
            or self._separated(src, dst)
        ):
            self._stats = _bump(self._stats, dropped=copies)
            return
        for delay in delays[:copies]:
            self._seq += 1
            at = now + delay
            heapq.heappush(
                self._queue,
                _Queued(at, self._seq, self._incarnation[dst], Delivery(at, src, dst, payload)),
            )

    def next_time(self) -> float | None:
        """Virtual time of the earliest queued delivery, or None if nothing is in flight."""
        return self._queue[0].at if self._queue else None

    def pop_due(self, now: float) -> list[Delivery[P]]:
        """Every delivery with ``at <= now``, in (time, send order) order."""
        due: list[Delivery[P]] = []
        dropped = 0
        while self._queue and self._queue[0].at <= now:
            queued = heapq.heappop(self._queue)
            dst = queued.delivery.dst
            if dst in self._down or self._incarnation[dst] != queued.incarnation:
                dropped += 1
                continue
            due.append(queued.delivery)
        self._stats = _bump(self._stats, dropped=dropped, delivered=len(due))
        return due

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    @property
    def stats(self) -> SimStats:
        return self._stats


def _bump(
    stats: SimStats, *, sent: int = 0, dropped: int = 0, duplicated: int = 0, delivered: int = 0
) -> SimStats:
    return SimStats(
        sent=stats.sent + sent,
        dropped=stats.dropped + dropped,
        duplicated=stats.duplicated + duplicated,
        delivered=stats.delivered + delivered,
    )
