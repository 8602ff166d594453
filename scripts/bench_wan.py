"""Rounds over WAN links: secure vs plaintext vs Flower FedAvg in the namespace lab, one run.

    sudo .venv/bin/python scripts/bench_wan.py                 # N = 4 and 8, 1M params
    sudo .venv/bin/python scripts/bench_wan.py --ns 4          # N = 4 only

For each N, one `NetLab` with N public sites whose links are shaped (`LinkShape`: by
default 100 Mbit/s each way and 40 ms round trip on every connection between two lab
hosts; see `swarmnode/testing/linkshape.py` for how the delay is made without netem).
In that lab, one after the other:

* **plain** and **secure**: one `scripts/_bench_round_node.py` process per site namespace
  (libp2p on the site's lab address, everyone dials everyone), a warm-up round with the
  key epoch and `--rounds` measured rounds of one local epoch + merge; summarised as
  `scripts/bench_round.py` does (``round_s``: the period between consecutive merges on
  the slowest node; ``bytes_sent_per_node``: the node's own TCP bytes sent in its merge
  window);
* **Flower FedAvg** (flwr, the message API variant of the anchor's app in
  ``../shared/anchors/flower``): its SuperLink in the lab's hub namespace (the internet,
  `HUB_ADDRESS`), one SuperNode per site namespace, `flwr run` from the hub; ``round_s``
  is the ServerApp's own round time (configure_train to aggregated), median of `--rounds`.

Every site's link bytes (all interfaces of its namespace, so TCP/IP headers included) are
sampled during each run: ``link_tx_bytes_per_node`` is what a site sent on its link per
round, the same meter for all three. Writes ``docs/results/bench_wan.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from _provenance import finish, machine  # noqa: E402
from bench_round import (  # noqa: E402
    ANCHOR,
    HIDDEN,
    NodesTimedOut,
    n_params,
    node_command,
    ratio,
    run_node_processes,
    summarise_rounds,
)

from swarmnode.testing.linkshape import HUB_ADDRESS, LinkShape, hub_site  # noqa: E402
from swarmnode.testing.netlab import LabSite, NetLab  # noqa: E402

NODE_PORT: Final = 7000  # the same in every site: each has its own namespace
FLOWER_PORT: Final = 9100
JsonDict = dict[str, Any]


class LinkMeter:
    """Samples every site's bytes sent (all its interfaces but lo) every `interval` s, read from
    ``/proc/<pid>/net/dev`` of a process in the site's namespace (no subprocess per sample)."""

    def __init__(self, sites: Sequence[LabSite], interval: float = 0.25) -> None:
        self._files = [f"/proc/{_a_pid_in(site.namespace)}/net/dev" for site in sites]
        self._interval = interval
        self.samples: list[tuple[float, list[int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LinkMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), [_tx_bytes(path) for path in self._files]))
            self._stop.wait(self._interval)

    def sent(self, site: int, start: float, end: float) -> int:
        """Bytes site `site` sent from the last sample at or before `start` to the first at or
        after `end` (so a window is never under-counted)."""
        before = [s for t, s in self.samples if t <= start] or [self.samples[0][1]]
        after = [s for t, s in self.samples if t >= end] or [self.samples[-1][1]]
        return after[0][site] - before[-1][site]


def _a_pid_in(namespace: str) -> int:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=10)
    pids = out.stdout.split()
    if not pids:
        raise RuntimeError(f"no process in namespace {namespace} to read its counters through")
    return int(pids[0])


def check_forwarders(lab: NetLab) -> None:
    """Raise unless every site still runs its delay forwarder (a run without it is not shaped)."""
    for site in lab.sites:
        out = subprocess.run(
            ["ip", "netns", "pids", site.namespace], capture_output=True, text=True, timeout=10
        )
        commands = []
        for pid in out.stdout.split():
            with contextlib.suppress(OSError):
                commands.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        if not any(b"swarmnode.testing.delayproxy" in c for c in commands):
            raise RuntimeError(f"the delay forwarder of {site.namespace} is gone: the links were not shaped")


def _tx_bytes(path: str) -> int:
    total = 0
    with open(path) as dev:
        for line in dev.readlines()[2:]:
            name, fields = line.split(":", 1)
            if name.strip() != "lo":
                total += int(fields.split()[8])
    return total


# ------------------------------------------------------------------------------- our nodes


def run_nodes(lab: NetLab, size: str, mode: str, rounds: int, timeout: float) -> JsonDict:
    """One node process per site namespace, `rounds` rounds (the first is the warm-up)."""
    n = len(lab.sites)
    hosts = [site.address for site in lab.sites]
    with tempfile.TemporaryDirectory(prefix="bench-wan-", dir="/dev/shm") as root:
        commands = [
            lab.exec_in(site, *node_command(i, n, size, mode, rounds, [NODE_PORT] * n, root, hosts))
            for i, site in enumerate(lab.sites)
        ]
        try:
            with LinkMeter(lab.sites) as meter:
                events = run_node_processes(commands, root, timeout)
        except NodesTimedOut as timed_out:
            return timed_out.result(n, size, mode)
    rounds_ev = [e for e in events if e["ev"] == "round"]
    result = summarise_rounds(n, size, mode, rounds_ev)
    for row in result["rounds"]:
        evs = [e for e in rounds_ev if e["round"] == row["round"]]
        start, end = min(e["start"] for e in evs), max(e["end"] for e in evs)
        row["link_tx_bytes_per_node"] = statistics.fmean(meter.sent(i, start, end) for i in range(n))
    measured = result["rounds"][1:]
    if measured:
        result["link_tx_bytes_per_node"] = statistics.median(r["link_tx_bytes_per_node"] for r in measured)
        rounds_measured = {r["round"] for r in measured}
        result["served_blobs_per_node"] = served_blobs(
            [e for e in rounds_ev if e["round"] in rounds_measured],
            n * len(rounds_measured),
            n_params(HIDDEN[size]),
        )
    return result


def served_blobs(events: Sequence[JsonDict], node_rounds: int, params: int) -> JsonDict:
    """Blob bytes a node served per round, by kind (told apart by bytes per parameter), and the
    bytes of blobs it served twice to one peer in one round (re-fetches)."""
    kinds: dict[str, float] = {}
    counts: dict[str, float] = {}
    refetched = 0
    for event in events:
        seen: set[tuple[str, str]] = set()
        for size, peer, key in event.get("served_blobs", []):
            per_param = size / params
            kind = (
                "model or plaintext update (4 B/param)"
                if per_param < 5
                else "ciphertext: contribution or aggregate"
                if per_param < 11
                else "point share"
                if per_param < 20
                else "other"
            )
            kinds[kind] = kinds.get(kind, 0.0) + size / node_rounds
            counts[kind] = counts.get(kind, 0.0) + 1 / node_rounds
            if (peer, key) in seen:
                refetched += size
            seen.add((peer, key))
    return {
        "bytes_by_kind": kinds,
        "copies_by_kind": counts,
        "total_bytes": sum(kinds.values()),
        "refetched_bytes": refetched / node_rounds,
    }


# ------------------------------------------------------------------------------- Flower


def run_flower(lab: NetLab, python: str, size: str, rounds: int, timeout: float) -> JsonDict:
    """The anchor's msgapi FedAvg app: SuperLink in the hub, a SuperNode per site, `rounds` rounds."""
    n = len(lab.sites)
    hidden = HIDDEN[size]
    venv = Path(python).parent
    hub = hub_site(lab)
    with tempfile.TemporaryDirectory(prefix="bench-wan-flower-") as tmp:
        work = Path(tmp)
        app = work / "app"
        shutil.copytree(ANCHOR / "flowerbench", app, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        home = work / "flwr_home"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "{HUB_ADDRESS}:{FLOWER_PORT}"\n'
            "insecure = true\n"
        )
        env = {
            **os.environ,
            "FLWR_HOME": str(home),
            "PATH": f"{venv}:{os.environ.get('PATH', '')}",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONWARNINGS": "ignore",
            "OMP_NUM_THREADS": "1",
        }
        bound = ["timeout", "-k", "5", str(int(timeout))]
        procs: list[subprocess.Popen[bytes]] = []

        def spawn(site: LabSite, name: str, *command: str) -> None:
            log = open(work / f"{name}.log", "w")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    lab.exec_in(site, *bound, *command),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=work,
                    start_new_session=True,
                )
            )

        try:
            spawn(
                hub,
                "superlink",
                str(venv / "flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--host",
                HUB_ADDRESS,
                "--port",
                str(FLOWER_PORT),
            )
            for i, site in enumerate(lab.sites):
                spawn(
                    site,
                    f"supernode{i}",
                    str(venv / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"{HUB_ADDRESS}:{FLOWER_PORT}",
                    "--max-retries",
                    "40",
                    "--node-config",
                    f"partition-id={i} num-partitions={n}",
                )
            _wait_for(
                lambda: (work / "superlink.log").read_text(errors="ignore").count("Activated node_id") >= n,
                90.0,
                "the SuperNodes did not register with the SuperLink",
            )
            events_path = work / "events.jsonl"
            config = (
                f'events="{events_path}" num-clients={n} hidden={hidden} '
                f'num-server-rounds={rounds + 1} variant="msgapi"'
            )
            with LinkMeter(lab.sites) as meter:
                submit = subprocess.run(
                    lab.exec_in(hub, str(venv / "flwr"), "run", str(app), "bench", "--run-config", config),
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=180,
                    cwd=work,
                )
                if submit.returncode != 0:
                    return {
                        "error": f"flwr run exit {submit.returncode}: "
                        f"{(submit.stdout + submit.stderr)[-800:]}"
                    }

                def events() -> list[JsonDict]:
                    text = events_path.read_text() if events_path.exists() else ""
                    return [json.loads(line) for line in text.splitlines() if line.strip()]

                _wait_for(
                    lambda: any(e["kind"] == "run_done" for e in events()), timeout, "Flower run timed out"
                )
                final = events()
        except RuntimeError as exc:
            tail = (work / "superlink.log").read_text(errors="ignore")[-800:]
            return {"error": f"{exc}; superlink log: {tail}"}
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, 9)
                proc.wait(timeout=30)
    all_rounds = sorted((e for e in final if e["kind"] == "round"), key=lambda e: e["round"])
    measured = all_rounds[1:]  # the first round also starts every ClientApp process cold
    per_round = [
        {
            "round": e["round"],
            "round_s": e["round_s"],
            "link_tx_bytes_per_node": statistics.fmean(
                meter.sent(i, e["t_start"], e["t_end"]) for i in range(n)
            ),
        }
        for e in all_rounds
    ]
    return {
        "n": n,
        "size": size,
        "params": n_params(hidden),
        "variant": "msgapi FedAvg (the anchor's app)",
        "rounds": per_round,
        "round_s": statistics.median(e["round_s"] for e in measured),
        "link_tx_bytes_per_node": statistics.median(r["link_tx_bytes_per_node"] for r in per_round[1:]),
    }


def _wait_for(ready: Any, timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{failure} within {timeout:g} s")
        time.sleep(0.2)


# ------------------------------------------------------------------------------- report


def summary(n: int, plain: JsonDict, secure: JsonDict, flower: JsonDict) -> JsonDict:
    def get(run: JsonDict, key: str) -> float | None:
        return None if "error" in run else run.get(key)

    return {
        "n": n,
        "secure_round_s": get(secure, "round_s"),
        "plain_round_s": get(plain, "round_s"),
        "flower_fedavg_round_s": get(flower, "round_s"),
        "secure_merge_s": get(secure, "merge_s"),
        "plain_merge_s": get(plain, "merge_s"),
        "secure_round_over_flower_fedavg": ratio(get(secure, "round_s"), get(flower, "round_s")),
        "secure_round_over_plain_round": ratio(get(secure, "round_s"), get(plain, "round_s")),
        "secure_bytes_sent_per_node": get(secure, "bytes_sent_per_node"),
        "plain_bytes_sent_per_node": get(plain, "bytes_sent_per_node"),
        "secure_link_tx_bytes_per_node": get(secure, "link_tx_bytes_per_node"),
        "plain_link_tx_bytes_per_node": get(plain, "link_tx_bytes_per_node"),
        "flower_link_tx_bytes_per_node": get(flower, "link_tx_bytes_per_node"),
        "same_model_everywhere": None if "error" in secure else secure.get("same_model_everywhere"),
    }


def table(rows: Sequence[JsonDict]) -> str:
    def f(x: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if x is None else fmt.format(x)

    def mb(x: float | None) -> str:
        return "-" if x is None else f"{x / 1e6:.1f}"

    lines = [
        "| N | secure round (s) | plain round (s) | Flower FedAvg round (s) | secure/FedAvg | secure/plain "
        "| MB sent per site per round on its link: secure / plain / Flower |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {f(r['secure_round_s'])} | {f(r['plain_round_s'])} "
            f"| {f(r['flower_fedavg_round_s'])} "
            f"| {f(r['secure_round_over_flower_fedavg'], '{:.2f}x')} "
            f"| {f(r['secure_round_over_plain_round'], '{:.2f}x')} "
            f"| {mb(r['secure_link_tx_bytes_per_node'])} / {mb(r['plain_link_tx_bytes_per_node'])} / "
            f"{mb(r['flower_link_tx_bytes_per_node'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ns", default="4,8")
    parser.add_argument("--modes", default="plain,secure,flower", help="a subset, for a look at one")
    parser.add_argument("--size", default="1M", choices=sorted(HIDDEN))
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds (after one warm-up)")
    parser.add_argument("--rate-mbit", type=float, default=100.0)
    parser.add_argument("--rtt-ms", type=float, default=40.0)
    parser.add_argument("--flower-python", default="/tmp/flowervenv/bin/python")
    parser.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "bench_wan.json")
    args = parser.parse_args(argv)
    reason = NetLab.unavailable()
    if reason is not None:
        print(f"bench_wan: {reason}", file=sys.stderr)
        return 2
    shape = LinkShape(rate_mbit=args.rate_mbit, rtt_ms=args.rtt_ms, lifetime_s=4 * args.timeout)
    host = machine()
    started = time.perf_counter()
    runs: list[JsonDict] = []
    rows: list[JsonDict] = []
    for n in [int(x) for x in args.ns.split(",") if x]:
        with NetLab.build(public=n, natted=0, shape=shape) as lab:
            by_mode: dict[str, JsonDict] = {}
            modes = args.modes.split(",")
            for mode in [m for m in ("plain", "secure") if m in modes]:
                check_forwarders(lab)
                res = by_mode[mode] = run_nodes(lab, args.size, mode, args.rounds + 1, args.timeout)
                check_forwarders(lab)
                runs.append(res)
                print(f"[wan] N={n} {mode}: " + _line(res), flush=True)
            flower: JsonDict = {"error": "not run (--modes)"}
            if "flower" in modes:
                flower = run_flower(lab, args.flower_python, args.size, args.rounds, args.timeout)
                check_forwarders(lab)
            flower.setdefault("n", n)
            runs.append({"mode": "flower", **flower})
            print(f"[wan] N={n} flower: " + _line(flower), flush=True)
        missing: JsonDict = {"error": "not run (--modes)"}
        rows.append(summary(n, by_mode.get("plain", missing), by_mode.get("secure", missing), flower))
    result = {
        "benchmark": "bench_wan: secure vs plaintext round vs Flower FedAvg over shaped lab links",
        "command": "python scripts/bench_wan.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {
            "size": args.size,
            "params": n_params(HIDDEN[args.size]),
            "measured_rounds": args.rounds,
            "rate_mbit_each_way": args.rate_mbit,
            "rtt_ms": args.rtt_ms,
            "links": "one per site to the hub; tbf rate limit both ways; delay by the dialler's "
            "forwarder (swarmnode/testing/linkshape.py)",
        },
        "machine": host,
        "runs": runs,
        "summary": rows,
        "targets_n4": next(
            (
                {
                    "secure_round_over_flower_fedavg_le_1": r["secure_round_over_flower_fedavg"],
                    "secure_round_over_plain_round_le_2": r["secure_round_over_plain_round"],
                }
                for r in rows
                if r["n"] == 4
            ),
            None,
        ),
        "table_md": table(rows),
    }
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    finish(host)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(result["table_md"])
    print("targets at N=4:", json.dumps(result["targets_n4"]))
    print(f"wrote {args.json} in {result['elapsed_s']:.0f} s")
    return 0


def _line(res: JsonDict) -> str:
    if "error" in res:
        return f"ERROR {str(res['error'])[:400]}"
    extra = (
        f", merge {res['merge_s']:.2f} s, own TCP {res['bytes_sent_per_node'] / 1e6:.1f} MB"
        if "merge_s" in res
        else ""
    )
    return (
        f"round {res['round_s']:.2f} s{extra}, link {res['link_tx_bytes_per_node'] / 1e6:.1f} MB/site/round"
    )


if __name__ == "__main__":
    raise SystemExit(main())
