"""Refusals at start: what a site gets told at once instead of waiting in silence.

`swarmnode run` checks, before it loads the site's data or opens the network (`preflight`):

- the listen port is free (`check_port_free`, also what the transport checks itself);
- the key file loads (`crypto.identity.KeyFileError` names the file and the fault);
- this identity is a member of the chain, a pending joiner, or a joiner holding a join
  request for this chain (`check_membership`); a site the ledger does not know would
  otherwise sit at height 0 forever, its connections refused by every member. A site
  with a stored ledger is checked against it once the node has replayed it
  (`check_node_membership`): it may have joined, or left, since genesis.

Once running, a peer whose consensus messages are for another chain (started with
another genesis file) is reported once, naming both chain ids (`ForeignChains`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from consensus.genesis import Genesis
from consensus.transactions import JoinRequest, tx_codec
from crypto.errors import ProtocolError
from crypto.identity import NodeId, NodeIdentity

from .addresses import port_in_use
from .ledgerview import LEDGER_FILE
from .scaffold import JOIN_REQUEST_FILE

if TYPE_CHECKING:
    from .config import NodeConfig
    from .node import Node


class StartRefused(Exception):
    """This site cannot start as configured; the message names the field or file and the fix."""


def check_port_free(host: str, port: int) -> None:
    """Refuse a fixed port another process listens on (`StartRefused` naming the address)."""
    busy = port_in_use(host, port)
    if busy is not None:
        raise StartRefused(f"network.port: {busy}; stop the other process or set another [network] port")


def check_membership(
    me: NodeId,
    *,
    chain_id: bytes,
    members: Iterable[NodeId],
    pending: Iterable[NodeId],
    join_request: Path,
) -> None:
    """Refuse an identity that is neither a member, nor a pending joiner, nor holds a join
    request (`join_request`, written by `swarmnode join`) for this chain, signed by it."""
    if me in set(members) or me in set(pending):
        return
    chain = chain_id.hex()
    try:
        tx = join_request.read_bytes()
    except FileNotFoundError:
        raise StartRefused(
            f"node.key_file: this site's identity {me.peer_id} is not a member of chain {chain} "
            f"and has no join request ({join_request} is missing): use the key file that was "
            "given to the genesis organiser, or join with `swarmnode join --invite`"
        ) from None
    except OSError as exc:
        raise StartRefused(f"{join_request}: cannot read join request ({exc.strerror})") from None
    try:
        envelope = tx_codec(chain_id).open(tx)
    except ProtocolError as exc:
        raise StartRefused(f"{join_request}: not a join request for chain {chain}: {exc}") from None
    if not isinstance(envelope.body, JoinRequest) or envelope.sender != me:
        raise StartRefused(f"{join_request}: not a join request signed by this site's identity {me.peer_id}")


def join_request_path(config: NodeConfig) -> Path:
    """Where `swarmnode join` wrote the site's join request: next to its site.toml."""
    base = config.source.resolve().parent if config.source is not None else config.node.storage_dir.parent
    return base / JOIN_REQUEST_FILE


def preflight(config: NodeConfig, genesis: Genesis) -> NodeIdentity:
    """What `swarmnode run` checks before loading data or opening the network; the identity."""
    check_port_free(config.network.listen, config.network.port)
    identity = NodeIdentity.load(config.node.key_file)
    if not (config.node.storage_dir / LEDGER_FILE).exists():  # a fresh site: genesis is the state
        check_membership(
            identity.node_id,
            chain_id=genesis.chain_id,
            members=(m.node_id for m in genesis.members),
            pending=(),
            join_request=join_request_path(config),
        )
    return identity


def check_node_membership(node: Node, config: NodeConfig) -> None:
    """`check_membership` against the ledger a started node replayed from its store."""
    state = node.contract.state
    check_membership(
        node.node_id,
        chain_id=node.genesis.chain_id,
        members=(m.node_id for m in state.members),
        pending=(p.node_id for p in state.pending),
        join_request=join_request_path(config),
    )


class ForeignChains:
    """Peers whose consensus messages are for another chain: each is reported once (WARNING)."""

    def __init__(self, ours: bytes, log: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> None:
        self._ours = ours
        self._log = log
        self._reported: set[tuple[NodeId, bytes]] = set()

    def saw(self, peer: NodeId, theirs: bytes) -> None:
        if (peer, theirs) in self._reported:
            return
        self._reported.add((peer, theirs))
        self._log.warning(
            "peer %s runs chain %s while ours is %s: it was started with another genesis file; "
            "its messages are dropped (compare `swarmnode genesis-show` at both sites)",
            peer.peer_id,
            theirs.hex(),
            self._ours.hex(),
        )
