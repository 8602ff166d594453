"""Table-driven step tests of the Tendermint core, Algorithm 1 line by line.

Validators v0..v3 (equal power, quorum 3, f+1 = 2); the core under test is v0.
Round-robin proposer of (height 1, round r) is v[(1 + r) % 4]: v1 at round 0.
Each row feeds one event and lists every action expected, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from consensus.blocks import GENESIS_PREV_HASH, Block, EnvelopeOpener
from consensus.core import (
    Action,
    Broadcast,
    Commit,
    CoreConfig,
    Event,
    MessageReceived,
    PersistSigned,
    ReportEvidence,
    RequestBlocks,
    Resume,
    ScheduleTimeout,
    Step,
    TendermintCore,
    TimeoutConfig,
    TimeoutFired,
    TimeoutKind,
    TxRejected,
    TxSubmitted,
)
from consensus.errors import LocalProtocolError
from consensus.messages import CONSENSUS_MESSAGES, Precommit, Prevote, Proposal
from consensus.simulator import KVApp, kv_set, sim_identity
from crypto.envelope import EnvelopeCodec
from crypto.identity import NodeIdentity

IDS = [sim_identity(i) for i in range(4)]
VALIDATORS = tuple(i.node_id for i in IDS)
OUTSIDER = sim_identity(99)
CHAIN = bytes(range(32))
OPENER = EnvelopeOpener(EnvelopeCodec(CHAIN, CONSENSUS_MESSAGES))
TIMEOUTS = TimeoutConfig(propose=1.0, prevote=0.5, precommit=0.5, delta=0.25, rebroadcast=2.0, commit=0.75)
GENESIS_APP_HASH = KVApp(VALIDATORS).app_hash()


def block(proposer: int = 1, txs: tuple[bytes, ...] = (), app_hash: bytes = GENESIS_APP_HASH) -> Block:
    return Block(
        height=1,
        prev_hash=GENESIS_PREV_HASH,
        proposer=VALIDATORS[proposer],
        txs=txs,
        app_hash=app_hash,
        last_commit=None,
    )


B = block()
C = block(txs=(kv_set("c", 1),))
BAD = block(app_hash=bytes(32))  # wrong app hash: not valid(v)


def msg(sender: NodeIdentity, body: object) -> MessageReceived:
    return MessageReceived(OPENER.open(OPENER.codec.seal(sender, body)))


def proposal(r: int, blk: Block, pol: int = -1, sender: int | None = None) -> MessageReceived:
    who = IDS[(1 + r) % 4] if sender is None else IDS[sender]
    return msg(who, Proposal(height=1, round=r, block=blk, pol_round=pol))


def prevote(who: int, r: int, blk: Block | None, height: int = 1) -> MessageReceived:
    return msg(IDS[who], Prevote(height=height, round=r, block_hash=None if blk is None else blk.hash))


def precommit(who: int, r: int, blk: Block | None) -> MessageReceived:
    return msg(IDS[who], Precommit(height=1, round=r, block_hash=None if blk is None else blk.hash))


def timeout(kind: TimeoutKind, r: int, height: int = 1) -> TimeoutFired:
    return TimeoutFired(kind, height, r)


def value(blk: Block | None) -> str:
    return "nil" if blk is None else blk.hash.hex()[:8]


def summary(action: Action) -> tuple[object, ...]:
    """A readable fingerprint of an action (envelopes reduced to type, round, value)."""
    if isinstance(action, PersistSigned | Broadcast):
        body = OPENER.open(action.wire).body if isinstance(action, PersistSigned) else action.envelope.body
        kind = "persist" if isinstance(action, PersistSigned) else "send"
        if isinstance(body, Proposal):
            return (kind, "proposal", body.round, body.block.hash.hex()[:8])
        if isinstance(body, Prevote | Precommit):
            hashed = "nil" if body.block_hash is None else body.block_hash.hex()[:8]
            return (kind, type(body).__name__.lower(), body.round, hashed)
        return (kind, type(body).__name__)
    if isinstance(action, ScheduleTimeout):
        return ("timeout", action.kind.value, action.height, action.round, action.duration)
    if isinstance(action, Commit):
        return ("commit", action.block.height, action.block.hash.hex()[:8])
    if isinstance(action, ReportEvidence):
        return ("evidence", action.evidence.step, action.evidence.round)
    if isinstance(action, RequestBlocks):
        return ("request-blocks", action.from_height)
    assert isinstance(action, TxRejected)
    return ("tx-rejected", action.reason)


def vote_out(step: str, r: int, blk: Block | None) -> list[tuple[object, ...]]:
    return [("persist", step, r, value(blk)), ("send", step, r, value(blk))]


START = [("timeout", "propose", 1, 0, 1.0), ("timeout", "rebroadcast", 1, 0, 2.0)]


@dataclass(frozen=True)
class Row:
    desc: str
    event: Event | None  # None = start()
    out: Sequence[tuple[object, ...]]
    step: Step
    round: int = 0
    locked: Block | None = None
    valid: Block | None = None


HAPPY_PATH = [
    Row("start: not the proposer, wait for a proposal", None, START, Step.PROPOSE),
    Row(
        "L22: proposal of v1, valid, unlocked: prevote it",
        proposal(0, B),
        vote_out("prevote", 0, B),
        Step.PREVOTE,
    ),
    Row("v1 prevotes B: 2 of 4, nothing", prevote(1, 0, B), [], Step.PREVOTE),
    Row("duplicate delivery changes nothing", prevote(1, 0, B), [], Step.PREVOTE),
    Row(
        "v2 prevotes B: polka. L34 timeout, L36 lock and precommit",
        prevote(2, 0, B),
        [("timeout", "prevote", 1, 0, 0.5), *vote_out("precommit", 0, B)],
        Step.PRECOMMIT,
        locked=B,
        valid=B,
    ),
    Row("v1 precommits B: 2 of 4", precommit(1, 0, B), [], Step.PRECOMMIT, locked=B, valid=B),
    Row(
        "L49: v3 precommits B: decide, wait timeout_commit before height 2",
        precommit(3, 0, B),
        [("commit", 1, value(B)), ("timeout", "commit", 2, 0, 0.75)],
        Step.PROPOSE,
    ),
    Row(
        "a height-2 prevote while waiting is only collected",
        prevote(1, 0, None, height=2),
        [],
        Step.PROPOSE,
    ),
    Row(
        "commit timer: round 0 of height 2 (proposer v2: wait for its proposal)",
        timeout(TimeoutKind.COMMIT, 0, height=2),
        [("timeout", "propose", 2, 0, 1.0), ("timeout", "rebroadcast", 2, 0, 2.0)],
        Step.PROPOSE,
    ),
    Row("late precommit of the decided height is ignored", precommit(2, 0, B), [], Step.PROPOSE),
]

NIL_ROUND = [
    Row("start", None, START, Step.PROPOSE),
    Row(
        "L57: propose timeout: prevote nil",
        timeout(TimeoutKind.PROPOSE, 0),
        vote_out("prevote", 0, None),
        Step.PREVOTE,
    ),
    Row("a stale propose timeout does nothing", timeout(TimeoutKind.PROPOSE, 0), [], Step.PREVOTE),
    Row("v1 prevotes B", prevote(1, 0, B), [], Step.PREVOTE),
    Row(
        "L34: v2 prevotes nil: 3 prevotes, mixed",
        prevote(2, 0, None),
        [("timeout", "prevote", 1, 0, 0.5)],
        Step.PREVOTE,
    ),
    Row(
        "L61: prevote timeout: precommit nil",
        timeout(TimeoutKind.PREVOTE, 0),
        vote_out("precommit", 0, None),
        Step.PRECOMMIT,
    ),
    Row("v1 precommits nil", precommit(1, 0, None), [], Step.PRECOMMIT),
    Row(
        "L47: v2 precommits B: 3 precommits, no quorum for one value",
        precommit(2, 0, B),
        [("timeout", "precommit", 1, 0, 0.5)],
        Step.PRECOMMIT,
    ),
    Row(
        "L65: precommit timeout: round 1, proposer v2, timeout grows by delta",
        timeout(TimeoutKind.PRECOMMIT, 0),
        [("timeout", "propose", 1, 1, 1.25), ("timeout", "rebroadcast", 1, 1, 2.0)],
        Step.PROPOSE,
        round=1,
    ),
    Row("a round-0 timeout is now stale", timeout(TimeoutKind.PREVOTE, 0), [], Step.PROPOSE, round=1),
]

POLKA_NIL = [
    Row("start", None, START, Step.PROPOSE),
    Row(
        "L22: an invalid block is prevoted nil", proposal(0, BAD), vote_out("prevote", 0, None), Step.PREVOTE
    ),
    Row("v1 prevotes nil", prevote(1, 0, None), [], Step.PREVOTE),
    Row(
        "L44: v2 prevotes nil: precommit nil at once (L34 timeout first)",
        prevote(2, 0, None),
        [("timeout", "prevote", 1, 0, 0.5), *vote_out("precommit", 0, None)],
        Step.PRECOMMIT,
    ),
]

LOCKING = [
    Row("start", None, START, Step.PROPOSE),
    Row("proposal B", proposal(0, B), vote_out("prevote", 0, B), Step.PREVOTE),
    Row("v1 prevotes B", prevote(1, 0, B), [], Step.PREVOTE),
    Row(
        "polka B: lock",
        prevote(2, 0, B),
        [("timeout", "prevote", 1, 0, 0.5), *vote_out("precommit", 0, B)],
        Step.PRECOMMIT,
        locked=B,
        valid=B,
    ),
    Row("v1 precommits nil", precommit(1, 0, None), [], Step.PRECOMMIT, locked=B, valid=B),
    Row(
        "v2 precommits nil: L47",
        precommit(2, 0, None),
        [("timeout", "precommit", 1, 0, 0.5)],
        Step.PRECOMMIT,
        locked=B,
        valid=B,
    ),
    Row(
        "round 1",
        timeout(TimeoutKind.PRECOMMIT, 0),
        [("timeout", "propose", 1, 1, 1.25), ("timeout", "rebroadcast", 1, 1, 2.0)],
        Step.PROPOSE,
        round=1,
        locked=B,
        valid=B,
    ),
    Row(
        "L22-27: a new block C while locked on B: prevote nil",
        proposal(1, C),
        vote_out("prevote", 1, None),
        Step.PREVOTE,
        round=1,
        locked=B,
        valid=B,
    ),
]

ROUND_SKIP = [
    Row("start", None, START, Step.PROPOSE),
    Row("v1 prevotes in round 5: 1 of 4, not yet f+1", prevote(1, 5, None), [], Step.PROPOSE),
    Row(
        "L55: v2 prevotes in round 5: f+1, skip to round 5 (proposer v2)",
        prevote(2, 5, None),
        [("timeout", "propose", 1, 5, 2.25), ("timeout", "rebroadcast", 1, 5, 2.0)],
        Step.PROPOSE,
        round=5,
    ),
]

MISBEHAVIOUR = [
    Row("start", None, START, Step.PROPOSE),
    Row("a proposal signed by a non-proposer is dropped", proposal(0, B, sender=2), [], Step.PROPOSE),
    Row(
        "a vote of a non-validator is dropped",
        msg(OUTSIDER, Prevote(height=1, round=3, block_hash=None)),
        [],
        Step.PROPOSE,
    ),
    Row("v1 prevotes B", prevote(1, 0, B), [], Step.PROPOSE),
    Row(
        "v1 also prevotes nil: evidence, no error",
        prevote(1, 0, None),
        [("evidence", "prevote", 0)],
        Step.PROPOSE,
    ),
    Row("v1 proposes B", proposal(0, B), vote_out("prevote", 0, B), Step.PREVOTE),
    Row("v1 also proposes C: proposal evidence", proposal(0, C), [("evidence", "proposal", 0)], Step.PREVOTE),
    Row(
        "a message of height 2 asks v1 for blocks",
        prevote(1, 0, None, height=2),
        [("request-blocks", 1)],
        Step.PREVOTE,
    ),
    Row("and is not asked again at once", prevote(1, 1, None, height=2), [], Step.PREVOTE),
    Row(
        "an invalid tx is rejected with the app's reason",
        TxSubmitted(b"\xff"),
        [("tx-rejected", "not canonical CBOR: unsupported CBOR simple value 31 at offset 0")],
        Step.PREVOTE,
    ),
    Row("a valid tx is gossiped", TxSubmitted(kv_set("x", 1)), [("send", "TxGossip")], Step.PREVOTE),
]


def new_core(index: int = 0, resume: Resume | None = None) -> TendermintCore:
    return TendermintCore(
        identity=IDS[index],
        opener=OPENER,
        app=KVApp(VALIDATORS),
        resume=resume or Resume(),
        config=CoreConfig(timeouts=TIMEOUTS),
    )


def run_rows(core: TendermintCore, rows: list[Row]) -> None:
    for row in rows:
        actions = core.start() if row.event is None else core.handle(row.event)
        assert [summary(a) for a in actions] == list(row.out), row.desc
        state = core.state
        assert (state.step, state.round) == (row.step, row.round), row.desc
        assert state.locked_hash == (None if row.locked is None else row.locked.hash), row.desc
        assert state.valid_hash == (None if row.valid is None else row.valid.hash), row.desc


@pytest.mark.parametrize(
    "rows",
    [HAPPY_PATH, NIL_ROUND, POLKA_NIL, LOCKING, ROUND_SKIP, MISBEHAVIOUR],
    ids=["happy-path", "nil-round", "polka-nil", "locking", "round-skip", "misbehaviour"],
)
def test_step_table(rows: list[Row]) -> None:
    run_rows(new_core(), rows)


def test_proposer_proposes_and_prevotes_its_own_block() -> None:
    core = new_core(1)
    actions = core.start()
    proposed = actions[1]
    assert isinstance(proposed, Broadcast)
    assert isinstance(proposed.envelope.body, Proposal)
    own = proposed.envelope.body.block
    assert [summary(a) for a in actions] == [
        ("persist", "proposal", 0, value(own)),
        ("send", "proposal", 0, value(own)),
        ("timeout", "rebroadcast", 1, 0, 2.0),
        *vote_out("prevote", 0, own),
    ]
    assert own.proposer == VALIDATORS[1]
    assert own.app_hash == GENESIS_APP_HASH


def test_l28_reproposal_with_polka_unlocks() -> None:
    # v0 locked on B in round 0; in round 2 (proposer v3) B's... here C gets a polka in round 1 and
    # v0 (locked on B at round 0) must prevote C when C is re-proposed with pol_round 1 (L28-L29).
    core = new_core()
    run_rows(core, LOCKING[:7])  # locked on B at round 0, now in round 1 (proposer v2)
    for who in (1, 2, 3):
        core.handle(prevote(who, 1, C))  # polka for C in round 1, no proposal seen
    for who in (1, 2):
        core.handle(precommit(who, 1, None))
    out = core.handle(timeout(TimeoutKind.PROPOSE, 1))  # L57 in round 1: prevote nil
    assert [summary(a) for a in out][:2] == vote_out("prevote", 1, None)
    core.handle(timeout(TimeoutKind.PREVOTE, 1))
    core.handle(timeout(TimeoutKind.PRECOMMIT, 1))
    assert core.state.round == 2
    out = core.handle(proposal(2, C, pol=1))  # proposer of round 2 is v3
    assert [summary(a) for a in out] == vote_out("prevote", 2, C)
    assert core.state.locked_hash == B.hash  # the lock moves only at L36 of a later polka


def test_restart_resends_the_persisted_vote_instead_of_signing_another() -> None:
    first = new_core()
    first.start()
    persisted = first.handle(timeout(TimeoutKind.PROPOSE, 0))[0]  # prevote nil, persisted
    assert isinstance(persisted, PersistSigned)
    # "Crash": a new core resumes from what was persisted, then sees a valid proposal B.
    restarted = new_core(resume=Resume(signed={(0, "prevote"): persisted.wire}))
    restarted.start()
    out = restarted.handle(proposal(0, B))
    assert [summary(a) for a in out] == vote_out("prevote", 0, None)  # still nil: no second vote
    assert all(a.wire == persisted.wire for a in out if isinstance(a, PersistSigned))


def test_restart_keeps_the_lock() -> None:
    core = new_core()
    core.start()
    core.handle(proposal(0, B))
    core.handle(prevote(1, 0, B))
    locking = [a for a in core.handle(prevote(2, 0, B)) if isinstance(a, PersistSigned)]
    assert [a.locked_block for a in locking] == [B]  # the lock is persisted with the precommit
    resumed = new_core(resume=Resume(signed={(0, "precommit"): locking[0].wire}, locked=(B, 0)))
    resumed.start()
    assert (resumed.state.locked_hash, resumed.state.locked_round) == (B.hash, 0)
    resumed.handle(precommit(1, 0, None))
    resumed.handle(precommit(2, 0, None))
    resumed.handle(timeout(TimeoutKind.PRECOMMIT, 0))
    assert [summary(a) for a in resumed.handle(proposal(1, C))] == vote_out("prevote", 1, None)


def test_api_misuse_is_a_local_error() -> None:
    core = new_core()
    with pytest.raises(LocalProtocolError):
        core.handle(TxSubmitted(kv_set("a", 1)))
    core.start()
    with pytest.raises(LocalProtocolError):
        core.start()


def test_messages_far_ahead_are_dropped_not_stored() -> None:
    core = new_core()
    core.start()
    for who in (1, 2, 3):
        assert core.handle(prevote(who, 5000, None)) == []
    assert core.state.round == 0  # no round skip on messages beyond the window
    assert core.handle(prevote(1, 900, None)) == []
    assert [summary(a)[:4] for a in core.handle(prevote(2, 900, None))] == [
        ("timeout", "propose", 1, 900),
        ("timeout", "rebroadcast", 1, 900),
    ]


def test_rebroadcasts_back_off_within_a_round_and_reset_in_the_next() -> None:
    core = new_core()
    core.start()

    def next_rebroadcast(r: int) -> float:
        scheduled = [
            a for a in core.handle(timeout(TimeoutKind.REBROADCAST, r)) if isinstance(a, ScheduleTimeout)
        ]
        assert [(a.kind, a.round) for a in scheduled] == [(TimeoutKind.REBROADCAST, r)]
        return scheduled[0].duration

    assert [next_rebroadcast(0) for _ in range(4)] == [4.0, 8.0, 8.0, 8.0]
    assert ("timeout", "rebroadcast", 1, 1, 2.0) in [
        summary(a) for a in core.handle(timeout(TimeoutKind.PRECOMMIT, 0))
    ]
    assert next_rebroadcast(1) == 4.0
    assert core.handle(timeout(TimeoutKind.REBROADCAST, 0)) == []  # stale: the old round's timer
