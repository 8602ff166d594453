"""Site processes of a multi-process test, each with its log file, always killed at the end.

    with SiteProcesses(tmp_path) as sites:
        sites.start("site0", [sys.executable, "-m", "swarmnode", "run", "--config", ...])
        codes = sites.wait_all(deadline_s=300)   # SiteTimeout with every log's tail

A process's stdout and stderr go to ``<root>/<name>.log`` (shown, last lines first, by
`tails` in failure messages). Leaving the block kills every process still running (SIGKILL,
its whole process group: a `swarmnode run` may start children), also on failure, and
waits for it, so a test never leaves a process behind. Lab tests pass commands wrapped by
`swarmnode.testing.netlab.NetLab.exec_in`, which run in a lab namespace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

TAIL_LINES: Final = 30
KILL_WAIT_S: Final = 30.0
POLL_S: Final = 0.3


class SiteTimeout(AssertionError):
    """A site process did not finish, or a condition did not hold, in time (with the logs' tails)."""


def site_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a site process: unbuffered output, one BLAS thread (shared cores)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(extra or {})}


class SiteProcesses:
    """Named processes with log files under `root`; see the module docstring."""

    def __init__(self, root: Path, env: Mapping[str, str] | None = None) -> None:
        self.root: Final = root
        self._env = site_env(env)
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> SiteProcesses:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.kill_all()

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def start(self, name: str, command: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start `command` as process `name` (appending to its log: a restart keeps the first run's lines)."""
        with self.log_path(name).open("ab") as log:
            process = subprocess.Popen(
                list(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                start_new_session=True,
            )
        self.running[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_all(self, deadline_s: float, names: Sequence[str] | None = None) -> list[int]:
        """Wait until the processes `names` (default: all) exit, within `deadline_s` in all;
        their exit codes in that order. SiteTimeout (with every log's tail) when time runs out."""
        started = time.monotonic()
        chosen = list(self.running) if names is None else list(names)
        for name in chosen:
            remaining = deadline_s - (time.monotonic() - started)
            try:
                self.running[name].wait(timeout=max(1.0, remaining))
            except subprocess.TimeoutExpired:
                raise SiteTimeout(f"{name} did not finish in {deadline_s:.0f} s:\n{self.tails()}") from None
        return [self.running[name].returncode for name in chosen]

    def wait_for(
        self, what: str, check: Callable[[], bool], timeout_s: float, interval_s: float = POLL_S
    ) -> None:
        """Poll `check` every `interval_s` until it holds; SiteTimeout naming `what` (with the
        logs) when it does not within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(interval_s)
        raise SiteTimeout(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{self.tails()}")

    def kill(self, name: str) -> None:
        """SIGKILL process `name` and its process group (a crash, no goodbye) and reap it."""
        process = self.running[name]
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=KILL_WAIT_S)

    def kill_all(self) -> None:
        for name in self.running:
            self.kill(name)

    def tails(self, lines: int = TAIL_LINES) -> str:
        """The last `lines` lines of every process's log, for failure messages."""
        return "\n".join(
            f"--- {name} ---\n" + "\n".join(self.log(name).splitlines()[-lines:]) for name in self.running
        )
