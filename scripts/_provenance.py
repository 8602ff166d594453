"""Where a result file came from: the machine, how busy it was, and the code's git commit.

reproduce.py and bench_round.py record `machine()` at the start of a run and `finish()` at
the end, and bench_crypto.py adds `git_commit()` to its own host record, so their committed
JSON says which commit produced it and on how loaded a host (the machine is shared: read
ratios measured in one run rather than absolute times).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str | None:
    """The checkout's HEAD commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def machine() -> dict[str, Any]:
    """Python, CPU count, platform, git commit and the 1/5/15-minute load averages now."""
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def finish(record: dict[str, Any]) -> None:
    """Add the load averages at the end of the run to a `machine()` record."""
    record["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
