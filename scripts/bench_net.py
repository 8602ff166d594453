"""Network benchmark: Libp2pTransport vs raw trio TCP sockets, measured in one run.

    python scripts/bench_net.py [--out docs/results/bench_net.json] [--rounds 40]

1. Blob throughput between two OS processes for 1, 10 and 100 MB: one node
   stores pseudo-random bytes, the other fetches them by SHA-256 (`get_blob`,
   which verifies the hash) and times the fetch. Baseline: the same transfer
   over a raw trio TCP connection between two processes, also hashed.
2. Gossip latency across 5 processes: every node publishes a time-stamped
   message per round; each receiver records arrival time minus send time
   (same machine, same clock). libp2p: GossipSub over a full mesh found from
   one bootstrap address. Baseline: each raw node writes the message directly
   to a TCP connection to each of the 4 others (a fan-out without gossip).

Reported as median (and best/worst) plus libp2p/raw ratios. The machine is
shared: absolute numbers are noisy, ratios measured in one run less so.
Children are started with `swarmnode.testing.nodeproc` (libp2p) or by this
script itself in ``--raw-node`` mode (baseline) and killed on exit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from swarmnode.net.libp2p import (  # noqa: E402
    GOSSIP_DEGREE,
    GOSSIP_DEGREE_HIGH,
    GOSSIP_DEGREE_LOW,
    GOSSIP_HEARTBEAT_S,
)
from swarmnode.net.libp2p_patches import YAMUX_WINDOW  # noqa: E402
from swarmnode.testing import pseudo_random_bytes  # noqa: E402
from swarmnode.testing.nodeproc import (  # noqa: E402
    NodeProcess,
    emit_event,
    serve_commands,
    spawn_node,
    spawn_process,
)

TOPIC = "bench/gossip"
SIZES_MB = (1, 10, 100)
REPS = {1: 5, 10: 3, 100: 2}
HEADER = struct.Struct(">cI")  # kind, length
CHUNK = 1 << 20


# ---------------------------------------------------------------------------- raw TCP child


async def _raw_node(index: int) -> None:
    """A baseline node: raw trio TCP, the nodeproc JSON-lines protocol on stdin/stdout."""
    blobs: dict[bytes, bytes] = {}
    outgoing: dict[int, trio.SocketStream] = {}

    async def read_exact(stream: trio.SocketStream, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = await stream.receive_some(min(CHUNK, n - len(buf)))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    async def serve(stream: trio.SocketStream) -> None:
        try:
            while True:
                kind, length = HEADER.unpack(await read_exact(stream, HEADER.size))
                payload = await read_exact(stream, length)
                if kind == b"G":
                    t_recv = time.time()
                    emit_event(
                        {
                            "ev": "msg",
                            "sender": payload[0],
                            "topic": TOPIC,
                            "data": payload[1:].hex(),
                            "t_recv": t_recv,
                        }
                    )
                elif kind == b"B":
                    data = blobs[payload]
                    await stream.send_all(struct.pack(">Q", len(data)))
                    view = memoryview(data)
                    for offset in range(0, len(view), CHUNK):
                        await stream.send_all(view[offset : offset + CHUNK])
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        match command["cmd"]:
            case "connect":
                for peer, port in command["ports"].items():
                    if int(peer) != index:
                        outgoing[int(peer)] = await trio.open_tcp_stream("127.0.0.1", port)
                return {}
            case "put_blob":
                data = pseudo_random_bytes(command["size"], command["seed"])
                digest = hashlib.sha256(data).digest()
                blobs[digest] = data
                return {"digest": digest.hex()}
            case "get_blob":
                digest = bytes.fromhex(command["digest"])
                start = time.perf_counter()
                async with await trio.open_tcp_stream("127.0.0.1", command["port"]) as stream:
                    await stream.send_all(HEADER.pack(b"B", len(digest)) + digest)
                    (size,) = struct.unpack(">Q", await read_exact(stream, 8))
                    hasher, data = hashlib.sha256(), bytearray()
                    while len(data) < size:
                        chunk = await read_exact(stream, min(CHUNK, size - len(data)))
                        hasher.update(chunk)
                        data += chunk
                if hasher.digest() != digest:
                    raise ValueError("raw blob hash mismatch")
                return {"size": len(data), "seconds": time.perf_counter() - start}
            case "publish":
                data = bytes.fromhex(command["data"]) + json.dumps({"t_send": time.time()}).encode()
                frame = HEADER.pack(b"G", len(data) + 1) + bytes([index]) + data
                for stream in outgoing.values():
                    await stream.send_all(frame)
                return {}
            case other:
                raise ValueError(other)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, serve, 0)
        port = listeners[0].socket.getsockname()[1]
        emit_event({"ev": "ready", "addrs": [str(port)]})

        async def answer(command: dict[str, Any], _: trio.Nursery) -> dict[str, Any]:
            return await handle(command)

        await serve_commands(answer)
        nursery.cancel_scope.cancel()


def spawn_raw(index: int) -> Any:
    return spawn_process([sys.executable, str(Path(__file__).resolve()), "--raw-node", str(index)], index)


# ---------------------------------------------------------------------------- measurements


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "best": ordered[-1],
        "worst": ordered[0],
        "n": len(ordered),
    }


async def blob_throughput(server: NodeProcess, fetcher: NodeProcess, peer: Any) -> dict[str, Any]:
    """MB/s per size over REPS fresh blobs (a fetched blob is cached, so each rep uses a new seed)."""
    out: dict[str, Any] = {}
    for size_mb in SIZES_MB:
        rates = []
        for rep in range(REPS[size_mb]):
            size = size_mb << 20
            digest = (await server.check("put_blob", size=size, seed=1000 * size_mb + rep))["digest"]
            got = await fetcher.check("get_blob", digest=digest, timeout=300, **peer)
            assert got["size"] == size
            rates.append(size_mb / got["seconds"])
        out[f"{size_mb}MB"] = summary(rates)  # MB/s (MiB/s, sizes are 2**20 bytes)
    return out


def latencies(nodes: list[NodeProcess], tag: str) -> tuple[list[float], int]:
    values = []
    for node in nodes:
        for message in node.messages:
            data = bytes.fromhex(message["data"])
            if data.startswith(tag.encode()):
                stamp = json.loads(data[data.index(b"{") :])
                values.append((message["t_recv"] - stamp["t_send"]) * 1000)
    return values, len(values)


async def gossip_latency(nodes: list[NodeProcess], rounds: int, interval: float, tag: str) -> dict[str, Any]:
    for round_number in range(rounds):
        async with trio.open_nursery() as nursery:
            for node in nodes:
                data = f"{tag}:{node.index}:{round_number}:".encode().hex()
                nursery.start_soon(lambda n=node, d=data: n.check("publish", topic=TOPIC, data=d, stamp=True))
        await trio.sleep(interval)
    await trio.sleep(2)
    values, count = latencies(nodes, tag)
    expected = rounds * len(nodes) * (len(nodes) - 1)
    ordered = sorted(values)
    return {
        "median_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max_ms": ordered[-1],
        "delivered": count,
        "expected": expected,
    }


async def until_heard(nodes: list[NodeProcess], tag: str) -> None:
    everyone = {n.index for n in nodes}
    round_number = 0
    while True:
        if all(
            {m["sender"] for m in n.messages if bytes.fromhex(m["data"]).startswith(tag.encode())}
            >= everyone - {n.index}
            for n in nodes
        ):
            return
        round_number += 1
        for node in nodes:
            await node.check("publish", topic=TOPIC, data=f"{tag}:{node.index}:{round_number}".encode().hex())
        await trio.sleep(0.3)


async def until_full_mesh(nodes: list[NodeProcess]) -> None:
    everyone = {n.index for n in nodes}
    while True:
        views = [set((await n.check("peers"))["peers"]) for n in nodes]
        if all(view == everyone - {n.index} for n, view in zip(nodes, views, strict=True)):
            return
        await trio.sleep(0.2)


async def bench_blobs(namespace: str) -> dict[str, Any]:
    print("blob throughput, libp2p ...", flush=True)
    async with (
        spawn_node(0, namespace=namespace) as server,
        spawn_node(1, namespace=namespace, bootstrap=server.addrs) as fetcher,
    ):
        await until_full_mesh([server, fetcher])
        libp2p_blobs = await blob_throughput(server, fetcher, {"peer": 0})
    print("blob throughput, raw TCP ...", flush=True)
    async with spawn_raw(0) as raw_server, spawn_raw(1) as raw_fetcher:
        raw_blobs = await blob_throughput(raw_server, raw_fetcher, {"port": int(raw_server.addrs[0])})
    return {
        "blob_throughput_MBps": {"libp2p": libp2p_blobs, "raw_tcp": raw_blobs},
        "blob_throughput_ratio_libp2p_over_raw": {
            size: libp2p_blobs[size]["median"] / raw_blobs[size]["median"] for size in libp2p_blobs
        },
    }


async def bench_gossip(namespace: str, rounds: int, interval: float) -> dict[str, Any]:
    print(f"gossip latency, libp2p, 5 processes, a round every {interval} s ...", flush=True)
    async with (
        spawn_node(0, namespace=namespace) as first,
        spawn_node(1, namespace=namespace, bootstrap=first.addrs) as n1,
        spawn_node(2, namespace=namespace, bootstrap=first.addrs) as n2,
        spawn_node(3, namespace=namespace, bootstrap=first.addrs) as n3,
        spawn_node(4, namespace=namespace, bootstrap=first.addrs) as n4,
    ):
        nodes = [first, n1, n2, n3, n4]
        for node in nodes:
            await node.check("subscribe", topic=TOPIC)
        await until_full_mesh(nodes)
        await until_heard(nodes, "warmup")
        await trio.sleep(2)  # let the GossipSub mesh settle after the warm-up
        libp2p_gossip = await gossip_latency(nodes, rounds, interval, "measure")
    print("gossip latency, raw TCP fan-out, 5 processes ...", flush=True)
    async with (
        spawn_raw(0) as r0,
        spawn_raw(1) as r1,
        spawn_raw(2) as r2,
        spawn_raw(3) as r3,
        spawn_raw(4) as r4,
    ):
        raw_nodes = [r0, r1, r2, r3, r4]
        ports = {str(n.index): int(n.addrs[0]) for n in raw_nodes}
        for node in raw_nodes:
            await node.check("connect", ports=ports)
        await until_heard(raw_nodes, "warmup")
        raw_gossip = await gossip_latency(raw_nodes, rounds, interval, "measure")
    return {
        "gossip_latency_5_hosts": {"libp2p": libp2p_gossip, "raw_tcp": raw_gossip},
        "gossip_latency_ratio_libp2p_over_raw": {
            "median": libp2p_gossip["median_ms"] / raw_gossip["median_ms"],
            "p99": libp2p_gossip["p99_ms"] / raw_gossip["p99_ms"],
        },
    }


async def bench(rounds: int, intervals: list[float], blobs: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with trio.fail_after(1200):
        if blobs:
            results.update(await bench_blobs("bench-net"))
        results["gossip"] = {
            f"round_every_{interval}s": await bench_gossip("bench-net", rounds, interval)
            for interval in intervals
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(REPO / "docs/results/bench_net.json"))
    parser.add_argument(
        "--rounds", type=int, default=40, help="gossip rounds (each node publishes once per round)"
    )
    parser.add_argument(
        "--intervals", default="1.0,0.2", help="seconds between gossip rounds, one measurement per value"
    )
    parser.add_argument("--no-blobs", action="store_true", help="gossip only (quick check)")
    parser.add_argument("--raw-node", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_node is not None:
        trio.run(_raw_node, args.raw_node)
        return
    started = time.time()
    load_at_start = list(os.getloadavg())  # the machine is shared: record how busy it was
    intervals = [float(v) for v in args.intervals.split(",")]
    results = trio.run(bench, args.rounds, intervals, not args.no_blobs)
    report = {
        "benchmark": "swarmnode.net: Libp2pTransport vs raw trio TCP, one run",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1_5_15_min_at_start": load_at_start,
            "load_average_1_5_15_min_at_end": list(os.getloadavg()),
        },
        "setup": {
            "blob_sizes_MB": list(SIZES_MB),
            "blob_repetitions": REPS,
            "gossip_hosts": 5,
            "gossip_rounds": args.rounds,
            "gossip_round_intervals_s": intervals,
            "libp2p": (
                f"TCP + Noise + Yamux (window {YAMUX_WINDOW >> 20} MiB, credit per half window), "
                f"GossipSub D={GOSSIP_DEGREE}/{GOSSIP_DEGREE_LOW}/{GOSSIP_DEGREE_HIGH}, "
                f"heartbeat {GOSSIP_HEARTBEAT_S} s, strict signing"
            ),
        },
        "wall_time_s": round(time.time() - started, 1),
        **results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
