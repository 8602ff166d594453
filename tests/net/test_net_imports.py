"""The network package imports without libp2p (a process that never dials pays nothing for it);
libp2p loads on first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
import swarmnode.net, swarmnode.testing
loaded = sorted(m for m in sys.modules if m == "libp2p" or m.startswith("libp2p."))
assert not loaded, loaded
transport = swarmnode.net.Libp2pTransport
assert "libp2p" in sys.modules and transport.__module__ == "swarmnode.net.libp2p"
"""


def test_swarmnode_net_does_not_import_libp2p_until_asked() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
