"""Did a change slow the round down? `bench_round.py` on two commits, measured in one run.

    python scripts/bench_compare.py --base 01dc85b            # base vs this checkout's HEAD
    python scripts/bench_compare.py --base A --head B --repeats 3

Each commit is checked out into a temporary git worktree and its own
`scripts/bench_round.py` runs there (1M parameters, 4 node processes, no Flower, no
in-memory scaling by default), with the worktree first on PYTHONPATH so the node processes
import that commit's packages. Runs alternate (base, head, base, head, ...) so that a
change in the machine's load hits both alike. The JSON holds every run and, per metric,
the median over the repeats and head / base: the redesign's target is that the secure
round and merge stay within 10 % (ratio <= 1.10).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, finish, machine

METRICS = ("secure_round_s", "secure_merge_s", "plain_round_s", "plain_merge_s")


def resolve(rev: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"bench_compare: {rev!r} is not a commit of {REPO}: {out.stderr.strip()}")
    return out.stdout.strip()


def bench_once(tree: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One `bench_round.py` run of the commit checked out at `tree`: its 1M x N ratios row."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable, str(tree / "scripts" / "bench_round.py"),
        "--ns", str(args.n), "--sizes", args.size, "--rounds", str(args.rounds),
        "--scaling", "", "--flower", "skip", "--json", str(out),
    ]  # fmt: skip
    started = time.monotonic()
    subprocess.run(command, cwd=tree, env=env, check=True, timeout=args.timeout)
    rows = json.loads(out.read_text())["ratios"]
    if len(rows) != 1:
        raise SystemExit(f"bench_compare: expected one ratios row from {tree}, got {len(rows)}")
    return {**{m: rows[0][m] for m in METRICS}, "wall_s": round(time.monotonic() - started, 1)}


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {m: statistics.median(r[m] for r in runs) for m in METRICS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the commit before the change")
    parser.add_argument("--head", default="HEAD", help="the commit after it (default HEAD)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per commit, alternating (default 2)")
    parser.add_argument("--n", type=int, default=4, help="node processes (default 4)")
    parser.add_argument("--size", default="1M", help="model size (default 1M)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per run (default 3)")
    parser.add_argument("--timeout", type=float, default=900, help="per bench_round run, seconds")
    parser.add_argument("--json", default=str(REPO / "docs" / "results" / "bench_compare.json"))
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    commits = {"base": resolve(args.base), "head": resolve(args.head)}
    host = machine()
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        trees = {side: Path(tmp) / side for side in commits}
        try:
            for side, commit in commits.items():
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "add", "--detach", str(trees[side]), commit],
                    check=True, capture_output=True, timeout=120,
                )  # fmt: skip
            for k in range(args.repeats):
                for side in ("base", "head"):
                    print(f"[{k + 1}/{args.repeats}] {side} {commits[side][:10]} ...", flush=True)
                    run = bench_once(trees[side], args, Path(tmp) / f"{side}-{k}.json")
                    print(f"    {json.dumps(run)}", flush=True)
                    runs[side].append(run)
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                    capture_output=True, timeout=120,
                )  # fmt: skip
    finish(host)
    medians = {side: summary(r) for side, r in runs.items()}
    ratios = {m: medians["head"][m] / medians["base"][m] for m in METRICS}
    result = {
        "benchmark": "bench_compare: bench_round.py on two commits, alternating, in one run",
        "command": "python scripts/bench_compare.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"n": args.n, "size": args.size, "rounds": args.rounds, "repeats": args.repeats},
        "commits": commits,
        "machine": host,
        "runs": runs,
        "medians": medians,
        "head_over_base": ratios,
        "within_10_percent": {m: ratios[m] <= 1.10 for m in ("secure_round_s", "secure_merge_s")},
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    for m in METRICS:
        base, head = medians["base"][m], medians["head"][m]
        print(f"{m:16s} base {base:7.2f}  head {head:7.2f}  head/base {ratios[m]:.3f}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
