"""The Application protocol: the deterministic state machine the ledger orders.

The contract (`consensus/contract.py`) implements it; tests and the simulator
use the small `CounterApp` in `consensus/simulator.py`. The consensus core
calls it synchronously and only with committed or proposed data, so an
implementation must be deterministic: same blocks, same state, same hash.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from crypto.identity import NodeId


class Application(Protocol):
    def validators(self, height: int) -> tuple[NodeId, ...]:
        """The validator set for `height` (changes take effect two heights after their block).

        Must be answerable for every height up to ``last applied height + 2``.
        """
        ...

    def check_tx(self, tx: bytes) -> str | None:
        """None if `tx` is acceptable against the current state, else the reason it is not."""
        ...

    def apply_block(self, height: int, txs: Sequence[bytes]) -> tuple[str | None, ...]:
        """Apply a committed block; per tx None (applied) or the rejection reason. Never raises."""
        ...

    def app_hash(self) -> bytes:
        """32-byte hash of the current state."""
        ...

    def snapshot(self) -> bytes:
        """The full state, to be given to `restore` of a fresh instance."""
        ...

    def restore(self, snapshot: bytes) -> None:
        """Replace the state by a `snapshot`."""
        ...


AppFactory = Callable[[], Application]
"""Builds a fresh application in its genesis state."""
