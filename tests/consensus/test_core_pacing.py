"""Idle pacing as a core setting (`CoreConfig.create_empty_blocks_interval`, after CometBFT's
create_empty_blocks_interval): an own empty proposal waits for a transaction, and a height we
would start as its proposer with an empty mempool starts when one arrives (into that block).

Validators v0..v3; the proposer of (height h, round r) is v[(h + r) % 4].
"""

from __future__ import annotations

from collections.abc import Sequence

from consensus.blocks import GENESIS_PREV_HASH, Block, EnvelopeOpener
from consensus.core import (
    Action,
    Broadcast,
    CoreConfig,
    MessageReceived,
    ScheduleTimeout,
    TendermintCore,
    TimeoutConfig,
    TimeoutFired,
    TimeoutKind,
    TxSubmitted,
)
from consensus.messages import CONSENSUS_MESSAGES, Precommit, Prevote, Proposal
from consensus.simulator import KVApp, kv_set, sim_identity
from crypto.envelope import EnvelopeCodec
from crypto.identity import NodeIdentity

IDS = [sim_identity(i) for i in range(4)]
VALIDATORS = tuple(i.node_id for i in IDS)
OPENER = EnvelopeOpener(EnvelopeCodec(bytes(range(32)), CONSENSUS_MESSAGES))
TIMEOUTS = TimeoutConfig(propose=1.0, prevote=0.5, precommit=0.5, delta=0.25, rebroadcast=2.0, commit=0.75)
IDLE = 0.4


def new_core(index: int, interval: float = IDLE) -> TendermintCore:
    config = CoreConfig(timeouts=TIMEOUTS, create_empty_blocks_interval=interval)
    return TendermintCore(identity=IDS[index], opener=OPENER, app=KVApp(VALIDATORS), config=config)


def msg(sender: NodeIdentity, body: object) -> MessageReceived:
    return MessageReceived(OPENER.open(OPENER.codec.seal(sender, body)))


def proposals(actions: Sequence[Action]) -> list[Proposal]:
    """The proposals among `actions` that are sent (not only persisted)."""
    return [
        a.envelope.body for a in actions if isinstance(a, Broadcast) and isinstance(a.envelope.body, Proposal)
    ]


def timers(actions: Sequence[Action], kind: TimeoutKind) -> list[ScheduleTimeout]:
    return [a for a in actions if isinstance(a, ScheduleTimeout) and a.kind is kind]


def commit_height_one(core: TendermintCore) -> list[Action]:
    """Height 1 decided (v1's block, everyone's precommits); returns the actions of the commit."""
    core.start()
    block = Block(
        height=1,
        prev_hash=GENESIS_PREV_HASH,
        proposer=VALIDATORS[1],
        txs=(),
        app_hash=KVApp(VALIDATORS).app_hash(),
        last_commit=None,
    )
    core.handle(msg(IDS[1], Proposal(height=1, round=0, block=block, pol_round=-1)))
    out: list[Action] = []
    for i in range(4):
        out += core.handle(msg(IDS[i], Prevote(height=1, round=0, block_hash=block.hash)))
    for i in range(4):
        out += core.handle(msg(IDS[i], Precommit(height=1, round=0, block_hash=block.hash)))
    assert core.height == 2
    return out


def test_an_own_empty_proposal_is_held_until_a_transaction_arrives() -> None:
    core = new_core(1)  # proposer of height 1, round 0
    started = core.start()
    assert proposals(started) == []
    assert [(t.height, t.round, t.duration) for t in timers(started, TimeoutKind.HOLD)] == [(1, 0, IDLE)]
    released = core.handle(TxSubmitted(kv_set("x", 1)))
    sent = proposals(released)
    assert len(sent) == 1
    assert sent[0].round == 0
    assert sent[0].block.txs == ()


def test_a_held_empty_proposal_goes_out_when_its_timer_fires() -> None:
    core = new_core(1)
    core.start()
    assert len(proposals(core.handle(TimeoutFired(TimeoutKind.HOLD, 1, 0)))) == 1
    assert proposals(core.handle(TimeoutFired(TimeoutKind.HOLD, 1, 0))) == []  # sent once


def test_the_height_start_waits_for_a_transaction_that_then_goes_into_its_block() -> None:
    core = new_core(2)  # proposer of height 2, round 0
    commit_height_one(core)
    waiting = core.handle(TimeoutFired(TimeoutKind.COMMIT, 2, 0))
    assert proposals(waiting) == []
    assert core.state.round == 0
    assert [(t.height, t.duration) for t in timers(waiting, TimeoutKind.IDLE)] == [(2, IDLE)]
    tx = kv_set("y", 2)
    sent = proposals(core.handle(TxSubmitted(tx)))
    assert [(p.height, p.block.txs) for p in sent] == [(2, (tx,))]


def test_after_the_idle_interval_the_empty_proposal_goes_out_at_once() -> None:
    core = new_core(2)
    commit_height_one(core)
    core.handle(TimeoutFired(TimeoutKind.COMMIT, 2, 0))
    sent = proposals(core.handle(TimeoutFired(TimeoutKind.IDLE, 2, 0)))
    assert [(p.height, p.block.txs) for p in sent] == [(2, ())]


def test_without_the_setting_an_empty_height_starts_and_is_proposed_at_once() -> None:
    core = new_core(2, interval=0.0)
    commit_height_one(core)
    started = core.handle(TimeoutFired(TimeoutKind.COMMIT, 2, 0))
    assert [(p.height, p.block.txs) for p in proposals(started)] == [(2, ())]
    assert timers(started, TimeoutKind.IDLE) == []
    assert timers(started, TimeoutKind.HOLD) == []
