"""Chaos run: real `swarmnode run` processes on 127.0.0.1, killed, partitioned, restarted while they train.

    python scripts/chaos.py --nodes 4 --rounds 6 --workdir /tmp/chaos [--seed 1] [--timeout 2400] \
        [--json docs/results/chaos_seed1.json]

Sets up a testnet work dir (`swarmnode.testnet.prepare_testnet`: one site per node,
"even" split of the bundled breast-cancer data, secure mean merge), starts one
`swarmnode run` process per site in its own process group (with
``SWARMNODE_FAULT_INJECTION=1``, which lets the local control endpoint accept
``partition``/``heal``), then injects faults, one at a time, in this order:

- ``kill@<phase>`` (``--phases``): once the swarm is in round-phase <phase> (ready,
  contribute, aggregate, verify, decrypt), SIGKILL a random minority site (at most
  f = (n-1)//3 at a time, so the ledger keeps a quorum) and restart it after ``--down`` s.
- ``split@<phase>`` (``--partitions split``): cut the swarm into two halves (2+2 for 4
  sites), neither with a BFT quorum (> 2n/3), for ``--split-seconds``, then heal. Every
  site cuts the links to the other half (`Libp2pTransport.partition`, through its control
  endpoint). Passes if no site commits a height above the highest one committed when the
  cut settled (``SETTLE`` s after it: blocks certified before the cut may still land), and
  the ledger commits again on every site after the heal (recovery time = heal until then).
- ``isolate@<phase>`` (``--partitions isolate``): cut a random minority of f sites (3+1)
  off the rest until the majority has merged one more round (at most
  ``--isolate-max-seconds``), then heal. Passes if the majority merged a round, the
  minority committed nothing while cut off, and after the heal the minority reaches the
  height the majority had at the heal (recovery time = heal until then). Fired only while
  at least two rounds remain to merge, so the majority cannot finish training alone.
- ``restart-all``: SIGKILL every site at once mid-training (from the middle round on, in
  ``--restart-all-phase``, default any phase) and restart them all.

Before each fault it records every affected site's committed ledger height. At the end,
once every process has exited: every site holds the same final model hash and it is the
final model hash on every site's ledger, every ledger passes `verify_chain` (what
`swarmnode ledger verify` runs), every height committed before a fault is still in that
site's store after it, and all sites hold identical blocks at every common height. It
prints a table of the faults tried, their outcome and the recovery time, and writes it
as JSON (``--json``; default ``<workdir>/chaos.json``).

Exit status 0 only if training finished, every fault passed, with zero lost commits and
zero divergent models or blocks. A run that stops early (a site process exits with an
error, or ``--timeout``) still prints the table and writes the JSON, with ``error`` set.
Everything it starts is killed (process groups) on any exit path.
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

from consensus.genesis import DecryptionThreshold  # noqa: E402
from consensus.store import LedgerStore  # noqa: E402
from swarmnode.config import NodeConfig  # noqa: E402
from swarmnode.control import FAULT_INJECTION_ENV, ControlError, request_control  # noqa: E402
from swarmnode.ledgerview import ledger_path, read_ledger, verify_site_ledger  # noqa: E402
from swarmnode.testnet import TestnetPlan, prepare_testnet, stop_all  # noqa: E402

PHASES = ("ready", "contribute", "aggregate", "verify", "decrypt")
PARTITIONS = ("split", "isolate")
SETTLE = 5.0  # s after a cut before its heights count: a block certified before it may still land
POLL = 0.5
PHASE_POLL = 0.1  # s between phase checks: a 10k-parameter round's phase can last a few tenths of a second
RECOVERY_LIMIT = 300.0


@dataclass
class Fault:
    kind: str  # "kill@<phase>", "split@<phase>", "isolate@<phase>" or "restart-all"
    sites: list[str]  # killed, or cut off (isolate: the minority; split: the first half)
    round: int | None = None
    phase: str | None = None  # the swarm's phase when the fault was injected
    heights_before: dict[str, int] = field(default_factory=dict)  # committed before the fault
    recovery_seconds: float | None = None
    outcome: str = "pending"
    # partitions only
    groups: list[list[str]] = field(default_factory=list)
    held_seconds: float | None = None
    heights_settled: dict[str, int] = field(default_factory=dict)  # SETTLE s after the cut
    heights_at_heal: dict[str, int] = field(default_factory=dict)
    merged_while_cut: int | None = None  # rounds the majority merged (isolate)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env[FAULT_INJECTION_ENV] = "1"  # the control endpoint accepts partition/heal (test runs only)
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

    def peer_id(self, name: str) -> str:
        return next(s.node_id.peer_id for s in self.plan.sites if s.name == name)

    def control(self, name: str, command: str, args: dict[str, Any] | None = None) -> Any:
        """A control command that must succeed (a few tries: the node may be busy)."""
        for attempt in range(5):
            try:
                return request_control(self.configs[name].node.storage_dir, command, args=args, timeout=5.0)
            except ControlError:
                if attempt == 4:
                    raise
                time.sleep(1.0)
        raise AssertionError("unreachable")

    def partition(self, groups: list[list[str]]) -> None:
        """Every site stops talking to every site outside its group (both directions)."""
        for group in groups:
            for name in group:
                blocked = [self.peer_id(o) for o in self.processes if o not in group]
                self.control(name, "partition", {"peer_ids": blocked})

    def heal(self) -> None:
        for name in self.processes:
            self.control(name, "heal")

    def heights(self, names: list[str] | None = None) -> dict[str, int]:
        """Committed heights as the running sites report them (-1: no answer)."""
        out = {}
        for name in names or list(self.processes):
            status = self.status(name)
            height = status.get("height") if status else None
            out[name] = height if isinstance(height, int) else -1
        return out

    def merged_rounds(self, names: list[str]) -> int:
        """Most merged rounds any of `names` reports on its ledger (-1: none answered)."""
        best = -1
        for name in names:
            status = self.status(name)
            if status:
                best = max(best, sum(1 for r in status.get("history", []) if r.get("outcome") == "merged"))
        return best

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


def log(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:7.1f}s] {text}", flush=True)


def inject_kill(
    swarm: Swarm, fault: Fault, args: argparse.Namespace, deadline: float, started: float
) -> None:
    """SIGKILL `fault.sites`, keep them down `--down` s, restart them, wait until they caught up."""
    fault.heights_before = {v: swarm.committed_height(v) for v in fault.sites}
    for v in fault.sites:
        swarm.kill(v)
    log(started, f"{fault.kind}: killed {fault.sites} in round {fault.round} ({fault.phase})")
    time.sleep(args.down)
    for v in fault.sites:
        swarm.start(v)
    fault.recovery_seconds = wait_recovered(
        swarm, fault.sites, fault.heights_before, min(deadline, time.monotonic() + RECOVERY_LIMIT)
    )
    fault.outcome = "recovered" if fault.recovery_seconds is not None else "not recovered"


def inject_partition(
    swarm: Swarm, fault: Fault, args: argparse.Namespace, deadline: float, started: float
) -> None:
    """Cut the swarm into `fault.groups`, hold the cut, heal it, and check what happened meanwhile."""
    split = fault.kind.startswith("split")
    majority = [] if split else fault.groups[1]
    merged_at_cut = -1 if split else swarm.merged_rounds(majority)
    fault.heights_before = swarm.heights()
    swarm.partition(fault.groups)
    cut_at = time.monotonic()
    log(started, f"{fault.kind}: cut {' | '.join(','.join(g) for g in fault.groups)} in round {fault.round}")
    time.sleep(SETTLE)
    fault.heights_settled = swarm.heights()
    if split:
        hold_until = cut_at + args.split_seconds
        while time.monotonic() < min(hold_until, deadline):
            time.sleep(POLL)
    else:
        hold_until = cut_at + args.isolate_max_seconds
        while time.monotonic() < min(hold_until, deadline) and swarm.merged_rounds(majority) <= merged_at_cut:
            time.sleep(POLL)
        fault.merged_while_cut = swarm.merged_rounds(majority) - merged_at_cut
    fault.heights_at_heal = swarm.heights()
    fault.held_seconds = time.monotonic() - cut_at
    swarm.heal()
    log(started, f"{fault.kind}: healed after {fault.held_seconds:.1f} s; heights {fault.heights_at_heal}")
    if min(fault.heights_settled.values()) < 0 or min(fault.heights_at_heal.values()) < 0:
        fault.outcome = "site not answering"
        return
    if split:
        # No half has a quorum: nothing above what was certified before the cut may commit.
        stalled = max(fault.heights_at_heal.values()) <= max(fault.heights_settled.values())
        fault.outcome = "ok" if stalled else "committed without quorum"
        targets = {n: max(fault.heights_at_heal.values()) + 1 for n in fault.heights_at_heal}
    else:
        minority = fault.sites
        minority_stalled = all(fault.heights_at_heal[m] == fault.heights_settled[m] for m in minority)
        # Against the heights before the cut: a fast majority may merge its round while the
        # cut settles, and that progress counts (only the minority must not move after it).
        majority_moved = max(fault.heights_at_heal[n] for n in majority) > max(
            fault.heights_before[n] for n in majority
        )
        if not minority_stalled:
            fault.outcome = "minority committed"
        elif not (majority_moved and (fault.merged_while_cut or 0) >= 1):
            fault.outcome = "majority stalled"
        else:
            fault.outcome = "ok"
        targets = {m: max(fault.heights_at_heal[n] for n in majority) for m in minority}
    recovered = wait_recovered(
        swarm, list(targets), targets, min(deadline, time.monotonic() + RECOVERY_LIMIT)
    )
    fault.recovery_seconds = recovered
    if fault.outcome == "ok":
        fault.outcome = "recovered" if recovered is not None else "not recovered"


def partition_groups(kind: str, names: list[str], f: int, rng: random.Random) -> list[list[str]]:
    """split: two halves, neither > 2n/3 (no BFT quorum); isolate: f sites | the n - f others."""
    if kind == "split":
        shuffled = rng.sample(names, len(names))
        half = len(names) // 2
        return [sorted(shuffled[:half]), sorted(shuffled[half:])]
    minority = sorted(rng.sample(names, f))
    return [minority, [n for n in names if n not in minority]]


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    workdir = Path(args.workdir)
    # t = floor(n/3) + 1: the n - f sites left after a fault are still t + 1, so they train on.
    plan = prepare_testnet(
        workdir, nodes=args.nodes, dataset="breast_cancer", scenario="even", rounds=args.rounds,
        seed=args.seed, overwrite=args.overwrite, threshold=DecryptionThreshold(numerator=1, denominator=3),
    )  # fmt: skip
    names = [s.name for s in plan.sites]
    f = max(1, (args.nodes - 1) // 3)
    schedule = (
        [f"kill@{p}" for p in args.phases]
        + [f"{k}@{args.partition_phase}" for k in args.partitions]
        + ([] if args.no_restart_all else ["restart-all"])
    )
    faults: list[Fault] = []
    swarm = Swarm(plan)
    started = time.monotonic()
    deadline = started + args.timeout
    error: str | None = None  # why the run stopped early (still reported, exit status 1)
    try:
        for name in names:
            swarm.start(name)
        pending = list(schedule)
        restart_all_after_round = max(1, args.rounds // 2)
        while time.monotonic() < deadline:
            codes = swarm.exit_codes()
            failed = {n: c for n, c in codes.items() if c not in (None, 0)}
            if failed:
                error = f"site process failed: {failed}; see {workdir}/site*/run*.log"
                break
            if all(c == 0 for c in codes.values()):
                break
            round_, phase = swarm_phase(swarm)
            if pending and round_ is not None:
                kind = pending[0]
                family, _, target_phase = kind.partition("@")
                if family == "isolate" and swarm.merged_rounds(names) + 2 > args.rounds:
                    pending.pop(0)  # the majority could finish training alone: not fired
                    continue
                if target_phase:
                    fire = target_phase == phase
                else:
                    fire = round_ >= restart_all_after_round and args.restart_all_phase in ("any", phase)
                live = [n for n in names if codes[n] is None]
                if fire and family in PARTITIONS and len(live) < len(names):
                    fire = False  # a site already finished: too late to partition
                    pending.pop(0)
                if fire:
                    pending.pop(0)
                    if family == "kill":
                        victims = [v for v in rng.sample(names, f) if codes[v] is None]
                        fault = Fault(kind, victims, round_, phase)
                        if fault.sites:
                            inject_kill(swarm, fault, args, deadline, started)
                            faults.append(fault)
                    elif family == "restart-all":
                        fault = Fault(kind, live, round_, phase)
                        if fault.sites:
                            inject_kill(swarm, fault, args, deadline, started)
                            faults.append(fault)
                    else:
                        groups = partition_groups(family, names, f, rng)
                        fault = Fault(kind, groups[0], round_, phase, groups=groups)
                        inject_partition(swarm, fault, args, deadline, started)
                        faults.append(fault)
            time.sleep(PHASE_POLL)
        else:
            error = f"training did not finish within {args.timeout:g} s"
    finally:
        swarm.stop()
    return report(
        swarm, faults, schedule, time.monotonic() - started, Path(args.json or workdir / "chaos.json"), error
    )


def describe(fault: Fault) -> str:
    """What happened while a partition was held, for the table."""
    if not fault.groups:
        return ""
    sizes = "+".join(str(len(g)) for g in sorted(fault.groups, key=len, reverse=True))
    settled, healed = fault.heights_settled, fault.heights_at_heal
    if fault.kind.startswith("split"):
        held = f"held {fault.held_seconds or 0:.0f} s"
        return f"{sizes}, {held}, heights {max(settled.values())}->{max(healed.values())}"
    minority, majority = fault.groups
    moved = max(healed[n] for n in majority) - max(settled[n] for n in majority)
    still = max(healed[m] - settled[m] for m in minority)
    return (
        f"{sizes}, held {fault.held_seconds or 0:.0f} s, majority +{moved} heights "
        f"+{fault.merged_while_cut} round(s), minority +{still}"
    )


def report(
    swarm: Swarm, faults: list[Fault], schedule: list[str], seconds: float, out: Path, error: str | None
) -> int:
    names = list(swarm.processes)
    finals: dict[str, str | None] = {}
    for name in names:
        metrics = swarm.configs[name].node.storage_dir / "metrics.json"
        finals[name] = json.loads(metrics.read_text()).get("final_hash") if metrics.exists() else None
    verified: dict[str, bool] = {}
    for name in names:
        try:
            verified[name] = verify_site_ledger(swarm.configs[name]).ok
        except Exception as exc:  # e.g. no ledger yet: not verified
            print(f"{name}: cannot verify the ledger: {exc}")
            verified[name] = False
    ledger_finals: dict[str, str | None] = {}
    for name in names:
        try:
            stopped = read_ledger(swarm.configs[name]).stopped
        except Exception as exc:  # an unreadable ledger is reported by verify_chain above too
            print(f"{name}: cannot read the ledger: {exc}")
            stopped = None
        final = None if stopped is None else stopped.final_model_hash
        ledger_finals[name] = None if final is None else final.hex()
    # Nothing committed before a fault is lost, and all sites agree block by block.
    blocks: dict[str, dict[int, bytes]] = {}
    for name in names:
        try:
            with LedgerStore.open_existing(ledger_path(swarm.configs[name])) as store:
                blocks[name] = {h: digest for h, digest, _, _ in store.raw_blocks()}
        except Exception as exc:  # no ledger at all: counted as losing everything it had
            print(f"{name}: cannot read the ledger store: {exc}")
            blocks[name] = {}
    lost = 0
    for fault in faults:
        for site, height in fault.heights_before.items():
            lost += sum(1 for h in range(1, height + 1) if h not in blocks[site])
    common = min(len(b) for b in blocks.values())
    divergent_blocks = sum(1 for h in range(1, common + 1) if len({blocks[n][h] for n in names}) != 1)
    # Every site's model is the one every ledger names as final.
    hashes = set(finals.values()) | set(ledger_finals.values())
    divergent_models = len(hashes) - 1 if None not in hashes else len(names)
    print(f"\nchaos run: {len(names)} sites, {seconds:.0f} s, faults planned: {', '.join(schedule)}")
    if error:
        print(f"RUN FAILED: {error}")
    print(f"{'fault':20s} {'sites':22s} {'round':>5s}  {'outcome':24s} {'recovery s':>10s}  while cut")
    for fault in faults:
        rec = "-" if fault.recovery_seconds is None else f"{fault.recovery_seconds:.1f}"
        sites = ",".join(fault.sites)
        row = f"{fault.kind:20s} {sites:22s} {fault.round!s:>5s}  {fault.outcome:24s} {rec:>10s}"
        print(f"{row}  {describe(fault)}")
    not_fired = [k for k in schedule if k not in [f.kind for f in faults]]
    if not_fired:
        print(
            f"not fired (training ended, phase never observed or too few rounds left): {', '.join(not_fired)}"
        )
    print(f"final models: {len(set(finals.values()))} distinct {sorted(set(map(str, finals.values())))}")
    print(f"ledgers' final model: {sorted(set(map(str, ledger_finals.values())))}")
    print(
        f"ledgers verified: {sum(verified.values())}/{len(names)}; lost commits: {lost}; "
        f"divergent blocks: {divergent_blocks}; divergent models: {divergent_models}"
    )
    ok = (
        error is None
        and lost == 0
        and divergent_blocks == 0
        and divergent_models == 0
        and all(verified.values())
        and all(f.outcome == "recovered" for f in faults)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "sites": len(names),
                "seconds": round(seconds, 1),
                "schedule": schedule,
                "error": error,
                "faults": [asdict(f) for f in faults],
                "not_fired": not_fired,
                "final_hashes": finals,
                "ledger_final_hashes": ledger_finals,
                "ledgers_ok": verified,
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
    if not ok:
        print_log_tails(swarm)
    return 0 if ok else 1


def print_log_tails(swarm: Swarm, lines: int = 15) -> None:
    """The last lines our own loggers wrote on each site: a failed run in CI leaves no workdir
    behind, so what each site was waiting for must be in the console output."""
    for site in swarm.plan.sites:
        if swarm.starts[site.name] == 0:
            continue
        path = site.directory / f"run{swarm.starts[site.name]}.log"
        ours = [
            line
            for line in path.read_text(errors="replace").splitlines()
            if " swarmnode." in line or " consensus." in line
        ]
        print(f"--- {site.name}: last {min(lines, len(ours))} lines of {path.name} (ours only)")
        for line in ours[-lines:]:
            print(f"    {line[:240]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default="chaos-testnet")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--timeout", type=float, default=2400.0, help="seconds for the whole run")
    parser.add_argument("--down", type=float, default=2.0, help="seconds a killed site stays down")
    parser.add_argument("--phases", nargs="*", default=list(PHASES), choices=PHASES)
    parser.add_argument(
        "--restart-all-phase",
        default="any",
        choices=("any", *PHASES),
        help="phase in which to restart every site (default: whatever phase the middle round is in)",
    )
    parser.add_argument(
        "--partitions", nargs="*", default=list(PARTITIONS), choices=PARTITIONS,
        help="network partitions to inject (split: 2+2, no quorum; isolate: 3+1); none: pass the flag alone",
    )  # fmt: skip
    parser.add_argument("--partition-phase", default="contribute", choices=PHASES)
    parser.add_argument("--split-seconds", type=float, default=30.0, help="how long a no-quorum split lasts")
    parser.add_argument(
        "--isolate-max-seconds", type=float, default=300.0,
        help="an isolation lasts until the majority merged a round, at most this long",
    )  # fmt: skip
    parser.add_argument("--no-restart-all", action="store_true", help="skip the full restart")
    parser.add_argument("--json", help="where to write the result (default <workdir>/chaos.json)")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
