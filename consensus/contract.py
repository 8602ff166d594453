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

Nothing reads a clock. Deadlines are decided on the ledger: any member of the
current key epoch whose local deadline for the current (round, phase, step) passed
submits `PhaseTimeout`; once a strict majority of *all* those members did, the
contract acts (starts a round with who is Ready, drops missing contributors,
replaces the leader or verifier, or abandons the aggregate of a decrypt phase).
Counting every epoch member, not only the parties already waiting, is the point:
the deadline has then passed on the clocks of a majority, the same guarantee as
Tendermint's BFT time (the median of the validators' timestamps) without a clock
in the blocks. A minority cannot decide it early (t-1 colluders Ready plus their
votes once started a round with them and one victim), and a minority that is down
cannot stop it (it needs only a majority alive). Members left out of the key epoch
(they missed an epoch deadline and hold no keys) take no part in rounds and do not
vote.

Membership. Founders from genesis; a `JoinRequest` is admitted by the join
policy's approvals; `Leave`; `Evict` by a majority of the other members. Any
change (a) updates the validator set effective two heights later, and (b)
starts a new key epoch, which completes once every member has published its
public-share and sealed-shares hashes and confirmed the same collective key.

Key-epoch deadline. An epoch moves through stages (`EpochStage`: commit, reveal,
check, confirm); a member that did its part of the current stage and whose local
``key_epoch`` deadline for it passed submits `EpochTimeout`. Once a majority of
those waiting members did, the epoch is abandoned and a new one starts over the
members that did their part; the silent ones get `EPOCH_TIMEOUT` evidence and
stay members (validators, no keys, no round roles) until they come back: a member
left out of a complete epoch submits `EpochRejoin` and a new epoch over that
epoch's members plus itself starts. The threshold t of every epoch is the genesis
rule applied to the whole membership (leaving dead members out never lowers the
collusion bar), so an epoch may leave members out only while at least
``max(min_peers, t)`` remain; with fewer, the votes stand and the swarm waits for
the missing members (`Contract.epoch_waiting_for` names them).

Verifiable dealing (`crypto.dealing`). Once every bundle hash is on the ledger, the
public coin is fixed (`KeyEpoch.coin`) and each member publishes its dealing fingerprint
(`EpochFingerprint`, the check stage). A member whose share from a dealer is malformed or
off that dealer's fingerprint submits `EpochComplaint` with the dealer-signed segment
instead of confirming; the contract judges it (`dealing.judge_complaint`): a bad dealing
gets `BAD_DEALING` evidence against the dealer, a segment that checks out
`FALSE_COMPLAINT` evidence against the complainer, and either way a new epoch starts
without the offender (with fresh dealings and the offender, if fewer than
``max(min_peers, t)`` would remain). Forged evidence is refused.

Rounds (DESIGN section 5). ``READY`` collects `Ready(r)`. The round starts,
decided by the contract, when the key epoch is complete and either every
member is Ready or the ready-wait timeout was decided, with at least
`TrainingParams.min_contributions` (``max(min_peers, t + 1)`` in a secure swarm)
Ready members of the key epoch, so t - 1 colluders always face two honest updates.
Participants P = the Ready members in rotation order (sorted keys rotated by the
round number); leader L = first active participant, verifier V = the next,
decrypt set T = the first t active ones that are not barred (below).
``CONTRIBUTE`` -> ``AGGREGATE`` (L's hash over exactly the committed
contributions) -> ``VERIFY`` (V agrees, or proves L wrong: L is marked faulty
and V's hash becomes the claim the next verifier checks) -> ``DECRYPT`` (T's
share hashes, then >= t matching merged-model hashes close the round). A round
left with fewer contributions than it started with the rule for is aborted: the
decrypt phase is never entered with fewer. Every change of roles or phase bumps
the round's ``step``, which round transactions must name, so a stale or replayed
record never lands in a later step.

One share per (member, aggregate). T is fixed once the decrypt phase begins and is
never redrawn for that aggregate: a second decrypt set would ask the honest members
of both for a second share of the same sum with another Lagrange coefficient, and
several ``lambda_j * M + e_j`` of one M are a hidden-number problem that lattice
reduction solves for the key shares. A decrypt-phase timeout therefore abandons the
aggregate: the round aborts without a merge, each member of T that withheld its
share gets `DECRYPTOR_TIMEOUT` evidence (detail: the abandoned aggregate hash), and
the next round encrypts fresh updates. So that withholding cannot stall the swarm
for ever, a member with such evidence in ``training.withhold_limit`` rounds of the
current key epoch is *barred*: left out of the decrypt sets of that epoch's later
rounds (it still contributes). If too few active participants are not barred (t for
Lagrange shares, t + 1 for point shares, `consensus.decrypt_phase`), barred ones fill
the set (in rotation order): the round can still merge if they cooperate, and aborting
instead would stall the swarm for certain.

Smudging budget. Decryption shares leak a little about the epoch's keys (bounded in
`crypto.smudging`); each key epoch counts the shares its rounds asked for
(`decryption_units`, on entering ``DECRYPT`` and for every new decrypt set in it) and a
decryption that would pass the budget is never asked for: the round is aborted and a new
key epoch over the same members starts. A round does not start while one like the
epoch's largest decryption would no longer fit; a new epoch starts first.

Stopping: after each merged round, ``max_rounds`` merged rounds or
``patience`` rounds without an improvement of the median reported validation
metric by more than ``min_delta`` stop training and record the final model
hash; a majority of members can also vote `Stop`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final, final

from crypto import cbor, dealing, prss, prss_complaint
from crypto.ckks_params import param_set
from crypto.envelope import Envelope, EnvelopeCodec
from crypto.errors import ProtocolError
from crypto.identity import NodeId
from crypto.smudging import DEFAULT_BUDGET, SmudgingBudget

from . import decrypt_phase
from .genesis import Genesis
from .messages import CONSENSUS_MESSAGES, Precommit, Prevote
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
    EpochStage,
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

VALIDATOR_DELAY: Final = 2  # a set committed in block h governs heights h+2 onwards
# Anyone may ask to join, so pending requests are capped: the state stays small whatever
# strangers send. Members see the queue and can ignore it; a full queue refuses new requests.
MAX_PENDING_JOINS: Final = 64
_EPOCH_SEED_DOMAIN: Final = b"swarmnode/key-epoch-seed/v1\x00"
_HISTORY_ROOT_0: Final = hashlib.sha256(b"swarmnode/round-history/v1\x00").digest()
_ROUND_NONCE_DOMAIN: Final = b"swarmnode/round-nonce/v1\x00"

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


def _key(node: NodeId) -> bytes:
    return node.public_key


def _sorted(nodes: Iterable[NodeId]) -> tuple[NodeId, ...]:
    return tuple(sorted(set(nodes), key=_key))


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
    # epoch, and the largest one: see `_charge_decryption`.
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
    # Withholders (`_withholders`) and, in robust epochs, named culprits: kept out of the decrypt set.
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

    @property
    def member_ids(self) -> tuple[NodeId, ...]:
        return tuple(m.node_id for m in self.members)

    def member(self, node: NodeId) -> MemberRecord | None:
        return next((m for m in self.members if m.node_id == node), None)


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
        return _epoch_timeout_voters(self._state)

    def epoch_quorum(self) -> int:
        """Members a key epoch that leaves members out must keep: max(min_peers, t)."""
        return _epoch_quorum(self._state, self._genesis)

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
        return _needed(self._state, self._genesis)

    def timeout_voters(self) -> tuple[NodeId, ...]:
        """Who may submit `PhaseTimeout` for the current step: every member of the current
        key epoch; a strict majority of them decides the deadline."""
        return _timeout_voters(self._state)

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


def genesis_state(genesis: Genesis) -> ContractState:
    members = tuple(
        sorted(
            (
                MemberRecord(node_id=m.node_id, name=m.name, addresses=m.addresses, since=0)
                for m in genesis.members
            ),
            key=lambda m: _key(m.node_id),
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
        epoch=_make_epoch(chain_id, genesis, 1, 0, ids, len(ids)),
        round=Round(number=1),
        history=(),
        history_root=_HISTORY_ROOT_0,
        evidence=(),
        merged_rounds=0,
        last_merged_hash=None,
        best_metric=None,
        stale_rounds=0,
        stopped=None,
    )


def validators_at(state: ContractState, height: int) -> tuple[NodeId, ...]:
    for entry in reversed(state.validator_sets):
        if entry.effective <= height:
            return entry.validators
    return state.validator_sets[0].validators


def _make_epoch(
    chain_id: bytes, genesis: Genesis, number: int, height: int, ids: tuple[NodeId, ...], member_count: int
) -> KeyEpoch:
    """Key epoch `number` over `ids` (sorted), with t from the genesis rule for the whole
    membership of `member_count` (the caller keeps ``len(ids) >= t``)."""
    seed = hashlib.sha256(
        _EPOCH_SEED_DOMAIN + chain_id + number.to_bytes(8, "big") + b"".join(n.public_key for n in ids)
    ).digest()
    threshold = genesis.training.threshold.threshold(member_count)
    assert threshold <= len(ids)
    return KeyEpoch(
        number=number,
        start_height=height,
        members=ids,
        threshold=threshold,
        robust=prss.robust_epoch(len(ids), threshold),
        seed=seed,
        records=tuple(EpochMember(node_id=n) for n in ids),
        ckks_params=genesis.training.ckks_params,
    )


# -- transitions ------------------------------------------------------------------------

Result = ContractState | str


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
            return _join_request(s, h, sender, body, tx_id(env))
        case Approve():
            return _approve(s, g, h, sender, body)
        case Leave():
            return _leave(s, g, h, sender, body)
        case Evict():
            return _evict(s, g, h, sender, body)
        case EpochPublicShare() | EpochSealedShares() | EpochFingerprint() | EpochComplete():
            return _epoch_tx(s, g, h, sender, body)
        case EpochComplaint():
            return _epoch_complaint(s, g, h, sender, body)
        case EpochPrssComplaint():
            return _prss_complaint(s, g, h, sender, body)
        case EpochTimeout():
            return _epoch_timeout(s, g, h, sender, body)
        case EpochRejoin():
            return _epoch_rejoin(s, g, h, sender, body)
        case Ready():
            return _ready(s, g, h, sender, body)
        case Stop():
            return _stop_vote(s, g, h, sender, body)
        case VoteEquivocation():
            return _equivocation(s, h, sender, body)
        case (
            Contribution()
            | Aggregate()
            | AggregateVerdict()
            | DecryptionShare()
            | MergedModel()
            | ShareMismatch()
            | PhaseTimeout()
        ):
            return _round_tx(s, g, h, sender, body)
    return f"{env.type} is not a transaction kind the contract knows"


# evidence -------------------------------------------------------------------------------


@functools.cache
def _consensus_codec(chain_id: bytes) -> EnvelopeCodec:
    return EnvelopeCodec(chain_id, CONSENSUS_MESSAGES)


def _equivocation(s: ContractState, h: int, sender: NodeId, body: VoteEquivocation) -> Result:
    if s.member(sender) is None:
        return "not a member"
    codec = _consensus_codec(s.chain_id)
    try:
        first, second = codec.open(body.first), codec.open(body.second)
    except ProtocolError as exc:
        return f"invalid evidence: {exc}"
    a, b = first.body, second.body
    if not (isinstance(a, Prevote | Precommit) and type(a) is type(b)):
        return "invalid evidence: not two votes of the same step"
    assert isinstance(b, Prevote | Precommit)
    if first.sender != second.sender or (a.height, a.round) != (b.height, b.round):
        return "invalid evidence: the votes are not by one validator for one height and round"
    if a.block_hash == b.block_hash:
        return "invalid evidence: the votes do not conflict"
    if a.height > h + 1:
        return "invalid evidence: vote for a future height"
    offender = first.sender
    if offender not in validators_at(s, a.height):
        return f"invalid evidence: not a validator at height {a.height}"
    detail = cbor.dumps([first.type, a.height, a.round])
    if any(e.kind == EQUIVOCATION and e.offender == offender and e.detail == detail for e in s.evidence):
        return "equivocation already recorded"
    evidence = Evidence(height=h, round=s.round.number, kind=EQUIVOCATION, offender=offender, detail=detail)
    return replace(s, evidence=(*s.evidence, evidence))


# membership -----------------------------------------------------------------------------


def _join_request(s: ContractState, h: int, sender: NodeId, body: JoinRequest, request: bytes) -> Result:
    if s.member(sender) is not None:
        return "already a member"
    if any(p.node_id == sender for p in s.pending):
        return "a join request of this node is already pending"
    former = next((f for f in s.former if f.node_id == sender), None)
    last_left = 0 if former is None else former.left
    if body.last_left != last_left:
        return f"stale join request: last_left must be {last_left}"
    if any(m.name == body.name for m in s.members) or any(p.name == body.name for p in s.pending):
        return f"name {body.name!r} is taken"
    if len(s.pending) >= MAX_PENDING_JOINS:
        return f"too many pending join requests ({MAX_PENDING_JOINS})"
    pending = PendingJoin(
        request=request, node_id=sender, name=body.name, addresses=body.addresses, requested=h
    )
    return replace(s, pending=(*s.pending, pending))


def _approval_count(s: ContractState, g: Genesis, pending: PendingJoin) -> int:
    if g.join_policy.mode == "admin":
        return sum(1 for a in pending.approvals if a == g.join_policy.admin)
    members = set(s.member_ids)
    return sum(1 for a in pending.approvals if a in members)


def _approve(s: ContractState, g: Genesis, h: int, sender: NodeId, body: Approve) -> Result:
    pending = next((p for p in s.pending if p.request == body.request), None)
    if pending is None:
        return "no pending join request with this id"
    if pending.node_id != body.joiner:
        return "the join request is from another node"
    if g.join_policy.mode == "admin":
        if sender != g.join_policy.admin:
            return "the join policy requires the admin's approval"
    elif s.member(sender) is None:
        return "only members approve joins"
    if sender in pending.approvals:
        return "already approved"
    updated = replace(pending, approvals=(*pending.approvals, sender))
    s = replace(s, pending=tuple(updated if p is pending else p for p in s.pending))
    return _settle_membership(s, g, h)


def _leave(s: ContractState, g: Genesis, h: int, sender: NodeId, body: Leave) -> Result:
    record = s.member(sender)
    if record is None:
        return "not a member"
    if body.member_since != record.since:
        return f"stale leave: member since {record.since}"
    if len(s.members) == 1:
        return "the last member cannot leave"
    s = _remove_member(s, g, h, sender, "left")
    return _settle_membership(s, g, h)


def _eviction_needed(member_count: int) -> int:
    """A strict majority of the members other than the target."""
    return (member_count - 1) // 2 + 1


def _evict(s: ContractState, g: Genesis, h: int, sender: NodeId, body: Evict) -> Result:
    if s.member(sender) is None:
        return "not a member"
    target = s.member(body.target)
    if target is None:
        return "the target is not a member"
    if body.target == sender:
        return "use Leave to leave"
    if body.target_since != target.since:
        return f"stale eviction vote: target is a member since {target.since}"
    votes = next((v for v in s.evictions if v.target == body.target), None)
    if votes is not None and sender in votes.voters:
        return "already voted to evict this member"
    if votes is None:
        updated = EvictionVotes(target=body.target, target_since=body.target_since, voters=(sender,))
        evictions = (*s.evictions, updated)
    else:
        updated = replace(votes, voters=(*votes.voters, sender))
        evictions = tuple(updated if v is votes else v for v in s.evictions)
    return _settle_membership(replace(s, evictions=evictions), g, h)


def _settle_membership(s: ContractState, g: Genesis, h: int) -> ContractState:
    """Admit every join and carry out every eviction whose votes now suffice (a departure
    lowers the bars), until nothing changes."""
    changed = True
    while changed:
        changed = False
        for pending in s.pending:
            if _approval_count(s, g, pending) >= g.join_policy.required_approvals(len(s.members)):
                s = _admit(s, g, h, pending)
                changed = True
                break
        if changed:
            continue
        members = set(s.member_ids)
        for votes in s.evictions:
            if len(members) > 1 and len(set(votes.voters) & members) >= _eviction_needed(len(members)):
                s = _remove_member(s, g, h, votes.target, "evicted")
                changed = True
                break
    return s


def _admit(s: ContractState, g: Genesis, h: int, pending: PendingJoin) -> ContractState:
    record = MemberRecord(
        node_id=pending.node_id,
        name=pending.name,
        addresses=pending.addresses,
        since=h,
        approved_by=pending.approvals,
    )
    members = tuple(sorted((*s.members, record), key=lambda m: _key(m.node_id)))
    s = replace(s, members=members, pending=tuple(p for p in s.pending if p is not pending))
    return _membership_changed(s, g, h)


def _remove_member(s: ContractState, g: Genesis, h: int, node: NodeId, how: str) -> ContractState:
    record = s.member(node)
    assert record is not None
    former = FormerMember(node_id=node, name=record.name, since=record.since, left=h, how=how)
    s = replace(
        s,
        members=tuple(m for m in s.members if m.node_id != node),
        former=(*(f for f in s.former if f.node_id != node), former),
        evictions=tuple(v for v in s.evictions if v.target != node),
    )
    s = _membership_changed(s, g, h)
    return _round_lost_member(s, g, h, node)


def _membership_changed(s: ContractState, g: Genesis, h: int) -> ContractState:
    ids = s.member_ids
    entry = ValidatorSet(effective=h + VALIDATOR_DELAY, validators=ids)
    sets = tuple(v for v in s.validator_sets if v.effective < entry.effective)
    epoch = _make_epoch(s.chain_id, g, s.epoch.number + 1, h, ids, len(ids))
    return replace(s, validator_sets=(*sets, entry), epoch=epoch)


# key epochs -----------------------------------------------------------------------------


def _epoch_tx(
    s: ContractState,
    g: Genesis,
    h: int,
    sender: NodeId,
    body: EpochPublicShare | EpochSealedShares | EpochFingerprint | EpochComplete,
) -> Result:
    epoch = s.epoch
    if body.epoch != epoch.number:
        return f"stale key epoch {body.epoch}, the current one is {epoch.number}"
    if epoch.complete:
        return f"key epoch {epoch.number} is already complete"
    record = epoch.record(sender)
    if record is None or s.member(sender) is None:
        return f"not a member of key epoch {epoch.number}"
    match body:
        case EpochPublicShare():
            if record.public_share_hash is not None:
                return "public share already recorded"
            updated = replace(record, public_share_hash=body.share_hash)
        case EpochSealedShares():
            if record.sealed_shares_hash is not None:
                return "sealed shares already recorded"
            updated = replace(record, sealed_shares_hash=body.shares_hash)
        case EpochFingerprint():
            if epoch.coin is None:
                return "key epoch bundles are incomplete: the coin is not fixed yet"
            if record.fingerprint is not None:
                return "fingerprint already recorded"
            params = param_set(epoch.ckks_params).dealing
            if fault := dealing.fingerprint_fault(params, epoch.threshold, body.fingerprint):
                return fault
            updated = replace(record, fingerprint=body.fingerprint)
        case EpochComplete():
            if record.collective_key_hash is not None:
                return "completion already recorded"
            if epoch.stage != EpochStage.CONFIRM:
                return "key epoch shares are incomplete"
            updated = replace(record, collective_key_hash=body.collective_key_hash)
    records = tuple(updated if r is record else r for r in epoch.records)
    stage = epoch.stage
    epoch = replace(epoch, records=records)
    if epoch.stage != stage:
        epoch = replace(epoch, timeout_votes=())  # a new stage: a new deadline and new voters
    confirmations = {r.collective_key_hash for r in records}
    if None not in confirmations and len(confirmations) == 1:
        epoch = replace(epoch, complete_height=h, collective_key_hash=records[0].collective_key_hash)
    s = replace(s, epoch=epoch)
    return _try_start(s, g, h) if epoch.complete else s


def _epoch_quorum(s: ContractState, g: Genesis) -> int:
    return max(g.training.min_peers, g.training.threshold.threshold(len(s.members)))


def _epoch_timeout_voters(s: ContractState) -> tuple[NodeId, ...]:
    """The members of the running key epoch that did their part of its current stage."""
    epoch = s.epoch
    if epoch.complete:
        return ()
    lagging = set(epoch.lagging())
    return _sorted(m for m in epoch.members if m not in lagging and s.member(m) is not None)


def _epoch_timeout(s: ContractState, g: Genesis, h: int, sender: NodeId, body: EpochTimeout) -> Result:
    if s.member(sender) is None:
        return "not a member"
    epoch = s.epoch
    if body.epoch != epoch.number:
        return f"stale key epoch {body.epoch}, the current one is {epoch.number}"
    if epoch.complete:
        return f"key epoch {epoch.number} is already complete"
    if body.stage != epoch.stage:
        return f"key epoch {epoch.number} is in stage {epoch.stage}, not {body.stage}"
    voters = _epoch_timeout_voters(s)
    if sender not in voters:
        return f"not waiting in stage {epoch.stage} of key epoch {epoch.number}"
    if sender in epoch.timeout_votes:
        return "key-epoch timeout already reported"
    epoch = replace(epoch, timeout_votes=_sorted((*epoch.timeout_votes, sender)))
    s = replace(s, epoch=epoch)
    if len(set(epoch.timeout_votes) & set(voters)) < len(voters) // 2 + 1:
        return s
    return _on_epoch_timeout(s, g, h)


def _on_epoch_timeout(s: ContractState, g: Genesis, h: int) -> ContractState:
    """A majority of the waiting members saw the stage deadline pass: start over without the
    members that did not do their part, if enough remain; else keep waiting for them."""
    epoch = s.epoch
    lagging = epoch.lagging()
    remaining = tuple(m for m in epoch.members if m not in lagging and s.member(m) is not None)
    if not lagging:
        # Everyone confirmed, but not the same collective key (a member dealt or computed
        # wrongly): nobody is provably silent, so start over with fresh secrets, same members.
        remaining = tuple(m for m in epoch.members if s.member(m) is not None)
    if len(remaining) < _epoch_quorum(s, g):
        return s  # the votes stand; `epoch_waiting_for` names who the swarm waits for
    detail = cbor.dumps([epoch.number, epoch.stage.value])
    blame = tuple(
        Evidence(height=h, round=s.round.number, kind=EPOCH_TIMEOUT, offender=m, detail=detail)
        for m in lagging
    )
    new_epoch = _make_epoch(s.chain_id, g, epoch.number + 1, h, _sorted(remaining), len(s.members))
    return replace(s, epoch=new_epoch, evidence=(*s.evidence, *blame))


def _complaint_fault(
    s: ContractState, sender: NodeId, body: EpochComplaint | EpochPrssComplaint
) -> str | None:
    epoch = s.epoch
    if body.epoch != epoch.number:
        return f"stale key epoch {body.epoch}, the current one is {epoch.number}"
    if epoch.complete:
        return f"key epoch {epoch.number} is already complete"
    named = (epoch.record(sender), s.member(sender), epoch.record(body.dealer))
    if any(n is None for n in named) or body.dealer == sender:
        return f"a complaint names two different members of key epoch {epoch.number}"
    return None


def _prss_complaint(s: ContractState, g: Genesis, h: int, sender: NodeId, body: EpochPrssComplaint) -> Result:
    if (fault := _complaint_fault(s, sender, body)) is not None:
        return fault
    epoch = s.epoch
    dealer = epoch.record(body.dealer)
    if dealer is None or dealer.public_share_hash is None or epoch.stage != EpochStage.CONFIRM:
        return f"key epoch {epoch.number} is not at its confirm stage"
    try:
        dealer_at_fault = prss_complaint.judge_prss_complaint(
            epoch.seed, epoch.members, epoch.threshold, body.dealer, sender, dealer.public_share_hash,
            body.evidence,
        )  # fmt: skip
    except dealing.InvalidEvidence as exc:
        return f"PRSS complaint refused: {exc}"
    kind, offender, other = (BAD_DEALING, body.dealer, sender) if dealer_at_fault else (
        FALSE_COMPLAINT, sender, body.dealer
    )  # fmt: skip
    detail = cbor.dumps([epoch.number, other.public_key, "prss"])
    proof = Evidence(height=h, round=s.round.number, kind=kind, offender=offender, detail=detail)
    return _restart_epoch_without(s, g, h, proof)


def _epoch_complaint(s: ContractState, g: Genesis, h: int, sender: NodeId, body: EpochComplaint) -> Result:
    if (fault := _complaint_fault(s, sender, body)) is not None:
        return fault
    epoch = s.epoch
    dealer = epoch.record(body.dealer)
    if dealer is None:
        return f"{body.dealer.short} is not a member of key epoch {epoch.number}"
    params = param_set(epoch.ckks_params).dealing
    if dealer.fingerprint is None or epoch.coin is None:
        return f"no fingerprint of {body.dealer.short} to check a complaint against"
    x = epoch.members.index(sender) + 1
    try:
        dealer_at_fault = dealing.judge_complaint(
            params, epoch.seed, body.dealer, sender, x, epoch.threshold, epoch.coin, dealer.fingerprint,
            body.evidence,
        )  # fmt: skip
    except dealing.InvalidEvidence as exc:
        return f"complaint refused: {exc}"
    segment = body.evidence.segment
    if dealer_at_fault:
        detail = cbor.dumps([epoch.number, sender.public_key, segment])
        kind, offender = BAD_DEALING, body.dealer
    else:
        detail = cbor.dumps([epoch.number, body.dealer.public_key, segment])
        kind, offender = FALSE_COMPLAINT, sender
    proof = Evidence(height=h, round=s.round.number, kind=kind, offender=offender, detail=detail)
    return _restart_epoch_without(s, g, h, proof)


def _restart_epoch_without(s: ContractState, g: Genesis, h: int, proof: Evidence) -> ContractState:
    """A new epoch over the current one's members but the offender, if enough remain;
    else over all of them again (fresh dealings: the swarm cannot wait a bad dealing out)."""
    epoch = s.epoch
    remaining = tuple(m for m in epoch.members if m != proof.offender and s.member(m) is not None)
    if len(remaining) < _epoch_quorum(s, g):
        remaining = tuple(m for m in epoch.members if s.member(m) is not None)
    new_epoch = _make_epoch(s.chain_id, g, epoch.number + 1, h, _sorted(remaining), len(s.members))
    return replace(s, epoch=new_epoch, evidence=(*s.evidence, proof))


def _epoch_rejoin(s: ContractState, g: Genesis, h: int, sender: NodeId, body: EpochRejoin) -> Result:
    if s.member(sender) is None:
        return "not a member"
    epoch = s.epoch
    if body.epoch != epoch.number:
        return f"stale key epoch {body.epoch}, the current one is {epoch.number}"
    if sender in epoch.members:
        return f"already a member of key epoch {epoch.number}"
    if not epoch.complete:
        return f"key epoch {epoch.number} is still running; rejoin once it is complete"
    ids = _sorted((*(m for m in epoch.members if s.member(m) is not None), sender))
    return replace(s, epoch=_make_epoch(s.chain_id, g, epoch.number + 1, h, ids, len(s.members)))


# rounds ---------------------------------------------------------------------------------


def _round_number_check(s: ContractState, number: int) -> str | None:
    if s.stopped is not None:
        return "training has stopped"
    current = s.round.number
    if number < current:
        return f"round {number} is over (current round {current})"
    if number > current:
        return f"round {number} has not begun (current round {current})"
    return None


def _ready(s: ContractState, g: Genesis, h: int, sender: NodeId, body: Ready) -> Result:
    if s.member(sender) is None:
        return "not a member"
    if (reason := _round_number_check(s, body.round)) is not None:
        return reason
    r = s.round
    if r.phase != Phase.READY:
        return f"round {r.number} already started"
    if r.ready_record(sender) is not None:
        return f"already ready for round {r.number}"
    record = ReadyRecord(node_id=sender, weight=body.weight, val_metric=body.val_metric, height=h)
    ready = tuple(sorted((*r.ready, record), key=lambda x: _key(x.node_id)))
    return _try_start(replace(s, round=replace(r, ready=ready)), g, h)


def _needed(s: ContractState, g: Genesis) -> int:
    return g.training.min_contributions(s.epoch.threshold)


def _try_start(s: ContractState, g: Genesis, h: int) -> ContractState:
    r = s.round
    if r.phase != Phase.READY or s.stopped is not None or not s.epoch.complete:
        return s
    # Only members of the key epoch hold its keys: the others (left out after missing an
    # epoch deadline) neither take part nor hold the start up.
    members = set(s.member_ids) & set(s.epoch.members)
    ready = [x.node_id for x in r.ready if x.node_id in members]
    everyone = set(ready) == members
    if not (everyone or r.ready_timed_out) or len(ready) < _needed(s, g):
        return s
    if s.epoch.smudging_spent + s.epoch.largest_decryption > SMUDGING_BUDGET.capacity:
        return _renew_epoch(s, g, h)  # a round like the last would pass the budget: new keys first
    order = _sorted(ready)
    offset = (r.number - 1) % len(order)
    r = replace(
        r,
        phase=Phase.CONTRIBUTE.value,
        step=r.step + 1,
        timeout_votes=(),
        epoch=s.epoch.number,
        threshold=s.epoch.threshold,
        start_height=h,
        nonce=_round_nonce(s, r.number, h),
        participants=order[offset:] + order[:offset],
        robust=s.epoch.robust,
        barred=_sorted(
            (
                *_withholders(s, g),
                *decrypt_phase.named_culprits(
                    ((e.kind, e.height, e.offender) for e in s.evidence), s.epoch.start_height
                ),
            )
        ),
    )
    return _assign_roles(replace(s, round=r), g, h)


def _round_nonce(s: ContractState, number: int, h: int) -> bytes:
    """The nonce of round `number` starting at height `h`, which every contribution's mask and
    header bind (`crypto.ckks.RoundBinding`). Unique per chain, key epoch and round, and a
    function of ledger state no member sets alone: the collective key (every member's share,
    committed before any was revealed) and the hash chain of all closed rounds."""
    epoch = s.epoch
    assert epoch.collective_key_hash is not None  # rounds start only in a complete epoch
    fields = (
        s.chain_id, epoch.seed, epoch.collective_key_hash, number.to_bytes(8, "big"), h.to_bytes(8, "big"),
        s.history_root,
    )  # fmt: skip
    return hashlib.sha256(_ROUND_NONCE_DOMAIN + b"".join(fields)).digest()


def _withholders(s: ContractState, g: Genesis) -> tuple[NodeId, ...]:
    """Members with `DECRYPTOR_TIMEOUT` evidence in ``withhold_limit`` rounds of the current
    key epoch (evidence from its start height on; one per offender per aborted round)."""
    counts: dict[NodeId, int] = {}
    for e in s.evidence:
        if e.kind == DECRYPTOR_TIMEOUT and e.height >= s.epoch.start_height:
            counts[e.offender] = counts.get(e.offender, 0) + 1
    return _sorted(n for n, k in counts.items() if k >= g.training.withhold_limit)


def _roles(r: Round) -> tuple[NodeId | None, NodeId | None, tuple[NodeId, ...]]:
    active = r.active
    if r.phase == Phase.VERIFY and r.aggregator in active:
        leader: NodeId | None = r.aggregator  # the claim under verification is its
    else:
        leader = active[0] if active else None
    if leader is None:
        return None, None, ()
    i = active.index(leader)
    after = active[i + 1 :] + active[:i]
    verifier = after[0] if after else None
    if r.robust:
        return leader, verifier, decrypt_phase.robust_decrypt_set(active, r.barred, r.threshold)
    barred = set(r.barred)
    candidates = [p for p in active if p not in barred] + [p for p in active if p in barred]
    return leader, verifier, _sorted(candidates[: r.threshold])


def _assign_roles(s: ContractState, g: Genesis, h: int) -> ContractState:
    """Recompute leader, verifier and decrypt set after participants were dropped or
    excluded; abort the round if it can no longer reach a safe merge."""
    r = s.round
    contributing = len(r.participants) - len(r.dropped)
    needed = g.training.min_contributions(r.threshold)
    if contributing < needed:
        rule = f"min_peers {g.training.min_peers}, t {r.threshold}"
        return _abort(s, g, h, f"fewer than {needed} contributions remain ({rule})")
    if len(r.active) < max(2, r.threshold):
        return _abort(s, g, h, "too few eligible participants left for leader, verifier and decrypt set")
    leader, verifier, decrypt_set = _roles(r)
    if (leader, verifier, decrypt_set) == (r.leader, r.verifier, r.decrypt_set):
        return s
    if r.phase == Phase.DECRYPT and decrypt_set != r.decrypt_set:
        # Never a second decrypt set for one aggregate (see the module docstring).
        return _abort(s, g, h, "a member of the decrypt set was lost: the aggregate is abandoned")
    r = replace(r, leader=leader, verifier=verifier, step=r.step + 1, timeout_votes=())
    if decrypt_set != r.decrypt_set:
        # Lagrange coefficients depend on the whole decrypt set: earlier shares are void.
        r = replace(r, decrypt_set=decrypt_set, decryption_shares=(), merged_votes=())
        if r.phase == Phase.DECRYPT:
            return _charge_decryption(replace(s, round=r), g, h)
    return replace(s, round=r)


def _advance_contribute(s: ContractState, g: Genesis, h: int) -> ContractState:
    """Close the contribute phase once every remaining participant has contributed."""
    r = s.round
    if r.phase != Phase.CONTRIBUTE:
        return s
    remaining = [p for p in r.participants if p not in r.dropped]
    if any(r.contribution(p) is None for p in remaining):
        return s
    # Invariant kept by _assign_roles: at least min_contributions(t) contributions go on.
    assert len(remaining) >= g.training.min_contributions(r.threshold)
    r = replace(
        r, phase=Phase.AGGREGATE.value, step=r.step + 1, timeout_votes=(), contributors=_sorted(remaining)
    )
    return _assign_roles(replace(s, round=r), g, h)


def _abort(s: ContractState, g: Genesis, h: int, reason: str) -> ContractState:
    closed = replace(s.round, outcome=ABORTED, note=reason, close_height=h, timeout_votes=())
    return replace(_append_history(s, closed), round=Round(number=closed.number + 1))


def _chain_root(root: bytes, closed: Round) -> bytes:
    return hashlib.sha256(root + cbor.dumps_dataclass(closed)).digest()


def _append_history(s: ContractState, closed: Round) -> ContractState:
    return replace(s, history=(*s.history, closed), history_root=_chain_root(s.history_root, closed))


def history_root(history: Iterable[Round]) -> bytes:
    """The hash chain over closed rounds that `ContractState.history_root` must equal."""
    root = _HISTORY_ROOT_0
    for closed in history:
        root = _chain_root(root, closed)
    return root


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _close_merged(s: ContractState, g: Genesis, h: int, merged_hash: bytes) -> ContractState:
    r = s.round
    participants = set(r.participants)
    metrics = [x.val_metric for x in r.ready if x.node_id in participants and x.val_metric is not None]
    median = _median(metrics)
    closed = replace(r, outcome=MERGED, merged_hash=merged_hash, median_metric=median, close_height=h)
    rule = g.training.stopping
    best, stale = s.best_metric, s.stale_rounds
    if median is not None:  # a round nobody reported a metric for neither improves nor counts
        if best is None:
            improved = True
        elif rule.goal == "max":
            improved = median > best + rule.min_delta
        else:
            improved = median < best - rule.min_delta
        best, stale = (median, 0) if improved else (best, stale + 1)
    merged_rounds = s.merged_rounds + 1
    s = replace(
        _append_history(s, closed),
        round=Round(number=r.number + 1),
        merged_rounds=merged_rounds,
        last_merged_hash=merged_hash,
        best_metric=best,
        stale_rounds=stale,
    )
    if merged_rounds >= rule.max_rounds:
        return _stop(s, h, f"max_rounds={rule.max_rounds} reached")
    if rule.patience and stale >= rule.patience:
        return _stop(s, h, f"no improvement of the median metric for {rule.patience} rounds")
    return s


def _stop(s: ContractState, h: int, reason: str) -> ContractState:
    record = StopRecord(
        height=h, reason=reason, merged_rounds=s.merged_rounds, final_model_hash=s.last_merged_hash
    )
    return replace(s, round=Round(number=s.round.number, phase=Phase.STOPPED.value), stopped=record)


def _stop_vote(s: ContractState, g: Genesis, h: int, sender: NodeId, body: Stop) -> Result:
    if s.member(sender) is None:
        return "not a member"
    if (reason := _round_number_check(s, body.round)) is not None:
        return reason
    r = s.round
    if sender in r.stop_votes:
        return "already voted to stop"
    r = replace(r, stop_votes=(*r.stop_votes, sender))
    s = replace(s, round=r)
    members = set(s.member_ids)
    if len(set(r.stop_votes) & members) < len(members) // 2 + 1:
        return s
    if r.phase != Phase.READY:
        s = _abort(s, g, h, "training stopped by member vote")
    return _stop(s, h, "stopped by a majority of members")


def _timeout_voters(s: ContractState) -> tuple[NodeId, ...]:
    """Every member of the current key epoch: a strict majority of them decides a phase
    deadline (see the module docstring for why not only the parties waiting)."""
    if s.round.phase == Phase.STOPPED:
        return ()
    members = set(s.member_ids)
    return _sorted(m for m in s.epoch.members if m in members)


# The one phase in which each round record is accepted (PhaseTimeout names its own).
_TX_PHASE: Final[dict[type, Phase]] = {
    Contribution: Phase.CONTRIBUTE,
    Aggregate: Phase.AGGREGATE,
    AggregateVerdict: Phase.VERIFY,
    DecryptionShare: Phase.DECRYPT,
    MergedModel: Phase.DECRYPT,
    ShareMismatch: Phase.DECRYPT,
}


def _round_tx(
    s: ContractState,
    g: Genesis,
    h: int,
    sender: NodeId,
    body: Contribution
    | Aggregate
    | AggregateVerdict
    | DecryptionShare
    | MergedModel
    | ShareMismatch
    | PhaseTimeout,
) -> Result:
    if s.member(sender) is None:
        return "not a member"
    if (reason := _round_number_check(s, body.round)) is not None:
        return reason
    r = s.round
    wanted = Phase(body.phase) if isinstance(body, PhaseTimeout) else _TX_PHASE[type(body)]
    if r.phase != wanted:
        return f"round {r.number} is in phase {r.phase}, not {wanted}"
    if not isinstance(body, Contribution) and body.step != r.step:
        return f"stale step {body.step}: round {r.number} is at step {r.step}"
    match body:
        case Contribution():
            return _contribution(s, g, h, sender, body)
        case Aggregate():
            return _aggregate(s, sender, body)
        case AggregateVerdict():
            return _verdict(s, g, h, sender, body)
        case DecryptionShare():
            return _decryption_share(s, sender, body)
        case MergedModel():
            return _merged(s, g, h, sender, body)
        case ShareMismatch():
            return _share_mismatch(s, g, h, sender)
        case PhaseTimeout():
            return _phase_timeout(s, g, h, sender)


def _contribution(s: ContractState, g: Genesis, h: int, sender: NodeId, body: Contribution) -> Result:
    r = s.round
    if sender not in r.participants:
        return f"not a participant of round {r.number}"
    if sender in r.dropped:
        return f"dropped from round {r.number}"
    if r.contribution(sender) is not None:
        return "contribution already recorded"
    record = ContributionRecord(node_id=sender, blob_hash=body.blob_hash, blob_size=body.blob_size, height=h)
    r = replace(r, contributions=tuple(sorted((*r.contributions, record), key=lambda c: _key(c.node_id))))
    return _advance_contribute(replace(s, round=r), g, h)


def _aggregate(s: ContractState, sender: NodeId, body: Aggregate) -> Result:
    r = s.round
    if sender != r.leader:
        return f"only the leader of round {r.number} commits the aggregate"
    if body.contributors != r.contributors:
        return "the contributor set differs from the round's committed contributions"
    r = replace(
        r,
        phase=Phase.VERIFY.value,
        step=r.step + 1,
        timeout_votes=(),
        aggregate_hash=body.aggregate_hash,
        aggregator=sender,
    )
    return replace(s, round=r)


def _verdict(s: ContractState, g: Genesis, h: int, sender: NodeId, body: AggregateVerdict) -> Result:
    r = s.round
    if sender != r.verifier:
        return f"only the verifier of round {r.number} judges the aggregate"
    if body.aggregate_hash != r.aggregate_hash:
        return "the verdict is about another aggregate"
    if body.agrees:
        assert len(r.contributors) >= g.training.min_contributions(r.threshold)  # kept by _assign_roles
        r = replace(r, phase=Phase.DECRYPT.value, step=r.step + 1, timeout_votes=(), verified_by=sender)
        return _charge_decryption(replace(s, round=r), g, h)
    assert r.aggregator is not None
    evidence = Evidence(
        height=h, round=r.number, kind=WRONG_AGGREGATE, offender=r.aggregator, detail=r.aggregate_hash or b""
    )
    # The verifier's recomputation becomes the claim; the next verifier checks it.
    r = replace(
        r,
        excluded=_sorted((*r.excluded, r.aggregator)),
        aggregate_hash=body.recomputed_hash,
        aggregator=sender,
        step=r.step + 1,
        timeout_votes=(),
    )
    return _assign_roles(replace(s, round=r, evidence=(*s.evidence, evidence)), g, h)


# Every CKKS parameter set has this budget (`crypto.ckks_params`; tests/crypto/test_ckks_params.py).
SMUDGING_BUDGET: Final[SmudgingBudget] = DEFAULT_BUDGET


def decryption_units(r: Round) -> int:
    """Smudging budget units of asking `r`'s decrypt set for shares of its aggregate: every
    contributor's error, hidden in each of the |T| shares, over every coefficient. The
    coefficient count is bounded from the largest committed blob (a ciphertext packs a
    coefficient in 7.5 bytes; its header only adds), so a lying blob size can only
    overcharge."""
    sizes = [c.blob_size for c in r.contributions if c.node_id in r.contributors]
    return SmudgingBudget.units(len(r.contributors), len(r.decrypt_set), max(sizes, default=0) * 2 // 15)


def _charge_decryption(s: ContractState, g: Genesis, h: int) -> ContractState:
    """The round asks its decrypt set for shares: count them against the key epoch's
    smudging budget, or, if they would pass it, abort the round and start a new key epoch
    over the same members (fresh secrets, a fresh budget) before any share is made."""
    epoch, cost, capacity = s.epoch, decryption_units(s.round), SMUDGING_BUDGET.capacity
    if cost > capacity:
        return _stop(s, h, f"one decryption needs {cost} smudging budget units, a key epoch has {capacity}")
    if epoch.smudging_spent + cost > capacity:
        s = _abort(s, g, h, f"smudging budget of key epoch {epoch.number} spent")
        return _renew_epoch(s, g, h)
    spent, largest = epoch.smudging_spent + cost, max(epoch.largest_decryption, cost)
    return replace(s, epoch=replace(epoch, smudging_spent=spent, largest_decryption=largest))


def _renew_epoch(s: ContractState, g: Genesis, h: int) -> ContractState:
    """A new key epoch over the current one's members (the round waits for it to complete)."""
    ids = _sorted(m for m in s.epoch.members if s.member(m) is not None)
    return replace(s, epoch=_make_epoch(s.chain_id, g, s.epoch.number + 1, h, ids, len(s.members)))


def _decryption_share(s: ContractState, sender: NodeId, body: DecryptionShare) -> Result:
    r = s.round
    if sender not in r.decrypt_set:
        return f"not in the decrypt set of round {r.number}"
    if r.decryption_share(sender) is not None:
        return "decryption share already recorded"
    vote = HashVote(node_id=sender, value=body.share_hash)
    r = replace(
        r, decryption_shares=tuple(sorted((*r.decryption_shares, vote), key=lambda v: _key(v.node_id)))
    )
    return replace(s, round=r)


def _combiner_fault(r: Round, sender: NodeId) -> str | None:
    if sender not in r.participants:
        return f"not a participant of round {r.number}"
    if any(r.decryption_share(p) is None for p in r.decrypt_set):
        return "decryption shares are incomplete"
    if any(v.node_id == sender for v in r.merged_votes) or sender in r.mismatch_votes:
        return "merged-model vote already recorded"
    return None


def _merged(s: ContractState, g: Genesis, h: int, sender: NodeId, body: MergedModel) -> Result:
    r = s.round
    if (fault := _combiner_fault(r, sender)) is not None:
        return fault
    if body.culprits and not r.robust:
        return "culprits are named only in robust key epochs"
    if (fault := decrypt_phase.culprits_fault(body.culprits, r.decrypt_set)) is not None:
        return fault
    value = decrypt_phase.merged_vote(body.params_hash, body.culprits)
    votes = tuple(
        sorted((*r.merged_votes, HashVote(node_id=sender, value=value)), key=lambda v: _key(v.node_id))
    )
    s = replace(s, round=replace(r, merged_votes=votes))
    if sum(1 for v in votes if v.value == value) < r.threshold:
        return s
    named = tuple(
        Evidence(height=h, round=r.number, kind=WRONG_SHARE, offender=c, detail=r.decryption_share(c) or b"")
        for c in body.culprits
    )
    return _close_merged(replace(s, evidence=(*s.evidence, *named)), g, h, body.params_hash)


def _share_mismatch(s: ContractState, g: Genesis, h: int, sender: NodeId) -> Result:
    r = s.round
    if not r.robust:
        return "share mismatches are voted only in robust key epochs"
    if (fault := _combiner_fault(r, sender)) is not None:
        return fault
    r = replace(r, mismatch_votes=_sorted((*r.mismatch_votes, sender)))
    s = replace(s, round=r)
    if len(r.mismatch_votes) < r.threshold:
        return s
    return _abort(s, g, h, "the point shares disagree and no wrong one can be named: no merge")


def _phase_timeout(s: ContractState, g: Genesis, h: int, sender: NodeId) -> Result:
    r = s.round
    voters = _timeout_voters(s)
    if sender not in voters:
        return f"not a member of key epoch {s.epoch.number}: no vote on the deadlines of round {r.number}"
    if sender in r.timeout_votes:
        return "timeout already reported"
    r = replace(r, timeout_votes=(*r.timeout_votes, sender))
    s = replace(s, round=r)
    if len(set(r.timeout_votes) & set(voters)) < len(voters) // 2 + 1:
        return s
    return _on_timeout(s, g, h)


def _on_timeout(s: ContractState, g: Genesis, h: int) -> ContractState:
    """A majority of the key epoch's members saw the phase deadline pass."""
    r = replace(s.round, timeout_votes=())
    s = replace(s, round=r)

    def blame(kind: str, offenders: Iterable[NodeId], detail: bytes = b"") -> tuple[Evidence, ...]:
        return tuple(
            Evidence(height=h, round=r.number, kind=kind, offender=o, detail=detail) for o in offenders
        )

    match r.phase:
        case Phase.READY:
            return _try_start(replace(s, round=replace(r, ready_timed_out=True, step=r.step + 1)), g, h)
        case Phase.CONTRIBUTE:
            missing = _sorted(p for p in r.participants if p not in r.dropped and r.contribution(p) is None)
            r = replace(r, dropped=_sorted((*r.dropped, *missing)))
            s = replace(s, round=r, evidence=(*s.evidence, *blame(CONTRIBUTION_TIMEOUT, missing)))
            s = _assign_roles(s, g, h)
            return _advance_contribute(s, g, h)
        case Phase.AGGREGATE | Phase.VERIFY:
            failed = r.leader if r.phase == Phase.AGGREGATE else r.verifier
            kind = LEADER_TIMEOUT if r.phase == Phase.AGGREGATE else VERIFIER_TIMEOUT
            assert failed is not None
            r = replace(r, excluded=_sorted((*r.excluded, failed)))
            return _assign_roles(replace(s, round=r, evidence=(*s.evidence, *blame(kind, [failed]))), g, h)
        case _:  # DECRYPT: abandon the aggregate, never ask another decrypt set for it
            missing = _sorted(p for p in r.decrypt_set if r.decryption_share(p) is None)
            if not missing:
                return _abort(s, g, h, "no t matching merged-model hashes before the decrypt deadline")
            withheld = blame(DECRYPTOR_TIMEOUT, missing, r.aggregate_hash or b"")
            s = replace(s, evidence=(*s.evidence, *withheld))
            return _abort(s, g, h, "decryption shares withheld: the aggregate is abandoned")


def _round_lost_member(s: ContractState, g: Genesis, h: int, node: NodeId) -> ContractState:
    """A member left or was evicted: take it out of the open round."""
    r = s.round
    if r.phase == Phase.STOPPED:
        return s
    if r.phase == Phase.READY:
        return replace(s, round=replace(r, ready=tuple(x for x in r.ready if x.node_id != node)))
    if node not in r.participants or node in r.dropped or node in r.excluded:
        return s
    if r.phase == Phase.CONTRIBUTE and r.contribution(node) is None:
        r = replace(r, dropped=_sorted((*r.dropped, node)))
    else:  # its committed contribution stays in the round; it just holds no role any more
        r = replace(r, excluded=_sorted((*r.excluded, node)))
    s = _assign_roles(replace(s, round=r), g, h)
    return _advance_contribute(s, g, h)
