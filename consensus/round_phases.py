"""The round transactions of each phase: contributions, the leader's aggregate, the
verifier's verdict, decryption shares and the combiners' merged-model votes.

Each is accepted in one phase (`_TX_PHASE`), and all but a contribution (one per
participant) must name the round's current step (`consensus.rounds`), so a stale or
replayed record never lands in a later step. The robust decrypt-phase rules (point
shares, named culprits) are `consensus.decrypt_phase`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from crypto.identity import NodeId

from . import decrypt_phase
from .contract_state import (
    WRONG_AGGREGATE,
    WRONG_SHARE,
    ContractState,
    ContributionRecord,
    Evidence,
    HashVote,
    Result,
    Round,
    node_key,
    round_number_check,
    sorted_nodes,
)
from .epoch_budget import charge_decryption
from .genesis import Genesis
from .round_history import abort
from .rounds import advance_contribute, assign_roles, phase_timeout
from .stopping import close_merged
from .transactions import (
    Aggregate,
    AggregateVerdict,
    Contribution,
    DecryptionShare,
    MergedModel,
    Phase,
    PhaseTimeout,
    ShareMismatch,
)

# The one phase in which each round record is accepted (PhaseTimeout names its own).
_TX_PHASE: Final[dict[type, Phase]] = {
    Contribution: Phase.CONTRIBUTE,
    Aggregate: Phase.AGGREGATE,
    AggregateVerdict: Phase.VERIFY,
    DecryptionShare: Phase.DECRYPT,
    MergedModel: Phase.DECRYPT,
    ShareMismatch: Phase.DECRYPT,
}


def round_tx(
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
    if (reason := round_number_check(s, body.round)) is not None:
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
            return phase_timeout(s, g, h, sender)


def _contribution(s: ContractState, g: Genesis, h: int, sender: NodeId, body: Contribution) -> Result:
    r = s.round
    if sender not in r.participants:
        return f"not a participant of round {r.number}"
    if sender in r.dropped:
        return f"dropped from round {r.number}"
    if r.contribution(sender) is not None:
        return "contribution already recorded"
    record = ContributionRecord(node_id=sender, blob_hash=body.blob_hash, blob_size=body.blob_size, height=h)
    r = replace(r, contributions=tuple(sorted((*r.contributions, record), key=lambda c: node_key(c.node_id))))
    return advance_contribute(replace(s, round=r), g, h)


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
        assert len(r.contributors) >= g.training.min_contributions(r.threshold)  # kept by assign_roles
        r = replace(r, phase=Phase.DECRYPT.value, step=r.step + 1, timeout_votes=(), verified_by=sender)
        return charge_decryption(replace(s, round=r), g, h)
    assert r.aggregator is not None
    evidence = Evidence(
        height=h, round=r.number, kind=WRONG_AGGREGATE, offender=r.aggregator, detail=r.aggregate_hash or b""
    )
    # The verifier's recomputation becomes the claim; the next verifier checks it.
    r = replace(
        r,
        excluded=sorted_nodes((*r.excluded, r.aggregator)),
        aggregate_hash=body.recomputed_hash,
        aggregator=sender,
        step=r.step + 1,
        timeout_votes=(),
    )
    return assign_roles(replace(s, round=r, evidence=(*s.evidence, evidence)), g, h)


def _decryption_share(s: ContractState, sender: NodeId, body: DecryptionShare) -> Result:
    r = s.round
    if sender not in r.decrypt_set:
        return f"not in the decrypt set of round {r.number}"
    if r.decryption_share(sender) is not None:
        return "decryption share already recorded"
    vote = HashVote(node_id=sender, value=body.share_hash)
    r = replace(
        r, decryption_shares=tuple(sorted((*r.decryption_shares, vote), key=lambda v: node_key(v.node_id)))
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
        sorted((*r.merged_votes, HashVote(node_id=sender, value=value)), key=lambda v: node_key(v.node_id))
    )
    s = replace(s, round=replace(r, merged_votes=votes))
    if sum(1 for v in votes if v.value == value) < r.threshold:
        return s
    named = tuple(
        Evidence(height=h, round=r.number, kind=WRONG_SHARE, offender=c, detail=r.decryption_share(c) or b"")
        for c in body.culprits
    )
    return close_merged(replace(s, evidence=(*s.evidence, *named)), g, h, body.params_hash)


def _share_mismatch(s: ContractState, g: Genesis, h: int, sender: NodeId) -> Result:
    r = s.round
    if not r.robust:
        return "share mismatches are voted only in robust key epochs"
    if (fault := _combiner_fault(r, sender)) is not None:
        return fault
    r = replace(r, mismatch_votes=sorted_nodes((*r.mismatch_votes, sender)))
    s = replace(s, round=r)
    if len(r.mismatch_votes) < r.threshold:
        return s
    return abort(s, g, h, "the point shares disagree and no wrong one can be named: no merge")
