"""Whom a relay serves (`swarmnode.net.relay_members`): the allow-list decision, and the hop
handler's refusals on a host that never listens (no network).

Attack: a peer that is no member reserves a slot on the organiser's relay, or has it open
circuits from or to a non-member, spending the relay's bandwidth. The decision admits the
genesis founders and the members file's additions, minus its removals, and refuses a
request when either end (the asker, or the peer it names) is outside that list.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import multiaddr
import pytest
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode

from crypto.identity import NodeId
from swarmnode.net.libp2p_relay import RELAY_LIMITS
from swarmnode.net.libp2p_streams import libp2p_id, new_secure_host
from swarmnode.net.relay_members import MemberHop, MembersFile, RelayAllowList, refused_end
from swarmnode.testing import make_identity

FOUNDER, OTHER_FOUNDER, JOINER, OUTSIDER = (make_identity(i, "relay-members").node_id for i in range(4))


def _rewrite(path: Path, text: str) -> None:
    """Write `text` with a later mtime, as an editor saving the file a moment later would."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_founders_are_admitted_and_anyone_else_refused() -> None:
    allowed = RelayAllowList([FOUNDER, OTHER_FOUNDER], None)
    assert allowed.admits(FOUNDER)
    assert allowed.admits(OTHER_FOUNDER)
    assert not allowed.admits(OUTSIDER)
    assert refused_end(allowed.admits, [FOUNDER, OTHER_FOUNDER]) is None
    assert refused_end(allowed.admits, [OUTSIDER, FOUNDER]) == 0  # a non-member asking
    assert refused_end(allowed.admits, [FOUNDER, OUTSIDER]) == 1  # a member naming a non-member
    assert refused_end(allowed.admits, [FOUNDER, None]) == 1  # a named peer that is no Ed25519 key


def test_the_members_file_adds_joiners_and_removes_leavers(tmp_path: Path) -> None:
    path = tmp_path / "members.txt"
    _rewrite(path, f"# joined in round 3\nhospital-d={JOINER.peer_id}@/ip4/10.0.0.4/tcp/7000\n\n")
    allowed = RelayAllowList([FOUNDER, OTHER_FOUNDER], path)
    assert allowed.members == {FOUNDER, OTHER_FOUNDER, JOINER}

    _rewrite(path, f"{JOINER.peer_id}\n-{OTHER_FOUNDER.peer_id}  # removed by vote\n{OUTSIDER.peer_id}\n")
    assert allowed.members == {FOUNDER, JOINER, OUTSIDER}  # read again: no restart needed
    assert not allowed.admits(OTHER_FOUNDER)


def test_a_broken_members_file_keeps_the_last_good_list(tmp_path: Path) -> None:
    path = tmp_path / "members.txt"
    _rewrite(path, f"{JOINER.peer_id}\n")
    allowed = RelayAllowList([FOUNDER], path)
    _rewrite(path, f"{JOINER.peer_id}\n12D3KooWnot-a-key\n")
    assert allowed.members == {FOUNDER, JOINER}
    path.unlink()
    assert allowed.members == {FOUNDER, JOINER}


def test_a_bad_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "members.txt"
    with pytest.raises(ValueError, match=r"members\.txt:2: 'deadbeef'"):
        MembersFile.parse(path, f"{JOINER.peer_id}\nsite=deadbeef@/ip4/10.0.0.1/tcp/7000\n")


class _Stream:
    """What the hop handler sees of a stream: the asker's peer id, and what it is sent."""

    def __init__(self, asker: NodeId) -> None:
        self.muxed_conn = SimpleNamespace(peer_id=libp2p_id(asker))
        self.sent: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.sent.append(data)

    def status(self) -> int:
        message = HopMessage()
        message.ParseFromString(self.sent[-1][1:])  # one-byte varint length prefix
        return message.status


def _request(kind: int, peer: NodeId) -> HopMessage:
    message = HopMessage(type=kind)
    message.peer.id = libp2p_id(peer).to_bytes()
    return message


async def test_the_hop_handler_refuses_either_end_and_logs_each_peer_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = new_secure_host(make_identity(9, "relay-members"), multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0"))
    hop = MemberHop(host, limits=RELAY_LIMITS, allow_hop=True, admits={FOUNDER, OTHER_FOUNDER}.__contains__)
    caplog.set_level(logging.WARNING, logger="swarmnode.net.relay")
    for asker, kind, named in [
        (OUTSIDER, HopMessage.RESERVE, OUTSIDER),
        (OUTSIDER, HopMessage.RESERVE, OUTSIDER),  # a retry: refused again, not logged again
        (FOUNDER, HopMessage.RESERVE, JOINER),  # a member reserving for a non-member
        (OUTSIDER, HopMessage.CONNECT, FOUNDER),
        (FOUNDER, HopMessage.CONNECT, OUTSIDER),  # already logged
    ]:
        stream = _Stream(asker)
        handle = hop._handle_reserve if kind == HopMessage.RESERVE else hop._handle_connect
        await handle(stream, _request(kind, named))  # type: ignore[arg-type]
        assert stream.status() == StatusCode.PERMISSION_DENIED
    assert not hop.resource_manager.can_accept_connection(libp2p_id(OUTSIDER))
    assert not hop.resource_manager.can_accept_connection(libp2p_id(JOINER))
    logged = [r.getMessage() for r in caplog.records]
    assert logged == [
        f"refused a reservation from {OUTSIDER.peer_id}: not a member",
        f"refused a reservation from {FOUNDER.peer_id}: to {JOINER.peer_id}, which is not a member",
    ]
