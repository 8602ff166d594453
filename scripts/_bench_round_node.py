"""One swarmnode site in its own OS process, for `scripts/bench_round.py` (not a public tool).

    python scripts/_bench_round_node.py --index I --n N (--hidden H | --resnet SIZE) \
        --mode secure|plain --rounds R --ports P0,P1,... --root DIR [--train] [--hosts H0,H1,...]

Builds the same `SwarmPlan` as every sibling (deterministic keys, one genesis
with the members' addresses: 127.0.0.1, or ``--hosts`` in the namespace lab), opens
a real node over libp2p on its port (everyone dials everyone) and runs ``R`` merges (1 warm-up with the key
epoch + R - 1 measured). With ``--train`` each round first trains one local
epoch of the MLP on this site's IID share of breast_cancer (SGD 0.01, momentum
0.9, batch 32: the Flower anchor's settings), so the round is a full training
round. With ``--resnet 11M`` (or ``resnet-smoke``) the model is MONAI's ResNet-18 from
`scripts/_bench_models.py` (a ``model.factory`` spec) trained on this site's share of
scikit-learn's 8x8 digits (Adam 1e-3, batch 32) instead. Prints one JSON line per round
and a final ``{"ev": "done"}`` line.

Measurements (all inside this process):
* merge window: wall clock (``time.time()``) from ``merge()`` until it
  returned the merged model loaded on this node;
* per-phase time: every call of the round's crypto steps (encrypt,
  aggregate, decryption share, combine) and every blob fetch (transfer)
  is timed by wrapping the names `swarmnode.merge_scheme` calls (no change in
  behaviour: the wrapper calls the original);
* bytes sent: the kernel's ``tcpi_bytes_sent`` of this process's TCP
  sockets (``ss -tinp``), summed before and after the window; and every blob this
  node served in the window (``served_blobs``: bytes, peer, blob key);
* CPU seconds of this process in the window (``cpu_s``, all threads) and of its
  trio thread alone (``loop_cpu_s``: transport and protocol; the rest is crypto in
  worker threads): unlike wall time, not inflated by other jobs on the host.

Profiling (opt-in): with ``SWARMNODE_BENCH_PROFILE=DIR`` in the environment, every
node process writes profiles of its measured rounds (not the warm-up) to
``DIR/node<I>-loop.stacks`` (the trio thread: transport, protocol; sampled stacks
in flamegraph's collapsed format) and ``DIR/node<I>-compute.prof`` (cProfile of the
crypto calls run in worker threads; read it with ``python -m pstats``).

``--mode plain`` runs the runtime's own plaintext mode: the same genesis with
``training.secure = false`` (merge ``mean``), so the same protocol (ledger,
phases, replicated blobs, the decrypt phase with signed confirmations instead
of decryption shares) carries raw float32 updates (`Node._plaintext_merge`).
Its "encrypt" phase is encoding the update, "aggregate" the plaintext merge,
"combine" decoding the merged model.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

# Names `swarmnode.merge_scheme` calls per phase (module functions, or methods "<class>.<name>").
PHASES: Final = {
    "secure": {
        "encrypt_update": "encrypt",
        "AggregateBuilder.add": "aggregate",  # the sum, added as the blobs arrive
        "AggregateBuilder.result": "aggregate",
        "decryption_share": "decryption_share",
        "make_point_share": "decryption_share",  # robust key epochs (n <= 10)
        "combine": "combine",
        "combine_points": "combine",
    },
    "plain": {
        "encode_plaintext_update": "encrypt",
        "PlainMerge._merge": "aggregate",
        "decode_plaintext_model": "combine",
    },
}
_BYTES_SENT: Final = re.compile(r"bytes_sent:(\d+)")


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def tcp_bytes_sent(pid: int) -> int:
    """Sum of tcpi_bytes_sent over the TCP sockets `pid` holds (0 if `ss` is missing)."""
    try:
        out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    total = 0
    # `ss -tinp` prints a socket line (with users:(("python",pid=...))) then an info line.
    lines = out.splitlines()
    for k, line in enumerate(lines):
        if f"pid={pid}," in line and k + 1 < len(lines):
            match = _BYTES_SENT.search(lines[k + 1])
            if match:
                total += int(match.group(1))
    return total


class ComputeProfile:
    """cProfile of the wrapped calls, in whichever (worker) thread they run, while `active`.

    A `cProfile.Profile` only sees the thread that enabled it, so each call gets its own,
    merged into one `pstats.Stats` afterwards."""

    def __init__(self) -> None:
        self.active = False
        self._lock = threading.Lock()
        self._stats: pstats.Stats | None = None

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.active:
            return fn(*args, **kwargs)
        profile = cProfile.Profile(time.thread_time)  # CPU time: robust to a loaded host
        profile.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            profile.disable()
            with self._lock:
                if self._stats is None:
                    self._stats = pstats.Stats(profile)
                else:
                    self._stats.add(profile)

    def dump(self, path: Path) -> None:
        if self._stats is not None:
            self._stats.dump_stats(str(path))


class StackSampler:
    """A sampling profiler of one thread (the trio loop), cheap enough not to change timing.

    cProfile on the trio thread slowed it ~3x and turned a 10 s round into minutes of
    retries; sampling `sys._current_frames()` every `interval` from a helper thread costs
    the loop almost nothing. Samples in which the thread waits in the I/O poll are
    counted separately (idle)."""

    def __init__(self, thread_id: int, interval: float = 0.002) -> None:
        self._thread_id = thread_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stacks: dict[str, int] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            frame = sys._current_frames().get(self._thread_id)
            names = []
            while frame is not None:
                code = frame.f_code
                names.append(f"{Path(code.co_filename).name}:{code.co_name}")
                frame = frame.f_back
            key = ";".join(reversed(names))
            self.stacks[key] = self.stacks.get(key, 0) + 1

    def dump(self, path: Path) -> None:
        """Collapsed stacks (``a;b;c count`` per line, flamegraph.pl format)."""
        path.write_text("".join(f"{k} {v}\n" for k, v in sorted(self.stacks.items())))


class PhaseClock:
    """Timed calls: (phase, start, end) in wall-clock seconds."""

    def __init__(self, profile: ComputeProfile | None = None) -> None:
        self.calls: list[tuple[str, float, float]] = []
        self.profile = profile

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                if self.profile is not None:
                    return self.profile.run(fn, *args, **kwargs)
                return fn(*args, **kwargs)
            finally:
                self.calls.append((phase, start, time.time()))

        return timed

    def wrap_async(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.calls.append((phase, start, time.time()))

        return timed

    def busy_spans(self, start: float, end: float) -> list[tuple[float, float]]:
        """The union of all timed calls (any phase) inside [start, end], as sorted spans."""
        spans = sorted((max(s, start), min(e, end)) for _, s, e in self.calls if e > start and s < end)
        return union_spans(spans)

    def window(self, start: float, end: float) -> dict[str, Any]:
        """Per phase: summed call time and the union of call intervals, inside [start, end]."""
        out: dict[str, Any] = {}
        for phase in sorted({p for p, _, _ in self.calls}):
            spans = sorted((max(s, start), min(e, end)) for p, s, e in self.calls if p == phase and e > start)
            spans = [(s, e) for s, e in spans if e > s]
            busy, cur_s, cur_e = 0.0, None, None
            for s, e in spans:  # union: overlapping fetches count once
                if cur_e is None or s > cur_e:
                    if cur_e is not None and cur_s is not None:
                        busy += cur_e - cur_s
                    cur_s, cur_e = s, e
                else:
                    cur_e = max(cur_e, e)
            if cur_e is not None and cur_s is not None:
                busy += cur_e - cur_s
            out[phase] = {"calls": len(spans), "sum_s": sum(e - s for s, e in spans), "busy_s": busy}
        return out


def union_spans(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Merge sorted (start, end) spans into disjoint ones."""
    out: list[tuple[float, float]] = []
    for s, e in sorted(spans):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


async def run(args: argparse.Namespace) -> None:
    import torch
    import trio

    import swarmnode.merge_scheme as node_module
    from consensus.genesis import Timeouts
    from models import LocalTrainer, TrainConfig, load_dataset
    from models.splits import Scenario, split_sites
    from swarmnode.net.libp2p import open_libp2p_transport
    from swarmnode.node import open_swarm_node
    from swarmnode.scaffold import peer_address, transport_address
    from swarmnode.simswarm import SwarmPlan

    torch.set_num_threads(1)
    profile_dir = os.environ.get("SWARMNODE_BENCH_PROFILE")
    compute_profile = ComputeProfile() if profile_dir else None
    loop_profile = StackSampler(threading.get_ident()) if profile_dir else None
    clock = PhaseClock(compute_profile)
    for name, phase in PHASES[args.mode].items():
        owner: Any = node_module
        if "." in name:
            cls, name = name.split(".")
            owner = getattr(node_module, cls, None)
        original = getattr(owner, name, None)
        if original is not None:  # (an older runtime may not call it)
            setattr(owner, name, clock.wrap(phase, original))

    ports = [int(p) for p in args.ports.split(",")]
    n = args.n
    hosts = args.hosts.split(",") if args.hosts else ["127.0.0.1"] * n
    spec = bench_spec(args)
    addresses = tuple((transport_address(h, p),) for h, p in zip(hosts, ports, strict=True))
    # Generous for 8 processes on 2 cores, yet a phase stuck on a lost stream recovers
    # through the ledger's phase timeout within the run instead of stalling it.
    timeouts = Timeouts(
        ready_wait=180.0, contribute=180.0, aggregate=180.0, verify=180.0, decrypt=180.0, key_epoch=180.0
    )
    plan = SwarmPlan.create(
        Path(args.root),
        spec,
        founders=n,
        max_rounds=args.rounds,
        timeouts=timeouts,
        addresses=addresses,
        namespace=f"bench-round-{n}-{args.resnet or args.hidden}-{args.mode}",
    )
    genesis = plan.genesis
    if args.mode == "plain":  # the runtime's plaintext mode, visible on the ledger
        genesis = replace(genesis, training=replace(genesis.training, secure=False, merge_method="mean"))
    me = plan.identities[args.index]
    bootstrap = [peer_address(hosts[j], ports[j], plan.ids[j]) for j in range(n) if j != args.index]

    trainer = None
    if args.train:
        data = (
            load_dataset("digits")
            if args.resnet
            else load_dataset("breast_cancer", positive_class="malignant")
        )
        split = split_sites(data.labels, Scenario(kind="even", n_sites=n, test_fraction=0.2), 0)
        config = TrainConfig(
            epochs=1,
            batch_size=32,
            optimizer="adam" if args.resnet else "sgd",
            lr=0.001 if args.resnet else 0.01,
            momentum=0.9,
            validation_fraction=0.0,
            patience=0,
            device="cpu",
        )
        trainer = LocalTrainer(
            spec,
            split.site_data(data, args.index),
            config,
            generator=torch.Generator().manual_seed(args.index),
        )
    params = np.random.default_rng(args.index).normal(0, 0.05, size=spec_size(spec)).astype(np.float32)
    pid = os.getpid()

    served = count_served_blobs()
    async with open_libp2p_transport(
        me, listen_host=hosts[args.index], listen_port=ports[args.index], bootstrap=bootstrap
    ) as transport:
        transport.get_blob = clock.wrap_async("transfer", transport.get_blob)  # type: ignore[method-assign]
        async with open_swarm_node(
            plan.configs[args.index], transport=transport, identity=me, genesis=genesis
        ) as node:
            emit({"ev": "up", "index": args.index, "t": time.time()})
            for round_index in range(args.rounds):
                if round_index == 1 and loop_profile is not None and compute_profile is not None:
                    compute_profile.active = True  # measured rounds only, not the warm-up
                    loop_profile.start()
                train_s = 0.0
                num_samples = 100
                if trainer is not None:
                    t_train = time.time()
                    result = await trio.to_thread.run_sync(trainer.train_epochs, 1, params)
                    train_s = time.time() - t_train
                    params, num_samples = result.parameters, result.num_samples
                sent0 = tcp_bytes_sent(pid)
                start = time.time()
                cpu0, loop_cpu0 = time.process_time(), time.thread_time()
                merged = await node.merge(params, num_samples, timeout=900)
                cpu_s, loop_cpu_s = time.process_time() - cpu0, time.thread_time() - loop_cpu0
                end = time.time()
                sent1 = tcp_bytes_sent(pid)
                params = merged.parameters
                emit(
                    {
                        "ev": "round",
                        "index": args.index,
                        "round": merged.round,
                        "train_s": train_s,
                        "start": start,
                        "end": end,
                        "bytes_sent": sent1 - sent0,
                        "cpu_s": cpu_s,  # this process, all threads (robust to a loaded host)
                        "loop_cpu_s": loop_cpu_s,  # the trio thread: transport and protocol
                        "phases": clock.window(start, end),
                        "busy_spans": clock.busy_spans(start, end),
                        "hash": merged.params_hash.hex(),
                        "served_blobs": [b[1:] for b in served if start <= b[0] <= end],
                        "roles": [role for role in ("leader", "verifier") if _was(node, merged.round, role)],
                    }
                )
            if loop_profile is not None and compute_profile is not None and profile_dir:
                loop_profile.stop()
                compute_profile.active = False
                loop_profile.dump(Path(profile_dir) / f"node{args.index}-loop.stacks")
                compute_profile.dump(Path(profile_dir) / f"node{args.index}-compute.prof")
            # Serve blobs a slower sibling may still fetch: stay until the runner, having seen
            # every node's last round, closes our stdin (bounded by --linger).
            emit({"ev": "finished", "index": args.index})
            with trio.move_on_after(args.linger):
                await trio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
    emit({"ev": "done", "index": args.index})


def count_served_blobs() -> list[tuple[float, int, str, str]]:
    """Every blob this node serves from now on: (time, bytes, peer, blob key), by wrapping the
    name `swarmnode.net.libp2p` answers blob requests with (no change in behaviour). The key
    (length and first bytes) tells a second copy of one blob to one peer (a re-fetch)."""
    import swarmnode.net.libp2p as libp2p_module

    served: list[tuple[float, int, str, str]] = []
    original = libp2p_module.send_blob

    async def send_blob(stream: Any, data: bytes | None) -> None:
        if data is not None:
            peer = str(stream.muxed_conn.peer_id)[-8:]
            served.append((time.time(), len(data), peer, f"{len(data)}:{data[:48].hex()}"))
        await original(stream, data)

    libp2p_module.send_blob = send_blob  # type: ignore[assignment]
    return served


def _was(node: Any, round_number: int, role: str) -> bool:
    record = node.contract.round_record(round_number)
    if record is None:
        return False
    who = getattr(record, "aggregator" if role == "leader" else "verifier", None)
    return bool(who == node.node_id)


def bench_spec(args: argparse.Namespace) -> Any:
    """The MLP 30-h-h-2 of the hidden sizes, or a ResNet-18 factory model (`--resnet`)."""
    from models import factory_model, mlp

    if args.resnet:
        name = "resnet18" if args.resnet == "11M" else "resnet18_smoke"
        return factory_model(f"_bench_models:{name}", n_features=64, n_classes=10)
    return mlp(30, 2, hidden=(args.hidden, args.hidden))


def spec_size(spec: Any) -> int:
    from models.flatten import spec_layout

    return int(spec_layout(spec).size)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--hidden", type=int)
    model.add_argument("--resnet", choices=("11M", "resnet-smoke"))
    parser.add_argument("--mode", choices=("secure", "plain"), required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--ports", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--hosts", default="", help="each node's address (default 127.0.0.1 for all)")
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--linger", type=float, default=600.0, help="max seconds to wait for the runner")
    args = parser.parse_args()
    import trio

    trio.run(run, args)


if __name__ == "__main__":
    main()
