"""Training rounds: starting one, its roles, closing its contribute phase, and its deadlines.

The transactions of each phase are judged in `consensus.round_phases`; this module holds
what they share: who leads, verifies and decrypts, and what a decided deadline does.

``READY`` collects `Ready(r)`. The round starts,
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
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import replace
from typing import Final

from crypto.identity import NodeId

from . import decrypt_phase, selection
from .contract_state import (
    CONTRIBUTION_TIMEOUT,
    DECRYPTOR_TIMEOUT,
    LEADER_TIMEOUT,
    VERIFIER_TIMEOUT,
    ContractState,
    Evidence,
    ReadyRecord,
    Result,
    Round,
    node_key,
    round_number_check,
    sorted_nodes,
)
from .epoch_budget import another_round_fits, charge_decryption
from .genesis import Genesis
from .key_epochs import renew_epoch
from .round_history import abort
from .stopping import stop
from .transactions import Phase, Ready

_ROUND_NONCE_DOMAIN: Final = b"swarmnode/round-nonce/v1\x00"


def record_ready(s: ContractState, g: Genesis, h: int, sender: NodeId, body: Ready) -> Result:
    if s.member(sender) is None:
        return "not a member"
    if (reason := round_number_check(s, body.round)) is not None:
        return reason
    r = s.round
    if r.phase != Phase.READY:
        return f"round {r.number} already started"
    if r.ready_record(sender) is not None:
        return f"already ready for round {r.number}"
    if g.training.privacy is not None and body.weight != 1:
        # Under DP the merge is an equal-weight mean: the noise is sized for each site's clipped
        # update counting once, so a weight would scale one site's sensitivity past it.
        return f"weight {body.weight}: training.privacy merges with equal weights (weight 1)"
    record = ReadyRecord(node_id=sender, weight=body.weight, val_metric=body.val_metric, height=h)
    ready = tuple(sorted((*r.ready, record), key=lambda x: node_key(x.node_id)))
    return try_start(replace(s, round=replace(r, ready=ready)), g, h)


def required_ready(s: ContractState, g: Genesis) -> int:
    return g.training.min_contributions(s.epoch.threshold)


def try_start(s: ContractState, g: Genesis, h: int) -> ContractState:
    r = s.round
    if r.phase != Phase.READY or s.stopped is not None or not s.epoch.complete:
        return s
    # Only members of the key epoch hold its keys: the others (left out after missing an
    # epoch deadline) neither take part nor hold the start up.
    members = set(s.member_ids) & set(s.epoch.members)
    ready = [x.node_id for x in r.ready if x.node_id in members]
    everyone = set(ready) == members
    if not (everyone or r.ready_timed_out) or len(ready) < required_ready(s, g):
        return s
    if g.training.stopping.select == "best":
        s = selection.evaluate_last_merged(s, g, [x for x in r.ready if x.node_id in members])
        if (reason := selection.stop_reason(s, g)) is not None:
            stopped = stop(s, h, reason)  # keeping the Ready records that scored the last model
            return replace(stopped, round=replace(stopped.round, ready=r.ready))
    if not another_round_fits(s.epoch):
        return renew_epoch(s, g, h)  # a round like the last would pass the budget: new keys first
    order = sorted_nodes(ready)
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
        barred=sorted_nodes(
            (
                *_withholders(s, g),
                *decrypt_phase.named_culprits(
                    ((e.kind, e.height, e.offender) for e in s.evidence), s.epoch.start_height
                ),
            )
        ),
    )
    return assign_roles(replace(s, round=r), g, h)


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
    return sorted_nodes(n for n, k in counts.items() if k >= g.training.withhold_limit)


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
    return leader, verifier, sorted_nodes(candidates[: r.threshold])


def assign_roles(s: ContractState, g: Genesis, h: int) -> ContractState:
    """Recompute leader, verifier and decrypt set after participants were dropped or
    excluded; abort the round if it can no longer reach a safe merge."""
    r = s.round
    contributing = len(r.participants) - len(r.dropped)
    needed = g.training.min_contributions(r.threshold)
    if contributing < needed:
        rule = f"min_peers {g.training.min_peers}, t {r.threshold}"
        return abort(s, g, h, f"fewer than {needed} contributions remain ({rule})")
    if len(r.active) < max(2, r.threshold):
        return abort(s, g, h, "too few eligible participants left for leader, verifier and decrypt set")
    leader, verifier, decrypt_set = _roles(r)
    if (leader, verifier, decrypt_set) == (r.leader, r.verifier, r.decrypt_set):
        return s
    if r.phase == Phase.DECRYPT and decrypt_set != r.decrypt_set:
        # Never a second decrypt set for one aggregate (see the module docstring).
        return abort(s, g, h, "a member of the decrypt set was lost: the aggregate is abandoned")
    r = replace(r, leader=leader, verifier=verifier, step=r.step + 1, timeout_votes=())
    if decrypt_set != r.decrypt_set:
        # Lagrange coefficients depend on the whole decrypt set: earlier shares are void.
        r = replace(r, decrypt_set=decrypt_set, decryption_shares=(), merged_votes=())
        if r.phase == Phase.DECRYPT:
            return charge_decryption(replace(s, round=r), g, h)
    return replace(s, round=r)


def advance_contribute(s: ContractState, g: Genesis, h: int) -> ContractState:
    """Close the contribute phase once every remaining participant has contributed."""
    r = s.round
    if r.phase != Phase.CONTRIBUTE:
        return s
    remaining = [p for p in r.participants if p not in r.dropped]
    if any(r.contribution(p) is None for p in remaining):
        return s
    # Invariant kept by assign_roles: at least min_contributions(t) contributions go on.
    assert len(remaining) >= g.training.min_contributions(r.threshold)
    r = replace(
        r,
        phase=Phase.AGGREGATE.value,
        step=r.step + 1,
        timeout_votes=(),
        contributors=sorted_nodes(remaining),
    )
    return assign_roles(replace(s, round=r), g, h)


def round_lost_member(s: ContractState, g: Genesis, h: int, node: NodeId) -> ContractState:
    """A member left or was evicted: take it out of the open round."""
    r = s.round
    if r.phase == Phase.STOPPED:
        return s
    if r.phase == Phase.READY:
        return replace(s, round=replace(r, ready=tuple(x for x in r.ready if x.node_id != node)))
    if node not in r.participants or node in r.dropped or node in r.excluded:
        return s
    if r.phase == Phase.CONTRIBUTE and r.contribution(node) is None:
        r = replace(r, dropped=sorted_nodes((*r.dropped, node)))
    else:  # its committed contribution stays in the round; it just holds no role any more
        r = replace(r, excluded=sorted_nodes((*r.excluded, node)))
    s = assign_roles(replace(s, round=r), g, h)
    return advance_contribute(s, g, h)


def timeout_voters(s: ContractState) -> tuple[NodeId, ...]:
    """Every member of the current key epoch: a strict majority of them decides a phase
    deadline (see the module docstring for why not only the parties waiting)."""
    if s.round.phase == Phase.STOPPED:
        return ()
    members = set(s.member_ids)
    return sorted_nodes(m for m in s.epoch.members if m in members)


def phase_timeout(s: ContractState, g: Genesis, h: int, sender: NodeId) -> Result:
    r = s.round
    voters = timeout_voters(s)
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
            return try_start(replace(s, round=replace(r, ready_timed_out=True, step=r.step + 1)), g, h)
        case Phase.CONTRIBUTE:
            missing = sorted_nodes(
                p for p in r.participants if p not in r.dropped and r.contribution(p) is None
            )
            r = replace(r, dropped=sorted_nodes((*r.dropped, *missing)))
            s = replace(s, round=r, evidence=(*s.evidence, *blame(CONTRIBUTION_TIMEOUT, missing)))
            s = assign_roles(s, g, h)
            return advance_contribute(s, g, h)
        case Phase.AGGREGATE | Phase.VERIFY:
            failed = r.leader if r.phase == Phase.AGGREGATE else r.verifier
            kind = LEADER_TIMEOUT if r.phase == Phase.AGGREGATE else VERIFIER_TIMEOUT
            assert failed is not None
            r = replace(r, excluded=sorted_nodes((*r.excluded, failed)))
            return assign_roles(replace(s, round=r, evidence=(*s.evidence, *blame(kind, [failed]))), g, h)
        case _:  # DECRYPT: abandon the aggregate, never ask another decrypt set for it
            missing = sorted_nodes(p for p in r.decrypt_set if r.decryption_share(p) is None)
            if not missing:
                return abort(s, g, h, "no t matching merged-model hashes before the decrypt deadline")
            withheld = blame(DECRYPTOR_TIMEOUT, missing, r.aggregate_hash or b"")
            s = replace(s, evidence=(*s.evidence, *withheld))
            return abort(s, g, h, "decryption shares withheld: the aggregate is abandoned")
