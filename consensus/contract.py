"""The contract: swarmnode's deterministic application state, replayed from blocks.

It implements `consensus.app.Application` for the ledger and answers the node
runtime's questions (who is in, which round and phase, who leads, which
hashes are expected).

Design
------
The state is one tree of frozen dataclasses (`ContractState`), so:

* a transaction is a pure function ``state -> new state | reason`` (`_transition`);
  a rejected one returns a reason and the state object is untouched, which is
  also how `check_tx` works (run it, throw the result away);
* the snapshot is the canonical CBOR of the tree; every node replaying the same
  blocks holds byte-identical snapshots. ``app_hash`` is the SHA-256 of the same
  encoding with the closed rounds replaced by their hash chain (``history_root``),
  so it stays cheap however long training runs, and still commits to everything.

Nothing reads a clock: deadlines are decided on the ledger by votes (`consensus.rounds`).
`Contract` only decodes transactions and dispatches each to the pure function of its
kind (`_transition`):

* `consensus.membership`: joins, approvals, leaving, votes to evict;
* `consensus.key_epochs`: dealing and checking the keys, complaints, epoch deadlines;
* `consensus.rounds` and `consensus.round_phases`: a round's start, roles, phases and
  deadlines; `consensus.decrypt_phase`: the robust decrypt-phase rules;
* `consensus.epoch_budget`: the smudging budget of a key epoch;
* `consensus.stopping`: the stopping rule and `Stop` votes;
* `consensus.equivocation`: evidence of double votes;
* `consensus.round_history`: closed rounds, their hash chain and transparency record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import final

from crypto import cbor
from crypto.envelope import Envelope
from crypto.errors import ProtocolError
from crypto.identity import NodeId

from .contract_state import ABORTED as ABORTED
from .contract_state import BAD_DEALING as BAD_DEALING
from .contract_state import CONTRIBUTION_TIMEOUT as CONTRIBUTION_TIMEOUT
from .contract_state import DECRYPTOR_TIMEOUT as DECRYPTOR_TIMEOUT
from .contract_state import EPOCH_TIMEOUT as EPOCH_TIMEOUT
from .contract_state import EQUIVOCATION as EQUIVOCATION
from .contract_state import FALSE_COMPLAINT as FALSE_COMPLAINT
from .contract_state import LEADER_TIMEOUT as LEADER_TIMEOUT
from .contract_state import MERGED as MERGED
from .contract_state import VERIFIER_TIMEOUT as VERIFIER_TIMEOUT
from .contract_state import WRONG_AGGREGATE as WRONG_AGGREGATE
from .contract_state import WRONG_SHARE as WRONG_SHARE
from .contract_state import ContractState as ContractState
from .contract_state import ContributionRecord as ContributionRecord
from .contract_state import Evidence as Evidence
from .contract_state import FormerMember as FormerMember
from .contract_state import HashVote as HashVote
from .contract_state import KeyEpoch as KeyEpoch
from .contract_state import MemberRecord as MemberRecord
from .contract_state import PendingJoin as PendingJoin
from .contract_state import Result, ValidatorSet, node_key, validators_at
from .contract_state import Round as Round
from .contract_state import StopRecord as StopRecord
from .epoch_budget import SMUDGING_BUDGET as SMUDGING_BUDGET
from .equivocation import vote_equivocation
from .genesis import Genesis
from .key_epochs import (
    epoch_complaint,
    epoch_prss_complaint,
    epoch_quorum,
    epoch_rejoin,
    epoch_timeout,
    epoch_timeout_voters,
    epoch_tx,
    make_epoch,
)
from .membership import MAX_PENDING_JOINS as MAX_PENDING_JOINS
from .membership import approve, evict, join_request, leave
from .round_history import HISTORY_ROOT_0, history_root
from .round_history import RoundSummary as RoundSummary
from .round_history import summarize as summarize
from .round_phases import round_tx
from .rounds import record_ready, required_ready, timeout_voters, try_start
from .stopping import stop_vote
from .transactions import (
    Aggregate,
    AggregateVerdict,
    Approve,
    Contribution,
    DecryptionShare,
    EpochComplaint,
    EpochComplete,
    EpochFingerprint,
    EpochPrssComplaint,
    EpochPublicShare,
    EpochRejoin,
    EpochSealedShares,
    EpochTimeout,
    Evict,
    JoinRequest,
    Leave,
    MergedModel,
    Phase,
    PhaseTimeout,
    Ready,
    ShareMismatch,
    Stop,
    VoteEquivocation,
    tx_codec,
    tx_id,
)

# -- the Application ------------------------------------------------------------------


@final
class Contract:
    """The membership and round contract for one chain (implements `Application`)."""

    __slots__ = ("_chain_id", "_codec", "_genesis", "_hash_cache", "_state")

    def __init__(self, genesis: Genesis) -> None:
        self._genesis = genesis
        self._chain_id = genesis.chain_id
        self._codec = tx_codec(self._chain_id)
        self._state = genesis_state(genesis)
        self._hash_cache: tuple[ContractState, bytes] | None = None

    # Application -------------------------------------------------------------------

    def validators(self, height: int) -> tuple[NodeId, ...]:
        return validators_at(self._state, height)

    def check_tx(self, tx: bytes) -> str | None:
        try:
            envelope = self._codec.open(tx)
        except ProtocolError as exc:
            return f"undecodable transaction: {exc}"
        result = _safe_transition(self._state, self._genesis, self._state.height + 1, envelope)
        return result if isinstance(result, str) else None

    def apply_block(self, height: int, txs: Sequence[bytes]) -> tuple[str | None, ...]:
        if height != self._state.height + 1:
            raise ValueError(
                f"apply_block({height}) after height {self._state.height}: blocks apply in order"
            )
        state = replace(self._state, height=height)
        reasons: list[str | None] = []
        for tx in txs:
            try:
                envelope = self._codec.open(tx)
            except ProtocolError as exc:
                reasons.append(f"undecodable transaction: {exc}")
                continue
            result = _safe_transition(state, self._genesis, height, envelope)
            if isinstance(result, str):
                reasons.append(result)
            else:
                state = result
                reasons.append(None)
        self._state = state
        return tuple(reasons)

    def app_hash(self) -> bytes:
        """SHA-256 of the canonical CBOR of the state, in which the closed rounds are
        represented by their hash chain (`history_root`): the hash commits to every
        byte of the state, yet costs the same in round 1000 as in round 1."""
        cached = self._hash_cache
        if cached is not None and cached[0] is self._state:
            return cached[1]
        digest = hashlib.sha256(cbor.dumps_dataclass(replace(self._state, history=()))).digest()
        self._hash_cache = (self._state, digest)
        return digest

    def snapshot(self) -> bytes:
        return cbor.dumps_dataclass(self._state)

    def restore(self, snapshot: bytes) -> None:
        """Replace the state by a snapshot of this chain; raises `ProtocolError` on bad bytes
        and `ValueError` for another chain's snapshot."""
        state = cbor.loads_dataclass(ContractState, snapshot)
        if state.chain_id != self._chain_id:
            raise ValueError("snapshot belongs to another chain")
        if history_root(state.history) != state.history_root:
            raise ValueError("snapshot round history does not match its hash chain")
        self._state = state

    # Queries for the node runtime ---------------------------------------------------

    @property
    def genesis(self) -> Genesis:
        return self._genesis

    @property
    def chain_id(self) -> bytes:
        return self._chain_id

    @property
    def state(self) -> ContractState:
        return self._state

    @property
    def height(self) -> int:
        return self._state.height

    def decode(self, tx: bytes) -> Envelope:
        """Open a transaction's envelope (raises `ProtocolError`)."""
        return self._codec.open(tx)

    def members(self) -> tuple[MemberRecord, ...]:
        return self._state.members

    def member(self, node: NodeId) -> MemberRecord | None:
        return self._state.member(node)

    def is_member(self, node: NodeId) -> bool:
        return self._state.member(node) is not None

    def former_members(self) -> tuple[FormerMember, ...]:
        return self._state.former

    def pending_joins(self) -> tuple[PendingJoin, ...]:
        return self._state.pending

    def key_epoch(self) -> KeyEpoch:
        return self._state.epoch

    def epoch_timeout_voters(self) -> tuple[NodeId, ...]:
        """Who may submit `EpochTimeout` for the current key-epoch stage (those waiting)."""
        return epoch_timeout_voters(self._state)

    def epoch_quorum(self) -> int:
        """Members a key epoch that leaves members out must keep: max(min_peers, t)."""
        return epoch_quorum(self._state, self._genesis)

    def epoch_waiting_for(self) -> tuple[NodeId, ...]:
        """The members holding up the current key epoch (empty once it is complete)."""
        epoch = self._state.epoch
        return () if epoch.complete else epoch.lagging()

    def epoch_left_out(self) -> tuple[NodeId, ...]:
        """Members without a place in the current key epoch (they missed a deadline)."""
        members = set(self._state.epoch.members)
        return tuple(m for m in self._state.member_ids if m not in members)

    @property
    def phase(self) -> Phase:
        return Phase(self._state.round.phase)

    @property
    def round(self) -> Round:
        """The open round (its `phase` is ``stopped`` once training is over)."""
        return self._state.round

    def round_record(self, number: int) -> Round | None:
        """The open round or a closed one by number."""
        if self._state.round.number == number:
            return self._state.round
        return next((r for r in self._state.history if r.number == number), None)

    def history(self) -> tuple[Round, ...]:
        return self._state.history

    def required_ready(self) -> int:
        """Ready members a round needs to start (`TrainingParams.min_contributions` for the
        current epoch's t: ``max(min_peers, t + 1)`` in a secure swarm)."""
        return required_ready(self._state, self._genesis)

    def timeout_voters(self) -> tuple[NodeId, ...]:
        """Who may submit `PhaseTimeout` for the current step: every member of the current
        key epoch; a strict majority of them decides the deadline."""
        return timeout_voters(self._state)

    def evidence(self) -> tuple[Evidence, ...]:
        return self._state.evidence

    @property
    def stopped(self) -> StopRecord | None:
        return self._state.stopped

    @property
    def final_model_hash(self) -> bytes | None:
        stop = self._state.stopped
        return None if stop is None else stop.final_model_hash

    @property
    def last_merged_hash(self) -> bytes | None:
        return self._state.last_merged_hash

    def transparency(self) -> tuple[RoundSummary, ...]:
        """Every closed round: contributors with weights, leader, verifier, hashes, metric."""
        return tuple(summarize(r) for r in self._state.history)


def genesis_state(genesis: Genesis) -> ContractState:
    members = tuple(
        sorted(
            (
                MemberRecord(node_id=m.node_id, name=m.name, addresses=m.addresses, since=0)
                for m in genesis.members
            ),
            key=lambda m: node_key(m.node_id),
        )
    )
    ids = tuple(m.node_id for m in members)
    chain_id = genesis.chain_id
    return ContractState(
        chain_id=chain_id,
        height=0,
        members=members,
        former=(),
        pending=(),
        evictions=(),
        validator_sets=(ValidatorSet(effective=0, validators=ids),),
        epoch=make_epoch(chain_id, genesis, 1, 0, ids, len(ids)),
        round=Round(number=1),
        history=(),
        history_root=HISTORY_ROOT_0,
        evidence=(),
        merged_rounds=0,
        last_merged_hash=None,
        best_metric=None,
        stale_rounds=0,
        stopped=None,
    )


# -- transitions ------------------------------------------------------------------------


def _safe_transition(state: ContractState, genesis: Genesis, height: int, envelope: Envelope) -> Result:
    # The transition is pure: an unexpected exception leaves `state` untouched on every
    # node alike. It is a bug, but one peer's transaction must not halt the ledger.
    try:
        return _transition(state, genesis, height, envelope)
    except Exception as exc:  # pragma: no cover - reaching this is a bug, tests assert it never happens
        return f"internal error while applying {envelope.type}: {type(exc).__name__}: {exc}"


def _transition(s: ContractState, g: Genesis, h: int, env: Envelope) -> Result:
    sender, body = env.sender, env.body
    match body:
        case JoinRequest():
            return join_request(s, h, sender, body, tx_id(env))
        case Approve():
            return approve(s, g, h, sender, body)
        case Leave():
            return leave(s, g, h, sender, body)
        case Evict():
            return evict(s, g, h, sender, body)
        case EpochPublicShare() | EpochSealedShares() | EpochFingerprint() | EpochComplete():
            after = epoch_tx(s, g, h, sender, body)
            # A round waiting for keys starts as soon as the key epoch completes.
            return try_start(after, g, h) if not isinstance(after, str) and after.epoch.complete else after
        case EpochComplaint():
            return epoch_complaint(s, g, h, sender, body)
        case EpochPrssComplaint():
            return epoch_prss_complaint(s, g, h, sender, body)
        case EpochTimeout():
            return epoch_timeout(s, g, h, sender, body)
        case EpochRejoin():
            return epoch_rejoin(s, g, h, sender, body)
        case Ready():
            return record_ready(s, g, h, sender, body)
        case Stop():
            return stop_vote(s, g, h, sender, body)
        case VoteEquivocation():
            return vote_equivocation(s, h, sender, body)
        case (
            Contribution()
            | Aggregate()
            | AggregateVerdict()
            | DecryptionShare()
            | MergedModel()
            | ShareMismatch()
            | PhaseTimeout()
        ):
            return round_tx(s, g, h, sender, body)
    return f"{env.type} is not a transaction kind the contract knows"
