"""The local control endpoint: `swarmnode status` asks a running node how it is.

A TCP listener on 127.0.0.1 (ephemeral port) guarded by a random token. The
port and token are written to ``<storage_dir>/control.json`` with mode 0600,
so only the user who runs the node (who can read the storage dir) can ask it
anything. Nothing here listens on a routable address.

Protocol: the client sends one JSON line ``{"token": ..., "command": ..., "args": {...}}``;
the server answers one JSON line ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": "..."}`` and closes. Commands:

- ``status``: the node's `status()`, plus ``names`` (peer id -> member name) if the node
  has a ledger (a ``contract``).
- ``submit-join`` ``{"tx": hex}``: submit a joiner's signed JoinRequest, wait until it
  is pending on the ledger, then approve it as this member.
- ``approve`` ``{"peer_id": ...}``: approve a pending join request.
- ``leave``: this site leaves the swarm (a `Leave` transaction), answered once the ledger
  no longer lists it as a member.
- ``remove`` ``{"site": NAME, "reason": ...}``: vote, as this member, to evict the member
  named NAME (an `Evict` transaction; a strict majority of the other members removes it),
  answered once the vote is on the ledger, with the votes so far and whether it is out.
- ``partition`` ``{"peer_ids": [...]}`` and ``heal``: fault injection for chaos runs and tests
  (`Libp2pTransport.partition` / `heal` on the node's transport: this node stops talking to
  those peers until healed). Refused unless the node process was started with the environment
  variable ``SWARMNODE_FAULT_INJECTION=1`` (read once, when the endpoint starts), so a production
  node never accepts them, and no network peer can reach this endpoint anyway.

Requests are capped at 4 KiB and a client gets 5 s to send its line.

`to_jsonable` turns the runtime's frozen status dataclasses into JSON (node ids
as peer ids, hashes as hex), so the server needs nothing from the node but a
``status()`` method returning a dataclass or a mapping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hmac
import json
import math
import os
import secrets
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from crypto.identity import NodeId

if TYPE_CHECKING:
    from trio_typing import TaskStatus

CONTROL_FILE: Final = "control.json"
MAX_REQUEST: Final = 4096
CLIENT_TIMEOUT: Final = 5.0
COMMANDS: Final = ("status", "submit-join", "approve", "leave", "remove", "partition", "heal")
FAULT_COMMANDS: Final = ("partition", "heal")
FAULT_INJECTION_ENV: Final = "SWARMNODE_FAULT_INJECTION"
JOIN_WAIT: Final = 60.0
_SERVING: dict[Path, int] = {}  # storage dir -> port of the endpoint this process serves there


class ControlError(Exception):
    """No node answers on this storage dir, or it answered with an error."""


class NotRunning(ControlError):
    """No node answers on this storage dir (no control file, or nobody listens on its port)."""


class StatusSource(Protocol):
    def status(self) -> object: ...


def to_jsonable(value: object) -> Any:
    """JSON-ready form of status values: dataclasses, NodeIds, bytes, enums, tuples, floats."""
    if isinstance(value, NodeId):
        return value.peer_id
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "tolist"):  # numpy scalars and small arrays
        return to_jsonable(value.tolist())
    return str(value)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


async def serve_control(
    node: StatusSource,
    storage_dir: Path,
    *,
    fault_injection: bool | None = None,
    task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `node.status()` on 127.0.0.1 until cancelled; removes control.json on exit.

    `fault_injection` enables the ``partition``/``heal`` commands; None (the default, what
    `swarmnode run` uses) means: on only if ``SWARMNODE_FAULT_INJECTION=1`` is set now.

    Start it in the node's nursery: ``port = await nursery.start(serve_control, node, dir)``.
    Idempotent per storage dir within a process: a second call (say the runtime and the CLI
    both start one) reports the running endpoint's port and waits, so one control.json exists.
    """
    if fault_injection is None:
        fault_injection = os.environ.get(FAULT_INJECTION_ENV) == "1"
    key = storage_dir.resolve()
    if key in _SERVING:
        task_status.started(_SERVING[key])
        await trio.sleep_forever()
    storage_dir.mkdir(parents=True, exist_ok=True)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = int(listeners[0].socket.getsockname()[1])
    token = secrets.token_hex(16)
    control_path = storage_dir / CONTROL_FILE
    _write_private(control_path, json.dumps({"port": port, "token": token, "pid": os.getpid()}))

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            reply = await _answer(stream, node, token, fault_injection)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(json.dumps(reply).encode() + b"\n")

    _SERVING[key] = port
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handle, listeners)
            task_status.started(port)
    finally:
        del _SERVING[key]
        with contextlib.suppress(OSError):
            # Only remove our own file: a restarted node may have written a new one.
            if json.loads(control_path.read_text()).get("token") == token:
                control_path.unlink()


async def _answer(
    stream: trio.SocketStream, node: StatusSource, token: str, fault_injection: bool
) -> dict[str, Any]:
    data = b""
    with trio.move_on_after(CLIENT_TIMEOUT):
        while b"\n" not in data and len(data) <= MAX_REQUEST:
            try:
                chunk = await stream.receive_some(MAX_REQUEST)
            except trio.BrokenResourceError:
                return {"ok": False, "error": "connection broken"}
            if not chunk:
                break
            data += chunk
    if len(data) > MAX_REQUEST or b"\n" not in data:
        return {"ok": False, "error": "expected one JSON line of at most 4096 bytes"}
    try:
        request = json.loads(data.split(b"\n", 1)[0])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"ok": False, "error": "request is not JSON"}
    if not isinstance(request, dict) or not isinstance(request.get("token"), str):
        return {"ok": False, "error": "request must be an object with a token"}
    if not hmac.compare_digest(request["token"].encode(), token.encode()):
        return {"ok": False, "error": "wrong token"}
    command = request.get("command")
    args = request.get("args") or {}
    if not isinstance(args, dict):
        return {"ok": False, "error": "args must be an object"}
    if command == "status":
        return {"ok": True, "result": _status(node)}
    if command in ("submit-join", "approve", "leave", "remove"):
        try:
            if command in ("leave", "remove"):
                return {"ok": True, "result": await _departure(node, command, args)}
            return {"ok": True, "result": await _membership(node, command, args)}
        except Exception as exc:  # the node's refusal (bad tx, no pending request) goes back as text
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if command in FAULT_COMMANDS:
        if not fault_injection:
            return {
                "ok": False,
                "error": f"fault injection is off (start the node with {FAULT_INJECTION_ENV}=1 to allow it)",
            }
        try:
            return {"ok": True, "result": _inject_fault(node, command, args)}
        except Exception as exc:  # bad peer ids, a transport without fault injection
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": False, "error": f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}"}


def _status(node: StatusSource) -> Any:
    """The node's status, plus ``names`` (peer id -> site name of every member) if it has a ledger."""
    status = to_jsonable(node.status())
    contract = getattr(node, "contract", None)
    if isinstance(status, dict) and contract is not None:
        status["names"] = {m.node_id.peer_id: m.name for m in contract.members()}
    return status


def _inject_fault(node: Any, command: str, args: dict[str, Any]) -> dict[str, Any]:
    """Partition the node's transport from some peers, or heal it; reports what is blocked now."""
    transport = node.transport
    if not hasattr(transport, command):
        raise ValueError(f"{type(transport).__name__} has no fault injection")
    if command == "partition":
        from .scaffold import node_id_from_peer_id

        peer_ids = args.get("peer_ids")
        if not isinstance(peer_ids, list) or not all(isinstance(p, str) for p in peer_ids):
            raise ValueError("partition needs peer_ids: a list of peer id strings")
        transport.partition({node_id_from_peer_id(p) for p in peer_ids})
    else:
        transport.heal()
    return {"blocked": sorted(p.peer_id for p in transport.blocked)}


async def _membership(node: Any, command: str, args: dict[str, Any]) -> dict[str, Any]:
    from consensus.transactions import JoinRequest, tx_codec

    if command == "submit-join":
        tx = bytes.fromhex(str(args.get("tx", "")))
        envelope = tx_codec(node.contract.chain_id).open(tx)  # ProtocolError names what is wrong
        if not isinstance(envelope.body, JoinRequest):
            raise ValueError(f"expected a signed JoinRequest, got {envelope.type}")
        joiner = envelope.sender
        await node.submit_transaction(tx)
        with trio.fail_after(JOIN_WAIT):
            await node.wait_for(
                lambda c: any(p.node_id == joiner for p in c.pending_joins()) or c.is_member(joiner)
            )
    else:
        from .scaffold import node_id_from_peer_id

        joiner = node_id_from_peer_id(str(args.get("peer_id", "")))
    if not node.contract.is_member(joiner):
        await node.approve(joiner)
    return {"joiner": joiner.peer_id, "approved_by": node.node_id.peer_id}


async def _departure(node: Any, command: str, args: dict[str, Any]) -> dict[str, Any]:
    """`leave` (this site) or `remove` (a vote to evict the member named ``args["site"]``)."""
    if command == "leave":
        await node.leave()  # SwarmError if this node is not a member
        with trio.fail_after(JOIN_WAIT):
            await node.wait_for(lambda c: not c.is_member(node.node_id))
        return {"left": node.node_id.peer_id}
    from consensus.transactions import Evict

    name = str(args.get("site", ""))
    target = next((m for m in node.contract.members() if m.name == name), None)
    if target is None:
        names = ", ".join(sorted(m.name for m in node.contract.members()))
        raise ValueError(f"no member named {name!r}; the members are {names}")
    await node.submit(
        Evict(target=target.node_id, target_since=target.since, reason=str(args.get("reason", "")))
    )

    def vote_counted(c: Any) -> bool:
        record = c.member(target.node_id)
        if record is None or record.since != target.since:
            return True
        return any(v.target == target.node_id and node.node_id in v.voters for v in c.state.evictions)

    with trio.fail_after(JOIN_WAIT):
        await node.wait_for(vote_counted)
    state = node.contract.state
    votes = next((v for v in state.evictions if v.target == target.node_id), None)
    return {
        "site": name,
        "peer_id": target.node_id.peer_id,
        "removed": node.contract.member(target.node_id) is None,
        "votes": 0 if votes is None else len(votes.voters),
        "members": len(state.members),
    }


def request_control(
    storage_dir: Path, command: str = "status", *, args: dict[str, Any] | None = None, timeout: float = 5.0
) -> Any:
    """Ask the node running on `storage_dir` (blocking; for the CLI). Raises `ControlError`."""
    control_path = storage_dir / CONTROL_FILE
    try:
        info = json.loads(control_path.read_text())
        port, token = int(info["port"]), str(info["token"])
    except FileNotFoundError:
        raise NotRunning(f"{control_path}: not found; is the node running (swarmnode run)?") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ControlError(f"{control_path}: unreadable control file ({exc})") from None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            request = {"token": token, "command": command, "args": args or {}}
            conn.sendall(json.dumps(request).encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except OSError as exc:
        raise NotRunning(
            f"no node answers on 127.0.0.1:{port} (from {control_path}): {exc}; is it still running?"
        ) from None
    try:
        reply = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ControlError(f"127.0.0.1:{port} answered something that is not JSON") from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else reply
        raise ControlError(f"node refused: {error}")
    return reply["result"]
