"""`swarmnode testnet` end to end (real processes and --sim), then `status`, `ledger`, `report`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from swarmnode.cli import format_status, main
from swarmnode.config import NodeConfig
from swarmnode.control import ControlError, request_control


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (our testnet's work dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(
                (line for line in (entry / "status").read_text().splitlines() if line.startswith("State:")),
                "",
            )
        except OSError:
            continue
        if text in cmdline and "zombie" not in state:
            found.append(int(entry.name))
    return found


class StatusProbe(threading.Thread):
    """Polls a site's control endpoint while the testnet runs; keeps the first answer that has a round."""

    def __init__(self, storage_dir: Path) -> None:
        super().__init__(daemon=True)
        self.storage_dir = storage_dir
        self.status: dict[str, Any] | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and self.status is None:
            try:
                self.status = request_control(self.storage_dir, timeout=2.0)
            except ControlError:
                time.sleep(0.3)


def test_testnet_three_real_processes_same_final_model_ledger_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "tn"
    probe = StatusProbe(workdir / "site0" / "state")
    probe.start()
    try:
        code = main(["testnet", "--nodes", "3", "--rounds", "3", "--workdir", str(workdir), "--plain",
                     "--timeout", "400"])  # fmt: skip
    finally:
        probe.done.set()
        probe.join(timeout=10)
    out = capsys.readouterr().out
    assert code == 0, out
    assert processes_mentioning(str(workdir)) == []  # no orphans
    for name in ("report.html", "validation.png", "test_metrics.png", "timings.png", "report.json"):
        assert (workdir / "report" / name).stat().st_size > 0
    assert f"report: {workdir / 'report' / 'report.html'}" in out
    metrics = [json.loads((workdir / f"site{i}" / "state" / "metrics.json").read_text()) for i in range(3)]
    hashes = {m["final_hash"] for m in metrics}
    assert len(hashes) == 1
    assert None not in hashes
    # 2 statistics merges (swarm-agreed standardisation of 30 features) then the 3 training rounds
    assert all([r["kind"] for r in m["rounds"]] == ["statistics"] * 2 + ["training"] * 3 for m in metrics)
    assert all(m["test"] is not None for m in metrics)
    summary = json.loads((workdir / "report" / "report.json").read_text())
    assert set(summary["final_hashes"].values()) == hashes
    assert summary["central"] is not None
    assert all(row["swarm"] is not None and row["local_only"] is not None for row in summary["test"])

    # status, as a script would read it, came from the running site0
    assert probe.status is not None
    assert len(probe.status["members"]) == 3
    assert {"round", "phase", "height", "last_merged_hash", "peers"} <= set(probe.status)
    shown = format_status(probe.status)
    assert f"round: {probe.status['round']}" in shown
    assert "history" not in shown

    # the ledger of every site verifies and records the same final model
    configs = [str(workdir / f"site{i}" / "site.toml") for i in range(3)]
    for config in configs:
        assert main(["ledger", "verify", "--config", config]) == 0
        assert "all valid" in capsys.readouterr().out
    assert main(["ledger", "show", "--config", configs[1], "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [r["outcome"] for r in record["rounds"]] == ["merged"] * 5
    assert record["stopped"]["final_model_hash"] in hashes
    assert {c["name"] for c in record["rounds"][0]["contributors"]} == {"site0", "site1", "site2"}
    assert main(["ledger", "show", "--config", configs[2]]) == 0
    assert "round 5: merged" in capsys.readouterr().out

    # a tampered copy of a ledger fails verification, naming height and field
    copy = tmp_path / "copy"
    shutil.copytree(workdir / "site0", copy, ignore=shutil.ignore_patterns("*.sock"))
    (copy / "site.toml").write_text(
        (copy / "site.toml")
        .read_text()
        .replace('"../data/', f'"{workdir}/data/')
        .replace('"../genesis.cbor"', f'"{workdir}/genesis.cbor"')
    )
    with sqlite3.connect(copy / "state" / "ledger.sqlite") as db:
        db.execute("UPDATE blocks SET hash = ? WHERE height = 2", (b"\x00" * 32,))
    db.close()
    assert main(["ledger", "verify", "--config", str(copy / "site.toml")]) == 1
    captured = capsys.readouterr()
    assert "height 2: hash: stored hash is not the hash of the block header" in captured.out
    assert "ledger verification failed" in captured.err

    # the report can be rebuilt from the work dir alone
    shutil.rmtree(workdir / "report")
    assert main(["report", "--dir", str(workdir)]) == 0
    assert (workdir / "report" / "report.html").exists()
    html = (workdir / "report" / "report.html").read_text()
    assert "Contributions (from the ledger)" in html
    assert hashes.pop() in html

    # a second testnet into the same work dir refuses; --overwrite replaces only a testnet dir
    assert main(["testnet", "--workdir", str(workdir), "--nodes", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    assert main(["testnet", "--workdir", str(other), "--overwrite"]) == 2
    assert "refusing to delete" in capsys.readouterr().err
    assert (other / "thesis.tex").exists()


def test_testnet_sim_in_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workdir = tmp_path / "sim"
    assert main(["testnet", "--sim", "--nodes", "2", "--no-secure", "--rounds", "2", "--workdir",
                 str(workdir), "--plain", "--scenario", "even", "--timeout", "300"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "all sites hold the same final model" in out
    assert (workdir / "report" / "validation.png").exists()
    assert main(["ledger", "verify", "--config", str(workdir / "site0" / "site.toml")]) == 0


def test_ctrl_c_stops_every_site_process(tmp_path: Path) -> None:
    workdir = tmp_path / "tn"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    testnet = subprocess.Popen(
        [sys.executable, "-m", "swarmnode", "testnet", "--nodes", "2", "--no-secure", "--rounds", "50",
         "--workdir", str(workdir), "--plain"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        # wait until both sites run (their control endpoints are up)
        while not all((workdir / f"site{i}" / "state" / "control.json").exists() for i in range(2)):
            assert testnet.poll() is None, testnet.communicate()
            assert time.monotonic() < deadline, "sites did not start"
            time.sleep(0.5)
        assert len(processes_mentioning(str(workdir))) >= 3  # testnet, 2 sites (+ baselines)
        os.killpg(testnet.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        _, err = testnet.communicate(timeout=60)
    finally:
        if testnet.poll() is None:
            os.killpg(testnet.pid, signal.SIGKILL)
            testnet.wait()
    assert testnet.returncode == 130, err
    assert b"interrupted" in err
    assert b"Traceback" not in err
    assert processes_mentioning(str(workdir)) == []
    for i in range(2):  # each site stopped on its SIGINT (a clean shutdown), not by the SIGKILL fallback
        log = (workdir / f"site{i}" / "run.log").read_text()
        assert "swarmnode: interrupted" in log, log[-2000:]
        assert "Traceback" not in log


def test_run_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    site = tmp_path / "a"
    assert main(["init", "--name", "a", "--dir", str(site), "--port", "0"]) == 0
    assert main(["genesis", "--member", f"a={site / 'node.key'}@/ip4/127.0.0.1/tcp/1",
                 "--member", f"b={'ab' * 32}@/ip4/127.0.0.1/tcp/2",
                 "--model-from", str(site / "site.toml"), "--no-secure",
                 "--out", str(site / "genesis.cbor")]) == 0  # fmt: skip
    capsys.readouterr()
    config = str(site / "site.toml")

    def run_fails(*overrides: str) -> str:
        argv = ["run", "--plain", "--config", config]
        for override in overrides:
            argv += ["--set", override]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert "Traceback" not in err
        return err

    assert "missing.npz" in run_fails('data.source="missing.npz"')
    assert "unknown key training.learning_rate" in run_fails("training.learning_rate=0.1")
    assert "is not the model" in run_fails('model.kind="mlp"', "model.hidden=[4]")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = run_fails(f"network.port={port}")
    assert str(port) in err
    assert NodeConfig.load(config).network.port == 0
