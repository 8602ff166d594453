"""Closed rounds: aborting the open round, the hash chain over the history, and the
transparency record every member can audit.

``app_hash`` commits to the closed rounds through their hash chain
(`ContractState.history_root`), so it costs the same in round 1000 as in round 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final, final

from crypto import cbor
from crypto.identity import NodeId

from .contract_state import ABORTED, MERGED, ContractState, Round
from .genesis import Genesis
from .transactions import Phase

HISTORY_ROOT_0: Final = hashlib.sha256(b"swarmnode/round-history/v1\x00").digest()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ContributorWeight:
    node_id: NodeId
    weight: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RoundSummary:
    """One line of the transparency record: what every member can audit about a round."""

    number: int
    outcome: str
    epoch: int
    contributors: tuple[ContributorWeight, ...]
    leader: NodeId | None  # whose aggregate was verified (None if none was)
    verifier: NodeId | None
    decrypt_set: tuple[NodeId, ...]
    aggregate_hash: bytes | None
    merged_hash: bytes | None
    median_metric: float | None
    start_height: int
    close_height: int
    note: str


def summarize(r: Round) -> RoundSummary:
    weights = {rec.node_id: rec.weight for rec in r.ready}
    verified = r.outcome == MERGED or r.phase == Phase.DECRYPT
    return RoundSummary(
        number=r.number,
        outcome=r.outcome,
        epoch=r.epoch,
        contributors=tuple(ContributorWeight(node_id=c, weight=weights[c]) for c in r.contributors),
        leader=r.aggregator if verified else None,
        verifier=r.verified_by,
        decrypt_set=r.decrypt_set,
        aggregate_hash=r.aggregate_hash if verified else None,
        merged_hash=r.merged_hash,
        median_metric=r.median_metric,
        start_height=r.start_height,
        close_height=r.close_height,
        note=r.note,
    )


def abort(s: ContractState, g: Genesis, h: int, reason: str) -> ContractState:
    closed = replace(s.round, outcome=ABORTED, note=reason, close_height=h, timeout_votes=())
    return replace(append_history(s, closed), round=Round(number=closed.number + 1))


def _chain_root(root: bytes, closed: Round) -> bytes:
    return hashlib.sha256(root + cbor.dumps_dataclass(closed)).digest()


def append_history(s: ContractState, closed: Round) -> ContractState:
    return replace(s, history=(*s.history, closed), history_root=_chain_root(s.history_root, closed))


def history_root(history: Iterable[Round]) -> bytes:
    """The hash chain over closed rounds that `ContractState.history_root` must equal."""
    root = HISTORY_ROOT_0
    for closed in history:
        root = _chain_root(root, closed)
    return root
