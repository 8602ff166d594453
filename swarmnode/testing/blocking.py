"""Calls into the blocking API (`swarmnode.api`) from a second thread, as a second site would."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Starts `fn` in a new thread; the thread and a list that receives what `fn` returned or
    raised (read it after joining the thread)."""
    box: list[object] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box
