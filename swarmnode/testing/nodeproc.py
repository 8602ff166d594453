"""One `Libp2pTransport` in its own OS process, remote-controlled over stdin/stdout.

Part of the test kit, for multi-process tests and `scripts/bench_net.py`: real hosts
in real processes on 127.0.0.1, so a SIGKILL is a real crash. The child is
``python -m swarmnode.testing.nodeproc --index I ...``; its identity is
`swarmnode.testing.make_identity(I, namespace)`, so peers are named by index
on both sides. Protocol: one JSON object per line.

- child -> parent: ``{"ev": "ready", "addrs": [...]}`` once listening, then
  ``{"ev": "msg", "sender": i, "topic": t, "data": hex, "t_recv": unix_time}``
  per gossip message, and ``{"ev": "reply", "id": n, "ok": bool, ...}`` per command.
- parent -> child: ``{"id": n, "cmd": ..., ...}``; commands: subscribe,
  publish, put_blob (pseudo-random bytes of a size and seed), get_blob,
  request, peers, set_allowed, partition (``"peers": [indices]``: fault
  injection, `Libp2pTransport.partition`), heal, quit. Every command runs
  concurrently.

`NodeProcess` is the parent side: start it with `spawn_node`, which always
kills the child (SIGKILL) when the block exits, also on failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import trio

from crypto.identity import NodeId

from ..net._shared import unwrap_single_exception
from ..net.base import Inbound, Transport
from . import LyingBlobStore, make_identity, pseudo_random_bytes

JsonObject = dict[str, Any]

MAX_INDEX: Final = 64  # peers outside 0..63 of the namespace are reported by peer id
REPO_ROOT: Final = str(Path(__file__).resolve().parents[2])


def child_python() -> list[str]:
    """The command line prefix that runs this module's `main` in a fresh interpreter."""
    return [sys.executable, "-m", "swarmnode.testing.nodeproc"]


# ---------------------------------------------------------------------- child


def emit_event(event: JsonObject) -> None:
    """Write one protocol line to stdout (children only)."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class _Child:
    def __init__(self, transport: Transport, namespace: str) -> None:
        self.transport = transport
        self.namespace = namespace
        self.by_index = [make_identity(i, namespace).node_id for i in range(MAX_INDEX)]
        self.index_of = {node: i for i, node in enumerate(self.by_index)}

    def name(self, node: NodeId) -> int | str:
        return self.index_of.get(node, node.peer_id)

    async def forward(self, channel: trio.MemoryReceiveChannel[Inbound]) -> None:
        async for message in channel:
            emit_event(
                {
                    "ev": "msg",
                    "sender": self.name(message.sender),
                    "topic": message.topic,
                    "data": message.data.hex(),
                    "t_recv": time.time(),
                }
            )

    async def handle(self, command: JsonObject, nursery: trio.Nursery) -> JsonObject:
        t = self.transport
        match command["cmd"]:
            case "subscribe":
                nursery.start_soon(self.forward, await t.subscribe(command["topic"]))
                return {}
            case "publish":
                data = bytes.fromhex(command["data"])
                if command.get("stamp"):  # latency probes: send time taken as late as possible
                    data += json.dumps({"t_send": time.time()}).encode()
                await t.publish(command["topic"], data)
                return {}
            case "put_blob":
                data = pseudo_random_bytes(command["size"], command["seed"])
                return {"digest": t.put_blob(data).hex()}
            case "get_blob":
                peer = command.get("peer")
                start = time.perf_counter()
                data = await t.get_blob(
                    bytes.fromhex(command["digest"]),
                    peer=None if peer is None else self.by_index[peer],
                    timeout=command.get("timeout", 120.0),
                )
                seconds = time.perf_counter() - start
                return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "seconds": seconds}
            case "request":
                answer = await t.request(
                    self.by_index[command["peer"]],
                    command["protocol"],
                    bytes.fromhex(command["data"]),
                    timeout=command.get("timeout", 10.0),
                )
                return {"data": answer.hex()}
            case "set_handler":
                prefix: bytes = str(command["prefix"]).encode()

                async def prefixed(sender: NodeId, data: bytes) -> bytes:
                    return prefix + data

                t.set_handler(command["protocol"], prefixed)
                return {}
            case "peers":
                return {"peers": sorted(self.name(p) for p in t.peers() if p in self.index_of)}
            case "set_allowed":
                t.set_allowed_peers({self.by_index[i] for i in command["peers"]})
                return {}
            case "partition" | "heal":  # fault injection; test children only (nothing else runs this loop)
                faulty = getattr(t, command["cmd"], None)
                if faulty is None:
                    raise ValueError(f"{type(t).__name__} has no fault injection")
                if command["cmd"] == "partition":
                    faulty({self.by_index[i] for i in command["peers"]})
                else:
                    faulty()
                return {}
            case other:
                raise ValueError(f"unknown command {other!r}")


async def serve_commands(handle: Callable[[JsonObject, trio.Nursery], Awaitable[JsonObject]]) -> None:
    """Answer the parent's JSON-line commands on stdin, one task each, until "quit" or EOF.

    `handle` gets the command and a nursery for work that outlives the reply; every
    command gets one "reply" event, with the exception's type and message if it failed.
    """
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with trio.open_nursery() as nursery:

        async def run(command: JsonObject) -> None:
            try:
                result = await handle(command, nursery)
                emit_event({"ev": "reply", "id": command["id"], "ok": True, **result})
            except Exception as exc:  # reported to the parent, which asserts on the type
                emit_event(
                    {
                        "ev": "reply",
                        "id": command["id"],
                        "ok": False,
                        "error": type(exc).__name__,
                        "message": str(exc),
                    }
                )

        buffer = b""
        async for chunk in stdin:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command = json.loads(line)
                if command["cmd"] == "quit":
                    nursery.cancel_scope.cancel()
                    return
                nursery.start_soon(run, command)
        nursery.cancel_scope.cancel()  # parent went away: stop


async def _child_main(args: argparse.Namespace) -> None:
    from ..net.libp2p import open_libp2p_transport

    identity = make_identity(args.index, args.namespace)
    allowed = (
        None
        if args.allowed is None
        else {make_identity(int(i), args.namespace).node_id for i in args.allowed.split(",") if i}
    )
    async with open_libp2p_transport(
        identity,
        bootstrap=args.bootstrap,
        allowed_peers=allowed,
        max_blob_size=args.max_blob_size,
        blob_store=LyingBlobStore() if args.lying else None,
    ) as transport:
        child = _Child(transport, args.namespace)
        emit_event({"ev": "ready", "addrs": list(transport.listen_addrs)})
        await serve_commands(child.handle)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--namespace", default="swarmnode-test")
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--allowed", default=None, help="comma-separated indices; omit for no allow-list")
    parser.add_argument("--max-blob-size", type=int, default=256 << 20)
    parser.add_argument("--lying", action="store_true", help="serve every blob with a flipped byte")
    parser.add_argument("--lifetime", type=float, default=600.0, help="exit after this many seconds")
    args = parser.parse_args(argv)

    async def bounded() -> None:
        with trio.move_on_after(args.lifetime):
            await _child_main(args)

    trio.run(bounded)


# ---------------------------------------------------------------------- parent


class NodeProcess:
    """The parent's handle on one child process. Use `spawn_node`."""

    def __init__(self, index: int, process: trio.Process) -> None:
        self.index = index
        self.process = process
        self.addrs: tuple[str, ...] = ()
        self.messages: list[JsonObject] = []
        self._replies: dict[int, JsonObject] = {}
        self._reply_event = trio.Event()
        self._ready = trio.Event()
        self._next_id = 0
        self._eof = False

    async def _read_events(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                event = json.loads(line)
                if event["ev"] == "msg":
                    self.messages.append(event)
                elif event["ev"] == "ready":
                    self.addrs = tuple(event["addrs"])
                    self._ready.set()
                elif event["ev"] == "reply":
                    self._replies[event["id"]] = event
                    self._reply_event.set()
                    self._reply_event = trio.Event()
        self._eof = True
        self._ready.set()
        self._reply_event.set()

    async def call(self, cmd: str, **arguments: Any) -> JsonObject:
        """Send one command and wait for its reply (raises RuntimeError if the child died)."""
        self._next_id += 1
        command_id = self._next_id
        assert self.process.stdin is not None
        await self.process.stdin.send_all(
            (json.dumps({"id": command_id, "cmd": cmd, **arguments}) + "\n").encode()
        )
        while command_id not in self._replies:
            if self._eof:
                raise RuntimeError(
                    f"node {self.index} exited (code {self.process.returncode}) before replying"
                )
            await self._reply_event.wait()
        return self._replies.pop(command_id)

    async def check(self, cmd: str, **arguments: Any) -> JsonObject:
        """`call`, asserting success."""
        reply = await self.call(cmd, **arguments)
        if not reply["ok"]:
            raise AssertionError(f"node {self.index}: {cmd} failed: {reply['error']}: {reply['message']}")
        return reply

    def received_from(self, topic: str) -> set[int | str]:
        return {m["sender"] for m in self.messages if m["topic"] == topic}

    async def quit(self, timeout: float = 15.0) -> int | None:
        """Ask the child to shut down gracefully; its exit code, or None if it hung (then killed)."""
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b'{"id": 0, "cmd": "quit"}\n')
        with trio.move_on_after(timeout):
            return await self.process.wait()
        self.kill()
        return None

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to anyone."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)


@asynccontextmanager
async def spawn_node(
    index: int,
    *,
    namespace: str = "swarmnode-test",
    bootstrap: Sequence[str] = (),
    allowed: Sequence[int] | None = None,
    lying: bool = False,
    max_blob_size: int = 256 << 20,
    stderr_path: str | None = None,
    ready_timeout: float = 60.0,
) -> AsyncIterator[NodeProcess]:
    """Start a child node and wait until it listens; SIGKILL it on exit, whatever happened."""
    argv = [*child_python(), "--index", str(index), "--namespace", namespace]
    for address in bootstrap:
        argv += ["--bootstrap", address]
    if allowed is not None:
        argv += ["--allowed", ",".join(str(i) for i in allowed)]
    if lying:
        argv.append("--lying")
    argv += ["--max-blob-size", str(max_blob_size)]
    async with spawn_process(argv, index, stderr_path=stderr_path, ready_timeout=ready_timeout) as node:
        yield node


@asynccontextmanager
async def spawn_process(
    argv: Sequence[str], index: int, *, stderr_path: str | None = None, ready_timeout: float = 60.0
) -> AsyncIterator[NodeProcess]:
    """Start any child speaking this module's JSON-lines protocol (the repo is put on its PYTHONPATH)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, *filter(None, [env.get("PYTHONPATH")])])
    stderr_file = open(stderr_path, "ab") if stderr_path else None  # noqa: SIM115 - closed in finally
    try:
        process = await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr_file if stderr_file is not None else subprocess.DEVNULL,
            env=env,
        )
        node = NodeProcess(index, process)
        try:
            with unwrap_single_exception():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(node._read_events)
                    with trio.fail_after(ready_timeout):
                        await node._ready.wait()
                    if not node.addrs:
                        raise RuntimeError(
                            f"node {index} exited before it was ready (code {process.returncode})"
                        )
                    yield node
                    nursery.cancel_scope.cancel()
        finally:
            node.kill()
            with trio.move_on_after(10):
                await process.wait()
    finally:
        if stderr_file is not None:
            stderr_file.close()


if __name__ == "__main__":
    main()
