#!/usr/bin/env python3
"""Benchmark the BFT ledger in the deterministic simulator for n = 4, 7, 16 validators.

    python scripts/bench_ledger.py [--quick] [--json PATH]

For each n and two network conditions (clean: 1-10 ms delays; lossy: 5 % drop,
5 % duplicate, 1-50 ms delays, i.e. reordering), runs real cores (real Ed25519
signatures, real SQLite stores in memory) until the slowest honest node has
committed H heights while a client submits one transaction every 20 virtual ms,
and reports:

- heights per second of virtual time and of wall-clock time (the simulator's
  throughput on this machine: all n nodes share one CPU core);
- block interval (virtual seconds between consecutive commits, all nodes);
- commit latency of transactions (virtual seconds from submission until every
  honest node applied it): median and 95th percentile;
- wall-clock milliseconds per height and per delivered message.

Virtual times depend only on the seed and the simulated network; wall times are
noisy on a shared host. Results go to stdout and to JSON (default
docs/results/bench_ledger.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import platform
import statistics
import time
from pathlib import Path

from consensus.blocks import sha256
from consensus.simnet import LinkFaults
from consensus.simulator import SIM_TIMEOUTS, Simulation, kv_set

CONDITIONS = {
    "clean": LinkFaults(min_delay=0.001, max_delay=0.010),
    "lossy": LinkFaults(drop=0.05, duplicate=0.05, min_delay=0.001, max_delay=0.050),
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# No block pacing (timeout_commit = 0): measure how fast consensus itself goes.
TIMEOUTS = dataclasses.replace(SIM_TIMEOUTS, commit=0.0)


def run(n: int, faults: LinkFaults, heights: int, seed: int) -> dict[str, float | int]:
    sim = Simulation(n, seed, faults=faults, timeouts=TIMEOUTS)
    submitted: dict[bytes, float] = {}
    wall = time.perf_counter()
    tick, k = 0.02, 0
    while sim.min_honest_height() < heights:
        if sim.now > 600:
            raise RuntimeError(f"n={n}: no progress to {heights} heights in 600 virtual s")
        tx = kv_set(f"t{k}", k)
        submitted[tx] = sim.now
        sim.submit(k % n, tx)
        k += 1
        end = sim.now + tick
        sim.run_until(lambda: sim.min_honest_height() >= heights, max_time=end)
        if sim.min_honest_height() < heights:
            sim.advance_to(end)
    wall = time.perf_counter() - wall
    virtual = max(node.commit_times[heights] for node in sim.honest)
    node_intervals: list[float] = []
    for node in sim.honest:
        times = [node.commit_times[h] for h in range(1, heights + 1)]
        node_intervals += [b - a for a, b in itertools.pairwise(times)]
    latencies = []
    for tx, at in submitted.items():
        digest = sha256(tx)
        if all(digest in node.applied_txs for node in sim.honest):
            done = max(node.commit_times[node.applied_txs[digest]] for node in sim.honest)
            latencies.append(done - at)
    delivered = sim.network.stats.delivered
    sim.close()
    return {
        "n": n,
        "heights": heights,
        "virtual_seconds": round(virtual, 4),
        "wall_seconds": round(wall, 4),
        "heights_per_virtual_second": round(heights / virtual, 2),
        "heights_per_wall_second": round(heights / wall, 2),
        "block_interval_virtual_median_s": round(statistics.median(node_intervals), 4),
        "block_interval_virtual_p95_s": round(percentile(node_intervals, 0.95), 4),
        "tx_commit_latency_virtual_median_s": round(statistics.median(latencies), 4),
        "tx_commit_latency_virtual_p95_s": round(percentile(latencies, 0.95), 4),
        "txs_committed": len(latencies),
        "wall_ms_per_height": round(1000 * wall / heights, 3),
        "messages_delivered": delivered,
        "wall_us_per_message": round(1e6 * wall / max(1, delivered), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer heights (smoke run)")
    parser.add_argument("--json", type=Path, default=Path("docs/results/bench_ledger.json"))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    heights = {4: 100, 7: 100, 16: 40} if not args.quick else {4: 10, 7: 10, 16: 5}
    results = []
    for name, faults in CONDITIONS.items():
        for n, target in heights.items():
            row = {"condition": name, **run(n, faults, target, args.seed)}
            results.append(row)
            print(
                f"{name:5} n={n:2}: {row['heights_per_virtual_second']:7.2f} heights/s virtual, "
                f"{row['heights_per_wall_second']:7.2f} heights/s wall, block interval "
                f"{row['block_interval_virtual_median_s']:.3f} s, tx latency p50 "
                f"{row['tx_commit_latency_virtual_median_s']:.3f} s "
                f"p95 {row['tx_commit_latency_virtual_p95_s']:.3f} s (virtual), "
                f"{row['wall_ms_per_height']:.1f} ms wall/height"
            )
    document = {
        "benchmark": "bench_ledger",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seed": args.seed,
        "timeouts": {
            "propose": TIMEOUTS.propose,
            "prevote": TIMEOUTS.prevote,
            "precommit": TIMEOUTS.precommit,
            "delta": TIMEOUTS.delta,
            "rebroadcast": TIMEOUTS.rebroadcast,
            "commit": TIMEOUTS.commit,
        },
        "conditions": {
            name: {
                "drop": f.drop,
                "duplicate": f.duplicate,
                "min_delay": f.min_delay,
                "max_delay": f.max_delay,
            }
            for name, f in CONDITIONS.items()
        },
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
