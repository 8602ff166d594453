"""The operator's view: metrics kept across restarts, log formats (ours and libp2p's),
the Prometheus endpoint, `status` with site names (live and from a stopped node's ledger)
and `report` from one site's own files."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from consensus.errors import StoreError
from consensus.store import LedgerStore
from swarmnode.cli import format_status, main
from swarmnode.logsetup import set_log_node, setup_logging
from swarmnode.metricsfile import MetricsFile
from swarmnode.prometheus import SiteCollector, WireTraffic, serve_prometheus
from swarmnode.testnet import prepare_testnet

CHAIN = "ab" * 32


def record(number: int, kind: str = "training") -> dict[str, Any]:
    return {"round": number, "kind": kind, "merged": {"roc_auc": 0.5 + number / 100}}


# -- metrics.json ---------------------------------------------------------------------


def test_a_restarted_site_keeps_the_rounds_an_earlier_run_recorded(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    first = MetricsFile(path, site="a", metric="roc_auc", chain_id=CHAIN)
    for n in (1, 2, 3, 4):  # timings are cumulative within a run (`SiteTimings.as_dict`)
        timings = {"rounds": [{"round": k, "train_s": 0.1} for k in range(1, n + 1)], "phases": []}
        first.record_round(record(n), timings=timings)
    # the restarted run: its trainer knows only rounds from 5 on (4 is recorded again: a crash
    # between the merge and the write), and its own timings
    second = MetricsFile(path, site="a", metric="roc_auc", chain_id=CHAIN)
    second.record_round(record(4) | {"participants": 2}, timings={"rounds": [], "phases": []})
    final = second.finish(
        {
            "metric": "roc_auc",
            "stop_reason": "max_rounds",
            "final_hash": "ff",
            "rounds": [record(5)],
            "test": None,
        },
        timings={"rounds": [{"round": 5, "train_s": 0.2}], "phases": [{"round": 5, "phase": "ready"}]},
    )
    on_disk = json.loads(path.read_text())
    assert on_disk == final
    assert [r["round"] for r in on_disk["rounds"]] == [1, 2, 3, 4, 5]
    assert on_disk["rounds"][3]["participants"] == 2  # the later record of round 4 wins
    assert [r["round"] for r in on_disk["timings"]["rounds"]] == [1, 2, 3, 4, 5]
    assert on_disk["timings"]["phases"] == [{"round": 5, "phase": "ready"}]
    assert on_disk["stop_reason"] == "max_rounds"
    assert on_disk["chain_id"] == CHAIN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temp file left


def test_metrics_of_another_chain_or_unreadable_are_set_aside_not_merged(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    MetricsFile(path, site="a", metric="roc_auc", chain_id=CHAIN).record_round(record(1))
    other = MetricsFile(path, site="a", metric="roc_auc", chain_id="cd" * 32)
    assert other.rounds == []
    assert (tmp_path / f"metrics.json.chain-{CHAIN[:16]}").exists()
    other.record_round(record(7))
    path.write_text("{half a fi")
    again = MetricsFile(path, site="a", metric="roc_auc", chain_id="cd" * 32)
    assert again.rounds == []
    assert (tmp_path / "metrics.json.unreadable").read_text() == "{half a fi"


def test_a_read_only_store_creates_no_file_and_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    LedgerStore(path, CHAIN.encode()[:32]).close()
    before = sorted(p.name for p in tmp_path.iterdir())
    with LedgerStore.open_existing(path, read_only=True) as store:
        assert store.chain_id == CHAIN.encode()[:32]
        assert store.tip_height() == 0
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store._db.execute("INSERT INTO meta VALUES ('x', 1)")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    with pytest.raises(StoreError, match="another chain"):
        LedgerStore(path, b"\x00" * 32, read_only=True)


# -- logging --------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    hooks = (sys.unraisablehook, sys.excepthook, threading.excepthook)
    yield
    root.handlers[:], root.level = saved
    sys.unraisablehook, sys.excepthook, threading.excepthook = hooks
    logging.captureWarnings(False)
    set_log_node("")


def _libp2p_failure() -> None:
    try:
        raise ValueError("Error parsing message with type 'pubsub.pb.RPC'")
    except ValueError:
        logging.getLogger("libp2p.pubsub.gossipsub").exception("failed to handle an RPC")


@pytest.mark.usefixtures("restore_logging")
def test_json_log_lines_carry_libp2p_records_and_their_tracebacks() -> None:
    stream = io.StringIO()
    setup_logging("info", log_format="json", site="hospital-a", stream=stream)
    set_log_node("12D3KooWpeer")
    logging.getLogger("swarmnode.run").info("round=%d phase=%s", 3, "contribute")
    logging.getLogger("swarmnode.run").debug("not at info")
    logging.getLogger("libp2p.network").info("libp2p chatter below warning")
    _libp2p_failure()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # one line per event: the traceback is inside its record
    ours, theirs = (json.loads(line) for line in lines)
    assert ours["message"] == "round=3 phase=contribute"
    assert {k: ours[k] for k in ("level", "logger", "site", "node")} == {
        "level": "INFO",
        "logger": "swarmnode.run",
        "site": "hospital-a",
        "node": "12D3KooWpeer",
    }
    assert ours["time"].endswith("Z")
    assert theirs["logger"] == "libp2p.pubsub.gossipsub"
    assert theirs["level"] == "ERROR"
    assert theirs["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: Error parsing message" in theirs["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_text_log_indents_a_traceback_under_its_timestamped_record() -> None:
    stream = io.StringIO()
    setup_logging("info", log_format="text", site="hospital-a", stream=stream)
    _libp2p_failure()
    first, *rest = stream.getvalue().rstrip("\n").split("\n")
    assert " ERROR libp2p.pubsub.gossipsub failed to handle an RPC" in first
    assert first[:4].isdigit()  # timestamped, unlike libp2p's own last-resort output
    assert rest
    assert all(line.startswith("    ") for line in rest)


@pytest.mark.usefixtures("restore_logging")
def test_a_cancelled_libp2p_connection_setup_logs_one_line_without_its_traceback() -> None:
    """Ctrl-C while a connection is being set up: py-libp2p logs the cancellation with the
    traceback as a message argument. The site is stopping as asked, so one line, no traceback
    (the CLI's Ctrl-C test asserts run.log holds none)."""
    import trio

    stream = io.StringIO()
    setup_logging("info", log_format="text", site="hospital-a", stream=stream)
    trace = "Traceback (most recent call last):\n  File x\ntrio.Cancelled: Cancelled"
    cancelled = trio.Cancelled._create()  # trio's own constructor is private
    logging.getLogger("libp2p.network.swarm").warning(
        "[ADDCONN_FAIL] add_conn failed for peer %s: %r\n%s", "12D3KooWpeer", cancelled, trace
    )
    logging.getLogger("libp2p.network.swarm").warning(
        "[ADDCONN_FAIL] add_conn failed for peer %s: %r\n%s", "12D3KooWpeer", ValueError("x"), trace
    )
    first, *rest = stream.getvalue().splitlines()
    assert "[ADDCONN_FAIL]" in first
    assert first.endswith("(cancelled; traceback omitted)")
    assert "ADDCONN_FAIL" in rest[0]
    assert any("Traceback (most recent call last)" in line for line in rest)  # a real failure keeps it


# -- Prometheus -----------------------------------------------------------------------


def _scrape(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


async def test_prometheus_endpoint_serves_round_phase_height_peers_bytes_and_timings() -> None:
    status: dict[str, Any] = {
        "round": 7,
        "phase": "decrypt",
        "height": 42,
        "key_epoch": 1,
        "members": ["a", "b", "c"],
        "peers": ["b"],
        "stopped": False,
        "history": [{"outcome": "merged"}, {"outcome": "aborted"}],
    }
    phases = [
        {"round": 6, "phase": "contribute", "seconds": 1.5},
        {"round": 7, "phase": "contribute", "seconds": 0.5},
    ]
    collector = SiteCollector(
        site="hospital-a",
        status=lambda: status,
        phases=lambda: phases,
        training_seconds=lambda: [2.0, 3.0],
        traffic=WireTraffic(sent=1000, received=2500),
    )
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_prometheus, collector, "127.0.0.1:0")
        assert host == "127.0.0.1"
        assert port > 0
        code, text = await trio.to_thread.run_sync(_scrape, f"http://127.0.0.1:{port}/metrics")
        assert code == 200
        status["round"] = 8  # read at every scrape
        _, again = await trio.to_thread.run_sync(_scrape, f"http://127.0.0.1:{port}/metrics")
        missing, _ = await trio.to_thread.run_sync(_scrape, f"http://127.0.0.1:{port}/")
        nursery.cancel_scope.cancel()
    site = 'site="hospital-a"'
    for line in (
        f"swarmnode_round{{{site}}} 7.0",
        f"swarmnode_height{{{site}}} 42.0",
        f"swarmnode_peers{{{site}}} 1.0",
        f"swarmnode_members{{{site}}} 3.0",
        f'swarmnode_phase{{phase="decrypt",{site}}} 1.0',
        f"swarmnode_merged_rounds{{{site}}} 1.0",
        f"swarmnode_network_sent_bytes_total{{{site}}} 1000.0",
        f"swarmnode_network_received_bytes_total{{{site}}} 2500.0",
        f'swarmnode_phase_duration_seconds_count{{phase="contribute",{site}}} 2.0',
        f'swarmnode_phase_duration_seconds_sum{{phase="contribute",{site}}} 2.0',
        f'swarmnode_last_phase_duration_seconds{{phase="contribute",{site}}} 0.5',
        f"swarmnode_local_training_seconds_sum{{{site}}} 5.0",
    ):
        assert line in text.splitlines(), line
    assert f"swarmnode_round{{{site}}} 8.0" in again
    assert missing == 404


def test_prometheus_address_is_checked_in_site_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--name", "a", "--dir", str(tmp_path), "--features", "4", "--classes", "2"]) == 0
    (tmp_path / "site.toml").write_text(
        (tmp_path / "site.toml").read_text() + '\n[metrics]\nprometheus = "9464"\n'
    )
    capsys.readouterr()
    assert main(["status", "--config", str(tmp_path / "site.toml")]) == 2
    err = capsys.readouterr().err
    assert "metrics" in err
    assert "HOST:PORT" in err


def test_status_shows_member_names_not_only_peer_ids() -> None:
    a, b = "12D3KooW" + "A" * 44, "12D3KooW" + "B" * 44
    text = format_status(
        {
            "running": True,
            "node_id": a,
            "members": [a, b],
            "peers": [b],
            "round": 2,
            "names": {a: "h-a", b: "h-b"},
        }
    )
    assert f"members: h-a (…{a[-8:]}), h-b (…{b[-8:]})" in text
    assert f"peers: h-b (…{b[-8:]})" in text
    assert "names" not in text


# -- real processes -------------------------------------------------------------------


def _start(config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "swarmnode", "run", "--plain", "--log-format", "json",
             "--config", str(config), *extra],
            stdout=subprocess.DEVNULL, stderr=out, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )  # fmt: skip


def _wait(what: str, check: Any, timeout: float, processes: list[subprocess.Popen[bytes]]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        assert all(p.poll() in (None, 0) for p in processes), f"a site failed while waiting for {what}"
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _rounds(storage: Path) -> list[int]:
    try:
        return [r["round"] for r in json.loads((storage / "metrics.json").read_text())["rounds"]]
    except (OSError, ValueError, KeyError):
        return []


def _prometheus_port(log: Path) -> int | None:
    for line in log.read_text().splitlines():
        message = json.loads(line)["message"]
        if message.startswith("prometheus endpoint at http://127.0.0.1:"):
            return int(message.rsplit(":", 1)[1].split("/")[0])
    return None


def test_operator_view_of_two_real_sites_with_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "tn"
    plan = prepare_testnet(workdir, nodes=2, dataset="breast_cancer", scenario="even", rounds=5, secure=False)
    a, b = plan.sites
    a_state, b_state = a.directory / "state", b.directory / "state"
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    site_a = _start(a.config_path, a_log, "--prometheus", "127.0.0.1:0")
    site_b = _start(b.config_path, b_log)
    processes = [site_a, site_b]
    try:
        port = _wait("site a's prometheus endpoint", lambda: _prometheus_port(a_log), 90, processes)
        before = _wait(
            "3 rounds at site b", lambda: len(_rounds(b_state)) >= 3 and _rounds(b_state), 120, processes
        )

        # live status of site a names its members; Prometheus shows its round and traffic
        assert main(["status", "--config", str(a.config_path)]) == 0
        live = capsys.readouterr().out
        assert "running: True" in live
        members = next(line for line in live.splitlines() if line.startswith("members: "))
        assert "site0 (…" in members
        assert "site1 (…" in members
        _, scraped = _scrape(f"http://127.0.0.1:{port}/metrics")
        values = {
            line.split("{")[0]: float(line.rsplit(" ", 1)[1])
            for line in scraped.splitlines()
            if line.startswith("swarmnode_") and 'site="site0"' in line
        }
        assert values["swarmnode_round"] >= 1
        assert values["swarmnode_height"] >= 1
        assert values["swarmnode_peers"] == 1
        assert values["swarmnode_network_sent_bytes_total"] > 0
        assert values["swarmnode_network_received_bytes_total"] > 0
        assert "swarmnode_phase_duration_seconds_count" in values

        # site b stops; its status comes from its stored ledger, which is only read
        site_b.send_signal(signal.SIGTERM)
        assert site_b.wait(timeout=60) == 130
        kept = _rounds(b_state)
        assert kept[: len(before)] == before
        files = sorted(p.name for p in b_state.iterdir())
        assert main(["status", "--config", str(b.config_path)]) == 0
        stopped = capsys.readouterr().out
        assert "running: False" in stopped
        members = next(line for line in stopped.splitlines() if line.startswith("members: "))
        assert "site0 (…" in members
        assert "site1 (…" in members
        assert "merged_rounds: " in stopped
        assert sorted(p.name for p in b_state.iterdir()) == files  # no -wal/-shm made by a reader

        # the restarted site b ends with every round it recorded before the restart
        site_b = _start(b.config_path, b_log)
        processes[1] = site_b
        assert site_a.wait(timeout=240) == 0
        assert site_b.wait(timeout=60) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
    final = json.loads((b_state / "metrics.json").read_text())
    numbers = [r["round"] for r in final["rounds"]]
    assert set(kept) <= set(numbers)
    assert numbers == sorted(set(numbers))
    assert final["final_hash"] == json.loads((a_state / "metrics.json").read_text())["final_hash"]

    # every line either run wrote is one JSON record naming the site (libp2p's too)
    records = [json.loads(line) for line in b_log.read_text().splitlines()]
    assert records
    assert all({"time", "level", "logger", "message", "site", "node"} <= set(r) for r in records)
    assert {r["site"] for r in records} == {"site1"}
    assert any(r["node"] for r in records)

    # the multi-site report still works; a site's own report needs no other site's files
    assert main(["report", "--dir", str(workdir)]) == 0
    shutil.rmtree(a.directory)
    assert main(["report", "--config", str(b.config_path)]) == 0
    out = capsys.readouterr().out
    page = (b.directory / "report" / "report.html").read_text()
    assert f"report: {b.directory / 'report' / 'report.html'}" in out
    assert "site site1, from its own metrics and ledger" in page
    assert "Contributions (from the ledger)" in page
    assert "site0: " in page  # the other site's contributions, from site1's own ledger
    assert final["final_hash"] in page
