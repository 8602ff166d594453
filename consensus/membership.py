"""Membership: joins, approvals, leaving and votes to evict, and the validator set.

Founders from genesis; a `JoinRequest` is admitted by the join
policy's approvals; `Leave`; `Evict` by a majority of the other members. Any
change (a) updates the validator set effective two heights later, and (b)
starts a new key epoch, which completes once every member has published its
public-share and sealed-shares hashes and confirmed the same collective key.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from crypto.identity import NodeId

from .contract_state import (
    ContractState,
    EvictionVotes,
    FormerMember,
    MemberRecord,
    PendingJoin,
    Result,
    ValidatorSet,
    node_key,
)
from .genesis import Genesis
from .key_epochs import make_epoch
from .rounds import round_lost_member
from .transactions import Approve, Evict, JoinRequest, Leave

VALIDATOR_DELAY: Final = 2  # a set committed in block h governs heights h+2 onwards
# Anyone may ask to join, so pending requests are capped: the state stays small whatever
# strangers send. Members see the queue and can ignore it; a full queue refuses new requests.
MAX_PENDING_JOINS: Final = 64


def join_request(s: ContractState, h: int, sender: NodeId, body: JoinRequest, request: bytes) -> Result:
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


def approve(s: ContractState, g: Genesis, h: int, sender: NodeId, body: Approve) -> Result:
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


def leave(s: ContractState, g: Genesis, h: int, sender: NodeId, body: Leave) -> Result:
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


def evict(s: ContractState, g: Genesis, h: int, sender: NodeId, body: Evict) -> Result:
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
    members = tuple(sorted((*s.members, record), key=lambda m: node_key(m.node_id)))
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
    return round_lost_member(s, g, h, node)


def _membership_changed(s: ContractState, g: Genesis, h: int) -> ContractState:
    ids = s.member_ids
    entry = ValidatorSet(effective=h + VALIDATOR_DELAY, validators=ids)
    sets = tuple(v for v in s.validator_sets if v.effective < entry.effective)
    epoch = make_epoch(s.chain_id, g, s.epoch.number + 1, h, ids, len(ids))
    return replace(s, validator_sets=(*sets, entry), epoch=epoch)
