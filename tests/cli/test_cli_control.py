"""The local control endpoint behind `swarmnode status`: token, file mode, bad requests."""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from consensus.contract import Contract
from consensus.genesis import FoundingMember
from consensus.transactions import JoinRequest, Leave, TxSigner
from crypto.identity import NodeId, NodeIdentity
from models.spec import logistic_regression
from swarmnode.control import CONTROL_FILE, ControlError, request_control, serve_control, to_jsonable
from swarmnode.scaffold import GenesisSettings, build_genesis


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


class FakeMemberNode:
    """Just enough of `Node` for the membership commands: a real contract, blocks of one tx."""

    def __init__(self, tmp_path: Path) -> None:

        self.identity = NodeIdentity.generate()
        self.node_id = self.identity.node_id
        other = NodeIdentity.generate().node_id
        self.genesis = build_genesis(
            GenesisSettings(
                name="g",
                members=(
                    FoundingMember(name="me", node_id=self.node_id),
                    FoundingMember(name="other", node_id=other),
                ),
                model=logistic_regression(4, 2),
                secure=False,  # a secure swarm needs t + 1 = 3 founders; membership is the point here
            )
        )
        self.contract = Contract(self.genesis)
        self.approved: list[NodeId] = []

    def status(self) -> dict[str, int]:
        return {"height": self.contract.height}

    async def submit_transaction(self, tx: bytes) -> None:
        reasons = self.contract.apply_block(self.contract.height + 1, [tx])
        if reasons[0] is not None:
            raise ValueError(reasons[0])

    async def wait_for(self, predicate: Any) -> None:
        assert predicate(self.contract)

    async def approve(self, joiner: NodeId) -> None:
        self.approved.append(joiner)


async def test_submit_join_and_approve_commands(tmp_path: Path) -> None:
    node = FakeMemberNode(tmp_path)
    joiner = NodeIdentity.generate()
    request = TxSigner(node.genesis.chain_id, joiner).sign(
        JoinRequest(name="late", addresses=("/ip4/127.0.0.1/tcp/9",))
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, node, tmp_path)

        def call(command: str, args: dict[str, Any]) -> Any:
            return request_control(tmp_path, command, args=args)

        result = await trio.to_thread.run_sync(call, "submit-join", {"tx": request.hex()})
        assert result == {"joiner": joiner.node_id.peer_id, "approved_by": node.node_id.peer_id}
        assert node.approved == [joiner.node_id]
        assert [p.node_id for p in node.contract.pending_joins()] == [joiner.node_id]
        await trio.to_thread.run_sync(call, "approve", {"peer_id": joiner.node_id.peer_id})
        assert node.approved == [joiner.node_id] * 2
        # a transaction of another kind, another chain, or garbage is refused with the reason
        other_kind = TxSigner(node.genesis.chain_id, joiner).sign(Leave(member_since=0))
        with pytest.raises(ControlError, match="expected a signed JoinRequest"):
            await trio.to_thread.run_sync(call, "submit-join", {"tx": other_kind.hex()})
        foreign = TxSigner(b"\x01" * 32, joiner).sign(JoinRequest(name="x", addresses=()))
        with pytest.raises(ControlError, match="WrongChain"):
            await trio.to_thread.run_sync(call, "submit-join", {"tx": foreign.hex()})
        with pytest.raises(ControlError, match="ValueError"):
            await trio.to_thread.run_sync(call, "submit-join", {"tx": "zz"})
        with pytest.raises(ControlError, match=r"not an Ed25519 peer id|base58"):
            await trio.to_thread.run_sync(call, "approve", {"peer_id": "nobody"})
        nursery.cancel_scope.cancel()


async def test_second_serve_control_on_one_storage_dir_reuses_the_first(tmp_path: Path) -> None:
    node = FakeNode()
    async with trio.open_nursery() as nursery:
        first = await nursery.start(serve_control, node, tmp_path)
        second = await nursery.start(serve_control, node, tmp_path)
        assert first == second
        assert json.loads((tmp_path / CONTROL_FILE).read_text())["port"] == first
        assert (await trio.to_thread.run_sync(request_control, tmp_path))["round"] == 3
        nursery.cancel_scope.cancel()
    assert not (tmp_path / CONTROL_FILE).exists()
