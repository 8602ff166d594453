"""The round protocol (README, Architecture) as a sans-I/O, level-triggered reconciler.

The contract on the ledger already decides *what happened* in a round (who is
Ready, who leads, which hashes were committed, which deadlines passed by
majority). What is left for one node is *what to do next*: this module answers
that question as a pure function of

* the contract (read only: its state after the last committed block),
* `LocalFacts`: our node id, the merge we are waiting for (if any), which key
  epoch we hold keys for, which merged models we hold, the current time and
  since when we have been looking at the current stage (for deadlines).

`reconcile(contract, facts)` returns a `Plan`: the idempotent `Job`s this node
should be running now (each with a stable `key`; the shell runs each key at
most once and retries it only after it failed), the stage we are in and its
local deadline, and the merged round that answers our merge (if its
parameters are in hand). Nothing here does I/O, reads a clock or draws
randomness: a restarted node that replays its ledger computes exactly the jobs
it still owes, so nothing is lost across a crash.

Which role acts in which phase is a table (`PHASE_ROLES`), as is the deadline
of each phase (`PHASE_TIMEOUT`). Safety rules enforced here as well as in the
contract and the crypto facade: a decryption share is only ever planned for a
committed aggregate of at least `TrainingParams.min_contributions` contributions
(``max(min_peers, t + 1)`` in a secure swarm), and the job carries those
contributions so that the decryptor recomputes the aggregate itself and refuses a
committed hash that is not their sum (leader and verifier may collude).

Every member of the key epoch votes every phase deadline once its own deadline
passed (the contract acts on a majority of all of them), not only the members
waiting in the phase: a minority that is already waiting must not decide it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Final, final

from consensus.contract import MERGED, Contract, ContributionRecord, HashVote, Round
from consensus.decrypt_phase import robust_decrypt_set
from consensus.genesis import Timeouts
from consensus.transactions import Phase
from crypto.identity import NodeId

# -- inputs -------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MergeWanted:
    """A local `merge()` call waiting for a merged model.

    `since_round` is the open round when the call was made: the answer is the first
    merged round from there on that we took part in (our Ready was in it)."""

    weight: int
    val_metric: float | None
    since_round: int

    def __post_init__(self) -> None:
        if self.weight < 1 or self.since_round < 1:
            raise ValueError("weight and since_round must be >= 1")


Stage = tuple[int, str, int]
"""(round, phase, step): the unit a phase deadline is measured for."""

EpochStageKey = tuple[int, str]
"""(key epoch, stage): the unit a key-epoch deadline is measured for."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class LocalFacts:
    me: NodeId
    now: float
    wanted: MergeWanted | None = None
    key_epochs: frozenset[int] = frozenset()  # key epochs whose keys (own secret, dealer shares) we hold
    held_models: frozenset[bytes] = frozenset()  # merged hashes whose global model we hold
    stage_since: tuple[Stage, float] | None = None  # when we first saw the stage
    epoch_stage_since: tuple[EpochStageKey, float] | None = None  # same for the key-epoch stage
    want_final_model: bool = True  # fetch the final model once training stopped


# -- outputs: jobs --------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CommitEpochShare:
    """Key epoch, step 1: draw our secret and commit the hash of our public key share
    (`EpochPublicShare`); nothing is revealed before every member has committed."""

    epoch: int
    epoch_id: bytes
    members: tuple[NodeId, ...]
    threshold: int

    @property
    def key(self) -> tuple[object, ...]:
        return ("epoch-commit", self.epoch)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RevealEpochShares:
    """Key epoch, step 2 (every commitment is on the ledger): put our public share and
    sealed Shamir shares as one blob, persisted first, and commit its hash
    (`EpochSealedShares`)."""

    epoch: int
    commitments: tuple[tuple[NodeId, bytes], ...]  # member -> committed public-share hash

    @property
    def key(self) -> tuple[object, ...]:
        return ("epoch-reveal", self.epoch)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PublishEpochFingerprint:
    """Key epoch, step 3 (every bundle hash is on the ledger, so the public coin is fixed):
    commit our dealing's fingerprint for it (`EpochFingerprint`, `crypto.dealing`)."""

    epoch: int
    coin: bytes

    @property
    def key(self) -> tuple[object, ...]:
        return ("epoch-fingerprint", self.epoch)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ConfirmEpoch:
    """Key epoch, step 4: fetch every member's committed bundle, check it against its
    commitment and each dealer's share for us against its fingerprint (a failing dealer
    gets an `EpochComplaint` instead of our confirmation), finish, persist the keys and
    commit the collective key's hash (`EpochComplete`)."""

    epoch: int
    commitments: tuple[tuple[NodeId, bytes], ...]
    bundles: tuple[tuple[NodeId, bytes], ...]  # member -> committed bundle blob hash
    coin: bytes
    fingerprints: tuple[tuple[NodeId, bytes], ...]  # member -> committed dealing fingerprint

    @property
    def key(self) -> tuple[object, ...]:
        return ("epoch-confirm", self.epoch)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitEpochTimeout:
    """Our `key_epoch` deadline for this stage passed while we waited on other members."""

    epoch: int
    stage: str
    waiting_for: tuple[NodeId, ...]  # the members that have not done their part (for the log)

    @property
    def key(self) -> tuple[object, ...]:
        return ("epoch-timeout", self.epoch, self.stage)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RejoinEpoch:
    """We are a member left out of the complete key epoch `epoch` (we missed a deadline of
    an earlier one): ask for a new epoch that includes us (`EpochRejoin`)."""

    epoch: int

    @property
    def key(self) -> tuple[object, ...]:
        return ("epoch-rejoin", self.epoch)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitReady:
    round: int
    weight: int
    val_metric: float | None

    @property
    def key(self) -> tuple[object, ...]:
        return ("ready", self.round)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Contribute:
    """Encrypt ``weight / total_weight * params`` under epoch `epoch`'s key, put the blob,
    commit its hash."""

    round: int
    epoch: int
    weight: int
    total_weight: int
    replicas: tuple[NodeId, ...] = ()  # who should hold a copy before the hash is committed

    @property
    def key(self) -> tuple[object, ...]:
        return ("contribute", self.round)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PrefetchContributions:
    """The next few in the leader rotation copy the committed contributions as they land,
    so a leader that crashes after contributing does not take its update down with it
    (any replacement leader or verifier can still add every committed contribution).

    In a robust key epoch every future decryptor fetches them as they land too: it sums them
    all for its point share anyway, and fetching while the others still encrypt and commit
    takes the transfers off the path from the aggregate phase to the last share."""

    round: int
    contributions: tuple[ContributionRecord, ...]

    @property
    def key(self) -> tuple[object, ...]:
        return ("prefetch", self.round, len(self.contributions))


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AggregateContributions:
    """Leader: fetch the committed contributions, add them, put the sum, commit its hash."""

    round: int
    step: int
    contributions: tuple[ContributionRecord, ...]  # sorted by contributor key

    @property
    def key(self) -> tuple[object, ...]:
        return ("aggregate", self.round, self.step)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareAggregate:
    """Verifier and decrypt set, while the leader aggregates: fetch the committed
    contributions (each from its contributor) and add them ourselves now, not after the
    leader's hash and the verdict are committed; a decrypt-set member also makes its
    decryption share of that sum. Nothing is published here: the verdict and the share
    go out through `VerifyAggregate` and `MakeDecryptionShare`, the share only if the
    committed aggregate hash is this very sum's."""

    round: int
    step: int
    epoch: int
    contributions: tuple[ContributionRecord, ...]  # the committed ones, sorted by contributor key
    decrypt_set: tuple[NodeId, ...]  # the share is for this set (its Lagrange coefficients)

    @property
    def key(self) -> tuple[object, ...]:
        return ("prepare", self.round, self.step)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyAggregate:
    """Verifier: recompute the sum from the same blobs and commit the verdict."""

    round: int
    step: int
    claimed_hash: bytes
    contributions: tuple[ContributionRecord, ...]

    @property
    def key(self) -> tuple[object, ...]:
        return ("verify", self.round, self.step)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MakeDecryptionShare:
    """Decrypt-set member: recompute the aggregate from the committed contributions itself,
    and only if its hash is the committed aggregate hash make our share and commit its hash.

    The member never trusts the leader's blob (nor the verifier's verdict): a leader and a
    verifier colluding could otherwise have it decrypt a single site's update."""

    round: int
    step: int
    epoch: int
    aggregate_hash: bytes
    aggregator: NodeId | None
    decrypt_set: tuple[NodeId, ...]
    threshold: int  # the round's t: at least `TrainingParams.min_contributions(t)` contributions
    contributions: int  # committed contributions in the aggregate (>= min_contributions, checked)
    committed: tuple[ContributionRecord, ...]  # those contributions, sorted by contributor key

    @property
    def key(self) -> tuple[object, ...]:
        return ("decryption-share", self.round, self.step)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PrefetchShare:
    """One of the first t combiners of a robust epoch copies each point share as its hash is
    committed, while the other decryptors still make theirs: when the last lands, combining
    waits for that one share (15 bytes per parameter), not for all m - 1 of the others'."""

    round: int
    share: HashVote  # a committed share of the decrypt set (not ours)

    @property
    def key(self) -> tuple[object, ...]:
        return ("prefetch-share", self.round, self.share.value)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CombineShares:
    """Participant: fetch the aggregate and all committed shares, combine, put the merged
    float32 parameters and commit their hash (`MergedModel`)."""

    round: int
    step: int
    epoch: int
    aggregate_hash: bytes
    aggregator: NodeId | None
    shares: tuple[HashVote, ...]  # one per decrypt-set member, in decrypt-set order

    @property
    def key(self) -> tuple[object, ...]:
        return ("combine", self.round, self.step)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class LoadMerged:
    """Fetch the merged parameters of a closed round by their ledger hash and keep them."""

    round: int
    params_hash: bytes

    @property
    def key(self) -> tuple[object, ...]:
        return ("load", self.params_hash)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitPhaseTimeout:
    round: int
    phase: str
    step: int

    @property
    def key(self) -> tuple[object, ...]:
        return ("timeout", self.round, self.phase, self.step)


Job = (
    CommitEpochShare
    | RevealEpochShares
    | PublishEpochFingerprint
    | ConfirmEpoch
    | SubmitEpochTimeout
    | RejoinEpoch
    | SubmitReady
    | Contribute
    | PrefetchContributions
    | AggregateContributions
    | PrepareAggregate
    | VerifyAggregate
    | MakeDecryptionShare
    | PrefetchShare
    | CombineShares
    | LoadMerged
    | SubmitPhaseTimeout
)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """The merged round that answers the waiting merge (its parameters are held)."""

    round: int
    params_hash: bytes
    participants: tuple[NodeId, ...]
    contributors: tuple[NodeId, ...]
    weight: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    jobs: tuple[Job, ...]
    stage: Stage | None  # None once training stopped
    deadline: float | None  # when our PhaseTimeout for `stage` becomes due (if we vote)
    delivery: Delivery | None
    stopped: bool
    recheck: float | None = None  # when the plan changes without a commit (a combine grace ends)


# -- the tables -------------------------------------------------------------------------------

PHASE_TIMEOUT: Final[Mapping[Phase, Callable[[Timeouts], float]]] = {
    Phase.READY: lambda t: t.ready_wait,
    Phase.CONTRIBUTE: lambda t: t.contribute,
    Phase.AGGREGATE: lambda t: t.aggregate,
    Phase.VERIFY: lambda t: t.verify,
    Phase.DECRYPT: lambda t: t.decrypt,
}
"""The genesis deadline of each phase, counted from when a node first saw its step."""


_Planner = Callable[[Contract, Round, LocalFacts], list[Job]]

REPLICAS: Final = 3
"""How many participants at the head of the rotation (leader, verifier, next) hold copies
of every contribution: the contributor has them copy it before committing its hash (so a
crashed leader's own update is not lost), and they fetch whatever they still miss once committed."""


def _plan_ready(contract: Contract, r: Round, facts: LocalFacts) -> list[Job]:
    wanted = facts.wanted
    if wanted is None or contract.member(facts.me) is None or r.ready_record(facts.me) is not None:
        return []
    return [SubmitReady(round=r.number, weight=wanted.weight, val_metric=wanted.val_metric)]


def _plan_contribute(contract: Contract, r: Round, facts: LocalFacts) -> list[Job]:
    me = facts.me
    if me not in r.participants or me in r.dropped or r.contribution(me) is not None:
        return []
    if facts.wanted is None or r.epoch not in facts.key_epochs:
        return []  # nothing to contribute (the merge call went away) or no key: we will be dropped
    record = r.ready_record(me)
    assert record is not None  # participants are Ready members
    replicas = tuple(p for p in r.active[:REPLICAS] if p != me)
    return [
        Contribute(
            round=r.number,
            epoch=r.epoch,
            weight=record.weight,
            total_weight=r.ready_weight,
            replicas=replicas,
        )
    ]


def _committed_contributions(r: Round) -> tuple[ContributionRecord, ...]:
    chosen = set(r.contributors)
    return tuple(c for c in r.contributions if c.node_id in chosen)


def _plan_aggregate(contract: Contract, r: Round, facts: LocalFacts) -> list[Job]:
    if r.leader != facts.me:
        return []
    return [AggregateContributions(round=r.number, step=r.step, contributions=_committed_contributions(r))]


def _plan_verify(contract: Contract, r: Round, facts: LocalFacts) -> list[Job]:
    if r.verifier != facts.me or r.aggregate_hash is None:
        return []
    return [
        VerifyAggregate(
            round=r.number,
            step=r.step,
            claimed_hash=r.aggregate_hash,
            contributions=_committed_contributions(r),
        )
    ]


def _plan_decrypt(contract: Contract, r: Round, facts: LocalFacts) -> list[Job]:
    me = facts.me
    jobs: list[Job] = []
    if r.aggregate_hash is None or r.epoch not in facts.key_epochs:
        return jobs
    # Never help decrypt fewer than max(min_peers, t + 1) contributions, whatever the ledger says.
    if len(r.contributors) < contract.genesis.training.min_contributions(r.threshold):
        return jobs
    if me in r.decrypt_set and r.decryption_share(me) is None:
        jobs.append(
            MakeDecryptionShare(
                round=r.number,
                step=r.step,
                epoch=r.epoch,
                aggregate_hash=r.aggregate_hash,
                aggregator=r.aggregator,
                decrypt_set=r.decrypt_set,
                threshold=r.threshold,
                contributions=len(r.contributors),
                committed=_committed_contributions(r),
            )
        )
    shares = [HashVote(node_id=p, value=v) for p in r.decrypt_set if (v := r.decryption_share(p)) is not None]
    if r.robust and len(shares) < len(r.decrypt_set) and me in _first_combiners(r):
        jobs += [PrefetchShare(round=r.number, share=v) for v in shares if v.node_id != me]
    combine_at = _combine_at(contract, r, facts)
    if combine_at is not None and facts.now >= combine_at:
        jobs.append(
            CombineShares(
                round=r.number,
                step=r.step,
                epoch=r.epoch,
                aggregate_hash=r.aggregate_hash,
                aggregator=r.aggregator,
                shares=tuple(shares),
            )
        )
    return jobs


OUTSIDER_COMBINE_GRACE: Final = 8
"""Participants outside the first t of the decrypt set (`_first_combiners`) combine only
once ``1/8`` of the decrypt deadline has passed in the step (and the round is still open).

The contract closes a round at t matching merged-model hashes and the decrypt set has
exactly t members, who already hold the aggregate (they summed it themselves): they alone
can close the round, and everyone else then loads the merged model by its committed hash
(checked on receipt), so every participant still ends with the same, ledger-proven model.
An outsider combining as well would fetch the aggregate and all t shares (1.5 ciphertexts
per share set) and spend the CPU the decryptors need right then. If a decryptor dies after
its share, the outsiders' votes complete the quorum after the grace.

In a robust epoch the decrypt set is every active participant (m > t): only its first t
in rotation order combine at once, since t votes close the round and each combiner
fetches the m - 1 other point shares (15 bytes per parameter each): the other m - t load
the merged model (4 bytes per parameter) by its committed hash, or combine after the
grace if the round is still open (a combiner died, or votes did not match)."""


def _stage_since(r: Round, facts: LocalFacts) -> float:
    stage: Stage = (r.number, r.phase, r.step)
    if facts.stage_since is not None and facts.stage_since[0] == stage:
        return facts.stage_since[1]
    return facts.now


def _combine_at(contract: Contract, r: Round, facts: LocalFacts) -> float | None:
    """When we combine the committed shares (None: not us, or not yet possible)."""
    me = facts.me
    if r.phase != Phase.DECRYPT.value or r.aggregate_hash is None or me not in r.participants:
        return None
    if any(r.decryption_share(p) is None for p in r.decrypt_set):
        return None
    if any(v.node_id == me for v in r.merged_votes):
        return None
    if me in _first_combiners(r):
        return facts.now
    grace = PHASE_TIMEOUT[Phase.DECRYPT](contract.genesis.training.timeouts) / OUTSIDER_COMBINE_GRACE
    return _stage_since(r, facts) + grace


def _first_combiners(r: Round) -> tuple[NodeId, ...]:
    """The t members of the decrypt set that combine as soon as every share is committed: the
    first in rotation order (all of a Lagrange epoch's decrypt set, which has exactly t)."""
    in_set = set(r.decrypt_set)
    ordered = [p for p in r.active if p in in_set] + sorted(
        (p for p in r.decrypt_set if p not in r.active), key=lambda p: p.public_key
    )
    return tuple(ordered[: r.threshold])


def _plan_prepare(contract: Contract, r: Round, facts: LocalFacts) -> list[Job]:
    me = facts.me
    if me != r.verifier and me not in r.decrypt_set:
        return []
    if len(r.contributors) < contract.genesis.training.min_contributions(r.threshold):
        return []  # never decrypted (the contract aborts such a round): nothing worth adding
    return [
        PrepareAggregate(
            round=r.number,
            step=r.step,
            epoch=r.epoch,
            contributions=_committed_contributions(r),
            decrypt_set=r.decrypt_set,
        )
    ]


def _plan_prefetch(r: Round, facts: LocalFacts) -> list[Job]:
    future_decryptor = r.robust and facts.me in robust_decrypt_set(r.active, r.barred, r.threshold)
    if facts.me not in r.active[:REPLICAS] and not future_decryptor:
        return []
    others = tuple(c for c in r.contributions if c.node_id != facts.me)
    if r.contributors:
        chosen = set(r.contributors)
        others = tuple(c for c in others if c.node_id in chosen)
    return [PrefetchContributions(round=r.number, contributions=others)] if others else []


def _plan_contribute_and_prefetch(contract: Contract, r: Round, facts: LocalFacts) -> list[Job]:
    return _plan_contribute(contract, r, facts) + _plan_prefetch(r, facts)


def _plan_aggregate_and_prepare(contract: Contract, r: Round, facts: LocalFacts) -> list[Job]:
    return _plan_aggregate(contract, r, facts) + _plan_prefetch(r, facts) + _plan_prepare(contract, r, facts)


PHASE_ROLES: Final[Mapping[Phase, _Planner]] = {
    Phase.READY: _plan_ready,  # every member with a merge waiting
    Phase.CONTRIBUTE: _plan_contribute_and_prefetch,  # every participant; the head copies
    Phase.AGGREGATE: _plan_aggregate_and_prepare,  # the leader; the head copies; V and T add too
    Phase.VERIFY: _plan_verify,  # the verifier
    Phase.DECRYPT: _plan_decrypt,  # decrypt set: shares, then combine; others combine after a grace
}
"""Who acts in which phase: one planner per phase (the contract moves the phases)."""


# -- the reconciler -------------------------------------------------------------------------


def epoch_stage(contract: Contract) -> EpochStageKey | None:
    """The running key epoch's (number, stage); None once it is complete."""
    epoch = contract.key_epoch()
    return None if epoch.complete else (epoch.number, epoch.stage.value)


def epoch_deadline(contract: Contract, facts: LocalFacts) -> float | None:
    """When our `EpochTimeout` for the current key-epoch stage is due: `key_epoch` seconds
    after we first saw the stage; None if we are not waiting on anyone or already voted."""
    stage = epoch_stage(contract)
    if stage is None or facts.me not in contract.epoch_timeout_voters():
        return None
    if facts.me in contract.key_epoch().timeout_votes:
        return None
    since = facts.now
    if facts.epoch_stage_since is not None and facts.epoch_stage_since[0] == stage:
        since = facts.epoch_stage_since[1]
    return since + contract.genesis.training.timeouts.key_epoch


def _plan_epoch(contract: Contract, facts: LocalFacts) -> list[Job]:
    """Our key-epoch steps, plus the epoch's deadline vote once it is due."""
    jobs = _plan_epoch_steps(contract, facts)
    deadline = epoch_deadline(contract, facts)
    if deadline is not None and facts.now >= deadline:
        epoch = contract.key_epoch()
        waiting = contract.epoch_waiting_for()
        jobs.append(SubmitEpochTimeout(epoch=epoch.number, stage=epoch.stage.value, waiting_for=waiting))
    return jobs


def _plan_epoch_steps(contract: Contract, facts: LocalFacts) -> list[Job]:
    """Commit, reveal, fingerprint, then check and confirm: each step once all members
    finished the previous.
    A member left out of the complete epoch asks to be taken back in."""
    epoch = contract.key_epoch()
    me = facts.me
    record = epoch.record(me)
    if contract.member(me) is None:
        return []
    if record is None:
        return [RejoinEpoch(epoch=epoch.number)] if epoch.complete else []
    if epoch.complete:
        return []
    if record.public_share_hash is None:
        return [
            CommitEpochShare(
                epoch=epoch.number, epoch_id=epoch.seed, members=epoch.members, threshold=epoch.threshold
            )
        ]
    commitments: list[tuple[NodeId, bytes]] = []
    for other in epoch.records:
        if other.public_share_hash is None:
            return []  # wait for every commitment before revealing anything
        commitments.append((other.node_id, other.public_share_hash))
    if record.sealed_shares_hash is None:
        return [RevealEpochShares(epoch=epoch.number, commitments=tuple(commitments))]
    if record.collective_key_hash is not None:
        return []
    bundles: list[tuple[NodeId, bytes]] = []
    for other in epoch.records:
        if other.sealed_shares_hash is None:
            return []
        bundles.append((other.node_id, other.sealed_shares_hash))
    coin = epoch.coin
    assert coin is not None  # every bundle hash is on the ledger
    if record.fingerprint is None:
        return [PublishEpochFingerprint(epoch=epoch.number, coin=coin)]
    fingerprints: list[tuple[NodeId, bytes]] = []
    for other in epoch.records:
        if other.fingerprint is None:
            return []
        fingerprints.append((other.node_id, other.fingerprint))
    return [
        ConfirmEpoch(
            epoch=epoch.number,
            commitments=tuple(commitments),
            bundles=tuple(bundles),
            coin=coin,
            fingerprints=tuple(fingerprints),
        )
    ]


def answering_round(contract: Contract, me: NodeId, wanted: MergeWanted) -> Round | None:
    """The merged round that answers `wanted`: the first one since `since_round` we took part in."""
    for closed in contract.history():
        if closed.number >= wanted.since_round and closed.outcome == MERGED and me in closed.participants:
            return closed
    return None


def reconcile(contract: Contract, facts: LocalFacts) -> Plan:
    """Everything this node should be doing now; see the module docstring."""
    jobs: list[Job] = _plan_epoch(contract, facts)
    delivery: Delivery | None = None
    planning = facts
    if facts.wanted is not None:
        answer = answering_round(contract, facts.me, facts.wanted)
        if answer is not None and answer.merged_hash is not None:
            planning = replace(facts, wanted=None)  # answered: no Ready for a later round
            if answer.merged_hash in facts.held_models:
                delivery = Delivery(
                    round=answer.number,
                    params_hash=answer.merged_hash,
                    participants=answer.participants,
                    contributors=answer.contributors,
                    weight=answer.contributor_weight,
                )
            else:
                jobs.append(LoadMerged(round=answer.number, params_hash=answer.merged_hash))
    stop = contract.stopped
    if stop is not None:
        final = stop.final_model_hash
        if facts.want_final_model and final is not None and final not in facts.held_models:
            last = next((r for r in reversed(contract.history()) if r.merged_hash == final), None)
            load = LoadMerged(round=0 if last is None else last.number, params_hash=final)
            if all(j.key != load.key for j in jobs):
                jobs.append(load)
        return Plan(jobs=tuple(jobs), stage=None, deadline=None, delivery=delivery, stopped=True)
    r = contract.round
    phase = Phase(r.phase)
    jobs += PHASE_ROLES[phase](contract, r, planning)
    stage: Stage = (r.number, r.phase, r.step)
    since = _stage_since(r, facts)
    combine_at = _combine_at(contract, r, planning)
    recheck = combine_at if combine_at is not None and combine_at > facts.now else None
    deadline: float | None = None
    voters = contract.timeout_voters()
    decided = phase == Phase.READY and r.ready_timed_out  # the round starts once enough are Ready
    if facts.me in voters and facts.me not in r.timeout_votes and not decided:
        deadline = since + PHASE_TIMEOUT[phase](contract.genesis.training.timeouts)
        if facts.now >= deadline:
            jobs.append(SubmitPhaseTimeout(round=r.number, phase=r.phase, step=r.step))
    return Plan(
        jobs=tuple(jobs), stage=stage, deadline=deadline, delivery=delivery, stopped=False, recheck=recheck
    )
