"""How a node runs its expensive steps: in a worker thread (or inline), once per key, at once.

Crypto runs in a worker thread unless ``inline=True`` (simulations on trio's MockClock,
where a thread would let virtual time jump during the computation).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar, cast, final

import trio

T = TypeVar("T")


@final
class Compute:
    """Runs a function off the trio loop (a worker thread) or, with `inline`, on it."""

    def __init__(self, *, inline: bool) -> None:
        self.inline = inline

    async def __call__(self, fn: Callable[..., T], *args: object) -> T:
        if self.inline:
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args)


@final
class OnceCache:
    """Results of a round's expensive steps that several jobs need (our own sum of a set of
    contributions, our decryption share of it): key -> bytes, computed once. Keys start with
    a kind and the round number (`forget_before` drops closed rounds: whole ciphertexts)."""

    def __init__(self) -> None:
        self._computed: dict[tuple[object, ...], bytes] = {}
        self._computing: dict[tuple[object, ...], trio.Event] = {}

    async def once(
        self,
        key: tuple[object, ...],
        compute: Callable[[], Awaitable[bytes]],
        *,
        wait_limit: float = math.inf,
    ) -> bytes:
        """`compute()` once per node for `key` (jobs asking concurrently share the run; a
        failed run leaves nothing behind, the next caller tries again). A caller waits at
        most `wait_limit` for a run under way, then computes on its own (a deterministic
        result: only for computations whose copies are equal bytes)."""
        while True:
            if key in self._computed:
                return self._computed[key]
            pending = self._computing.get(key)
            if pending is None:
                break
            with trio.move_on_after(wait_limit) as waited:
                await pending.wait()
            if waited.cancelled_caught:
                result = await compute()
                self._computed.setdefault(key, result)
                return result
        done = self._computing[key] = trio.Event()
        try:
            result = await compute()
            self._computed[key] = result
            return result
        finally:
            del self._computing[key]
            done.set()

    def forget_before(self, round_number: int) -> None:
        """Drop the results of rounds before `round_number` (closed)."""
        for key in [k for k in self._computed if cast(int, k[1]) < round_number]:
            del self._computed[key]


async def concurrently(tasks: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run `tasks` at once; the first failure cancels the rest and is raised as itself.

    Not as a trio ExceptionGroup: the job runner retries a job on a TransportError (a peer
    gone, a blob missing) and must see it as one, or a fetch that fails in a nursery
    would take the whole node down instead of being retried."""
    failures: list[Exception] = []
    async with trio.open_nursery() as nursery:

        async def run(task: Callable[[], Awaitable[None]]) -> None:
            try:
                await task()
            except Exception as exc:  # re-raised below, the first one only
                failures.append(exc)
                nursery.cancel_scope.cancel()

        for task in tasks:
            nursery.start_soon(run, task)
    if failures:
        raise failures[0]
