"""The local control endpoint behind `swarmnode status`: token, file mode, bad requests."""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from crypto.identity import NodeId, NodeIdentity
from swarmnode.control import CONTROL_FILE, ControlError, request_control, serve_control, to_jsonable


@dataclass(frozen=True)
class FakeStatus:
    node_id: NodeId
    round: int
    phase: str
    last_merged_hash: bytes | None
    members: tuple[NodeId, ...]
    metric: float


class FakeNode:
    def __init__(self) -> None:
        self.node = NodeIdentity.generate().node_id
        self.round = 3

    def status(self) -> FakeStatus:
        return FakeStatus(self.node, self.round, "contribute", b"\x01" * 32, (self.node,), float("nan"))


async def raw_request(port: int, payload: bytes) -> dict[str, object]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    result: dict[str, object] = json.loads(data)
    return result


async def test_status_round_trip_and_refusals(tmp_path: Path) -> None:
    node = FakeNode()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_control, node, tmp_path)
        control = tmp_path / CONTROL_FILE
        assert stat.S_IMODE(control.stat().st_mode) == 0o600
        status = await trio.to_thread.run_sync(request_control, tmp_path)
        assert status == {
            "node_id": node.node.peer_id,
            "round": 3,
            "phase": "contribute",
            "last_merged_hash": "01" * 32,
            "members": [node.node.peer_id],
            "metric": None,
        }
        node.round = 4  # answers are live, not a snapshot from startup
        assert (await trio.to_thread.run_sync(request_control, tmp_path))["round"] == 4
        token = json.loads(control.read_text())["token"]
        wrong = await raw_request(port, json.dumps({"token": "0" * 32, "command": "status"}).encode() + b"\n")
        assert wrong == {"ok": False, "error": "wrong token"}
        unknown = await raw_request(
            port, json.dumps({"token": token, "command": "shutdown"}).encode() + b"\n"
        )
        assert unknown["ok"] is False
        assert "unknown command" in str(unknown["error"])
        assert (await raw_request(port, b"{not json\n"))["ok"] is False
        assert (await raw_request(port, b"[1, 2]\n"))["ok"] is False
        oversized = await raw_request(port, b"x" * 5000)
        assert "4096" in str(oversized["error"])
        with pytest.raises(ControlError, match="unknown command"):
            await trio.to_thread.run_sync(lambda: request_control(tmp_path, "reboot"))
        nursery.cancel_scope.cancel()
    assert not (tmp_path / CONTROL_FILE).exists()  # removed on exit: status then says "not running"
    with pytest.raises(ControlError, match="is the node running"):
        request_control(tmp_path)


async def test_stale_control_file_names_the_problem(tmp_path: Path) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # nothing listens there any more
    (tmp_path / CONTROL_FILE).write_text(json.dumps({"port": port, "token": "t"}))
    with pytest.raises(ControlError, match="still running"):
        await trio.to_thread.run_sync(request_control, tmp_path)
    (tmp_path / CONTROL_FILE).write_text("garbage")
    with pytest.raises(ControlError, match="unreadable control file"):
        request_control(tmp_path)


def test_to_jsonable_covers_status_values() -> None:
    node = NodeIdentity.generate().node_id
    assert to_jsonable({node: (b"\xff", Path("/x"), float("inf"), None, True)}) == {
        node.peer_id: ["ff", "/x", None, None, True]
    }
