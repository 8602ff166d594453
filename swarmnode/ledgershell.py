"""The ledger shell: drives the sans-I/O `TendermintCore` over a `Transport` and SQLite.

Tasks (in the node's nursery):

* consensus loop: the only task touching the core. It takes events (gossip, block-sync
  answers, timers, our transactions) from one channel and performs the core's actions in
  order: `PersistSigned` is written to SQLite before the `Broadcast` after it is sent, a
  `Commit` is stored before anything else. Idle pacing is the core's
  ``create_empty_blocks_interval`` (here ``idle_block_interval``, default half the
  propose timeout).
* gossip pump (topic ``consensus``), a timer task, and a block-sync server.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Sequence
from typing import Final, final

import trio

from consensus.blocks import EnvelopeOpener
from consensus.contract import Contract
from consensus.core import (
    PRECOMMIT_STEP,
    PREVOTE_STEP,
    Action,
    Broadcast,
    Commit,
    CoreConfig,
    Event,
    MessageReceived,
    PersistSigned,
    ReportEvidence,
    RequestBlocks,
    ScheduleTimeout,
    TendermintCore,
    TimeoutConfig,
    TimeoutFired,
    TxRejected,
    TxSubmitted,
)
from consensus.genesis import Genesis
from consensus.messages import CONSENSUS_MESSAGES, BlockRequest, BlockResponse
from consensus.store import LedgerStore, recover
from consensus.transactions import TxBody, TxSigner, VoteEquivocation
from consensus.votes import Equivocation
from crypto.envelope import Envelope, EnvelopeCodec
from crypto.errors import MalformedMessage, ProtocolError, UnknownMessageType, WrongChain
from crypto.identity import NodeId, NodeIdentity

from .config import NodeConfig
from .net.base import Inbound, Transport, TransportError
from .startup import ForeignChains

CONSENSUS_TOPIC: Final = "consensus"
BLOCKS_PROTOCOL: Final = "/swarmnode/blocks/1"
_INBOX: Final = 4096
_VOTE_STEPS: Final = frozenset({PREVOTE_STEP, PRECOMMIT_STEP})  # equivocations the contract records


@final
class LedgerShell:
    """Our copy of the ledger: the contract, its SQLite store and the consensus core."""

    def __init__(
        self, config: NodeConfig, genesis: Genesis, identity: NodeIdentity, transport: Transport,
        idle_block_interval: float | None, log: logging.Logger,
    ) -> None:  # fmt: skip
        self._identity = identity
        self._me = identity.node_id
        self._transport = transport
        self._log = log
        self._store = LedgerStore(config.node.storage_dir / "ledger.sqlite", genesis.chain_id)
        app, resume = recover(self._store, lambda: Contract(genesis))
        assert isinstance(app, Contract)
        self.contract: Final[Contract] = app
        self._opener = EnvelopeOpener(EnvelopeCodec(genesis.chain_id, CONSENSUS_MESSAGES))
        self._foreign_chains = ForeignChains(genesis.chain_id, log)
        propose = config.ledger.propose_timeout
        timeouts = TimeoutConfig(
            propose=propose,
            prevote=propose / 2,
            precommit=propose / 2,
            delta=propose / 2,
            rebroadcast=propose,
            commit=config.ledger.block_interval,  # block pacing after a commit (timeout_commit)
        )
        idle = idle_block_interval if idle_block_interval is not None else propose / 2
        self._core = TendermintCore(
            identity=identity,
            opener=self._opener,
            app=app,
            resume=resume,
            config=CoreConfig(timeouts=timeouts, create_empty_blocks_interval=idle),
        )
        self._signer = TxSigner(genesis.chain_id, identity)
        self._inbox_send, self._inbox = trio.open_memory_channel[Event](_INBOX)
        self._timers: list[tuple[float, int, TimeoutFired]] = []
        self._timer_seq = 0
        self._timer_wakeup = trio.Event()
        self._reported_evidence: set[tuple[bytes, bytes]] = set()  # vote pairs submitted as evidence
        self._committed = trio.Event()
        self._on_commit: Callable[[], None] = lambda: None
        self._nursery: trio.Nursery | None = None

    async def start(self, nursery: trio.Nursery, on_commit: Callable[[], None]) -> None:
        """Serve block sync, and run the gossip pump, the timers and the consensus loop in
        `nursery`; `on_commit` runs after each block is stored."""
        self._nursery = nursery
        self._on_commit = on_commit
        self._transport.set_handler(BLOCKS_PROTOCOL, self.serve_blocks)
        self.refresh_peers()
        inbox = await self._transport.subscribe(CONSENSUS_TOPIC)
        nursery.start_soon(self._gossip_pump, inbox)
        nursery.start_soon(self._timer_loop)
        nursery.start_soon(self._consensus_loop)

    def close(self) -> None:
        self._store.close()

    async def _gossip_pump(self, inbox: trio.MemoryReceiveChannel[Inbound]) -> None:
        async for message in inbox:
            data, sender = message.data, message.sender
            try:
                envelope = self._opener.open(data)
            except WrongChain as exc:  # a peer started with another genesis file: said once
                self._foreign_chains.saw(sender, exc.theirs)
                continue
            except ProtocolError as exc:
                self._log.info("dropped a bad consensus message from %s: %s", sender, exc)
                continue
            if envelope.sender != sender:
                self._log.debug("relayed consensus message from %s via %s", envelope.sender, sender)
            await self._inbox_send.send(MessageReceived(envelope))

    async def _timer_loop(self) -> None:
        while True:
            due = self._timers[0][0] if self._timers else math.inf
            with trio.move_on_at(due):
                await self._timer_wakeup.wait()
            self._timer_wakeup = trio.Event()
            now = trio.current_time()
            while self._timers and self._timers[0][0] <= now:
                _, _, fired = heapq.heappop(self._timers)
                await self._inbox_send.send(fired)

    async def _consensus_loop(self) -> None:
        await self.perform(self._core.start())
        async for event in self._inbox:
            await self.perform(self._core.handle(event))

    async def perform(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, PersistSigned):
                # Durable before the Broadcast that follows it (never two votes for one slot).
                self._store.persist_signed(
                    action.height, action.round, action.step, action.wire, action.locked_block
                )
            elif isinstance(action, Broadcast):
                await self._publish(action.envelope)
            elif isinstance(action, ScheduleTimeout):
                self._timer_seq += 1
                fired = TimeoutFired(action.kind, action.height, action.round)
                heapq.heappush(self._timers, (trio.current_time() + action.duration, self._timer_seq, fired))
                self._timer_wakeup.set()
            elif isinstance(action, Commit):
                self._commit(action)
            elif isinstance(action, RequestBlocks):
                assert self._nursery is not None
                self._nursery.start_soon(self._request_blocks, action.peer, action.envelope)
            elif isinstance(action, ReportEvidence):
                self._report_equivocation(action.evidence)
            elif isinstance(action, TxRejected):
                self._log.debug("transaction %s not admitted: %s", action.tx_hash.hex()[:12], action.reason)

    def _report_equivocation(self, evidence: Equivocation) -> None:
        """Put a validator's double vote on the ledger (`VoteEquivocation`), once per pair.

        The contract takes prevote/precommit pairs only; a double proposal is logged."""
        self._log.warning(
            "equivocation by %s at height %d round %d (%s)",
            evidence.validator.short,
            evidence.height,
            evidence.round,
            evidence.step,
        )
        pair = (min(evidence.first, evidence.second), max(evidence.first, evidence.second))
        if evidence.step not in _VOTE_STEPS or pair in self._reported_evidence:
            return
        if self.contract.member(self._me) is None:
            return  # only members may submit evidence
        try:
            body = VoteEquivocation(first=pair[0], second=pair[1])
        except ValueError as exc:
            self._log.info("equivocation evidence not submittable: %s", exc)
            return
        self._reported_evidence.add(pair)
        # Not awaited here: we run inside the consensus loop, which drains the inbox `submit` feeds.
        assert self._nursery is not None
        self._nursery.start_soon(self.submit, body)

    async def _publish(self, envelope: Envelope) -> None:
        try:
            await self._transport.publish(CONSENSUS_TOPIC, envelope.wire)
        except TransportError as exc:
            self._log.info("publish failed: %s", exc)

    def _commit(self, commit: Commit) -> None:
        block = commit.block
        self._store.append_block(block, commit.certificate)
        # The core attaches the application snapshot of exactly this height (block sync may
        # commit several blocks in one step, so the contract can already be further ahead).
        if commit.snapshot is not None:
            self._store.save_snapshot(block.height, commit.app_hash, commit.snapshot)
        for tx, result in zip(block.txs, commit.results, strict=True):
            if result is not None and self._is_own(tx):
                self._log.debug("own transaction rejected at height %d: %s", block.height, result)
        self.refresh_peers()
        self._on_commit()
        # Wake `wait_for` callers: set the event they hold, then hand out a fresh one.
        self._committed.set()
        self._committed = trio.Event()

    def _is_own(self, tx: bytes) -> bool:
        try:
            return self.contract.decode(tx).sender == self._me
        except ProtocolError:
            return False

    async def _request_blocks(self, peer: NodeId, envelope: Envelope) -> None:
        try:
            answer = await self._transport.request(peer, BLOCKS_PROTOCOL, envelope.wire)
            response = self._opener.open(answer)
        except (TransportError, ProtocolError) as exc:
            self._log.debug("block sync from %s failed: %s", peer.short, exc)
            return
        if isinstance(response.body, BlockResponse) and response.sender == peer:
            await self._inbox_send.send(MessageReceived(response))

    async def serve_blocks(self, sender: NodeId, data: bytes) -> bytes:
        request = self._opener.open(data)
        if not isinstance(request.body, BlockRequest):
            raise UnknownMessageType(f"expected a block request, got {type(request.body).__name__}")
        if request.sender != sender:
            raise MalformedMessage(f"block request signed by {request.sender.short}, sent by {sender.short}")
        response = self._store.block_response(request.body)
        return self._opener.codec.seal(self._identity, response)

    def refresh_peers(self) -> None:
        state = self.contract.state
        allowed = {m.node_id for m in state.members} | {p.node_id for p in state.pending}
        # A member that left still validates until the new set takes effect (two heights on):
        # keep talking to every validator of the heights still to be decided.
        for height in range(state.height, state.height + 3):
            allowed.update(self.contract.validators(height))
        self._transport.set_allowed_peers(allowed)
        records = [(m.node_id, m.addresses) for m in state.members]
        records += [(p.node_id, p.addresses) for p in state.pending]
        for node, addresses in records:
            if node != self._me and addresses:
                try:
                    self._transport.add_peer_addresses(node, addresses)
                except ValueError as exc:
                    self._log.info("ignoring addresses of %s: %s", node.short, exc)

    async def submit(self, body: TxBody) -> None:
        """Sign `body` as this node and hand it to the ledger (gossiped, then committed)."""
        await self._inbox_send.send(TxSubmitted(self._signer.sign(body)))

    async def submit_transaction(self, tx: bytes) -> None:
        """Submit a transaction signed by someone else (e.g. a joiner's request); ProtocolError if bad."""
        self.contract.decode(tx)
        await self._inbox_send.send(TxSubmitted(tx))

    def sign(self, body: TxBody) -> bytes:
        """`body` signed by this node (for a transaction someone else submits)."""
        return self._signer.sign(body)

    async def wait_for(self, predicate: Callable[[Contract], bool]) -> None:
        """Wait until `predicate(contract)` holds after some commit (bound it with a timeout)."""
        while not predicate(self.contract):
            await self._committed.wait()
