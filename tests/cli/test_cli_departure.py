"""`swarmnode leave` and `swarmnode remove --site NAME` with real site processes on
127.0.0.1: a vote by a majority of the other members removes a site, a site leaves on
its own, and the remaining members' ledger lists neither."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from swarmnode.cli import main
from swarmnode.testnet import prepare_testnet


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "swarmnode", "run", "--plain", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=out, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )  # fmt: skip


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _merged_rounds(storage: Path) -> int:
    try:
        return len(json.loads((storage / "metrics.json").read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return 0


def _members(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["status", "--config", str(config)]) == 0
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("members: "))


def test_a_site_is_removed_by_vote_and_another_leaves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = prepare_testnet(
        tmp_path / "tn", nodes=4, dataset="breast_cancer", scenario="even", rounds=50, secure=False
    )
    configs = [site.config_path for site in plan.sites]
    processes = [_start(config, tmp_path / f"site{i}.log") for i, config in enumerate(configs)]
    try:
        _wait("a merged round", lambda: _merged_rounds(plan.sites[0].directory / "state"), 150)

        # one vote of the three needed is not enough; a second (a majority of the others) is
        assert main(["remove", "--config", str(configs[0]), "--site", "site3", "--reason", "test"]) == 0
        assert "voted to remove site3: 1 of 2 votes needed" in capsys.readouterr().out
        assert "site3 (…" in _members(configs[0], capsys)
        assert main(["remove", "--config", str(configs[1]), "--site", "site3"]) == 0
        assert "removed site3 (" in capsys.readouterr().out
        assert "site3" not in _members(configs[0], capsys)

        # a name that is no member is refused, naming the members
        assert main(["remove", "--config", str(configs[0]), "--site", "nobody"]) == 1
        assert "no member named 'nobody'; the members are site0, site1, site2" in capsys.readouterr().err

        assert main(["leave", "--config", str(configs[2])]) == 0
        assert "left the swarm" in capsys.readouterr().out
        members = _members(configs[1], capsys)
        assert "site0 (…" in members
        assert "site1 (…" in members
        assert "site2" not in members
        assert "site3" not in members
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
