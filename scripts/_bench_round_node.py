"""One swarmnode site in its own OS process, for `scripts/bench_round.py` (not a public tool).

    python scripts/_bench_round_node.py --index I --n N --hidden H --mode secure|plain \
        --rounds R --ports P0,P1,... --root DIR [--train]

Builds the same `SwarmPlan` as every sibling (deterministic keys, one genesis
with the members' 127.0.0.1 addresses), opens a real node over libp2p on its
port (everyone dials everyone) and runs ``R`` merges (1 warm-up with the key
epoch + R - 1 measured). With ``--train`` each round first trains one local
epoch of the MLP on this site's IID share of breast_cancer (SGD 0.01, momentum
0.9, batch 32: the Flower anchor's settings), so the round is a full training
round. Prints one JSON line per round and a final ``{"ev": "done"}`` line.

Measurements (all inside this process):
* merge window: wall clock (``time.time()``) from ``merge()`` until it
  returned the merged model loaded on this node;
* per-phase time: every call of the round's crypto steps (encrypt,
  aggregate, decryption share, combine) and every blob fetch (transfer)
  is timed by wrapping the names `swarmnode.node` calls (no change in
  behaviour: the wrapper calls the original);
* bytes sent: the kernel's ``tcpi_bytes_sent`` of this process's TCP
  sockets (``ss -tinp``), summed before and after the window.

``--mode plain`` is the same protocol (ledger, phases, blob transfers, the
decryption phase with token shares) with plaintext float32 payloads: the
runtime refuses ``secure = false`` geneses (`swarmnode/node.py`, "plaintext
merges ... are not supported by this runtime yet"), so this benchmark swaps the
four crypto functions `swarmnode.node` imported for plaintext ones. It is a
measurement baseline only, never a way to run a swarm.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

PHASES: Final = {
    "encrypt_update": "encrypt",
    "aggregate_contributions": "aggregate",
    "decryption_share": "decryption_share",
    "combine": "combine",
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


# -- plaintext stand-ins with the crypto facade's signatures --------------------------------

_HEADER: Final = 8  # float64 normalised weight (sum), then float32 values


def plain_encrypt_update(
    keys: object, parameters: npt.ArrayLike, weight: float, total_weight: float
) -> bytes:
    share = weight / total_weight
    vector = np.asarray(parameters, dtype=np.float64) * share
    return np.float64(share).tobytes() + vector.astype("<f4").tobytes()


def plain_aggregate(contributions: Sequence[bytes], *, length: int, params: object = None) -> bytes:
    weight = 0.0
    total = np.zeros(length, dtype=np.float64)
    for blob in contributions:
        if len(blob) != _HEADER + 4 * length:
            raise ValueError("plaintext contribution of the wrong size")
        weight += float(np.frombuffer(blob[:_HEADER], dtype="<f8")[0])
        total += np.frombuffer(blob[_HEADER:], dtype="<f4")
    return np.float64(weight).tobytes() + total.astype("<f4").tobytes()


def plain_decryption_share(keys: object, aggregate: bytes, decrypt_set: object, **kwargs: object) -> bytes:
    return hashlib.sha256(b"plaintext-share" + aggregate).digest()  # a token: nothing to decrypt


def plain_combine(spec: object, aggregate: bytes, shares: Sequence[bytes], **kwargs: object) -> Any:
    from crypto.secure_merge import MergedMean

    weight = float(np.frombuffer(aggregate[:_HEADER], dtype="<f8")[0])
    values = np.frombuffer(aggregate[_HEADER:], dtype="<f4").astype(np.float64)
    return MergedMean((values / weight).astype(np.float32), weight)


PLAIN: Final = {
    "encrypt_update": plain_encrypt_update,
    "aggregate_contributions": plain_aggregate,
    "decryption_share": plain_decryption_share,
    "combine": plain_combine,
}


class PhaseClock:
    """Timed calls: (phase, start, end) in wall-clock seconds."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
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


async def run(args: argparse.Namespace) -> None:
    import torch
    import trio

    import swarmnode.node as node_module
    from consensus.genesis import Timeouts
    from models import LocalTrainer, TrainConfig, load_dataset, mlp
    from models.splits import Scenario, split_sites
    from swarmnode.net.libp2p import open_libp2p_transport
    from swarmnode.node import open_swarm_node
    from swarmnode.scaffold import peer_address, transport_address
    from swarmnode.simswarm import SwarmPlan

    torch.set_num_threads(1)
    clock = PhaseClock()
    for name, phase in PHASES.items():
        original = PLAIN[name] if args.mode == "plain" else getattr(node_module, name)
        setattr(node_module, name, clock.wrap(phase, original))

    ports = [int(p) for p in args.ports.split(",")]
    n = args.n
    spec = mlp(30, 2, hidden=(args.hidden, args.hidden))
    addresses = tuple((transport_address("127.0.0.1", p),) for p in ports)
    timeouts = Timeouts(
        ready_wait=600.0, contribute=600.0, aggregate=600.0, verify=600.0, decrypt=600.0, key_epoch=600.0
    )
    plan = SwarmPlan.create(
        Path(args.root),
        spec,
        founders=n,
        max_rounds=args.rounds,
        timeouts=timeouts,
        addresses=addresses,
        namespace=f"bench-round-{n}-{args.hidden}-{args.mode}",
    )
    me = plan.identities[args.index]
    bootstrap = [peer_address("127.0.0.1", ports[j], plan.ids[j]) for j in range(n) if j != args.index]

    trainer = None
    if args.train:
        data = load_dataset("breast_cancer", positive_class="malignant")
        split = split_sites(data.labels, Scenario(kind="even", n_sites=n, test_fraction=0.2), 0)
        config = TrainConfig(
            epochs=1,
            batch_size=32,
            optimizer="sgd",
            lr=0.01,
            momentum=0.9,
            validation_fraction=0.0,
            patience=0,
        )
        trainer = LocalTrainer(
            spec,
            split.site_data(data, args.index),
            config,
            generator=torch.Generator().manual_seed(args.index),
        )
    params = np.random.default_rng(args.index).normal(0, 0.05, size=spec_size(spec)).astype(np.float32)
    pid = os.getpid()

    async with open_libp2p_transport(me, listen_port=ports[args.index], bootstrap=bootstrap) as transport:
        transport.get_blob = clock.wrap_async("transfer", transport.get_blob)  # type: ignore[method-assign]
        async with open_swarm_node(
            plan.configs[args.index], transport=transport, identity=me, genesis=plan.genesis
        ) as node:
            emit({"ev": "up", "index": args.index, "t": time.time()})
            for _ in range(args.rounds):
                train_s = 0.0
                num_samples = 100
                if trainer is not None:
                    t_train = time.time()
                    result = await trio.to_thread.run_sync(trainer.train_epochs, 1, params)
                    train_s = time.time() - t_train
                    params, num_samples = result.parameters, result.num_samples
                sent0 = tcp_bytes_sent(pid)
                start = time.time()
                merged = await node.merge(params, num_samples, timeout=900)
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
                        "phases": clock.window(start, end),
                        "hash": merged.params_hash.hex(),
                        "roles": [role for role in ("leader", "verifier") if _was(node, merged.round, role)],
                    }
                )
            # Serve blobs a slower sibling may still fetch, then leave.
            await trio.sleep(args.linger)
    emit({"ev": "done", "index": args.index})


def _was(node: Any, round_number: int, role: str) -> bool:
    record = node.contract.round_record(round_number)
    if record is None:
        return False
    who = getattr(record, "aggregator" if role == "leader" else "verifier", None)
    return bool(who == node.node_id)


def spec_size(spec: Any) -> int:
    from models.flatten import spec_layout

    return int(spec_layout(spec).size)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--mode", choices=("secure", "plain"), required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--ports", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--linger", type=float, default=3.0)
    args = parser.parse_args()
    import trio

    trio.run(run, args)


if __name__ == "__main__":
    main()
