"""Sans-I/O Tendermint consensus core (Buchman, Kwon, Milosevic 2018, Algorithm 1).

`TendermintCore.handle(event)` consumes one `Event` and returns the `Action`s
the shell must perform, in order. The core holds no socket, clock, thread,
random source or database: time enters as `TimeoutFired` events the shell
scheduled on our request, and durability is the shell's job (it must make a
`PersistSigned` durable before performing the `Broadcast` that follows it, and
write each `Commit` before anything after it). Comments ``# Lnn`` cite the
lines of Algorithm 1.

After every input the core re-evaluates the paper's "upon" rules against its
state until none fires, so the order in which messages arrive never matters
for which rules eventually fire; "for the first time" rules are guarded by
per-round flags. Beyond the paper:

- after a commit the next height starts only when the COMMIT timer fires
  (Tendermint's timeout_commit): it paces blocks instead of spinning out empty
  ones as fast as the network allows, and lets late precommits arrive;
- a REBROADCAST timer re-sends this round's own signed messages and pending
  transactions, so progress survives lost messages (gossip retransmission);
- ``CoreConfig.create_empty_blocks_interval`` (CometBFT's setting of that name)
  paces an idle ledger: when we would start a height as its round-0 proposer
  with an empty mempool, the start waits up to that long (an IDLE timer) or
  until a transaction arrives, which then goes into that very block; any other
  own empty proposal is held the same way (a HOLD timer) before it is sent;
- a node that sees messages of a higher height asks the sender for blocks
  (`RequestBlocks`) and commits those that carry a valid certificate;
- own signed messages are never re-signed: a (height, round, step) that was
  already signed (possibly before a restart, see `Resume`) re-uses its wire.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, final

from crypto.envelope import Envelope
from crypto.errors import ProtocolError
from crypto.identity import NodeId, NodeIdentity

from .app import Application
from .blocks import (
    Block,
    CommitCertificate,
    EnvelopeOpener,
    check_block_links,
    sha256,
    verify_certificate,
)
from .errors import InvalidBlock, LocalProtocolError
from .mempool import Mempool, MempoolLimits
from .messages import MAX_GOSSIP_TXS, BlockRequest, BlockResponse, Precommit, Prevote, Proposal, TxGossip
from .votes import Equivocation, SignedVote, VoteKeeper, VoteStep


class Step(enum.IntEnum):
    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


class TimeoutKind(enum.Enum):
    PROPOSE = "propose"
    PREVOTE = "prevote"
    PRECOMMIT = "precommit"
    REBROADCAST = "rebroadcast"
    COMMIT = "commit"  # wait after a commit before round 0 of the next height
    IDLE = "idle"  # an empty mempool holds our start of a height as its proposer this long
    HOLD = "hold"  # an own empty proposal waits this long for a transaction before it is sent


# The steps under which own signed messages are recorded (PersistSigned.step).
PROPOSAL_STEP: Final = "proposal"
PREVOTE_STEP: Final = "prevote"
PRECOMMIT_STEP: Final = "precommit"
REBROADCAST_BACKOFF_CAP: Final = 4
"""Re-sends within one round wait ``rebroadcast``, then twice, then four times as long."""


@final
@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    """Timeouts in (virtual) seconds; each grows by `delta` per round (liveness after GST)."""

    propose: float = 1.0
    prevote: float = 0.5
    precommit: float = 0.5
    delta: float = 0.5
    rebroadcast: float = 1.0
    commit: float = 1.0  # block pacing; 0 starts the next height at once

    def __post_init__(self) -> None:
        if min(self.propose, self.prevote, self.precommit, self.rebroadcast) <= 0:
            raise ValueError("propose, prevote, precommit and rebroadcast timeouts must be positive")
        if self.delta < 0 or self.commit < 0:
            raise ValueError("delta and commit must be non-negative")

    def duration(self, kind: TimeoutKind, round: int) -> float:
        base = {
            TimeoutKind.PROPOSE: self.propose,
            TimeoutKind.PREVOTE: self.prevote,
            TimeoutKind.PRECOMMIT: self.precommit,
            TimeoutKind.REBROADCAST: self.rebroadcast,
            TimeoutKind.COMMIT: self.commit,
        }[kind]
        if kind in (TimeoutKind.REBROADCAST, TimeoutKind.COMMIT):
            return base
        return base + self.delta * round


@final
@dataclass(frozen=True, slots=True)
class CoreConfig:
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    mempool: MempoolLimits = field(default_factory=MempoolLimits)
    max_future_messages: int = 4096  # buffered messages of height+1
    snapshot_every: int = 100  # heights between application snapshots in Commit (0: never)
    # Seconds an own empty proposal waits for a transaction (0: sent at once); keep it below
    # the others' propose timeout, or they move to the next round meanwhile.
    create_empty_blocks_interval: float = 0.0

    def __post_init__(self) -> None:
        if min(self.max_future_messages, self.snapshot_every, self.create_empty_blocks_interval) < 0:
            raise ValueError("max_future_messages, snapshot_every, create_empty_blocks_interval must be >= 0")


@final
@dataclass(frozen=True, slots=True)
class Resume:
    """Where a (re)started core begins: the first height it has not committed yet.

    `signed` holds this node's own signed messages at `height` by (round, step),
    as persisted by the shell, and `locked` the block it precommitted in the
    highest round (with that round), so a restart neither equivocates nor
    forgets its lock.
    """

    height: int = 1
    last_block_hash: bytes = bytes(32)
    last_certificate: CommitCertificate | None = None
    signed: Mapping[tuple[int, str], bytes] = field(default_factory=dict)
    locked: tuple[Block, int] | None = None


# -- events (inputs) ------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class MessageReceived:
    """An envelope that the shell has already opened (signature and chain checked)."""

    envelope: Envelope


@final
@dataclass(frozen=True, slots=True)
class TimeoutFired:
    kind: TimeoutKind
    height: int
    round: int


@final
@dataclass(frozen=True, slots=True)
class TxSubmitted:
    tx: bytes


Event = MessageReceived | TimeoutFired | TxSubmitted


# -- actions (outputs) ----------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class PersistSigned:
    """Make this own signed message durable BEFORE performing the next action (its Broadcast)."""

    height: int
    round: int
    step: str  # PROPOSAL_STEP, PREVOTE_STEP or PRECOMMIT_STEP
    wire: bytes
    locked_block: Block | None  # the block a non-nil precommit locks on


@final
@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send a sealed envelope to every other validator."""

    envelope: Envelope


@final
@dataclass(frozen=True, slots=True)
class RequestBlocks:
    """Send a sealed `BlockRequest` to `peer`, which is ahead of us (block sync)."""

    peer: NodeId
    from_height: int
    envelope: Envelope


@final
@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    """Feed `TimeoutFired(kind, height, round)` back after `duration` seconds."""

    kind: TimeoutKind
    height: int
    round: int
    duration: float


@final
@dataclass(frozen=True, slots=True)
class Commit:
    """Block `block.height` is decided; the application has applied it. Persist it."""

    block: Block
    certificate: CommitCertificate
    results: tuple[str | None, ...]  # per tx: None = applied, else the rejection reason
    app_hash: bytes  # application state after this block
    # Application snapshot after this block, every `CoreConfig.snapshot_every` heights. Taken
    # here because one input may commit several blocks (block sync): by the time the shell
    # performs this action the application may already be further ahead.
    snapshot: bytes | None = None


@final
@dataclass(frozen=True, slots=True)
class ReportEvidence:
    evidence: Equivocation


@final
@dataclass(frozen=True, slots=True)
class TxRejected:
    """A submitted transaction was not admitted to the mempool."""

    tx_hash: bytes
    reason: str


Action = PersistSigned | Broadcast | RequestBlocks | ScheduleTimeout | Commit | ReportEvidence | TxRejected


@final
@dataclass(frozen=True, slots=True)
class RoundState:
    """A read-only view of the core's Algorithm 1 variables."""

    height: int
    round: int
    step: Step
    locked_hash: bytes | None
    locked_round: int
    valid_hash: bytes | None
    valid_round: int


@final
@dataclass(frozen=True, slots=True)
class _Proposed:
    block: Block
    pol_round: int
    envelope: Envelope


MAX_ROUNDS_AHEAD: Final = 1000  # messages further ahead of our round are dropped
_MAX_PROPOSALS_PER_ROUND: Final = 4  # a Byzantine proposer may send several; keep a few


@final
class TendermintCore:
    """One validator's consensus state machine. Inputs: `start`, `handle`. Outputs: actions."""

    def __init__(
        self,
        *,
        identity: NodeIdentity,
        opener: EnvelopeOpener,
        app: Application,
        resume: Resume = Resume(),
        config: CoreConfig = CoreConfig(),
    ) -> None:
        self._identity = identity
        self.me: Final = identity.node_id
        self._opener = opener
        self.app: Final = app
        self.config: Final = config
        self.mempool: Final = Mempool(app.check_tx, config.mempool)
        self._started = False
        self._waiting = False  # committed, the next height's round 0 not started yet
        self._idle_waited = False  # the held start was released by its IDLE timer
        self._held: Envelope | None = None  # an own empty proposal not sent yet
        self._evidence: list[Equivocation] = []
        self._height = resume.height
        self._last_hash = resume.last_block_hash
        self._last_certificate = resume.last_certificate
        self._locked: Block | None = None
        self._valid: Block | None = None
        self._enter_height(resume.height)
        self._signed: dict[tuple[int, str], Envelope] = {
            key: opener.open(wire) for key, wire in resume.signed.items()
        }
        self._resume_round = max((r for r, _ in resume.signed), default=0)
        if resume.locked is not None:
            block, round = resume.locked
            self._locked, self._locked_round = block, round
            self._valid, self._valid_round = block, round
            self._remember_block(block)

    # -- read-only views -------------------------------------------------------------

    @property
    def height(self) -> int:
        return self._height

    @property
    def round(self) -> int:
        return self._round

    @property
    def state(self) -> RoundState:
        return RoundState(
            self._height,
            self._round,
            self._step,
            None if self._locked is None else self._locked.hash,
            self._locked_round,
            None if self._valid is None else self._valid.hash,
            self._valid_round,
        )

    @property
    def validators(self) -> tuple[NodeId, ...]:
        return self._validators

    @property
    def evidence(self) -> tuple[Equivocation, ...]:
        return tuple(self._evidence)

    def proposer(self, height: int, round: int) -> NodeId:
        """Round-robin over the height's validator set, deterministic from (height, round)."""
        validators = self._validators if height == self._height else self.app.validators(height)
        return validators[(height + round) % len(validators)]

    # -- inputs ----------------------------------------------------------------------

    def start(self) -> list[Action]:
        """Begin the current height (at round 0, or the last round signed before a restart)."""
        if self._started:
            raise LocalProtocolError("core already started")
        self._started = True
        out = self._start_round(self._resume_round)
        out += self._evaluate()
        return self._pace(out)

    def handle(self, event: Event) -> list[Action]:
        if not self._started:
            raise LocalProtocolError("call start() before handle()")
        if isinstance(event, MessageReceived):
            out = self._on_message(event.envelope)
        elif isinstance(event, TimeoutFired):
            out = self._on_timeout(event)
        else:
            out = self._on_tx(event.tx)
        if self._idle and len(self.mempool) > 0:
            out += self._start_round(0)  # the transaction goes into the block we propose now
        out += self._evaluate()
        return self._pace(out)

    def _pace(self, out: list[Action]) -> list[Action]:
        """Hold an own empty proposal (`CoreConfig.create_empty_blocks_interval`); send a held
        one as soon as the mempool has a transaction."""
        waited, self._idle_waited = self._idle_waited, False
        interval = self.config.create_empty_blocks_interval
        if interval <= 0:
            return out
        paced: list[Action] = []
        for action in out:
            body = action.envelope.body if isinstance(action, Broadcast) else None
            if (
                isinstance(action, Broadcast)
                and isinstance(body, Proposal)
                and action.envelope.sender == self.me
                and not body.block.txs
                and len(self.mempool) == 0
                and not waited
            ):
                self._held = action.envelope
                paced.append(ScheduleTimeout(TimeoutKind.HOLD, body.height, body.round, interval))
            else:
                paced.append(action)
        if self._held is not None and len(self.mempool) > 0:
            paced.append(Broadcast(self._held))
            self._held = None
        return paced

    # -- height and round bookkeeping --------------------------------------------------

    def _enter_height(self, height: int) -> None:
        self._height = height
        self._validators = self.app.validators(height)
        self._prev_validators = self.app.validators(height - 1) if height > 1 else ()
        self._next_validators = self.app.validators(height + 1)  # known: changes lag two heights
        self._keeper = VoteKeeper(height, self._validators)
        self._round = 0
        self._step = Step.PROPOSE
        self._locked = None
        self._locked_round = -1
        self._valid = None
        self._valid_round = -1
        self._proposals: dict[int, dict[bytes, _Proposed]] = {}
        self._first_proposal: dict[int, bytes] = {}
        self._blocks: dict[bytes, Block] = {}
        self._validity: dict[bytes, bool] = {}
        self._fired: set[tuple[str, int]] = set()
        self._signed = {}
        self._future: dict[bytes, Envelope] = {}
        self._sync_seen: dict[NodeId, int] = {}
        self._rebroadcast_after = self.config.timeouts.rebroadcast
        self._idle = False  # waiting: our start as round-0 proposer held by an empty mempool

    def _start_round(self, round: int) -> list[Action]:  # L11 StartRound
        self._round = round  # L12
        self._step = Step.PROPOSE  # L13
        h, timeouts = self._height, self.config.timeouts
        out: list[Action] = []
        already = self._signed.get((round, PROPOSAL_STEP))
        if already is not None and isinstance(already.body, Proposal):
            # Proposed in this round before a restart: send that proposal again, nothing else.
            out += self._sign_and_send(already.body)
        elif self.proposer(h, round) == self.me:  # L14
            if self._valid is not None:  # L15-16
                # (_valid_round == round only after a restart that kept our lock: propose it afresh.)
                block, pol_round = self._valid, (self._valid_round if self._valid_round < round else -1)
            else:  # L17-18
                block, pol_round = self._build_block(), -1
            out += self._sign_and_send(Proposal(height=h, round=round, block=block, pol_round=pol_round))
            out += self._polka_proof()
        else:  # L21
            out.append(
                ScheduleTimeout(TimeoutKind.PROPOSE, h, round, timeouts.duration(TimeoutKind.PROPOSE, round))
            )
        self._rebroadcast_after = timeouts.rebroadcast
        out.append(ScheduleTimeout(TimeoutKind.REBROADCAST, h, round, self._rebroadcast_after))
        self._waiting = False
        self._idle = False
        return out

    def _build_block(self) -> Block:
        return Block(
            height=self._height,
            prev_hash=self._last_hash,
            proposer=self.me,
            txs=self.mempool.reap(),
            app_hash=self.app.app_hash(),
            last_commit=self._last_certificate,
        )

    # -- signing: persist before send, never twice -------------------------------------

    def _sign_and_send(self, body: Proposal | Prevote | Precommit) -> list[Action]:
        if self.me not in self._validators:
            return []  # a follower (not a validator of this height) signs nothing
        step = {Proposal: PROPOSAL_STEP, Prevote: PREVOTE_STEP, Precommit: PRECOMMIT_STEP}[type(body)]
        key = (body.round, step)
        existing = self._signed.get(key)
        if existing is not None:
            # Signed before (maybe before a restart): send exactly that again, never a sibling.
            envelope = existing
        else:
            envelope = self._opener.open(self._opener.codec.seal(self._identity, body))
            self._signed[key] = envelope
        signed = envelope.body
        locked = None
        if isinstance(signed, Precommit) and signed.block_hash is not None:
            locked = self._blocks.get(signed.block_hash)
        out: list[Action] = [PersistSigned(self._height, body.round, step, envelope.wire, locked)]
        out.append(Broadcast(envelope))
        self._accept(envelope)  # our own message counts like anyone else's
        return out

    def _polka_proof(self) -> list[Action]:
        """Forward the >2/3 prevotes behind our valid value (a proof of lock change).

        Lost prevotes of an old round are never re-sent by the current round's
        rebroadcast, yet L28 needs them to unlock a validator locked in an older
        round; without this, lost messages can stall a height for ever.
        """
        if self._valid is None or self._valid_round < 0:
            return []
        votes = self._keeper.votes_for(self._valid_round, VoteStep.PREVOTE, self._valid.hash)
        return [Broadcast(self._opener.open(vote.wire)) for vote in votes]

    def _prevote(self, block_hash: bytes | None) -> list[Action]:
        self._step = Step.PREVOTE
        return self._sign_and_send(Prevote(height=self._height, round=self._round, block_hash=block_hash))

    def _precommit(self, block_hash: bytes | None) -> list[Action]:
        self._step = Step.PRECOMMIT
        return self._sign_and_send(Precommit(height=self._height, round=self._round, block_hash=block_hash))

    # -- message intake ------------------------------------------------------------------

    def _on_message(self, envelope: Envelope) -> list[Action]:
        body = envelope.body
        if isinstance(body, Proposal | Prevote | Precommit):
            if body.height < self._height or envelope.sender == self.me:
                return []
            if body.height > self._height:
                return self._on_future(envelope, body.height)
            return self._accept(envelope)
        if isinstance(body, BlockResponse):
            return self._on_blocks(envelope.sender, body)
        if isinstance(body, TxGossip):
            for tx in body.txs:
                self.mempool.add(tx)
            return []
        if isinstance(body, BlockRequest):
            return []  # served by the shell from its store
        raise LocalProtocolError(f"{type(body).__name__} is not a consensus message")

    def _accept(self, envelope: Envelope) -> list[Action]:
        """Record a current-height proposal or vote; rules are evaluated afterwards."""
        body, sender = envelope.body, envelope.sender
        if sender not in self._keeper.validators:
            return []  # not a validator of this height: dropped
        assert isinstance(body, Proposal | Prevote | Precommit)
        if body.round > self._round + MAX_ROUNDS_AHEAD:
            return []  # bounds what a Byzantine validator can make us store; honest rounds grow slowly
        if isinstance(body, Proposal):
            return self._accept_proposal(envelope, body)
        step = VoteStep.PREVOTE if isinstance(body, Prevote) else VoteStep.PRECOMMIT
        before = len(self._keeper.evidence)
        self._keeper.add(SignedVote(sender, step, body.height, body.round, body.block_hash, envelope.wire))
        return [ReportEvidence(e) for e in self._record_evidence(self._keeper.evidence[before:])]

    def _accept_proposal(self, envelope: Envelope, proposal: Proposal) -> list[Action]:
        if envelope.sender != self.proposer(proposal.height, proposal.round):
            return []
        by_hash = self._proposals.setdefault(proposal.round, {})
        block_hash = proposal.block.hash
        if block_hash in by_hash:
            return []
        out: list[Action] = []
        first = self._first_proposal.get(proposal.round)
        if first is not None:
            evidence = Equivocation(
                envelope.sender,
                proposal.height,
                proposal.round,
                PROPOSAL_STEP,
                by_hash[first].envelope.wire,
                envelope.wire,
            )
            out += [ReportEvidence(e) for e in self._record_evidence((evidence,))]
            if len(by_hash) >= _MAX_PROPOSALS_PER_ROUND:
                return out
        else:
            self._first_proposal[proposal.round] = block_hash
        by_hash[block_hash] = _Proposed(proposal.block, proposal.pol_round, envelope)
        self._remember_block(proposal.block)
        self._keeper.note_sender(proposal.round, envelope.sender)
        return out

    def _record_evidence(self, new: tuple[Equivocation, ...]) -> tuple[Equivocation, ...]:
        self._evidence.extend(new)
        return new

    def _remember_block(self, block: Block) -> None:
        if block.height == self._height:
            self._blocks.setdefault(block.hash, block)

    def _on_future(self, envelope: Envelope, height: int) -> list[Action]:
        if (
            height == self._height + 1
            and len(self._future) < self.config.max_future_messages
            and envelope.sender in self._next_validators
        ):
            self._future.setdefault(envelope.wire, envelope)
        return self._maybe_request_blocks(envelope.sender)

    def _maybe_request_blocks(self, peer: NodeId) -> list[Action]:
        # Ask on the first sign that `peer` is ahead, then again every 2n messages it sends
        # from above, in case the request or the response was lost.
        if peer not in self._validators and peer not in self._prev_validators:
            return []
        seen = self._sync_seen.get(peer, 0)
        self._sync_seen[peer] = seen + 1
        if seen % (2 * len(self._validators)) != 0:
            return []
        request = BlockRequest(from_height=self._height)
        envelope = self._opener.open(self._opener.codec.seal(self._identity, request))
        return [RequestBlocks(peer, self._height, envelope)]

    def _on_blocks(self, peer: NodeId, response: BlockResponse) -> list[Action]:
        out: list[Action] = []
        for synced in response.blocks:
            if synced.block.height != self._height:
                continue
            certificate = synced.certificate
            try:
                self._check_block(synced.block)
                if certificate.block_hash != synced.block.hash:
                    continue
                verify_certificate(certificate, self._opener, self._validators)
            except ProtocolError:
                break  # a bad block from this peer: ignore the rest of its response
            out += self._decide(synced.block, certificate)
        if response.tip >= self._height and response.blocks:
            self._sync_seen[peer] = 0
            out += self._maybe_request_blocks(peer)
        return out

    def _on_tx(self, tx: bytes) -> list[Action]:
        reason = self.mempool.add(tx)
        if reason is not None:
            return [TxRejected(sha256(tx), reason)]
        envelope = self._opener.open(self._opener.codec.seal(self._identity, TxGossip(txs=(tx,))))
        return [Broadcast(envelope)]

    # -- timeouts --------------------------------------------------------------------------

    def _on_timeout(self, timeout: TimeoutFired) -> list[Action]:
        if timeout.kind is TimeoutKind.HOLD:
            held = self._held
            body = None if held is None else held.body
            if not isinstance(body, Proposal) or (body.height, body.round) != (timeout.height, timeout.round):
                return []  # released already, or the timer of a hold another proposal replaced
            self._held, self._idle_waited = None, True  # sent as it is, not held again
            return [Broadcast(held)] if held is not None else []
        if timeout.height != self._height or timeout.round != self._round:
            return []  # stale
        if self._waiting:
            return self._on_waiting_timeout(timeout.kind)
        kind, step = timeout.kind, self._step
        if kind is TimeoutKind.PROPOSE and step is Step.PROPOSE:  # L57
            return self._prevote(None)  # L59-60
        if kind is TimeoutKind.PREVOTE and step is Step.PREVOTE:  # L61
            return self._precommit(None)  # L63-64
        if kind is TimeoutKind.PRECOMMIT:  # L65
            return self._start_round(self._round + 1)  # L67
        if kind is TimeoutKind.REBROADCAST:
            return self._rebroadcast()
        return []

    def _on_waiting_timeout(self, kind: TimeoutKind) -> list[Action]:
        """Between a commit and the next height's round 0: the COMMIT timer starts it, unless
        we would propose it with an empty mempool (then the IDLE timer or a transaction does)."""
        interval = self.config.create_empty_blocks_interval
        if kind is TimeoutKind.COMMIT:
            if interval > 0 and len(self.mempool) == 0 and self.proposer(self._height, 0) == self.me:
                self._idle = True
                return [ScheduleTimeout(TimeoutKind.IDLE, self._height, 0, interval)]
            return self._start_round(0)
        if kind is TimeoutKind.IDLE and self._idle:
            self._idle_waited = True  # waited the interval already: the empty proposal goes out
            return self._start_round(0)
        return []

    def _rebroadcast(self) -> list[Action]:
        out: list[Action] = []
        for (round, _step), envelope in sorted(self._signed.items(), key=lambda item: item[0]):
            if round == self._round:
                out.append(Broadcast(envelope))
        out += self._polka_proof()
        pending = self.mempool.pending()[:MAX_GOSSIP_TXS]
        if pending:
            gossip = TxGossip(txs=pending)
            out.append(Broadcast(self._opener.open(self._opener.codec.seal(self._identity, gossip))))
        self._sync_seen.clear()
        # Back off within a round: when messages are slow because every node is busy, blind
        # re-sends every second multiplied the gossip (8 processes on 2 cores: each vote
        # arrived ~4 times and latency grew to seconds). A new round starts at the base again.
        cap = self.config.timeouts.rebroadcast * REBROADCAST_BACKOFF_CAP
        self._rebroadcast_after = min(2 * self._rebroadcast_after, cap)
        out.append(
            ScheduleTimeout(TimeoutKind.REBROADCAST, self._height, self._round, self._rebroadcast_after)
        )
        return out

    # -- the rules of Algorithm 1 ------------------------------------------------------------

    def _check_block(self, block: Block) -> None:
        """valid(v): raises a ProtocolError if `block` cannot be the next block of our chain."""
        check_block_links(block, height=self._height, prev_hash=self._last_hash, app_hash=self.app.app_hash())
        if block.proposer not in self._validators:
            raise InvalidBlock(f"block {block.height}: proposer {block.proposer.short} is not a validator")
        if block.last_commit is not None:
            verify_certificate(block.last_commit, self._opener, self._prev_validators)

    def _is_valid(self, block: Block) -> bool:
        block_hash = block.hash
        known = self._validity.get(block_hash)
        if known is None:
            try:
                self._check_block(block)
                known = True
            except ProtocolError:
                known = False
            self._validity[block_hash] = known
        return known

    def _is_locked_on(self, block: Block) -> bool:
        return self._locked is not None and self._locked.hash == block.hash

    def _evaluate(self) -> list[Action]:
        """Fire "upon" rules until none applies (each firing changes state or sets a flag)."""
        out: list[Action] = []
        if self._waiting:
            return out  # between a commit and the next height's round 0: only collect messages
        while True:
            fired = self._fire_one()
            if fired is None:
                return out
            out += fired

    def _fire_one(self) -> list[Action] | None:
        keeper, h, r, step = self._keeper, self._height, self._round, self._step
        # L49: a block with >2/3 precommits in any round is decided.
        for round, decided in keeper.precommit_quorums():
            block = self._blocks.get(decided)
            if block is not None and self._is_valid(block):  # L51
                votes = keeper.votes_for(round, VoteStep.PRECOMMIT, decided)
                certificate = CommitCertificate(h, round, decided, tuple(sorted(v.wire for v in votes)))
                return self._decide(block, certificate)
        # L55: >1/3 of validators are in a higher round: jump to it.
        skip_to = keeper.skip_rounds_above(r)
        if skip_to is not None:
            return self._start_round(skip_to)
        if step is Step.PROPOSE:
            first = self._first_proposal.get(r)
            if first is not None:
                proposed = self._proposals[r][first]
                block, vr = proposed.block, proposed.pol_round
                if vr == -1:  # L22
                    ok = self._is_valid(block) and (
                        self._locked_round == -1 or self._is_locked_on(block)
                    )  # L23
                    return self._prevote(block.hash if ok else None)  # L24-27
                if keeper.quorum(vr, VoteStep.PREVOTE, block.hash):  # L28 (0 <= vr < r: checked in Proposal)
                    ok = self._is_valid(block) and (
                        self._locked_round <= vr or self._is_locked_on(block)
                    )  # L29
                    return self._prevote(block.hash if ok else None)  # L30-33
        if step is Step.PREVOTE and ("L34", r) not in self._fired and keeper.quorum_any(r, VoteStep.PREVOTE):
            self._fired.add(("L34", r))  # L34: schedule timeoutPrevote once per round
            return [
                ScheduleTimeout(
                    TimeoutKind.PREVOTE, h, r, self.config.timeouts.duration(TimeoutKind.PREVOTE, r)
                )
            ]
        if step >= Step.PREVOTE and ("L36", r) not in self._fired:
            polka = keeper.quorum_value(r, VoteStep.PREVOTE)
            proposed_here = self._proposals.get(r, {})
            if polka is not None and polka in proposed_here and self._is_valid(proposed_here[polka].block):
                self._fired.add(("L36", r))  # L36 "for the first time"
                block = proposed_here[polka].block
                out: list[Action] = []
                if step is Step.PREVOTE:  # L37
                    self._locked, self._locked_round = block, r  # L38-39
                    out += self._precommit(block.hash)  # L40-41
                self._valid, self._valid_round = block, r  # L42-43
                return out
        if step is Step.PREVOTE and keeper.quorum(r, VoteStep.PREVOTE, None):  # L44
            return self._precommit(None)  # L45-46
        if ("L47", r) not in self._fired and keeper.quorum_any(r, VoteStep.PRECOMMIT):
            self._fired.add(("L47", r))  # L47: schedule timeoutPrecommit once per round
            duration = self.config.timeouts.duration(TimeoutKind.PRECOMMIT, r)
            return [ScheduleTimeout(TimeoutKind.PRECOMMIT, h, r, duration)]
        return None

    def _decide(self, block: Block, certificate: CommitCertificate) -> list[Action]:
        """L49-54: commit, apply, move to the next height and start its round 0."""
        results = self.app.apply_block(block.height, block.txs)
        app_hash = self.app.app_hash()
        every = self.config.snapshot_every
        snapshot = self.app.snapshot() if every and block.height % every == 0 else None
        self.mempool.update(block.txs)
        out: list[Action] = [Commit(block, certificate, results, app_hash, snapshot)]
        self._last_hash = block.hash
        self._last_certificate = certificate
        future = list(self._future.values())
        self._enter_height(block.height + 1)  # L52-54 (resets lock and valid values)
        pause = self.config.timeouts.commit
        if pause > 0:
            self._waiting = True  # L54 StartRound(0) once the COMMIT timer fires
            out.append(ScheduleTimeout(TimeoutKind.COMMIT, self._height, 0, pause))
        else:
            out += self._start_round(0)
        for envelope in future:  # messages of the new height that arrived early
            out += self._accept(envelope)
        return out
