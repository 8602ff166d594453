"""What does privacy cost per round? Secure merge vs plaintext merge vs Flower, measured in one run.

    python scripts/bench_round.py          # N = 3, 4, 8 x 10k/100k/1M + Flower (N=4) + scaling 32/64
    python scripts/bench_round.py --quick  # N = 2, 4 x 10k/100k, recorded Flower numbers, scaling 8/16
    python scripts/bench_round.py --ns 4 --sizes 11M --flower skip --scaling ""   # ResNet-18, 11.2M

1. **Node processes on 127.0.0.1** (`scripts/_bench_round_node.py`, one OS
   process per site, real libp2p, everyone dials everyone): for every model
   size (MLP 30-h-h-2 on breast_cancer, h = 85/300/983: 10,117 / 100,202 /
   999,713 parameters, the Flower anchor's model; ``11M``: MONAI's ResNet-18, 11,185,866
   merged values, as a ``model.factory`` model on scikit-learn's 8x8 digits, see
   `scripts/_bench_models.py`; ``resnet-smoke`` is that network at 1/16 width, for the
   smoke test) and N, one run with the
   secure merge (threshold CKKS) and one with the runtime's plaintext mode
   ("plain": genesis ``training.secure = false``, merge ``mean``: the same
   protocol and contract carrying plaintext float32 updates). Each round =
   one local epoch (SGD, the anchor's settings) + merge.
   Reported per round (median of the measured rounds; round 1 also runs the
   key epoch and is not counted):
   * ``merge_s``: from the sync point (the last node called merge()) to the
     merged model loaded on every node;
   * ``round_s``: full training round, the period between consecutive merges
     on the slowest node (training + merge);
   * ``bytes_sent_per_node``: kernel TCP byte counters of each process over its
     merge window (ledger gossip, blob transfers, all);
   * per phase, the longest time any node spent in it (encrypt, transfer =
     blob fetches, aggregate, decryption share, combine); ``ledger/wait`` =
     merge_s minus their sum (consensus blocks and protocol waiting);
     ``crypto_bytes_fraction`` = that sum over merge_s. Phases on different nodes
     overlap (the decrypt set adds and prepares its shares while the leader adds),
     so the sum can count one second twice: ``some_node_busy_fraction`` is the
     stricter share of merge_s in which at least one node was computing crypto or
     fetching a blob (the rest is pure protocol waiting).
2. **Flower** (flwr 1.41, the deployment runtime): the verified anchor
   benchmark (`ANCHOR`, kept beside the repository, not in it) copied to a temp dir
   and run with a Flower venv (``--flower-python``, default
   ``/tmp/flowervenv/bin/python``) in the same run; ``--flower recorded`` uses
   the anchor's committed numbers instead (labelled so in the JSON).
3. **Scaling** to many nodes in one process over the in-memory transport
   (virtual time, inline compute, 10k model, secure merge): wall time per
   round (all nodes' work on one core) and virtual protocol time per round.

Writes ``docs/results/bench_round[_quick].json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import itertools
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

from _bench_round_node import union_spans  # noqa: E402
from _provenance import finish, machine  # noqa: E402

from swarmnode.testnet import free_ports  # noqa: E402

HIDDEN: Final = {"10k": 85, "100k": 300, "1M": 983}
RESNET_SIZES: Final = ("11M", "resnet-smoke")  # `scripts/_bench_models.py`
CRYPTO_PHASES: Final = ("encrypt", "transfer", "aggregate", "decryption_share", "combine")
ANCHOR: Final = REPO.parent / "shared" / "anchors" / "flower"
JsonDict = dict[str, Any]


def n_params(hidden: int) -> int:
    return 30 * hidden + hidden + hidden * hidden + hidden + 2 * hidden + 2


def size_params(size: str) -> int:
    """Merged values of a bench size (a ResNet's are counted by building it once)."""
    if size not in RESNET_SIZES:
        return n_params(HIDDEN[size])
    from _bench_round_node import bench_spec, spec_size

    return spec_size(bench_spec(argparse.Namespace(resnet=size, hidden=None)))


def model_args(size: str) -> list[str]:
    return ["--resnet", size] if size in RESNET_SIZES else ["--hidden", str(HIDDEN[size])]


# ------------------------------------------------------------------------------- processes


def run_processes(n: int, size: str, mode: str, rounds: int, timeout: float) -> JsonDict:
    """N node processes, `rounds` rounds (the first is the warm-up); per-round summary."""
    ports = free_ports(n)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="bench-round-", dir=shm) as root:
        commands = [node_command(i, n, size, mode, rounds, ports, root) for i in range(n)]
        try:
            events = run_node_processes(commands, root, timeout)
        except NodesTimedOut as timed_out:
            return timed_out.result(n, size, mode)
    return summarise_rounds(n, size, mode, [e for e in events if e["ev"] == "round"])


def node_command(
    index: int,
    n: int,
    size: str,
    mode: str,
    rounds: int,
    ports: Sequence[int],
    root: str,
    hosts: Sequence[str] = (),
) -> list[str]:
    """The `scripts/_bench_round_node.py` command line of node `index` (libp2p on 127.0.0.1
    unless `hosts` gives every node's address)."""
    command = [
        sys.executable,
        str(REPO / "scripts" / "_bench_round_node.py"),
        "--index",
        str(index),
        "--n",
        str(n),
        *model_args(size),
        "--mode",
        mode,
        "--rounds",
        str(rounds),
        "--ports",
        ",".join(map(str, ports)),
    ]
    if hosts:
        command += ["--hosts", ",".join(hosts)]
    return [*command, "--root", root, "--train"]


class NodesTimedOut(Exception):
    """Some node did not finish its rounds in time; holds the end of every node's stderr."""

    def __init__(self, timeout: float, log_tails: list[str]) -> None:
        super().__init__(f"timeout after {timeout:g} s")
        self.log_tails = log_tails

    def result(self, n: int, size: str, mode: str) -> JsonDict:
        """The run's JSON row in place of its summary."""
        return {"n": n, "size": size, "mode": mode, "error": str(self), "logs": self.log_tails}


def run_node_processes(commands: Sequence[Sequence[str]], root: str, timeout: float) -> list[JsonDict]:
    """Starts one node process per command (stderr to `root`/node<i>.err) and returns the JSON
    events all of them printed; NodesTimedOut if one has not finished after `timeout` s. Every
    process still running at the end is killed with its process group."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for i, command in enumerate(commands):
            log = open(Path(root) / f"node{i}.err", "w+b")  # noqa: SIM115
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    start_new_session=True,
                )
            )
        outputs = collect_outputs(procs, timeout)
    except subprocess.TimeoutExpired:
        tails = []
        for log in logs:
            log.seek(0)
            tails.append(log.read().decode(errors="replace")[-600:])
        raise NodesTimedOut(timeout, tails) from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
        for log in logs:
            log.close()
    return [json.loads(line) for out in outputs for line in out.splitlines() if line.startswith("{")]


def collect_outputs(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> list[str]:
    """Every node's stdout (TimeoutExpired after `timeout` s). A node that finished its rounds
    keeps serving its blobs until all have (a straggler may still need them): then the nodes'
    stdin is closed and they leave."""
    outputs: list[list[str]] = [[] for _ in procs]
    finished = [threading.Event() for _ in procs]

    def read(k: int) -> None:
        stdout = procs[k].stdout
        assert stdout is not None
        for line in stdout:
            text = line.decode()
            outputs[k].append(text)
            if '"ev": "finished"' in text:
                finished[k].set()
        finished[k].set()  # exited (or crashed): nobody waits for it

    deadline = time.monotonic() + timeout
    readers = [threading.Thread(target=read, args=(k,), daemon=True) for k in range(len(procs))]
    for reader in readers:
        reader.start()
    for event in finished:
        if not event.wait(max(0.0, deadline - time.monotonic())):
            raise subprocess.TimeoutExpired(procs[0].args, timeout)
    for proc in procs:
        if proc.stdin is not None:
            proc.stdin.close()
    for proc in procs:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    for reader in readers:
        reader.join(timeout=max(1.0, deadline - time.monotonic()))
    return ["".join(lines) for lines in outputs]


def summarise_rounds(n: int, size: str, mode: str, events: Sequence[JsonDict]) -> JsonDict:
    by_round: dict[int, list[JsonDict]] = {}
    for e in events:
        by_round.setdefault(e["round"], []).append(e)
    complete = sorted(r for r, evs in by_round.items() if len(evs) == n)
    per_round = []
    prev_end: float | None = None
    for r in complete:
        evs = by_round[r]
        end = max(e["end"] for e in evs)
        merge_s = end - max(e["start"] for e in evs)
        phases = {p: max(e["phases"].get(p, {}).get("busy_s", 0.0) for e in evs) for p in CRYPTO_PHASES}
        # The slowest crypto call of each kind plus the longest fetch time on any node: an upper
        # bound of the crypto/bytes part of the critical path (phases on different nodes overlap).
        crypto_bytes = min(sum(phases.values()), merge_s)
        # Phases overlap (decryptors add while the leader adds): the part of the window in which
        # at least one node was computing crypto or fetching a blob; the rest is pure protocol
        # waiting (consensus blocks, phase changes).
        window_start = max(e["start"] for e in evs)
        busy = union_spans(
            [(max(s, window_start), e) for ev in evs for s, e in ev.get("busy_spans", []) if e > window_start]
        )
        any_busy = sum(e - s for s, e in busy)
        per_round.append(
            {
                "round": r,
                "merge_s": merge_s,
                "round_s": None if prev_end is None else end - prev_end,
                "train_s_max": max(e["train_s"] for e in evs),
                "bytes_sent_per_node": statistics.fmean(e["bytes_sent"] for e in evs),
                "bytes_sent_max": max(e["bytes_sent"] for e in evs),
                "phases_s": {**phases, "ledger_wait": merge_s - crypto_bytes},
                "crypto_bytes_fraction": crypto_bytes / merge_s if merge_s > 0 else None,
                "some_node_busy_fraction": any_busy / merge_s if merge_s > 0 else None,
                "same_model_everywhere": len({e["hash"] for e in evs}) == 1,
            }
        )
        prev_end = end
    measured = per_round[1:]  # round 1 also runs the key epoch
    result: JsonDict = {
        "n": n,
        "size": size,
        "params": size_params(size),
        "mode": mode,
        "rounds": per_round,
        "measured_rounds": len(measured),
    }
    if not measured:
        result["error"] = f"only {len(per_round)} complete rounds"
        return result

    def med(key: str) -> float:
        return statistics.median(x[key] for x in measured if x[key] is not None)

    result.update(
        merge_s=med("merge_s"),
        round_s=med("round_s"),
        bytes_sent_per_node=med("bytes_sent_per_node"),
        crypto_bytes_fraction=med("crypto_bytes_fraction"),
        some_node_busy_fraction=med("some_node_busy_fraction"),
        phases_s={p: statistics.median(x["phases_s"][p] for x in measured) for p in measured[0]["phases_s"]},
        same_model_everywhere=all(x["same_model_everywhere"] for x in per_round),
    )
    return result


# ------------------------------------------------------------------------------- Flower


def run_flower(python: str, ns: str, sizes: str, secagg_sizes: str, rounds: int, deadline: float) -> JsonDict:
    """The anchor's benchmark, copied to a temp dir (it writes logs next to itself), run now."""
    with tempfile.TemporaryDirectory(prefix="flowerbench-") as tmp:
        work = Path(tmp) / "flower"
        shutil.copytree(ANCHOR, work, ignore=shutil.ignore_patterns("results", "logs", "flwr_home", "venv"))
        out = work / "bench.json"
        cmd = [
            python,
            str(work / "bench_flower.py"),
            "--ns",
            ns,
            "--sizes",
            sizes,
            "--rounds",
            str(rounds),
            "--secagg-n",
            "4",
            "--secagg-sizes",
            secagg_sizes,
            "--deadline",
            str(deadline),
            "--out",
            str(out),
        ]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=deadline + 120)
        if proc.returncode != 0 or not out.exists():
            return {"source": "this run", "error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
        data = json.loads(out.read_text())
    data["source"] = "this run"
    data["command"] = " ".join(cmd[1:])
    data["wall_s_here"] = time.perf_counter() - started
    return data


def recorded_flower() -> JsonDict:
    data = json.loads((ANCHOR / "results" / "bench_flower.json").read_text())
    data["source"] = (
        "RECORDED by the anchor (../shared/anchors/flower/results/bench_flower.json), NOT this run"
    )
    return data


def flower_figure(flower: JsonDict, variant: str, n: int, size: str, key: str) -> float | None:
    """`key` of the Flower run of `variant` at N = `n` and `size`, if it ran without error."""
    for run in flower.get("runs", []):
        if (
            run.get("variant") == variant
            and run.get("n") == n
            and run.get("size") == size
            and "error" not in run
        ):
            return float(run[key])
    return None


# ------------------------------------------------------------------------------- in-memory scaling


def run_scaling(n: int, rounds: int) -> JsonDict:
    """N nodes in this process over MemoryTransport (virtual time, inline compute), 10k model."""
    import numpy as np
    import trio
    import trio.testing

    from consensus.genesis import Timeouts
    from models import mlp
    from swarmnode.net.memory import open_memory_network
    from swarmnode.simswarm import SwarmPlan

    spec = mlp(30, 2, hidden=(HIDDEN["10k"], HIDDEN["10k"]))
    size = n_params(HIDDEN["10k"])
    timeouts = Timeouts(
        ready_wait=3600.0,
        contribute=3600.0,
        aggregate=3600.0,
        verify=3600.0,
        decrypt=3600.0,
        key_epoch=3600.0,
    )
    marks: dict[int, list[tuple[float, float]]] = {}  # round -> (virtual, wall) at each node's merge
    sent: dict[int, int] = {}
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=shm) as tmp:
        plan = SwarmPlan.create(Path(tmp), spec, founders=n, max_rounds=rounds, timeouts=timeouts)

        async def site(i: int, network: Any) -> None:
            params = np.random.default_rng(i).normal(0, 0.05, size).astype(np.float32)
            async with plan.open_node(i, network) as node:
                for _ in range(rounds):
                    merged = await node.merge(params, 100, timeout=36000)
                    marks.setdefault(merged.round, []).append((trio.current_time(), time.perf_counter()))
                    sent.setdefault(merged.round, network.stats.sent)
                    params = merged.parameters

        async def main() -> None:
            async with open_memory_network(seed=n) as network, trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(site, i, network)

        started = time.perf_counter()
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        total = time.perf_counter() - started
    done = sorted(r for r, m in marks.items() if len(m) == n)
    ends = {r: (max(v for v, _ in marks[r]), max(w for _, w in marks[r])) for r in done}
    per_round = [
        {
            "round": r,
            "wall_s": ends[r][1] - ends[p][1],
            "virtual_s": ends[r][0] - ends[p][0],
            "messages_per_node": (sent[r] - sent[p]) / n,
        }
        for p, r in itertools.pairwise(done)
    ]
    return {
        "n": n,
        "params": size,
        "rounds": rounds,
        "total_wall_s": total,
        "first_round_wall_s": ends[done[0]][1] - started if done else None,
        "per_round": per_round,
        "wall_s_per_round": statistics.median(x["wall_s"] for x in per_round) if per_round else None,
        "virtual_s_per_round": statistics.median(x["virtual_s"] for x in per_round) if per_round else None,
        "messages_per_node_per_round": statistics.median(x["messages_per_node"] for x in per_round)
        if per_round
        else None,
    }


# ------------------------------------------------------------------------------- report


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def ratio_table(swarm: Sequence[JsonDict], flower: JsonDict) -> tuple[list[JsonDict], str]:
    rows = []
    for s in swarm:
        if s["mode"] != "secure" or "error" in s:
            continue
        plain = next(
            (
                p
                for p in swarm
                if p["mode"] == "plain" and p["n"] == s["n"] and p["size"] == s["size"] and "error" not in p
            ),
            None,
        )
        fedavg = flower_figure(flower, "msgapi", s["n"], s["size"], "round_s_median")
        legacy = flower_figure(flower, "legacy", s["n"], s["size"], "round_s_median")
        secagg = flower_figure(flower, "secaggplus", s["n"], s["size"], "round_s_median")
        rows.append(
            {
                "n": s["n"],
                "size": s["size"],
                "params": s["params"],
                "secure_merge_s": s["merge_s"],
                "plain_merge_s": None if plain is None else plain["merge_s"],
                "secure_round_s": s["round_s"],
                "plain_round_s": None if plain is None else plain["round_s"],
                "flower_fedavg_round_s": fedavg,
                "flower_legacy_round_s": legacy,
                "flower_secaggplus_round_s": secagg,
                "secure_over_plain_merge": ratio(s["merge_s"], None if plain is None else plain["merge_s"]),
                "secure_round_over_flower_fedavg": ratio(s["round_s"], fedavg),
                "secure_round_over_flower_secaggplus": ratio(s["round_s"], secagg),
                "crypto_bytes_fraction": s["crypto_bytes_fraction"],
                "some_node_busy_fraction": s.get("some_node_busy_fraction"),
                "secure_bytes_per_node": s["bytes_sent_per_node"],
                "plain_bytes_per_node": None if plain is None else plain["bytes_sent_per_node"],
                "flower_fedavg_up_bytes_per_client": flower_figure(
                    flower, "msgapi", s["n"], s["size"], "up_bytes_median"
                ),
            }
        )

    def f(x: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if x is None else fmt.format(x)

    def mb(x: float | None) -> str:
        return "-" if x is None else f"{x / 1e6:.2f}"

    lines = [
        "| N | params | secure merge (s) | plain merge (s) | secure/plain | secure round (s) | Flower FedAvg "
        "round (s) | secure/FedAvg | Flower SecAgg+ round (s) | secure/SecAgg+ | crypto+bytes share | "
        "MB sent/node: secure / plain / Flower up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['params']:,} | {f(r['secure_merge_s'])} | {f(r['plain_merge_s'])} "
            f"| {f(r['secure_over_plain_merge'], '{:.1f}x')} | {f(r['secure_round_s'])} "
            f"| {f(r['flower_fedavg_round_s'])} | {f(r['secure_round_over_flower_fedavg'], '{:.2f}x')} "
            f"| {f(r['flower_secaggplus_round_s'])} "
            f"| {f(r['secure_round_over_flower_secaggplus'], '{:.2f}x')} "
            f"| {f(r['crypto_bytes_fraction'], '{:.0%}')} "
            f"| {mb(r['secure_bytes_per_node'])} / {mb(r['plain_bytes_per_node'])} / "
            f"{mb(r['flower_fedavg_up_bytes_per_client'])} |"
        )
    return rows, "\n".join(lines)


def plot(result: JsonDict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swarm = [s for s in result["processes"] if "error" not in s]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    ax = axes[0]
    for mode, marker in (("secure", "o"), ("plain", "s")):
        for n in sorted({s["n"] for s in swarm}):
            pts = sorted((s["params"], s["merge_s"]) for s in swarm if s["mode"] == mode and s["n"] == n)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=marker, label=f"{mode} merge, N={n}")
    for run in result["flower"].get("runs", []):
        if "error" not in run and run.get("variant") in ("msgapi", "secaggplus"):
            ax.scatter(
                run["params"],
                run["round_s_median"],
                marker="x",
                s=60,
                label=f"Flower {run['variant']} round, N={run['n']}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("seconds per round (median)")
    ax.set_title("merge time (ours) vs Flower round time", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[1]
    secure = sorted((s for s in swarm if s["mode"] == "secure"), key=lambda s: (s["n"], s["params"]))
    labels = [f"N={s['n']}\n{s['size']}" for s in secure]
    bottom = [0.0] * len(secure)
    for phase in (*CRYPTO_PHASES, "ledger_wait"):
        values = [s["phases_s"].get(phase, 0.0) for s in secure]
        ax.bar(labels, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("seconds (longest node per phase)")
    ax.set_title("secure merge: per-phase breakdown", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[2]
    scaling = [s for s in result["scaling"] if s.get("wall_s_per_round") is not None]
    if scaling:
        ax.plot(
            [s["n"] for s in scaling],
            [s["wall_s_per_round"] for s in scaling],
            marker="o",
            label="wall s/round (all nodes, 1 process)",
        )
        ax.plot(
            [s["n"] for s in scaling],
            [s["virtual_s_per_round"] for s in scaling],
            marker="s",
            label="virtual protocol s/round",
        )
        ax.set_xlabel("nodes (in-memory transport, secure merge, 10k params)")
        ax.set_ylabel("seconds")
        ax.legend(fontsize=7)
    ax.set_title("scaling", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--ns", default=None, help="process counts (default 3,4,8; quick 3,4)")
    parser.add_argument("--sizes", default=None, help="model sizes (default 10k,100k,1M; quick 10k,100k)")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds (default 3; quick 2)")
    parser.add_argument("--scaling", default=None, help="in-memory node counts (default 32,64; quick 8,16)")
    parser.add_argument("--scaling-rounds", type=int, default=1, help="measured rounds at scale (default 1)")
    parser.add_argument(
        "--flower",
        choices=("run", "recorded", "skip"),
        default=None,
        help="run the anchor now (default), use its recorded numbers (--quick) or skip",
    )
    parser.add_argument("--flower-python", default="/tmp/flowervenv/bin/python")
    parser.add_argument("--flower-ns", default="4")
    parser.add_argument("--flower-sizes", default="100k,1M")
    parser.add_argument("--flower-rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0, help="per process run")
    args = parser.parse_args(argv)
    default_ns = "3,4" if args.quick else "3,4,8"  # a secure swarm needs t + 1 = 3 sites or more
    ns = [int(x) for x in (args.ns if args.ns is not None else default_ns).split(",") if x]
    sizes = (args.sizes or ("10k,100k" if args.quick else "10k,100k,1M")).split(",")
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 3)
    scaling_ns = [
        int(x)
        for x in (args.scaling if args.scaling is not None else ("8,16" if args.quick else "32,64")).split(
            ","
        )
        if x
    ]
    flower_mode = args.flower or ("recorded" if args.quick else "run")
    out = args.json or REPO / "docs" / "results" / (
        "bench_round_quick.json" if args.quick else "bench_round.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    host = machine()
    started = time.perf_counter()

    processes = []
    for size in sizes:
        for n in ns:
            for mode in ("plain", "secure"):
                res = run_processes(n, size, mode, rounds + 1, args.timeout)
                processes.append(res)
                if "error" in res:
                    print(f"[proc] N={n} {size:>4} {mode:<6}: ERROR {res['error']}", flush=True)
                else:
                    print(
                        f"[proc] N={n} {size:>4} {mode:<6}: merge {res['merge_s']:.2f} s, round "
                        f"{res['round_s']:.2f} s, {res['bytes_sent_per_node'] / 1e6:.2f} MB/node, "
                        f"crypto+bytes {res['crypto_bytes_fraction']:.0%}",
                        flush=True,
                    )

    partial = out.with_suffix(".partial.json")  # a crash later must not lose the measured stages
    partial.write_text(json.dumps({"processes": processes}, indent=1) + "\n")
    if flower_mode == "run":
        print("[flower] running the anchor benchmark (several minutes) ...", flush=True)
        try:
            flower = run_flower(
                args.flower_python,
                args.flower_ns,
                args.flower_sizes,
                args.flower_sizes,
                args.flower_rounds,
                deadline=1500.0,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            flower = {"source": "this run", "error": f"{type(exc).__name__}: {exc}"}
        if "error" in flower:
            print(f"[flower] failed ({flower['error'][:300]}); using the recorded anchor numbers", flush=True)
            failed = flower["error"]
            flower = recorded_flower()
            flower["run_error"] = failed
    elif flower_mode == "recorded":
        flower = recorded_flower()
    else:
        flower = {"source": "skipped", "runs": []}

    partial.write_text(json.dumps({"processes": processes, "flower": flower}, indent=1) + "\n")
    scaling = []
    for n in scaling_ns:
        res = run_scaling(n, args.scaling_rounds + 1)
        scaling.append(res)
        print(
            f"[scale] N={n}: {res['wall_s_per_round']:.1f} s wall/round, {res['virtual_s_per_round']:.1f} s "
            f"virtual/round, first round (with key epoch) {res['first_round_wall_s']:.1f} s",
            flush=True,
        )

    rows, table = ratio_table(processes, flower)
    target = next((r for r in rows if r["n"] == 4 and r["size"] == "1M"), None)
    targets = None
    if target is not None:
        targets = {
            "secure_over_plain_merge_le_5": target["secure_over_plain_merge"],
            "secure_round_over_flower_fedavg_le_0.5": target["secure_round_over_flower_fedavg"],
            "secure_round_over_flower_secaggplus_le_0.33": target["secure_round_over_flower_secaggplus"],
            "crypto_bytes_fraction_ge_0.8": target["crypto_bytes_fraction"],
            "some_node_busy_fraction": target["some_node_busy_fraction"],  # stricter, see the docstring
        }
    result = {
        "benchmark": "bench_round: secure merge vs plaintext merge vs Flower",
        "command": "python scripts/bench_round.py" + (" --quick" if args.quick else ""),
        "settings": {
            "ns": ns,
            "sizes": sizes,
            "measured_rounds": rounds,
            "scaling_measured_rounds": args.scaling_rounds,
            "scaling": scaling_ns,
            "flower": flower_mode,
            "processes": "one OS process per node, libp2p on 127.0.0.1",
        },
        "machine": host,
        "elapsed_s": None,
        "processes": processes,
        "flower": flower,
        "flower_source": flower.get("source"),
        "scaling": scaling,
        "ratios": rows,
        "targets_1M_4_nodes": targets,
        "table_md": table,
    }
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    finish(host)
    out.write_text(json.dumps(result, indent=1) + "\n")
    partial.unlink(missing_ok=True)
    plot(result, out.with_suffix(".png"))
    print(table)
    print(f"Flower numbers: {flower.get('source')}")
    if targets:
        print("targets (1M params, 4 nodes):", json.dumps(targets))
    print(f"wrote {out} and {out.with_suffix('.png')} in {result['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
