"""Key epochs: who holds the keys of the threshold scheme, and how a new set is dealt.

A key epoch starts with every membership change (`consensus.membership`) and completes
once every member has published its public-share and sealed-shares hashes and confirmed
the same collective key; rounds start only in a complete epoch (`consensus.rounds`).

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
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Final

from crypto import cbor, dealing, prss, prss_complaint
from crypto.ckks_params import param_set
from crypto.identity import NodeId

from .contract_state import (
    BAD_DEALING,
    EPOCH_TIMEOUT,
    FALSE_COMPLAINT,
    ContractState,
    EpochMember,
    Evidence,
    KeyEpoch,
    Result,
    sorted_nodes,
)
from .genesis import Genesis
from .transactions import (
    EpochComplaint,
    EpochComplete,
    EpochFingerprint,
    EpochPrssComplaint,
    EpochPublicShare,
    EpochRejoin,
    EpochSealedShares,
    EpochStage,
    EpochTimeout,
)

_EPOCH_SEED_DOMAIN: Final = b"swarmnode/key-epoch-seed/v1\x00"


def make_epoch(
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


def epoch_tx(
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
    return replace(s, epoch=epoch)  # once complete, `consensus.contract` starts a waiting round


def epoch_quorum(s: ContractState, g: Genesis) -> int:
    return max(g.training.min_peers, g.training.threshold.threshold(len(s.members)))


def epoch_timeout_voters(s: ContractState) -> tuple[NodeId, ...]:
    """The members of the running key epoch that did their part of its current stage."""
    epoch = s.epoch
    if epoch.complete:
        return ()
    lagging = set(epoch.lagging())
    return sorted_nodes(m for m in epoch.members if m not in lagging and s.member(m) is not None)


def epoch_timeout(s: ContractState, g: Genesis, h: int, sender: NodeId, body: EpochTimeout) -> Result:
    if s.member(sender) is None:
        return "not a member"
    epoch = s.epoch
    if body.epoch != epoch.number:
        return f"stale key epoch {body.epoch}, the current one is {epoch.number}"
    if epoch.complete:
        return f"key epoch {epoch.number} is already complete"
    if body.stage != epoch.stage:
        return f"key epoch {epoch.number} is in stage {epoch.stage}, not {body.stage}"
    voters = epoch_timeout_voters(s)
    if sender not in voters:
        return f"not waiting in stage {epoch.stage} of key epoch {epoch.number}"
    if sender in epoch.timeout_votes:
        return "key-epoch timeout already reported"
    epoch = replace(epoch, timeout_votes=sorted_nodes((*epoch.timeout_votes, sender)))
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
    if len(remaining) < epoch_quorum(s, g):
        return s  # the votes stand; `epoch_waiting_for` names who the swarm waits for
    detail = cbor.dumps([epoch.number, epoch.stage.value])
    blame = tuple(
        Evidence(height=h, round=s.round.number, kind=EPOCH_TIMEOUT, offender=m, detail=detail)
        for m in lagging
    )
    new_epoch = make_epoch(s.chain_id, g, epoch.number + 1, h, sorted_nodes(remaining), len(s.members))
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


def epoch_prss_complaint(
    s: ContractState, g: Genesis, h: int, sender: NodeId, body: EpochPrssComplaint
) -> Result:
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


def epoch_complaint(s: ContractState, g: Genesis, h: int, sender: NodeId, body: EpochComplaint) -> Result:
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
    if len(remaining) < epoch_quorum(s, g):
        remaining = tuple(m for m in epoch.members if s.member(m) is not None)
    new_epoch = make_epoch(s.chain_id, g, epoch.number + 1, h, sorted_nodes(remaining), len(s.members))
    return replace(s, epoch=new_epoch, evidence=(*s.evidence, proof))


def epoch_rejoin(s: ContractState, g: Genesis, h: int, sender: NodeId, body: EpochRejoin) -> Result:
    if s.member(sender) is None:
        return "not a member"
    epoch = s.epoch
    if body.epoch != epoch.number:
        return f"stale key epoch {body.epoch}, the current one is {epoch.number}"
    if sender in epoch.members:
        return f"already a member of key epoch {epoch.number}"
    if not epoch.complete:
        return f"key epoch {epoch.number} is still running; rejoin once it is complete"
    ids = sorted_nodes((*(m for m in epoch.members if s.member(m) is not None), sender))
    return replace(s, epoch=make_epoch(s.chain_id, g, epoch.number + 1, h, ids, len(s.members)))


def renew_epoch(s: ContractState, g: Genesis, h: int) -> ContractState:
    """A new key epoch over the current one's members (the round waits for it to complete)."""
    ids = sorted_nodes(m for m in s.epoch.members if s.member(m) is not None)
    return replace(s, epoch=make_epoch(s.chain_id, g, s.epoch.number + 1, h, ids, len(s.members)))
