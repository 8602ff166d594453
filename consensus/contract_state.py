"""The contract's state: one tree of frozen dataclasses (`ContractState`), the evidence
kinds and round outcomes recorded in it, and the queries its transitions share.

The transitions are pure functions ``(state, genesis, height, sender, body) -> new state
| reason`` beside it: `consensus.membership`, `consensus.key_epochs`, `consensus.rounds`,
`consensus.round_phases`, `consensus.epoch_budget`, `consensus.stopping` and
`consensus.equivocation`; `consensus.contract` dispatches transactions to them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, final

from crypto import dealing
from crypto.identity import NodeId

from . import decrypt_phase
from .transactions import EpochStage, Phase

# Outcomes of a closed round.
MERGED: Final = "merged"
ABORTED: Final = "aborted"

# Evidence kinds.
WRONG_AGGREGATE: Final = "wrong_aggregate"
LEADER_TIMEOUT: Final = "leader_timeout"
VERIFIER_TIMEOUT: Final = "verifier_timeout"
DECRYPTOR_TIMEOUT: Final = "decryptor_timeout"
CONTRIBUTION_TIMEOUT: Final = "contribution_timeout"
EQUIVOCATION: Final = "equivocation"  # detail: canonical CBOR [vote type, height, round]
EPOCH_TIMEOUT: Final = "epoch_timeout"  # detail: canonical CBOR [key epoch, stage]
BAD_DEALING: Final = "bad_dealing"  # detail: canonical CBOR [key epoch, complainer key, segment]
FALSE_COMPLAINT: Final = "false_complaint"  # detail: canonical CBOR [key epoch, dealer key, segment]
WRONG_SHARE: Final = decrypt_phase.WRONG_SHARE  # detail: the hash of the committed share off the polynomial


def node_key(node: NodeId) -> bytes:
    return node.public_key


def sorted_nodes(nodes: Iterable[NodeId]) -> tuple[NodeId, ...]:
    return tuple(sorted(set(nodes), key=node_key))


# -- state ----------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberRecord:
    node_id: NodeId
    name: str
    addresses: tuple[str, ...]
    since: int  # height of the block that admitted it (0 for founders)
    approved_by: tuple[NodeId, ...] = ()  # the approvals that admitted it (empty for founders)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class FormerMember:
    node_id: NodeId
    name: str
    since: int
    left: int  # height of departure; a later JoinRequest must name it (replay guard)
    how: str  # "left" or "evicted"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PendingJoin:
    request: bytes  # tx_id of the JoinRequest: what approvals name
    node_id: NodeId
    name: str
    addresses: tuple[str, ...]
    requested: int  # height
    approvals: tuple[NodeId, ...] = ()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EvictionVotes:
    target: NodeId
    target_since: int
    voters: tuple[NodeId, ...]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ValidatorSet:
    effective: int  # first height this set governs
    validators: tuple[NodeId, ...]  # sorted by public key


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EpochMember:
    node_id: NodeId
    public_share_hash: bytes | None = None
    sealed_shares_hash: bytes | None = None
    fingerprint: bytes | None = None
    collective_key_hash: bytes | None = None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyEpoch:
    number: int
    start_height: int
    members: tuple[NodeId, ...]
    threshold: int  # t: how many members of this epoch a decryption needs
    robust: bool  # PRSS keys dealt, point shares decrypted (`crypto.prss.robust_epoch`)
    seed: bytes  # public seed for the common random polynomial `a`
    records: tuple[EpochMember, ...]  # one per member, same order as `members`
    ckks_params: str  # genesis's CKKS parameter set: every key, share and dealing check of the epoch
    complete_height: int | None = None
    collective_key_hash: bytes | None = None
    timeout_votes: tuple[NodeId, ...] = ()  # EpochTimeout voters of the current stage, sorted
    # Smudging budget units (`SmudgingBudget.units`) of the decryptions asked for under this
    # epoch, and the largest one: see `consensus.epoch_budget`.
    smudging_spent: int = 0
    largest_decryption: int = 0

    @property
    def complete(self) -> bool:
        return self.complete_height is not None

    @property
    def stage(self) -> EpochStage:
        """The first stage some member has not done yet (CONFIRM once complete)."""
        if any(r.public_share_hash is None for r in self.records):
            return EpochStage.COMMIT
        if any(r.sealed_shares_hash is None for r in self.records):
            return EpochStage.REVEAL
        if any(r.fingerprint is None for r in self.records):
            return EpochStage.CHECK
        return EpochStage.CONFIRM

    @property
    def coin(self) -> bytes | None:
        """The public coin of the dealing check, fixed by every member's bundle hash."""
        bundles = [r.sealed_shares_hash for r in self.records]
        if any(b is None for b in bundles):
            return None
        return dealing.fingerprint_coin(self.seed, [b for b in bundles if b is not None])

    def lagging(self) -> tuple[NodeId, ...]:
        """Members that have not done their part of the current stage (in member order)."""
        field = {
            EpochStage.COMMIT: "public_share_hash",
            EpochStage.REVEAL: "sealed_shares_hash",
            EpochStage.CHECK: "fingerprint",
            EpochStage.CONFIRM: "collective_key_hash",
        }[self.stage]
        return tuple(r.node_id for r in self.records if getattr(r, field) is None)

    def record(self, node: NodeId) -> EpochMember | None:
        for record in self.records:
            if record.node_id == node:
                return record
        return None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyRecord:
    node_id: NodeId
    weight: int
    val_metric: float | None
    height: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ContributionRecord:
    node_id: NodeId
    blob_hash: bytes
    blob_size: int
    height: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HashVote:
    node_id: NodeId
    value: bytes


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    height: int
    round: int
    kind: str
    offender: NodeId
    detail: bytes = b""  # e.g. the wrong aggregate hash


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Round:
    """One training round: the open one (`ContractState.round`) or a closed one (history)."""

    number: int
    phase: str = Phase.READY.value
    step: int = 0  # bumped on every phase or role change; round txs name it
    ready: tuple[ReadyRecord, ...] = ()
    ready_timed_out: bool = False
    timeout_votes: tuple[NodeId, ...] = ()  # for the current step only
    stop_votes: tuple[NodeId, ...] = ()
    # Fixed at start:
    epoch: int = 0
    threshold: int = 0
    start_height: int = 0
    nonce: bytes = b""  # 32 bytes (`_round_nonce`): ciphertexts of the round are bound to it
    participants: tuple[NodeId, ...] = ()  # rotation order
    robust: bool = False  # point shares: every active participant decrypts (`consensus.decrypt_phase`)
    # Withholders (`consensus.rounds`) and, in robust epochs, named culprits: kept out of the decrypt set.
    barred: tuple[NodeId, ...] = ()
    # Changing during the round:
    dropped: tuple[NodeId, ...] = ()  # participants whose contribution is not in the round
    excluded: tuple[NodeId, ...] = ()  # participants no longer eligible for a role
    leader: NodeId | None = None
    verifier: NodeId | None = None
    decrypt_set: tuple[NodeId, ...] = ()
    contributions: tuple[ContributionRecord, ...] = ()
    contributors: tuple[NodeId, ...] = ()  # fixed when the contribute phase closes
    aggregate_hash: bytes | None = None
    aggregator: NodeId | None = None
    verified_by: NodeId | None = None  # the verifier whose agreement opened the decrypt phase
    decryption_shares: tuple[HashVote, ...] = ()
    merged_votes: tuple[HashVote, ...] = ()
    mismatch_votes: tuple[NodeId, ...] = ()  # `ShareMismatch` voters (robust epochs)
    # Set when closed:
    outcome: str = ""  # "" while open, "merged" or "aborted"
    merged_hash: bytes | None = None
    median_metric: float | None = None
    close_height: int = 0
    note: str = ""

    @property
    def phase_enum(self) -> Phase:
        return Phase(self.phase)

    @property
    def active(self) -> tuple[NodeId, ...]:
        """Participants still eligible for a role, in rotation order."""
        out = set(self.dropped) | set(self.excluded)
        return tuple(p for p in self.participants if p not in out)

    def ready_record(self, node: NodeId) -> ReadyRecord | None:
        return next((r for r in self.ready if r.node_id == node), None)

    def contribution(self, node: NodeId) -> ContributionRecord | None:
        return next((c for c in self.contributions if c.node_id == node), None)

    def decryption_share(self, node: NodeId) -> bytes | None:
        return next((v.value for v in self.decryption_shares if v.node_id == node), None)

    @property
    def ready_weight(self) -> int:
        """Total weight of the participants (what sites normalise their updates by)."""
        members = set(self.participants)
        return sum(r.weight for r in self.ready if r.node_id in members)

    @property
    def contributor_weight(self) -> int:
        """Total weight of the contributions in the aggregate (the merge's divisor)."""
        members = set(self.contributors)
        return sum(r.weight for r in self.ready if r.node_id in members)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class StopRecord:
    height: int
    reason: str
    merged_rounds: int
    final_model_hash: bytes | None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ContractState:
    chain_id: bytes
    height: int
    members: tuple[MemberRecord, ...]  # sorted by key
    former: tuple[FormerMember, ...]
    pending: tuple[PendingJoin, ...]  # in request order
    evictions: tuple[EvictionVotes, ...]
    validator_sets: tuple[ValidatorSet, ...]  # increasing `effective`
    epoch: KeyEpoch
    round: Round
    history: tuple[Round, ...]  # closed rounds, oldest first
    history_root: bytes  # hash chain over `history`: what app_hash commits to instead of it
    evidence: tuple[Evidence, ...]
    merged_rounds: int
    last_merged_hash: bytes | None
    best_metric: float | None
    stale_rounds: int  # merged rounds since the median metric last improved
    stopped: StopRecord | None
    # Model selection (``stopping.select = "best"``, `consensus.selection`): the merged model
    # with the best pooled metric so far, and the last merged model that was scored.
    best_model_hash: bytes | None = None
    evaluated_hash: bytes | None = None

    @property
    def member_ids(self) -> tuple[NodeId, ...]:
        return tuple(m.node_id for m in self.members)

    def member(self, node: NodeId) -> MemberRecord | None:
        return next((m for m in self.members if m.node_id == node), None)


Result = ContractState | str  # a transition's new state, or why the transaction is refused


def validators_at(state: ContractState, height: int) -> tuple[NodeId, ...]:
    for entry in reversed(state.validator_sets):
        if entry.effective <= height:
            return entry.validators
    return state.validator_sets[0].validators


def round_number_check(s: ContractState, number: int) -> str | None:
    if s.stopped is not None:
        return "training has stopped"
    current = s.round.number
    if number < current:
        return f"round {number} is over (current round {current})"
    if number > current:
        return f"round {number} has not begun (current round {current})"
    return None
