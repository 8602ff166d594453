"""Who a relay serves: members only, for reservations and circuits (HOP) alike.

py-libp2p 0.8.1's hop handler (`libp2p/relay/circuit_v2/protocol.py`) has no access-control
hook: its resource manager counts reservations and circuits but serves any peer. So
`MemberHop` checks both ends of every RESERVE and CONNECT against `admits` before the
library handles the message, and answers PERMISSION_DENIED otherwise.

`RelayAllowList` is what `swarmnode relay` admits: the founding members of its genesis
file(s) and the lines of an optional members file that the organiser edits as the ledger
changes (a joiner's peer id or member line to add, ``-<peer id>`` for a site that left or
was removed); the file is read again whenever it changes, so no restart is needed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.resources import RelayLimits

from crypto.identity import NodeId

from .libp2p_streams import node_id_of

log = logging.getLogger("swarmnode.net.relay")

Admits = Callable[[NodeId], bool]
# Refused peers are logged once each, up to this many: new keys cost an attacker nothing, so
# neither the log nor the set of logged peers may grow without bound.
MAX_REFUSALS_LOGGED: Final = 1000


def refused_end(admits: Admits, ends: Sequence[NodeId | None]) -> int | None:
    """The index of the first end of a relay request that is no member (None: not an Ed25519
    peer id at all); None when `admits` admits every end."""
    for index, end in enumerate(ends):
        if end is None or not admits(end):
            return index
    return None


@dataclass(frozen=True, slots=True)
class MembersFile:
    """The organiser's members file, parsed: who joined since genesis, and who is gone."""

    added: frozenset[NodeId]
    removed: frozenset[NodeId]

    @classmethod
    def parse(cls, path: Path, text: str) -> MembersFile:
        """One entry a line: a peer id (``12D3KooW...``) or a member line
        (``NAME=PEER_ID[@ADDR,...]``) adds a member, ``-PEER_ID`` takes one off; blank lines
        and ``#`` comments are skipped. ValueError names the file and line at fault."""
        added: set[NodeId] = set()
        removed: set[NodeId] = set()
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            target = removed if line.startswith("-") else added
            # a member line: NAME=PEER_ID@ADDR,...; the peer id is between '=' and '@'
            peer_id = line.removeprefix("-").partition("@")[0].rpartition("=")[2].strip()
            node = _node_of_peer_id(peer_id)
            if node is None:
                raise ValueError(f"{path}:{number}: {peer_id!r} is not an Ed25519 peer id (12D3KooW...)")
            target.add(node)
        return cls(frozenset(added), frozenset(removed))


class RelayAllowList:
    """Genesis founders plus the members file's additions, minus its removals."""

    def __init__(self, founders: Iterable[NodeId], members_file: Path | None) -> None:
        self._founders: Final = frozenset(founders)
        self._path: Final = members_file
        self._stamp: tuple[int, int] | None = None
        self._file = MembersFile(frozenset(), frozenset())
        if members_file is not None:
            self._file = MembersFile.parse(members_file, members_file.read_text())
            self._stamp = self._stat(members_file)

    @property
    def members(self) -> frozenset[NodeId]:
        """Everyone the relay serves now (after reading the members file again if it changed)."""
        self._reload_if_changed()
        return (self._founders | self._file.added) - self._file.removed

    def admits(self, node: NodeId) -> bool:
        return node in self.members

    @staticmethod
    def _stat(path: Path) -> tuple[int, int]:
        status = os.stat(path)
        return status.st_mtime_ns, status.st_size

    def _reload_if_changed(self) -> None:
        if self._path is None:
            return
        try:
            stamp = self._stat(self._path)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            parsed = MembersFile.parse(self._path, self._path.read_text())
        except (OSError, ValueError) as exc:  # a file mid-edit: keep serving the last good list
            log.error("members file not read again, keeping the previous list: %s", exc)
            return
        if parsed != self._file:
            self._file = parsed
            log.info(
                "members file %s read: %d added since genesis, %d removed",
                self._path,
                len(parsed.added),
                len(parsed.removed),
            )


class MemberHop(CircuitV2Protocol):
    """The circuit relay v2 protocol, serving RESERVE and CONNECT only when `admits` both the
    peer asking (its key authenticated by Noise) and the peer it names; each refused peer is
    logged once."""

    def __init__(self, host: IHost, *, limits: RelayLimits, allow_hop: bool, admits: Admits) -> None:
        super().__init__(host, limits=limits, allow_hop=allow_hop)
        self._admits: Final = admits
        self._refused_logged: set[str] = set()

    async def _handle_reserve(self, stream: INetStream, msg: HopMessage) -> None:
        # The library reserves for the peer a RESERVE names, if any, not only for the asker.
        named = (_named_peer(msg),) if msg.HasField("peer") and msg.peer.id else ()
        if not await self._refused(stream, "a reservation", named):
            await super()._handle_reserve(stream, msg)

    async def _handle_connect(self, stream: INetStream, msg: HopMessage) -> None:
        if not await self._refused(stream, "a circuit", (_named_peer(msg),)):
            await super()._handle_connect(stream, msg)

    async def _refused(self, stream: INetStream, what: str, named: tuple[ID | None, ...]) -> bool:
        asker = stream.muxed_conn.peer_id
        ends = (asker, *named)
        index = refused_end(self._admits, [None if end is None else node_id_of(end) for end in ends])
        if index is None:
            return False
        culprit = str(ends[index]) if ends[index] is not None else "an unreadable peer id"
        # once per peer: a refused peer may retry every second
        if culprit not in self._refused_logged and len(self._refused_logged) < MAX_REFUSALS_LOGGED:
            self._refused_logged.add(culprit)
            reason = "not a member" if index == 0 else f"to {culprit}, which is not a member"
            log.warning("refused %s from %s: %s", what, asker, reason)
            if len(self._refused_logged) == MAX_REFUSALS_LOGGED:
                log.warning("refused %d peers; refusals of further peers are not logged", MAX_REFUSALS_LOGGED)
        await self._send_status(stream, StatusCode.PERMISSION_DENIED, "not a member of this swarm")
        return True


def _node_of_peer_id(text: str) -> NodeId | None:
    try:
        node = node_id_of(ID.from_base58(text))
    except Exception:  # not base58, or not a multihash
        return None
    return node if node is not None and node.peer_id == text else None


def _named_peer(msg: HopMessage) -> ID | None:
    try:
        return ID(msg.peer.id)
    except Exception:  # not a peer id at all: refused like a non-member
        return None
