"""Chaos run: real `swarmnode run` processes on 127.0.0.1, killed and restarted while they train.

    python scripts/chaos.py --nodes 4 --rounds 6 --workdir /tmp/chaos [--seed 1] [--timeout 1800]

Sets up a testnet work dir (`swarmnode.testnet.prepare_testnet`: one site per node,
uneven-free "even" split of the bundled breast-cancer data, secure mean merge), starts
one `swarmnode run` process per site in its own process group, then injects faults:

- ``kill@<phase>``: once the swarm is in round-phase <phase> (ready, contribute,
  aggregate, verify, decrypt), SIGKILL a random minority site (at most f = (n-1)//3 at a
  time, so the ledger keeps a quorum) and restart it after ``--down`` seconds.
- ``restart-all``: SIGKILL every site at once mid-training (from the middle round on, in
  ``--restart-all-phase``, default any phase) and restart them all.

Before each kill it records the site's committed ledger height (read from its SQLite
store). At the end, once every process has exited: every site holds the same final
model hash, every ledger passes `verify_chain` (what `swarmnode ledger verify` runs),
every height committed before a kill is still in that site's store after it, and all
sites hold identical blocks at every common height. It prints a table of the faults
tried, their outcome and the recovery time (from the restart until the site answers
status again at or above the height it had committed), and writes it as JSON.

Exit status 0 only if training finished with zero lost commits and zero divergent
models. Everything it starts is killed (process groups) on any exit path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from consensus.store import LedgerStore  # noqa: E402
from swarmnode.config import NodeConfig  # noqa: E402
from swarmnode.control import ControlError, request_control  # noqa: E402
from swarmnode.ledgerview import ledger_path, verify_site_ledger  # noqa: E402
from swarmnode.testnet import TestnetPlan, prepare_testnet, stop_all  # noqa: E402

PHASES = ("ready", "contribute", "aggregate", "verify", "decrypt")


@dataclass
class Fault:
    kind: str  # "kill@<phase>" or "restart-all"
    sites: list[str]
    round: int | None = None
    heights_before: dict[str, int] = field(default_factory=dict)
    recovery_seconds: float | None = None
    outcome: str = "pending"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env


class Swarm:
    """The site processes of one testnet plan; each in its own process group."""

    def __init__(self, plan: TestnetPlan) -> None:
        self.plan = plan
        self.configs = {s.name: NodeConfig.load(s.config_path) for s in plan.sites}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: dict[str, int] = {s.name: 0 for s in plan.sites}

    def start(self, name: str) -> None:
        site = next(s for s in self.plan.sites if s.name == name)
        self.starts[name] += 1
        log = (site.directory / f"run{self.starts[name]}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "swarmnode", "run", "--plain", "--config", str(site.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(),
            start_new_session=True,
        )
        log.close()  # the child holds its own descriptor

    def kill(self, name: str) -> None:
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def status(self, name: str) -> dict[str, Any] | None:
        if self.processes[name].poll() is not None:
            return None
        try:
            answer = request_control(self.configs[name].node.storage_dir, timeout=2.0)
        except ControlError:
            return None
        return answer if isinstance(answer, dict) else None

    def committed_height(self, name: str) -> int:
        path = ledger_path(self.configs[name])
        if not path.exists():
            return 0
        with LedgerStore.open_existing(path) as store:
            return store.tip_height()

    def exit_codes(self) -> dict[str, int | None]:
        return {name: p.poll() for name, p in self.processes.items()}

    def stop(self) -> None:
        stop_all(tuple(self.processes.values()))


def wait_recovered(swarm: Swarm, names: list[str], heights: dict[str, int], deadline: float) -> float | None:
    """Seconds until every site in `names` answers status at or above its recorded height."""
    started = time.monotonic()
    while time.monotonic() < deadline:
        done = True
        for name in names:
            if swarm.exit_codes()[name] == 0:
                continue  # finished training meanwhile
            status = swarm.status(name)
            height = status.get("height") if status else None
            if not isinstance(height, int) or height < heights[name]:
                done = False
        if done:
            return time.monotonic() - started
        time.sleep(0.25)
    return None


def swarm_phase(swarm: Swarm) -> tuple[int | None, str | None]:
    for name in swarm.processes:
        status = swarm.status(name)
        if status and status.get("phase") and status.get("round") is not None:
            return int(status["round"]), str(status["phase"])
    return None, None


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    workdir = Path(args.workdir)
    plan = prepare_testnet(
        workdir, nodes=args.nodes, dataset="breast_cancer", scenario="even", rounds=args.rounds,
        seed=args.seed, overwrite=args.overwrite,
    )  # fmt: skip
    names = [s.name for s in plan.sites]
    f = max(1, (args.nodes - 1) // 3)
    schedule = [f"kill@{p}" for p in args.phases] + ["restart-all"]
    faults: list[Fault] = []
    swarm = Swarm(plan)
    started = time.monotonic()
    deadline = started + args.timeout
    try:
        for name in names:
            swarm.start(name)
        pending = list(schedule)
        restart_all_after_round = max(1, args.rounds // 2)
        while time.monotonic() < deadline:
            codes = swarm.exit_codes()
            failed = {n: c for n, c in codes.items() if c not in (None, 0)}
            if failed:
                raise RuntimeError(f"site process failed: {failed}; see {workdir}/site*/run*.log")
            if all(c == 0 for c in codes.values()):
                break
            round_, phase = swarm_phase(swarm)
            if pending and round_ is not None:
                kind = pending[0]
                target_phase = kind.split("@", 1)[1] if "@" in kind else None
                if target_phase:
                    fire = target_phase == phase
                else:
                    fire = round_ >= restart_all_after_round and args.restart_all_phase in ("any", phase)
                if fire:
                    pending.pop(0)
                    victims = names if kind == "restart-all" else rng.sample(names, f)
                    victims = [v for v in victims if codes[v] is None]
                    if victims:
                        fault = Fault(kind, victims, round_)
                        fault.heights_before = {v: swarm.committed_height(v) for v in victims}
                        for v in victims:
                            swarm.kill(v)
                        print(
                            f"[{time.monotonic() - started:7.1f}s] {kind}: killed {victims} in round {round_}"
                        )
                        time.sleep(args.down)
                        for v in victims:
                            swarm.start(v)
                        fault.recovery_seconds = wait_recovered(
                            swarm, victims, fault.heights_before, min(deadline, time.monotonic() + 300)
                        )
                        fault.outcome = "recovered" if fault.recovery_seconds is not None else "not recovered"
                        faults.append(fault)
            time.sleep(0.3)
        else:
            raise RuntimeError(f"training did not finish within {args.timeout:g} s")
    finally:
        swarm.stop()
    return report(
        swarm, faults, schedule, time.monotonic() - started, Path(args.json or workdir / "chaos.json")
    )


def report(swarm: Swarm, faults: list[Fault], schedule: list[str], seconds: float, out: Path) -> int:
    names = list(swarm.processes)
    finals: dict[str, str | None] = {}
    for name in names:
        metrics = swarm.configs[name].node.storage_dir / "metrics.json"
        finals[name] = json.loads(metrics.read_text()).get("final_hash") if metrics.exists() else None
    verified = {name: verify_site_ledger(swarm.configs[name]) for name in names}
    # Nothing committed before a kill is lost, and all sites agree block by block.
    blocks: dict[str, dict[int, bytes]] = {}
    for name in names:
        with LedgerStore.open_existing(ledger_path(swarm.configs[name])) as store:
            blocks[name] = {h: digest for h, digest, _, _ in store.raw_blocks()}
    lost = 0
    for fault in faults:
        for site, height in fault.heights_before.items():
            lost += sum(1 for h in range(1, height + 1) if h not in blocks[site])
    common = min(len(b) for b in blocks.values())
    divergent_blocks = sum(1 for h in range(1, common + 1) if len({blocks[n][h] for n in names}) != 1)
    divergent_models = len({finals[n] for n in names}) - 1 if None not in finals.values() else len(names)
    print(f"\nchaos run: {len(names)} sites, {seconds:.0f} s, faults planned: {', '.join(schedule)}")
    print(f"{'fault':20s} {'sites':22s} {'round':>5s}  {'outcome':14s} {'recovery s':>10s}")
    for fault in faults:
        rec = "-" if fault.recovery_seconds is None else f"{fault.recovery_seconds:.1f}"
        sites = ",".join(fault.sites)
        print(f"{fault.kind:20s} {sites:22s} {fault.round!s:>5s}  {fault.outcome:14s} {rec:>10s}")
    not_fired = [k for k in schedule if k not in [f.kind for f in faults]]
    if not_fired:
        print(f"not fired (training ended or phase never observed): {', '.join(not_fired)}")
    print(f"final models: {len(set(finals.values()))} distinct {sorted(set(map(str, finals.values())))}")
    print(
        f"ledgers verified: {sum(r.ok for r in verified.values())}/{len(names)}; lost commits: {lost}; "
        f"divergent blocks: {divergent_blocks}; divergent models: {divergent_models}"
    )
    ok = (
        lost == 0
        and divergent_blocks == 0
        and divergent_models == 0
        and all(r.ok for r in verified.values())
        and all(f.outcome == "recovered" for f in faults)
    )
    out.write_text(
        json.dumps(
            {
                "sites": len(names),
                "seconds": round(seconds, 1),
                "faults": [asdict(f) for f in faults],
                "not_fired": not_fired,
                "final_hashes": finals,
                "ledgers_ok": {n: r.ok for n, r in verified.items()},
                "lost_commits": lost,
                "divergent_blocks": divergent_blocks,
                "divergent_models": divergent_models,
                "ok": ok,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written: {out}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default="chaos-testnet")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole run")
    parser.add_argument("--down", type=float, default=2.0, help="seconds a killed site stays down")
    parser.add_argument("--phases", nargs="*", default=list(PHASES), choices=PHASES)
    parser.add_argument(
        "--restart-all-phase",
        default="any",
        choices=("any", *PHASES),
        help="phase in which to restart every site (default: whatever phase the middle round is in)",
    )
    parser.add_argument("--json", help="where to write the result (default <workdir>/chaos.json)")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
