"""The node runtime: one trio program per site (DESIGN sections 3-6).

A `Node` owns the identity, the genesis, the ledger (SQLite `LedgerStore`,
the `Contract`, the sans-I/O `TendermintCore`), a `Transport`, the key-epoch
secrets and the round reconciler of `swarmnode.round`. Tasks, all in one
nursery that `open_swarm_node` owns (nothing outlives the ``async with``):

* consensus loop: the only task touching the core. It takes events (gossip,
  block-sync answers, timers, our transactions) from one channel and performs
  the core's actions in order: `PersistSigned` is written to SQLite before the
  `Broadcast` after it is sent, a `Commit` is stored before anything else.
  Idle pacing, so an idle swarm does not spin out blocks: when we are the next
  height's proposer with an empty mempool, the height's start is held back up to
  ``idle_block_interval`` (or until a transaction shows up, which then goes into
  that very block); an own empty proposal in a later round is held the same way.
* gossip pump (topic ``consensus``), a timer task, and a block-sync server.
* round driver: after every commit or local change, `reconcile()` says which
  jobs this node owes; each job key runs once (retried with back-off if it
  failed: a peer was unreachable, a blob was missing). Crypto runs in a worker
  thread unless ``inline_compute=True`` (simulations on trio's MockClock, where a
  thread would let virtual time jump during the computation).

Key-epoch messages travel as content-addressed blobs whose hashes the members
commit (`EpochPublicShare`, `EpochSealedShares`): a member that was offline
fetches them later by hash, and what was announced is bound by the ledger.
Round blobs (contributions, aggregates, decryption shares) this node puts or
fetches are persisted to ``storage_dir/blobs`` before their hashes are committed
or used and re-served after a restart (a restart of the whole swarm loses no
round); they are deleted once their round closed.

Plaintext mode (genesis ``training.secure = false``) keeps the same phases and
contract: the key epoch still runs (the contract opens rounds only after one),
a contribution is a `PlaintextUpdate` (raw float32 parameters + weight), the
leader's "aggregate" is ``models.merge(genesis merge_method, ...)`` over the
decoded updates in node-id order (the verifier recomputes it), each decrypt-set
member's "share" is a `PlaintextConfirmation` of the aggregate hash it
recomputed (still refused below min_peers), and combining yields the aggregate
itself as the merged parameters.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar, cast, final

import numpy as np
import numpy.typing as npt
import trio

from consensus.blocks import EnvelopeOpener
from consensus.contract import MERGED, Contract, ContributionRecord, RoundSummary, summarize
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
    TimeoutKind,
    TxRejected,
    TxSubmitted,
)
from consensus.genesis import Genesis
from consensus.messages import CONSENSUS_MESSAGES, BlockRequest, BlockResponse, Proposal
from consensus.store import LedgerStore, recover
from consensus.transactions import (
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
    EpochTimeout,
    JoinRequest,
    Leave,
    MergedModel,
    PhaseTimeout,
    Ready,
    ShareMismatch,
    Stop,
    TxBody,
    TxSigner,
    VoteEquivocation,
)
from consensus.votes import Equivocation
from crypto import cbor
from crypto.ckks_params import param_set
from crypto.envelope import Envelope, EnvelopeCodec
from crypto.errors import InvalidKeyShare, MalformedMessage, ProtocolError, UnknownMessageType, WrongChain
from crypto.identity import NodeId, NodeIdentity
from crypto.robust_merge import (
    UncheckablePoints,
    WrongShareDetected,
    combine_points,
    default_max_faulty,
    make_point_share,
    point_of,
)
from crypto.secure_merge import (
    AggregateBuilder,
    DecryptionRefused,
    EpochKeys,
    EpochSpec,
    KeyEpoch,
    PublicKeyShare,
    RoundBinding,
    SealedKeyShare,
    combine,
    decryption_share,
    encrypt_update,
    start_key_epoch,
)
from crypto.testing import byzantine_share, inconsistent_dealing
from models.flatten import spec_layout
from models.merge import MergeMethod
from models.merge import merge as merge_parameters

from .config import NodeConfig
from .keystore import KeyFileRefused, NodeFiles
from .net.base import BlobNotFound, Inbound, Transport, TransportError
from .net.factory import open_transport
from .round import (
    AggregateContributions,
    CombineShares,
    CommitEpochShare,
    ConfirmEpoch,
    Contribute,
    Delivery,
    EpochStageKey,
    Job,
    LoadMerged,
    LocalFacts,
    MakeDecryptionShare,
    MergeWanted,
    Plan,
    PrefetchContributions,
    PrepareAggregate,
    PublishEpochFingerprint,
    RejoinEpoch,
    RevealEpochShares,
    Stage,
    SubmitEpochTimeout,
    SubmitPhaseTimeout,
    SubmitReady,
    VerifyAggregate,
    epoch_deadline,
    epoch_stage,
    reconcile,
)
from .sharelog import ShareLog, ShareLogError, ShareRecord
from .startup import ForeignChains

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger("swarmnode.node")

CONSENSUS_TOPIC: Final = "consensus"
BLOCKS_PROTOCOL: Final = "/swarmnode/blocks/1"
REPLICATE_PROTOCOL: Final = "/swarmnode/replicate/1"
REPLICATE_TIMEOUT: Final = 30.0
_RETRY_FIRST: Final = 0.5
_RETRY_MAX: Final = 8.0
_RESUBMIT_AFTER: Final = 15.0  # a job done this long ago but still planned runs again
_INBOX: Final = 4096
_VOTE_STEPS: Final = frozenset({PREVOTE_STEP, PRECOMMIT_STEP})  # equivocations the contract records

T = TypeVar("T")
FloatVector = npt.NDArray[np.float32]


# -- public values and errors ---------------------------------------------------------------


_PEER_WATCH: Final = 0.5  # seconds between checks that a blob's source is still connected
_SUM_WAIT: Final = 5.0  # seconds a job waits for another job's sum of the same blobs
# A node just (re)started has no peers for its first seconds, and a merged model it missed
# is only on its peers: keep asking for this long before giving up.
_MODEL_FETCH_PATIENCE: Final = 120.0


class SwarmError(Exception):
    """The swarm could not give what was asked (base of the runtime's errors)."""


class SwarmStopped(SwarmError):
    """Training is over (stopping rule or member vote); `final` is the final model if known."""

    def __init__(self, message: str, final: MergeResult | None = None) -> None:
        super().__init__(message)
        self.final: Final = final


class MergeTimeout(SwarmError):
    """No merged model arrived before the merge timeout."""


class NodeClosed(SwarmError):
    """The node shut down (or crashed) while the call was waiting."""


@final
@dataclass(frozen=True, slots=True, eq=False)
class MergeResult:
    """One merged round as this node received it; `parameters` is bit-identical on every node."""

    round: int
    parameters: FloatVector
    params_hash: bytes
    participants: tuple[NodeId, ...]
    weight: int  # total weight of the contributions in the merge
    stopped: bool  # training stopped with this round (it is the final model)


@final
@dataclass(frozen=True, slots=True)
class StopInfo:
    reason: str
    merged_rounds: int
    final_model_hash: bytes | None
    final: MergeResult | None
    saved_to: Path | None


@final
@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: NodeId
    name: str
    height: int
    members: tuple[NodeId, ...]
    round: int
    phase: str
    step: int
    roles: tuple[str, ...]  # "participant", "leader", "verifier", "decryptor"
    key_epoch: int
    key_epoch_complete: bool
    key_epoch_waiting_for: tuple[NodeId, ...]  # members holding the running key epoch up
    last_merged_hash: bytes | None
    stopped: bool
    peers: tuple[NodeId, ...]
    history: tuple[RoundSummary, ...]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """Misbehaviour for fault-injection tests (all off by default).

    wrong_aggregate: as leader, commit the hash of a wrong (but well-formed) aggregate.
    wrong_verdict:   as verifier, agree with whatever aggregate the leader committed
                     without recomputing it (colludes with a lying leader).
    trust_aggregate: as decrypt-set member, make a share for the committed aggregate
                     without recomputing it (a colluding decryptor).
    crash_before:    job kinds ("aggregate", "decryption-share", "contribute", ...) before
                     which the node crashes: it stops every task and closes its transport.
    bad_dealing:     as key-epoch dealer, send the next member a signed share that is off
                     the dealing's polynomial (`crypto.testing.inconsistent_dealing`).
    byzantine_share: as decryptor, publish our share shifted on every coefficient but the
                     weight coefficient (`crypto.testing.byzantine_share`).
    """

    wrong_aggregate: bool = False
    wrong_verdict: bool = False
    trust_aggregate: bool = False
    crash_before: frozenset[str] = frozenset()
    bad_dealing: bool = False
    byzantine_share: bool = False


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeOptions:
    inline_compute: bool = False
    idle_block_interval: float | None = None  # default: half the propose timeout
    stop_linger: float | None = (
        None  # seconds a stopped node keeps serving on exit (default: 2 propose timeouts)
    )
    faults: Faults = field(default_factory=Faults)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PlaintextUpdate:
    """A contribution blob when genesis `training.secure` is false: the RAW float32
    parameters (little endian) and the merge weight. Canonical CBOR, like every format."""

    weight: int
    length: int
    params: bytes

    def __post_init__(self) -> None:
        if self.weight < 1 or self.length < 1 or len(self.params) != 4 * self.length:
            raise ValueError("weight and length must be >= 1 and params must hold length float32 values")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PlaintextConfirmation:
    """A T member's "decryption share" in plaintext mode: nothing to decrypt, so it confirms
    the aggregate it recomputed from the committed contributions (the phase still completes)."""

    round: int
    step: int
    node_id: NodeId
    aggregate_hash: bytes


def encode_plaintext_update(parameters: FloatVector, weight: int) -> bytes:
    """The contribution blob of plaintext mode."""
    vector = np.ascontiguousarray(parameters, dtype="<f4").reshape(-1)
    return cbor.dumps_dataclass(PlaintextUpdate(weight=weight, length=vector.size, params=vector.tobytes()))


def decode_plaintext_update(data: bytes, *, length: int) -> tuple[FloatVector, int]:
    """(float32 parameters, weight) of a peer's plaintext contribution; a wrong length or a
    NaN/infinity raises MalformedMessage (a peer's bad input), schema errors SchemaError."""
    update = cbor.loads_dataclass(PlaintextUpdate, data)
    if update.length != length:
        raise MalformedMessage(f"plaintext update has {update.length} parameters, expected {length}")
    vector = np.frombuffer(update.params, dtype="<f4").astype(np.float32)
    if not np.isfinite(vector).all():
        raise MalformedMessage("plaintext update holds NaN or infinity")
    return vector, update.weight


def decode_plaintext_model(data: bytes, *, length: int) -> FloatVector:
    """A merged parameter blob (raw little-endian float32), checked for size and finiteness."""
    if len(data) != 4 * length:
        raise MalformedMessage(f"merged model blob has {len(data)} bytes, expected {4 * length}")
    vector = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(vector).all():
        raise MalformedMessage("merged model blob holds NaN or infinity")
    return vector


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicateRequest:
    """Wire body of a replicate request: copy blob `digest` of round `round` from me."""

    round: int
    digest: bytes

    def __post_init__(self) -> None:
        if self.round < 1 or len(self.digest) != 32:
            raise ValueError("round must be >= 1 and digest a SHA-256")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EpochBundle:
    """Blob of one member's key-epoch reveal: its public share (checked against the
    commitment on the ledger) and one sealed Shamir share per other member."""

    public: PublicKeyShare
    sealed: tuple[SealedKeyShare, ...]


# -- the node ---------------------------------------------------------------------------------


class _Crash(Exception):
    """Internal: a fault-injected crash."""


@final
class Node:
    """One site's runtime. Build it with `open_swarm_node`."""

    def __init__(
        self,
        config: NodeConfig,
        genesis: Genesis,
        identity: NodeIdentity,
        transport: Transport,
        options: NodeOptions = NodeOptions(),
    ) -> None:
        if transport.node_id != identity.node_id:
            raise SwarmError("the transport belongs to another identity")
        if config.model.spec_hash() != genesis.training.model_spec_hash:
            raise SwarmError(
                f"{config.source or 'config'}: the [model] section does not match the genesis model spec "
                f"({config.model.spec_hash().hex()[:12]} vs {genesis.training.model_spec_hash.hex()[:12]})"
            )
        self.config: Final = config
        self.genesis: Final = genesis
        self.identity: Final = identity
        self.node_id: Final = identity.node_id
        self.transport: Final = transport
        self.options: Final = options
        self.n_params: Final = spec_layout(config.model).size
        # Genesis's set, the one the contract gives every key epoch (`KeyEpoch.ckks_params`).
        self.ckks_params: Final = param_set(genesis.training.ckks_params).params
        self._log = logging.getLogger(f"swarmnode.node.{config.node.name}")
        storage = Path(config.node.storage_dir)
        storage.mkdir(parents=True, exist_ok=True)
        self.storage_dir: Final = storage
        # Before the ledger opens: a directory of another node or chain stops us here.
        self.files: Final = NodeFiles(storage, identity, genesis.chain_id)
        try:
            self._share_log: Final = ShareLog(storage)  # one decryption share per aggregate, ever
        except ShareLogError as exc:
            raise SwarmError(str(exc)) from None
        self._store = LedgerStore(storage / "ledger.sqlite", genesis.chain_id)
        app, resume = recover(self._store, lambda: Contract(genesis))
        assert isinstance(app, Contract)
        self.contract: Final[Contract] = app
        self._opener = EnvelopeOpener(EnvelopeCodec(genesis.chain_id, CONSENSUS_MESSAGES))
        self._foreign_chains = ForeignChains(genesis.chain_id, self._log)
        timeouts = TimeoutConfig(
            propose=config.ledger.propose_timeout,
            prevote=config.ledger.propose_timeout / 2,
            precommit=config.ledger.propose_timeout / 2,
            delta=config.ledger.propose_timeout / 2,
            rebroadcast=config.ledger.propose_timeout,
            commit=config.ledger.block_interval,  # block pacing after a commit (timeout_commit)
        )
        self._core = TendermintCore(
            identity=identity,
            opener=self._opener,
            app=app,
            resume=resume,
            config=CoreConfig(timeouts=timeouts),
        )
        self._idle_interval = (
            options.idle_block_interval
            if options.idle_block_interval is not None
            else config.ledger.propose_timeout / 2
        )
        self._signer = TxSigner(genesis.chain_id, identity)
        self._inbox_send, self._inbox = trio.open_memory_channel[Event](_INBOX)
        self._timers: list[tuple[float, int, TimeoutFired]] = []
        self._timer_seq = 0
        self._timer_wakeup = trio.Event()
        self._held: tuple[float, Envelope] | None = None
        # Our next height's start, held while we would propose an empty block (see below).
        self._idle_start: tuple[float, TimeoutFired] | None = None
        self._idle_waited = False
        self._changed = trio.Event()
        self._committed = trio.Event()
        self._stage_since: tuple[Stage, float] | None = None
        self._epoch_stage_since: tuple[EpochStageKey, float] | None = None
        self._running: set[tuple[object, ...]] = set()
        self._done: dict[tuple[object, ...], float] = {}
        self._retry: dict[tuple[object, ...], tuple[float, float]] = {}  # key -> (not before, backoff)
        self._epochs: dict[int, KeyEpoch] = {}
        self._keys: dict[int, EpochKeys] = {}
        self._models: dict[bytes, FloatVector] = {}
        # (round, step, aggregate hash) we would not decrypt: not the sum of the contributions.
        self._refused_aggregates: set[tuple[int, int, bytes]] = set()
        self._reported_evidence: set[tuple[bytes, bytes]] = set()  # vote pairs submitted as evidence
        # Round blobs persisted by this process -> their round (blobs/ outlives a restart).
        self._blob_rounds: dict[bytes, int] = {}
        self._blobs_pruned_for = 0  # the open round when blobs/ was last pruned
        # Blob fetches under way (digest -> done): a second fetch of the same blob waits for
        # the first and then reads the transport's store, so no blob crosses the wire twice.
        self._fetching: dict[tuple[bytes, NodeId | None], trio.Event] = {}
        # Results of this round's expensive steps that several jobs need (our own sum of a set
        # of contributions, our decryption share of it): key -> bytes, computed once.
        self._computed: dict[tuple[object, ...], bytes] = {}
        self._computing: dict[tuple[object, ...], trio.Event] = {}
        self._wanted: MergeWanted | None = None
        self._wanted_params: FloatVector | None = None
        self._waiter: _Waiter | None = None
        self._stopped = trio.Event()
        self._stop_info: StopInfo | None = None
        self._closed = False
        self._crashed = False
        self._cancel_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self.round_times: dict[int, float] = {}  # round -> time from its start to its merge here
        self._round_started: dict[int, float] = {}
        self._load_local_state()

    # -- startup -------------------------------------------------------------------------------

    def _load_local_state(self) -> None:
        # A refused key file leaves us without that epoch's keys (logged); an unsafe one
        # (UnsafeKeyFile: a symlink or open to others) stops the node before anything runs.
        for epoch in self.files.epochs_with_keys():
            try:
                data = self.files.load_epoch(epoch, "keys")
                if data is not None:
                    self._keys[epoch] = EpochKeys.import_secret(data, self.ckks_params)
            except KeyFileRefused as exc:
                self._log.error("running without the keys of key epoch %d: %s", epoch, exc)
            except ProtocolError as exc:
                path = self.files.epoch_file(epoch, "keys")
                self._log.error("running without the keys of key epoch %d: %s: %s", epoch, path, exc)
        self._load_epoch_dealings()
        # Re-serve what we announced in the current key epoch (lost with a restart).
        epoch = self.contract.key_epoch().number
        try:
            bundle = self.files.load_epoch(epoch, "bundle")
        except KeyFileRefused as exc:
            self._log.error("key epoch %d: not serving our bundle: %s", epoch, exc)
            bundle = None
        if bundle is not None:
            self.transport.put_blob(bundle)
        for digest in self._model_hashes_on_ledger():
            data = self.files.load_model(digest)
            if data is not None:
                self._hold_model(digest, data)
        # Blobs of the round that was open when we went down: peers may need them (after a
        # full restart nobody else has them). Blobs of rounds closed since go at the next prune.
        for _digest, data in self.files.stored_blobs():
            self.transport.put_blob(data)
        self._blobs_pruned_for = self.contract.round.number

    def _load_epoch_dealings(self) -> None:
        """Take back our part of the key epoch that was running when we went down (persisted
        before its commitment went out), so that we can still reveal and finish it."""
        current = self.contract.key_epoch()
        for number in self.files.epochs_with("dealing"):
            if number in self._keys or number != current.number or current.complete:
                self.files.delete_epoch(number, "dealing")  # finished or superseded
                continue
            try:
                data = self.files.load_epoch(number, "dealing")
                if data is None:
                    continue
                epoch = KeyEpoch.import_secret(data, self.identity, self.ckks_params)
            except KeyFileRefused as exc:
                self._log.error("key epoch %d: our stored dealing is unusable: %s", number, exc)
                continue
            except ProtocolError as exc:
                path = self.files.epoch_file(number, "dealing")
                self._log.error("key epoch %d: our stored dealing is unusable: %s: %s", number, path, exc)
                continue
            if epoch.spec != EpochSpec(current.seed, current.members, current.threshold):
                self._log.error("key epoch %d: our stored dealing is for another epoch setup", number)
                continue
            self._epochs[number] = epoch
            self._log.info("key epoch %d: resumed with our stored dealing", number)

    def _prune_epoch_dealings(self) -> None:
        """Drop dealings of epochs the ledger has moved past (abandoned or superseded)."""
        current = self.contract.key_epoch().number
        for number in [n for n in self._epochs if n < current]:
            del self._epochs[number]
            self.files.delete_epoch(number, "dealing")

    def _model_hashes_on_ledger(self) -> list[bytes]:
        hashes = [r.merged_hash for r in self.contract.history() if r.merged_hash is not None]
        return hashes[-2:]  # the latest merged model (and the one before, for a slow peer)

    def _hold_model(self, digest: bytes, data: bytes) -> FloatVector:
        params = np.frombuffer(data, dtype="<f4").astype(np.float32)
        params.setflags(write=False)
        self._models[digest] = params
        self.transport.put_blob(data)
        return params

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until `aclose` (or a simulated crash). `open_swarm_node` calls this."""
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self.transport.set_handler(BLOCKS_PROTOCOL, self._serve_blocks)
                    self.transport.set_handler(REPLICATE_PROTOCOL, self._serve_replicate)
                    self._refresh_peers()
                    inbox = await self.transport.subscribe(CONSENSUS_TOPIC)
                    nursery.start_soon(self._gossip_pump, inbox)
                    nursery.start_soon(self._timer_loop)
                    nursery.start_soon(self._consensus_loop)
                    nursery.start_soon(self._round_driver)
                    self._log.info(
                        "node %s up at height %d (chain %s)",
                        self.node_id.short,
                        self.contract.height,
                        self.genesis.chain_id.hex()[:12],
                    )
                    task_status.started()
        finally:
            self._closed = True
            self._fail_waiter(NodeClosed("the node crashed" if self._crashed else "the node was closed"))
            self._stopped_or_closed()
            self._store.close()
            if self._crashed:
                with trio.CancelScope(shield=True):
                    await self.transport.aclose()

    async def aclose(self) -> None:
        self._cancel_scope.cancel()

    def _stopped_or_closed(self) -> None:
        self._stopped.set()

    # -- consensus shell -----------------------------------------------------------------------

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
        await self._perform(self._core.start())
        while True:
            deadline = self._held[0] if self._held is not None else math.inf
            if self._idle_start is not None:
                deadline = min(deadline, self._idle_start[0])
            event: Event | None = None
            with trio.move_on_at(deadline):
                event = await self._inbox.receive()
            if isinstance(event, TimeoutFired) and self._defer_height_start(event):
                self._idle_start = (trio.current_time() + self._idle_interval, event)
                event = None
            if event is not None:
                await self._perform(self._core.handle(event))
            if self._idle_start is not None and (
                trio.current_time() >= self._idle_start[0] or len(self._core.mempool) > 0
            ):
                _, start = self._idle_start
                self._idle_start = None
                # Waited the idle interval already: an empty proposal now goes out at once.
                self._idle_waited = len(self._core.mempool) == 0
                await self._perform(self._core.handle(start))
                self._idle_waited = False
            if self._held is not None and (
                trio.current_time() >= self._held[0] or len(self._core.mempool) > 0
            ):
                _, envelope = self._held
                self._held = None
                await self._publish(envelope)

    def _defer_height_start(self, fired: TimeoutFired) -> bool:
        """Whether to hold back the start of the next height (the commit timeout) because we
        would propose it with nothing in the mempool.

        Idle pacing used to hold only our *empty proposal*: a transaction arriving meanwhile
        released it, but as an empty block, and waited for the height after (two consensus
        rounds for the first transaction of every round phase). Holding the height start
        instead (the same bound: ``idle_block_interval``, below the others' propose timeout)
        lets that transaction into the very block we then propose."""
        return (
            fired.kind is TimeoutKind.COMMIT
            and self._idle_interval > 0
            and len(self._core.mempool) == 0
            and self._core.proposer(fired.height, 0) == self.node_id
        )

    async def _perform(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, PersistSigned):
                # Durable before the Broadcast that follows it (never two votes for one slot).
                self._store.persist_signed(
                    action.height, action.round, action.step, action.wire, action.locked_block
                )
            elif isinstance(action, Broadcast):
                body = action.envelope.body
                if (
                    isinstance(body, Proposal)
                    and action.envelope.sender == self.node_id
                    and not body.block.txs
                    and len(self._core.mempool) == 0
                    and not self._idle_waited
                ):
                    self._held = (trio.current_time() + self._idle_interval, action.envelope)
                else:
                    await self._publish(action.envelope)
            elif isinstance(action, ScheduleTimeout):
                self._timer_seq += 1
                fired = TimeoutFired(action.kind, action.height, action.round)
                heapq.heappush(self._timers, (trio.current_time() + action.duration, self._timer_seq, fired))
                self._timer_wakeup.set()
            elif isinstance(action, Commit):
                self._on_commit(action)
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
        if self.contract.member(self.node_id) is None:
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
            await self.transport.publish(CONSENSUS_TOPIC, envelope.wire)
        except TransportError as exc:
            self._log.info("publish failed: %s", exc)

    def _on_commit(self, commit: Commit) -> None:
        block = commit.block
        self._store.append_block(block, commit.certificate)
        # The core attaches the application snapshot of exactly this height (block sync may
        # commit several blocks in one step, so the contract can already be further ahead).
        if commit.snapshot is not None:
            self._store.save_snapshot(block.height, commit.app_hash, commit.snapshot)
        for tx, result in zip(block.txs, commit.results, strict=True):
            if result is not None and self._is_own(tx):
                self._log.debug("own transaction rejected at height %d: %s", block.height, result)
        self._refresh_peers()
        self._prune_blobs()
        self._forget_computed()
        self._prune_epoch_dealings()
        self._changed.set()
        # Wake `wait_for` callers: set the event they hold, then hand out a fresh one.
        self._committed.set()
        self._committed = trio.Event()

    def _is_own(self, tx: bytes) -> bool:
        try:
            return self.contract.decode(tx).sender == self.node_id
        except ProtocolError:
            return False

    async def _request_blocks(self, peer: NodeId, envelope: Envelope) -> None:
        try:
            answer = await self.transport.request(peer, BLOCKS_PROTOCOL, envelope.wire)
            response = self._opener.open(answer)
        except (TransportError, ProtocolError) as exc:
            self._log.debug("block sync from %s failed: %s", peer.short, exc)
            return
        if isinstance(response.body, BlockResponse) and response.sender == peer:
            await self._inbox_send.send(MessageReceived(response))

    async def _serve_blocks(self, sender: NodeId, data: bytes) -> bytes:
        request = self._opener.open(data)
        if not isinstance(request.body, BlockRequest):
            raise UnknownMessageType(f"expected a block request, got {type(request.body).__name__}")
        if request.sender != sender:
            raise MalformedMessage(f"block request signed by {request.sender.short}, sent by {sender.short}")
        response = self._store.block_response(request.body)
        return self._opener.codec.seal(self.identity, response)

    def _refresh_peers(self) -> None:
        state = self.contract.state
        allowed = {m.node_id for m in state.members} | {p.node_id for p in state.pending}
        # A member that left still validates until the new set takes effect (two heights on):
        # keep talking to every validator of the heights still to be decided.
        for height in range(state.height, state.height + 3):
            allowed.update(self.contract.validators(height))
        self.transport.set_allowed_peers(allowed)
        records = [(m.node_id, m.addresses) for m in state.members]
        records += [(p.node_id, p.addresses) for p in state.pending]
        for node, addresses in records:
            if node != self.node_id and addresses:
                try:
                    self.transport.add_peer_addresses(node, addresses)
                except ValueError as exc:
                    self._log.info("ignoring addresses of %s: %s", node.short, exc)

    async def submit(self, body: TxBody) -> None:
        """Sign `body` as this node and hand it to the ledger (gossiped, then committed)."""
        await self._inbox_send.send(TxSubmitted(self._signer.sign(body)))

    async def submit_transaction(self, tx: bytes) -> None:
        """Submit a transaction signed by someone else (e.g. a joiner's request); ProtocolError if bad."""
        self.contract.decode(tx)
        await self._inbox_send.send(TxSubmitted(tx))

    # -- round driver --------------------------------------------------------------------------

    def _facts(self) -> LocalFacts:
        return LocalFacts(
            me=self.node_id,
            now=trio.current_time(),
            wanted=self._wanted,
            key_epochs=frozenset(self._keys),
            held_models=frozenset(self._models),
            stage_since=self._stage_since,
            epoch_stage_since=self._epoch_stage_since,
        )

    async def _round_driver(self) -> None:
        while True:
            self._changed = trio.Event()
            plan = reconcile(self.contract, self._facts())
            now = trio.current_time()
            if plan.stage is not None and (self._stage_since is None or self._stage_since[0] != plan.stage):
                self._stage_since = (plan.stage, now)
                self._log.debug("round %d phase %s step %d", *plan.stage)
                if plan.stage[1] == "contribute":
                    self._round_started.setdefault(plan.stage[0], now)
            if plan.delivery is not None:
                self._deliver(plan.delivery)
            if plan.stopped:
                self._on_stopped(plan)
            # A deadline already passed is handled by its SubmitPhaseTimeout job: no busy wake-up.
            wake = plan.deadline if plan.deadline is not None and plan.deadline > now else math.inf
            if plan.recheck is not None and plan.recheck > now:
                wake = min(wake, plan.recheck)
            wake = min(wake, self._track_epoch_stage(now))
            for job in plan.jobs:
                key = job.key
                if key in self._running:
                    continue
                done = self._done.get(key)
                if done is not None and now < done + _RESUBMIT_AFTER:
                    wake = min(wake, done + _RESUBMIT_AFTER)
                    continue
                retry = self._retry.get(key)
                if retry is not None and now < retry[0]:
                    wake = min(wake, retry[0])
                    continue
                self._running.add(key)
                assert self._nursery is not None
                self._nursery.start_soon(self._run_job, job)
            with trio.move_on_at(wake):
                await self._changed.wait()

    def _track_epoch_stage(self, now: float) -> float:
        """Note when we first saw the key-epoch stage; returns when our deadline vote for it
        is due (inf if none, or already due: the SubmitEpochTimeout job handles that)."""
        stage = epoch_stage(self.contract)
        if stage is None:
            self._epoch_stage_since = None
            return math.inf
        if self._epoch_stage_since is None or self._epoch_stage_since[0] != stage:
            self._epoch_stage_since = (stage, now)
            self._log.debug("key epoch %d stage %s", *stage)
        due = epoch_deadline(self.contract, self._facts())
        return due if due is not None and due > now else math.inf

    async def _run_job(self, job: Job) -> None:
        key = job.key
        kind = str(key[0])
        started = trio.current_time()
        try:
            if kind in self.options.faults.crash_before:
                raise _Crash(kind)
            await self._perform_job(job)
            self._log.debug("job %s done in %.2fs", key, trio.current_time() - started)
        except _Crash:
            self._log.warning("simulated crash before %s", key)
            self._crashed = True
            self._cancel_scope.cancel()
            return
        except (TransportError, ProtocolError, SwarmError, ValueError, ArithmeticError) as exc:
            previous = self._retry.get(key)
            backoff = _RETRY_FIRST if previous is None else min(previous[1] * 2, _RETRY_MAX)
            self._retry[key] = (trio.current_time() + backoff, backoff)
            self._log.info("job %s failed (%s: %s); retry in %.1fs", key, type(exc).__name__, exc, backoff)
        else:
            self._done[key] = trio.current_time()
            self._retry.pop(key, None)
        finally:
            self._running.discard(key)
            self._changed.set()

    async def _compute(self, fn: Callable[..., T], *args: object) -> T:
        if self.options.inline_compute:
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args)

    async def _fetch(self, digest: bytes, owner: NodeId | None, *, keep_round: int | None = None) -> bytes:
        """A blob by hash: from `owner` first (who announced it), then from anyone.

        With `keep_round`, the blob belongs to that (open) round and is persisted to
        ``blobs/`` so that we can serve it again after a restart. Concurrent fetches of one
        blob from one source share one transfer (the transport's blob store is the cache);
        another source is not held up by a stuck one."""
        source = (digest, owner)
        while (pending := self._fetching.get(source)) is not None:
            await pending.wait()
        done = self._fetching[source] = trio.Event()
        try:
            data = await self._fetch_once(digest, owner)
        finally:
            del self._fetching[source]
            done.set()
        if keep_round is not None:
            self._keep_blob(keep_round, data)
        return data

    async def _fetch_once(self, digest: bytes, owner: NodeId | None) -> bytes:
        data: bytes | None = None
        if owner is not None and owner != self.node_id:
            try:
                data = await self._from_connected(digest, owner)
            except (TransportError, ProtocolError) as exc:
                self._log.debug(
                    "blob %s not from %s (%s); asking anyone", digest.hex()[:12], owner.short, exc
                )
        if data is None:
            data = await self.transport.get_blob(digest, timeout=60.0)
        return data

    async def _from_connected(self, digest: bytes, owner: NodeId) -> bytes | None:
        """The blob from `owner`; None as soon as `owner`, connected when we asked, is no longer
        among our peers (it died mid-transfer: ask someone else now, not after the timeout)."""
        got: list[bytes] = []
        failed: list[Exception] = []
        async with trio.open_nursery() as nursery:

            async def fetch() -> None:
                try:
                    got.append(await self.transport.get_blob(digest, peer=owner, timeout=30.0))
                except (TransportError, ProtocolError) as exc:
                    failed.append(exc)
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                if owner not in self.transport.peers():
                    return  # not connected now: the fetch dials it (bounded by its timeout)
                while owner in self.transport.peers():
                    await trio.sleep(_PEER_WATCH)
                nursery.cancel_scope.cancel()

            nursery.start_soon(fetch)
            nursery.start_soon(watch)
        if got:
            return got[0]
        if failed:
            raise failed[0]
        return None

    async def _once(
        self,
        key: tuple[object, ...],
        compute: Callable[[], Awaitable[bytes]],
        *,
        wait_limit: float = math.inf,
    ) -> bytes:
        """`compute()` once per node for `key` (jobs asking concurrently share the run; a
        failed run leaves nothing behind, the next caller tries again). A caller waits at
        most `wait_limit` for a run under way, then computes on its own (a deterministic
        result: only for computations whose copies are equal bytes)."""
        while True:
            if key in self._computed:
                return self._computed[key]
            pending = self._computing.get(key)
            if pending is None:
                break
            with trio.move_on_after(wait_limit) as waited:
                await pending.wait()
            if waited.cancelled_caught:
                result = await compute()
                self._computed.setdefault(key, result)
                return result
        done = self._computing[key] = trio.Event()
        try:
            result = await compute()
            self._computed[key] = result
            return result
        finally:
            del self._computing[key]
            done.set()

    @staticmethod
    async def _concurrently(tasks: Sequence[Callable[[], Awaitable[None]]]) -> None:
        """Run `tasks` at once; the first failure cancels the rest and is raised as itself.

        Not as a trio ExceptionGroup: `_run_job` retries a job on a TransportError (a peer
        gone, a blob missing) and must see it as one, or a fetch that fails in a nursery
        would take the whole node down instead of being retried."""
        failures: list[Exception] = []
        async with trio.open_nursery() as nursery:

            async def run(task: Callable[[], Awaitable[None]]) -> None:
                try:
                    await task()
                except Exception as exc:  # re-raised below, the first one only
                    failures.append(exc)
                    nursery.cancel_scope.cancel()

            for task in tasks:
                nursery.start_soon(run, task)
        if failures:
            raise failures[0]

    def _forget_computed(self) -> None:
        """Drop the results of rounds that are closed (they hold whole ciphertexts)."""
        current = self.contract.round.number
        for key in [k for k in self._computed if cast(int, k[1]) < current]:
            del self._computed[key]

    def _keep_blob(self, round_number: int, data: bytes) -> bytes:
        """Persist a blob of round `round_number` (before its hash is committed or used) and
        serve it; returns its hash. `_prune_blobs` deletes it once the round closed."""
        # The transport knows the hash of a blob it handed us (no 30 MB re-hash); the disk copy
        # is written once: a hash still in `_blob_rounds` has its file (pruning drops both).
        digest = self.transport.put_blob(data)
        if digest not in self._blob_rounds:
            self.files.save_blob(data, digest=digest)
        self._blob_rounds[digest] = max(round_number, self._blob_rounds.get(digest, 0))
        return digest

    def _prune_blobs(self) -> None:
        """After the open round changed: delete the stored blobs of closed rounds."""
        r = self.contract.round
        if r.number <= self._blobs_pruned_for:
            return
        self._blobs_pruned_for = r.number
        keep = {c.blob_hash for c in r.contributions} | {v.value for v in r.decryption_shares}
        if r.aggregate_hash is not None:
            keep.add(r.aggregate_hash)
        keep |= {d for d, n in self._blob_rounds.items() if n >= r.number}
        self._blob_rounds = {d: n for d, n in self._blob_rounds.items() if n >= r.number}
        deleted = self.files.delete_blobs_except(keep)
        if deleted:
            self._log.debug("deleted %d blobs of closed rounds", deleted)

    async def _perform_job(self, job: Job) -> None:
        handlers: dict[type, Callable[[Job], Awaitable[None]]] = {
            CommitEpochShare: self._commit_epoch,
            RevealEpochShares: self._reveal_epoch,
            PublishEpochFingerprint: self._publish_fingerprint,
            ConfirmEpoch: self._confirm_epoch,
            SubmitEpochTimeout: self._epoch_timeout,
            RejoinEpoch: self._rejoin_epoch,
            SubmitReady: self._ready,
            Contribute: self._contribute,
            PrefetchContributions: self._prefetch,
            PrepareAggregate: self._prepare,
            AggregateContributions: self._aggregate,
            VerifyAggregate: self._verify,
            MakeDecryptionShare: self._decryption_share,
            CombineShares: self._combine,
            LoadMerged: self._load_merged,
            SubmitPhaseTimeout: self._phase_timeout,
        }
        await handlers[type(job)](job)

    # key epochs ----------------------------------------------------------------------------

    async def _commit_epoch(self, job: Job) -> None:
        assert isinstance(job, CommitEpochShare)
        epoch = self._epochs.get(job.epoch)
        if epoch is None:
            spec = EpochSpec(job.epoch_id, job.members, job.threshold)
            epoch = await self._compute(start_key_epoch, spec, self.identity, self.ckks_params)
            if self.options.faults.bad_dealing:
                epoch = await self._compute(inconsistent_dealing, epoch, self.identity)
            # Persist before the commitment goes out: a restart must still be able to reveal
            # (and finish with) exactly what the ledger will hold our commitment to.
            self.files.save_epoch(job.epoch, "dealing", epoch.export_secret())
            self._epochs[job.epoch] = epoch
        await self.submit(EpochPublicShare(epoch=job.epoch, share_hash=epoch.commitment))
        self._log.info("key epoch %d: committed our public share", job.epoch)

    async def _reveal_epoch(self, job: Job) -> None:
        assert isinstance(job, RevealEpochShares)
        epoch = self._dealing_of(job.epoch)
        epoch.expect_commitments(dict(job.commitments))
        outgoing = epoch.outgoing()
        public = next(b for b in outgoing if isinstance(b, PublicKeyShare))
        sealed = tuple(b for b in outgoing if isinstance(b, SealedKeyShare))
        bundle = cbor.dumps_dataclass(EpochBundle(public=public, sealed=sealed))
        # Persist before the hash goes out: after a restart we still serve what we announced.
        self.files.save_epoch(job.epoch, "bundle", bundle)
        digest = self.transport.put_blob(bundle)
        await self.submit(EpochSealedShares(epoch=job.epoch, shares_hash=digest))
        self._log.info("key epoch %d: revealed our shares", job.epoch)

    def _dealing_of(self, number: int) -> KeyEpoch:
        epoch = self._epochs.get(number)
        if epoch is None:
            # Our stored dealing was lost or unusable (logged at start): the epoch's deadline
            # excludes us and a following epoch takes us back in (see `consensus.contract`).
            raise SwarmError(f"key epoch {number}: our secret is gone (restarted mid-epoch)")
        return epoch

    async def _publish_fingerprint(self, job: Job) -> None:
        assert isinstance(job, PublishEpochFingerprint)
        fingerprint = await self._compute(self._dealing_of(job.epoch).fingerprint, job.coin)
        await self.submit(EpochFingerprint(epoch=job.epoch, fingerprint=fingerprint))
        self._log.info("key epoch %d: published our dealing fingerprint", job.epoch)

    async def _confirm_epoch(self, job: Job) -> None:
        assert isinstance(job, ConfirmEpoch)
        keys = self._keys.get(job.epoch)
        if keys is None:
            epoch = self._dealing_of(job.epoch)
            epoch.expect_commitments(dict(job.commitments))
            for member, bundle_hash in job.bundles:
                if member == self.node_id:
                    continue
                bundle = cbor.loads_dataclass(EpochBundle, await self._fetch(bundle_hash, member))
                epoch.receive(member, bundle.public)  # checked against its commitment
                mine = [s for s in bundle.sealed if s.recipient == self.node_id]
                if len(mine) != 1:
                    raise InvalidKeyShare(f"{member.short}'s bundle holds {len(mine)} shares for us")
                epoch.receive(member, mine[0])
            complaints = await self._compute(epoch.complaints, job.coin, dict(job.fingerprints))
            for dealer, proof in complaints:  # the contract judges them; the epoch starts over
                self._log.warning("key epoch %d: bad share from %s: complaining", job.epoch, dealer.short)
                await self.submit(EpochComplaint(epoch=job.epoch, dealer=dealer, evidence=proof))
            bad_keys = () if complaints else epoch.prss_faults()
            for dealer in bad_keys:
                self._log.warning("key epoch %d: bad PRSS keys from %s: complaining", job.epoch, dealer.short)
                opened = epoch.prss_evidence(dealer)
                await self.submit(EpochPrssComplaint(epoch=job.epoch, dealer=dealer, evidence=opened))
            if complaints or bad_keys:
                return
            keys = await self._compute(epoch.finish)
            self.files.save_epoch(job.epoch, "keys", keys.export_secret())
            self._keys[job.epoch] = keys
            self._epochs.pop(job.epoch, None)
            self.files.delete_epoch(job.epoch, "dealing")  # the keys supersede it
        await self.submit(EpochComplete(epoch=job.epoch, collective_key_hash=keys.public_key_digest))
        self._log.info("key epoch %d: collective key %s", job.epoch, keys.public_key_digest.hex()[:12])

    async def _epoch_timeout(self, job: Job) -> None:
        assert isinstance(job, SubmitEpochTimeout)
        missing = ", ".join(m.short for m in job.waiting_for) or "nobody (the confirmations differ)"
        self._log.warning("key epoch %d: %s deadline passed, waiting for %s", job.epoch, job.stage, missing)
        await self.submit(EpochTimeout(epoch=job.epoch, stage=job.stage))
        done = len(self.contract.epoch_timeout_voters())
        quorum = self.contract.epoch_quorum()
        if job.waiting_for and done < quorum:
            self._log.warning(
                "key epoch %d cannot start over without %s: only %d members did their part, %d needed "
                "(max(min_peers, t)); the swarm waits for them",
                job.epoch,
                missing,
                done,
                quorum,
            )

    async def _rejoin_epoch(self, job: Job) -> None:
        assert isinstance(job, RejoinEpoch)
        self._log.info("left out of key epoch %d (a missed deadline): asking to rejoin", job.epoch)
        await self.submit(EpochRejoin(epoch=job.epoch))

    # round jobs ----------------------------------------------------------------------------

    async def _ready(self, job: Job) -> None:
        assert isinstance(job, SubmitReady)
        await self.submit(Ready(round=job.round, weight=job.weight, val_metric=job.val_metric))

    async def _contribute(self, job: Job) -> None:
        assert isinstance(job, Contribute)
        params = self._wanted_params
        if params is None:
            raise SwarmError("no parameters to contribute")
        if self.genesis.training.secure:
            keys = self._keys[job.epoch]
            blob = await self._compute(
                partial(encrypt_update, binding=self._binding(job.round)),
                keys, params, float(job.weight), float(job.total_weight),
            )  # fmt: skip
        else:
            blob = encode_plaintext_update(params, job.weight)
        digest = self._keep_blob(job.round, blob)
        # The leader, verifier and next in line copy the blob before its hash is committed,
        # so the update survives if we (or the leader) crash right after (DESIGN 5.3).
        request = cbor.dumps_dataclass(ReplicateRequest(round=job.round, digest=digest))
        async with trio.open_nursery() as nursery:
            for peer in job.replicas:
                nursery.start_soon(self._ask_to_replicate, peer, request)
        await self.submit(Contribution(round=job.round, blob_hash=digest, blob_size=len(blob)))
        self._log.info("round %d: contributed %s", job.round, digest.hex()[:12])

    async def _sum(
        self, round_number: int, contributions: Sequence[ContributionRecord], holder: NodeId | None = None
    ) -> bytes:
        """Our own sum of `contributions`, fetched by their committed hashes (verified on
        receipt) all at once: from `holder` if given (the aggregator holds them all), else each
        from its contributor while it is connected (spreads the load over every uplink), else
        from anyone (the head of the rotation holds copies). Computed once per node and set of
        contributions: the leader's aggregate, the verifier's verdict and a decryptor's check
        share it; a caller does not wait more than `_SUM_WAIT` for another's run (whose source
        may hang) before summing with its own sources."""
        # Node-id order makes the input canonical (the plaintext merge's hash depends on it;
        # ciphertext addition does not).
        ordered = tuple(sorted(contributions, key=lambda c: c.node_id.public_key))
        key = ("sum", round_number, tuple(c.blob_hash for c in ordered))
        connected = self.transport.peers() | {self.node_id}
        sources = tuple(
            holder if holder is not None else c.node_id if c.node_id in connected else None for c in ordered
        )
        return await self._once(
            key, lambda: self._fetch_and_sum(round_number, ordered, sources), wait_limit=_SUM_WAIT
        )

    async def _fetch_and_sum(
        self,
        round_number: int,
        contributions: Sequence[ContributionRecord],
        sources: Sequence[NodeId | None],
    ) -> bytes:
        if not self.genesis.training.secure:
            blobs: list[bytes] = [b""] * len(contributions)

            async def fetch(k: int, c: ContributionRecord) -> None:
                blobs[k] = await self._fetch(c.blob_hash, sources[k], keep_round=round_number)

            await self._concurrently([partial(fetch, k, c) for k, c in enumerate(contributions)])
            return await self._compute(lambda: self._plaintext_merge(blobs))
        # Secure: add each ciphertext as it arrives (addition mod q is order-independent), so
        # decoding the first overlaps the transfer of the others.
        builder = AggregateBuilder(self.n_params, self.ckks_params, binding=self._binding(round_number))
        adding = trio.Lock()

        async def fetch_and_add(c: ContributionRecord, source: NodeId | None) -> None:
            blob = await self._fetch(c.blob_hash, source, keep_round=round_number)
            async with adding:
                await self._compute(builder.add, blob, c.node_id)

        await self._concurrently(
            [partial(fetch_and_add, c, source) for c, source in zip(contributions, sources, strict=True)]
        )
        return await self._compute(builder.result)

    def _binding(self, round_number: int) -> RoundBinding:
        """What every ciphertext of round `round_number` is bound to: our chain, the round's key
        epoch and the nonce the ledger fixed when it started (`consensus.contract.Round.nonce`)."""
        r = self.contract.round_record(round_number)
        keys = self._keys.get(r.epoch) if r is not None else None
        if r is None or keys is None:
            raise SwarmError(f"round {round_number}: not on our ledger, or we hold no keys of its key epoch")
        return RoundBinding(self.contract.chain_id, keys.spec.epoch_id, round_number, r.nonce)

    def _plaintext_merge(self, blobs: Sequence[bytes]) -> bytes:
        """The genesis merge method over decoded plaintext updates: the merged float32 params."""
        decoded = [decode_plaintext_update(blob, length=self.n_params) for blob in blobs]
        method = cast(MergeMethod, self.genesis.training.merge_method)  # validated by the genesis
        merged = merge_parameters(method, [v for v, _ in decoded], [float(w) for _, w in decoded])
        return np.ascontiguousarray(merged, dtype="<f4").tobytes()

    async def _ask_to_replicate(self, peer: NodeId, request: bytes) -> None:
        try:
            await self.transport.request(peer, REPLICATE_PROTOCOL, request, timeout=REPLICATE_TIMEOUT)
        except TransportError as exc:
            self._log.info("%s did not copy our contribution: %s", peer.short, exc)

    async def _serve_replicate(self, sender: NodeId, data: bytes) -> bytes:
        """A participant asks us (head of the rotation) to copy its contribution blob."""
        request = cbor.loads_dataclass(ReplicateRequest, data)
        current = self.contract.round.number
        # Members only, for the open round or the next (our ledger may be a block behind).
        if self.contract.member(sender) is None or not current <= request.round <= current + 1:
            raise SwarmError(f"no copy for {sender.short} in round {request.round} (we are at {current})")
        data = await self.transport.get_blob(request.digest, peer=sender, timeout=REPLICATE_TIMEOUT)
        self._keep_blob(request.round, data)
        return b"ok"

    async def _prefetch(self, job: Job) -> None:
        assert isinstance(job, PrefetchContributions)

        async def fetch(c: ContributionRecord) -> None:
            await self._fetch(c.blob_hash, c.node_id, keep_round=job.round)  # kept and served on

        await self._concurrently([partial(fetch, c) for c in job.contributions])

    async def _prepare(self, job: Job) -> None:
        """Verifier / decrypt set during the aggregate phase: our own sum now, and (decrypt
        set) our share of it, kept here until the ledger asks for exactly that sum."""
        assert isinstance(job, PrepareAggregate)
        aggregate = await self._sum(job.round, job.contributions)
        if (
            self.genesis.training.secure
            and self.node_id in job.decrypt_set
            and job.epoch in self._keys
            and not self.options.faults.trust_aggregate
        ):
            await self._share_of(job.round, job.epoch, aggregate, job.decrypt_set, len(job.contributions))

    async def _share_of(
        self,
        round_number: int,
        epoch: int,
        aggregate: bytes,
        decrypt_set: tuple[NodeId, ...],
        contributions: int,
    ) -> bytes:
        """Our decryption share of `aggregate` for `decrypt_set`, made once (its smudging noise is
        fresh per call: one aggregate never gets two different shares from us). In a robust
        epoch our point share instead: not bound to the set, the same bytes whenever asked."""
        keys = self._keys[epoch]
        min_peers = self.genesis.training.min_peers
        binding = self._binding(round_number)
        if keys.prss is not None:
            prss_keys = keys.prss
            return await self._once(
                ("point", round_number, epoch, contributions, hashlib.sha256(aggregate).digest()),
                lambda: self._compute(
                    lambda: make_point_share(
                        keys, prss_keys, aggregate, contributions=contributions, min_peers=min_peers,
                        binding=binding, length=self.n_params,
                    )
                ),
            )  # fmt: skip
        key = ("share", round_number, epoch, decrypt_set, contributions, hashlib.sha256(aggregate).digest())
        return await self._once(
            key,
            lambda: self._compute(
                lambda: decryption_share(
                    keys,
                    aggregate,
                    decrypt_set,
                    contributions=contributions,
                    min_peers=min_peers,
                    binding=binding,
                    length=self.n_params,
                )
            ),
        )

    async def _aggregate(self, job: Job) -> None:
        assert isinstance(job, AggregateContributions)
        aggregate = await self._sum(job.round, job.contributions)
        if self.options.faults.wrong_aggregate:
            # A well-formed but wrong sum: the last committed contribution left out.
            if self.genesis.training.secure:
                aggregate = await self._sum(job.round, job.contributions[:-1])
            else:
                wrong = decode_plaintext_model(aggregate, length=self.n_params) + np.float32(1.0)
                aggregate = wrong.astype("<f4").tobytes()
        digest = self._keep_blob(job.round, aggregate)
        contributors = tuple(c.node_id for c in job.contributions)
        await self.submit(
            Aggregate(round=job.round, step=job.step, aggregate_hash=digest, contributors=contributors)
        )
        self._log.info("round %d: aggregated %d contributions", job.round, len(contributors))

    async def _verify(self, job: Job) -> None:
        assert isinstance(job, VerifyAggregate)
        if self.options.faults.wrong_verdict:
            await self.submit(
                AggregateVerdict(
                    round=job.round,
                    step=job.step,
                    aggregate_hash=job.claimed_hash,
                    recomputed_hash=job.claimed_hash,
                )
            )
            return
        aggregate = await self._sum(job.round, job.contributions)
        digest = self._keep_blob(job.round, aggregate)  # if the claim is wrong, ours becomes the claim
        await self.submit(
            AggregateVerdict(
                round=job.round, step=job.step, aggregate_hash=job.claimed_hash, recomputed_hash=digest
            )
        )
        if digest != job.claimed_hash:
            self._log.warning("round %d: the leader's aggregate is wrong; committing the proof", job.round)

    async def _decryption_share(self, job: Job) -> None:
        assert isinstance(job, MakeDecryptionShare)
        refusal = (job.round, job.step, job.aggregate_hash)
        if refusal in self._refused_aggregates:
            return  # already refused: the decrypt deadline replaces us or aborts the round
        if self.options.faults.trust_aggregate:
            aggregate = await self._fetch(job.aggregate_hash, job.aggregator, keep_round=job.round)
        else:
            # Privacy: decrypt only what we summed ourselves from the committed contributions
            # (fetched by their committed hashes, verified by the transport). A leader and a
            # verifier colluding cannot get a single update (or any other blob) decrypted.
            if len(job.committed) != job.contributions or len(
                job.committed
            ) < self.genesis.training.min_contributions(job.threshold):
                raise SwarmError(f"round {job.round}: the committed contributions do not match the aggregate")
            # Usually summed already (`PrepareAggregate`, while the leader was adding).
            aggregate = await self._sum(job.round, job.committed, holder=job.aggregator)
            if hashlib.sha256(aggregate).digest() != job.aggregate_hash:
                self._refused_aggregates.add(refusal)
                self._log.warning(
                    "round %d step %d: the committed aggregate %s is not the sum of the %d committed "
                    "contributions; refusing to make a decryption share",
                    job.round,
                    job.step,
                    job.aggregate_hash.hex()[:12],
                    len(job.committed),
                )
                return
            self._keep_blob(job.round, aggregate)  # serve it to the combiners as well
        if not self.genesis.training.secure:
            if job.contributions < self.genesis.training.min_contributions(job.threshold):
                raise SwarmError(f"round {job.round}: too few contributions; no confirmation")
            confirmation = PlaintextConfirmation(
                round=job.round,
                step=job.step,
                node_id=self.node_id,
                aggregate_hash=hashlib.sha256(aggregate).digest(),
            )
            digest = self._keep_blob(job.round, cbor.dumps_dataclass(confirmation))
            await self.submit(DecryptionShare(round=job.round, step=job.step, share_hash=digest))
            return
        try:
            digest = await self._released_share(job, aggregate)
        except DecryptionRefused as exc:
            self._refused_aggregates.add(refusal)
            self._log.warning("round %d step %d: no decryption share: %s", job.round, job.step, exc)
            return
        await self.submit(DecryptionShare(round=job.round, step=job.step, share_hash=digest))

    async def _released_share(self, job: MakeDecryptionShare, aggregate: bytes) -> bytes:
        """The hash of our one share of `job`'s aggregate: made, logged durably (`ShareLog`)
        and only then served; the same share again for the same decrypt set (a new step, a
        restart); `DecryptionRefused` for any other set: never a second share of a sum."""
        shared = self._share_log.get(job.epoch, job.aggregate_hash)
        if shared is None:
            share = await self._share_of(job.round, job.epoch, aggregate, job.decrypt_set, job.contributions)
            if self.options.faults.byzantine_share:
                share = byzantine_share(share, self.ckks_params)
            shared = self._share_log.get(job.epoch, job.aggregate_hash)  # released meanwhile?
            if shared is None:
                digest = hashlib.sha256(share).digest()
                record = ShareRecord(
                    epoch=job.epoch,
                    aggregate_hash=job.aggregate_hash,
                    decrypt_set=job.decrypt_set,
                    share_hash=digest,
                )
                self._share_log.record(record)
                self._keep_blob(job.round, share)
                return digest
        if shared.decrypt_set != job.decrypt_set:
            raise DecryptionRefused(
                f"aggregate {job.aggregate_hash.hex()[:12]} was shared already for another decrypt set"
            )
        return shared.share_hash

    async def _combine(self, job: Job) -> None:
        assert isinstance(job, CombineShares)
        # All at once; a decryptor holds the aggregate (its own sum) and its own share already.
        blobs: dict[bytes, bytes] = {}

        async def fetch(digest: bytes, owner: NodeId | None) -> None:
            blobs[digest] = await self._fetch(digest, owner, keep_round=job.round)

        await self._concurrently(
            [partial(fetch, job.aggregate_hash, job.aggregator)]
            + [partial(fetch, vote.value, vote.node_id) for vote in job.shares]
        )
        aggregate = blobs[job.aggregate_hash]
        shares = [blobs[vote.value] for vote in job.shares]
        if self.genesis.training.secure and self._keys[job.epoch].prss is not None:
            verdict = await self._robust_combine(job, aggregate, shares)
            if verdict is None:
                return
            data, culprits = verdict
        elif self.genesis.training.secure:
            keys = self._keys[job.epoch]
            merged = await self._compute(
                lambda: combine(keys.spec, aggregate, shares, params=keys.context.params)
            )
            data, culprits = merged.mean.astype("<f4").tobytes(), ()
        else:
            # Plaintext: the aggregate IS the merged model; the shares only confirm it.
            for vote, share in zip(job.shares, shares, strict=True):
                confirmation = cbor.loads_dataclass(PlaintextConfirmation, share)
                if confirmation.node_id != vote.node_id or confirmation.aggregate_hash != job.aggregate_hash:
                    raise MalformedMessage(f"{vote.node_id.short}'s confirmation is not for this aggregate")
            data = decode_plaintext_model(aggregate, length=self.n_params).astype("<f4").tobytes()
            culprits = ()
        if len(data) != 4 * self.n_params:
            raise SwarmError(f"merged model has {len(data) // 4} parameters, expected {self.n_params}")
        digest = self.files.save_model(data)
        self._hold_model(digest, data)
        await self.submit(MergedModel(round=job.round, step=job.step, params_hash=digest, culprits=culprits))
        self._log.info("round %d: merged model %s", job.round, digest.hex()[:12])

    async def _robust_combine(
        self, job: CombineShares, aggregate: bytes, shares: list[bytes]
    ) -> tuple[bytes, tuple[NodeId, ...]] | None:
        """The checked merge of a robust epoch's point shares and the members named for wrong
        ones; None after voting `ShareMismatch` (wrong shares detected, none nameable)."""
        keys = self._keys[job.epoch]
        spec, params = keys.spec, keys.context.params
        for vote, share in zip(job.shares, shares, strict=True):
            # Each point must be its committer's own: a member cannot pass off another's point.
            if point_of(share, params) != spec.point(vote.node_id):
                raise MalformedMessage(f"{vote.node_id.short}'s decryption share is not its own point")
        configured = self.genesis.training.robust_max_faulty
        faulty = configured or default_max_faulty(len(spec.members), spec.threshold)
        # Fewer points than t + f check less, but never none: t points always agree, so with
        # exactly t (a decrypt set the contract never draws) `combine_points` refuses to merge.
        faulty = max(1, min(faulty, len(shares) - spec.threshold))
        try:
            verdict = await self._compute(
                lambda: combine_points(
                    spec, aggregate, shares, max_faulty=faulty, length=self.n_params, params=params
                )
            )
        except (WrongShareDetected, UncheckablePoints) as exc:
            self._log.warning("round %d: point shares disagree, nobody can be named: %s", job.round, exc)
            await self.submit(ShareMismatch(round=job.round, step=job.step))
            return None
        culprits = tuple(sorted((w.member for w in verdict.wrong), key=lambda n: n.public_key))
        for culprit in culprits:
            self._log.warning("round %d: %s's decryption share is wrong; naming it", job.round, culprit.short)
        return verdict.merged.mean.astype("<f4").tobytes(), culprits

    async def _load_merged(self, job: Job) -> None:
        assert isinstance(job, LoadMerged)
        await self.merged_parameters(job.params_hash)

    async def merged_parameters(self, params_hash: bytes) -> FloatVector:
        """A merged model by its ledger hash: held, on disk, or fetched from any peer (the
        transport checks the hash); read-only."""
        held = self._models.get(params_hash)
        if held is not None:
            return held
        data = self.files.load_model(params_hash)
        if data is None:
            data = await self._fetch_model(params_hash)
        if len(data) != 4 * self.n_params:
            raise MalformedMessage(f"merged model blob has {len(data)} bytes, expected {4 * self.n_params}")
        self.files.save_model(data)
        return self._hold_model(params_hash, data)

    async def _fetch_model(self, params_hash: bytes) -> bytes:
        """A merged model from any peer, asked again (backing off) while nobody delivers it,
        up to `_MODEL_FETCH_PATIENCE`: a restarted node's trainer asks before it is connected."""
        deadline = trio.current_time() + _MODEL_FETCH_PATIENCE
        delay = _RETRY_FIRST
        while True:
            try:
                return await self._fetch(params_hash, None)
            except BlobNotFound as exc:
                if trio.current_time() + delay > deadline:
                    raise
                self._log.info("merged model %s: %s; again in %.1f s", params_hash.hex()[:12], exc, delay)
                await trio.sleep(delay)
                delay = min(2 * delay, _RETRY_MAX)

    async def _phase_timeout(self, job: Job) -> None:
        assert isinstance(job, SubmitPhaseTimeout)
        self._log.info("round %d: %s deadline passed (step %d)", job.round, job.phase, job.step)
        await self.submit(PhaseTimeout(round=job.round, phase=job.phase, step=job.step))

    # -- merge, delivery, stop -------------------------------------------------------------------

    def _result(self, round_number: int, params_hash: bytes, participants: tuple[NodeId, ...], weight: int,
                stopped: bool) -> MergeResult:  # fmt: skip
        return MergeResult(
            round=round_number,
            parameters=self._models[params_hash].copy(),
            params_hash=params_hash,
            participants=participants,
            weight=weight,
            stopped=stopped,
        )

    def _deliver(self, delivery: Delivery) -> None:
        stopped = self.contract.stopped is not None and self.contract.final_model_hash == delivery.params_hash
        result = self._result(
            delivery.round, delivery.params_hash, delivery.participants, delivery.weight, stopped
        )
        started = self._round_started.get(delivery.round)
        if started is not None:
            self.round_times.setdefault(delivery.round, trio.current_time() - started)
        self._wanted = None
        self._wanted_params = None
        waiter = self._waiter
        self._waiter = None
        if waiter is not None:
            waiter.resolve(result)

    def _final_result(self) -> MergeResult | None:
        stop = self.contract.stopped
        if stop is None or stop.final_model_hash is None or stop.final_model_hash not in self._models:
            return None
        last = next(r for r in reversed(self.contract.history()) if r.merged_hash == stop.final_model_hash)
        return self._result(
            last.number, stop.final_model_hash, last.participants, last.contributor_weight, True
        )

    def _on_stopped(self, plan: Plan) -> None:
        stop = self.contract.stopped
        assert stop is not None
        final = self._final_result()
        if stop.final_model_hash is not None and final is None:
            return  # wait for LoadMerged to bring the final model
        if self._waiter is not None and plan.delivery is None:
            waiter, self._waiter = self._waiter, None
            waiter.fail(SwarmStopped(f"training stopped: {stop.reason}", final))
        if self._stop_info is None:
            saved: Path | None = None
            if final is not None:
                saved = self.storage_dir / "final_model.npy"
                np.save(saved, final.parameters)
                (self.storage_dir / "final_model.sha256").write_text(final.params_hash.hex() + "\n")
            self._stop_info = StopInfo(stop.reason, stop.merged_rounds, stop.final_model_hash, final, saved)
            self._log.info("training stopped: %s (%d merged rounds)", stop.reason, stop.merged_rounds)
            self._stopped.set()

    def _fail_waiter(self, error: SwarmError) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.fail(error)

    async def merge(
        self,
        parameters: npt.ArrayLike,
        num_samples: int,
        *,
        val_metric: float | None = None,
        timeout: float | None = None,
    ) -> MergeResult:
        """Sync point: submit Ready(weight = num_samples x weightage) and wait for the merged model.

        Returns the round's merged float32 parameters (bit-identical on every node). If a
        round aborts, Ready is submitted again for the next one. Raises `SwarmStopped` once
        training is over, `MergeTimeout` after `timeout` (default: the config's
        ``swarm.merge_timeout``) and `NodeClosed` if the node shuts down meanwhile.
        """
        if self._stop_info is not None or self.contract.stopped is not None:
            raise SwarmStopped(
                f"training stopped: {self.contract.stopped.reason if self.contract.stopped else '?'}",
                self._final_result(),
            )
        if self._closed:
            raise NodeClosed("the node is closed")
        if self._waiter is not None:
            raise SwarmError("another merge() is already waiting on this node")
        vector = np.asarray(parameters, dtype=np.float32).reshape(-1)
        if vector.size != self.n_params:
            raise ValueError(f"expected {self.n_params} parameters (the genesis model), got {vector.size}")
        if not bool(np.all(np.isfinite(vector))):
            raise ValueError("parameters must be finite")
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if val_metric is not None and not math.isfinite(val_metric):
            raise ValueError("val_metric must be finite")
        weight = num_samples * self.config.swarm.weightage
        self._wanted = MergeWanted(
            weight=weight, val_metric=val_metric, since_round=self.contract.round.number
        )
        self._wanted_params = vector.copy()
        waiter = _Waiter()
        self._waiter = waiter
        self._changed.set()
        limit = self.config.swarm.merge_timeout if timeout is None else timeout
        with trio.move_on_after(limit):
            return await waiter.wait()
        if self._waiter is waiter:
            self._waiter = None
        raise MergeTimeout(f"no merged model within {limit:g} s (round {self.contract.round.number})")

    async def latest_model(self, *, timeout: float = 60.0) -> MergeResult | None:
        """The latest merged model on the ledger, fetched by hash if needed (None before any merge)."""
        for closed in reversed(self.contract.history()):
            if closed.outcome == MERGED and closed.merged_hash is not None:
                digest = closed.merged_hash
                if digest not in self._models:
                    with trio.fail_after(timeout):
                        await self._load_merged(LoadMerged(round=closed.number, params_hash=digest))
                stopped = self.contract.final_model_hash == digest
                return self._result(
                    closed.number, digest, closed.participants, closed.contributor_weight, stopped
                )
        return None

    async def wait_stopped(self) -> StopInfo:
        """Wait until training stopped and the final model is saved (NodeClosed if the node closes)."""
        await self._stopped.wait()
        if self._stop_info is None:
            raise NodeClosed("the node closed before training stopped")
        return self._stop_info

    # -- membership ------------------------------------------------------------------------------

    def join_request(self, addresses: Sequence[str] = ()) -> bytes:
        """Our signed `JoinRequest` (hand it to a member, who submits it with `submit_transaction`)."""
        former = next((f for f in self.contract.former_members() if f.node_id == self.node_id), None)
        body = JoinRequest(
            name=self.config.node.name,
            addresses=tuple(addresses),
            last_left=0 if former is None else former.left,
        )
        return self._signer.sign(body)

    async def approve(self, joiner: NodeId) -> None:
        """Approve `joiner`'s pending join request (SwarmError if there is none)."""
        pending = next((p for p in self.contract.pending_joins() if p.node_id == joiner), None)
        if pending is None:
            raise SwarmError(f"no pending join request from {joiner.short}")
        await self.submit(Approve(joiner=joiner, request=pending.request))

    async def leave(self) -> None:
        record = self.contract.member(self.node_id)
        if record is None:
            raise SwarmError("not a member")
        await self.submit(Leave(member_since=record.since))

    async def vote_stop(self, reason: str = "") -> None:
        await self.submit(Stop(round=self.contract.round.number, reason=reason))

    async def wait_for(self, predicate: Callable[[Contract], bool]) -> None:
        """Wait until `predicate(contract)` holds after some commit (bound it with a timeout)."""
        while not predicate(self.contract):
            await self._committed.wait()

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        contract = self.contract
        r = contract.round
        roles = []
        if self.node_id in r.participants:
            roles.append("participant")
        if r.leader == self.node_id:
            roles.append("leader")
        if r.verifier == self.node_id:
            roles.append("verifier")
        if self.node_id in r.decrypt_set:
            roles.append("decryptor")
        record = contract.member(self.node_id)
        epoch = contract.key_epoch()
        return NodeStatus(
            node_id=self.node_id,
            name=record.name if record is not None else self.config.node.name,
            height=contract.height,
            members=contract.state.member_ids,
            round=r.number,
            phase=r.phase,
            step=r.step,
            roles=tuple(roles),
            key_epoch=epoch.number,
            key_epoch_complete=epoch.complete,
            key_epoch_waiting_for=contract.epoch_waiting_for(),
            last_merged_hash=contract.last_merged_hash,
            stopped=contract.stopped is not None,
            peers=tuple(sorted(self.transport.peers(), key=lambda n: n.public_key)),
            history=tuple(summarize(x) for x in contract.history()),
        )


@final
class _Waiter:
    __slots__ = ("_error", "_event", "_result")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._result: MergeResult | None = None
        self._error: SwarmError | None = None

    def resolve(self, result: MergeResult) -> None:
        self._result = result
        self._event.set()

    def fail(self, error: SwarmError) -> None:
        self._error = error
        self._event.set()

    async def wait(self) -> MergeResult:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def params_hash(parameters: npt.ArrayLike) -> bytes:
    """SHA-256 of the little-endian float32 bytes: the hash the ledger records for a model."""
    return hashlib.sha256(np.asarray(parameters, dtype="<f4").tobytes()).digest()


@asynccontextmanager
async def open_swarm_node(
    config: NodeConfig,
    *,
    transport: Transport | None = None,
    identity: NodeIdentity | None = None,
    inline_compute: bool = False,
    genesis: Genesis | None = None,
    options: NodeOptions | None = None,
) -> AsyncIterator[Node]:
    """A running `Node` for `config`; it stops (and releases everything) when the block exits.

    Without `transport`, the one ``[network] transport`` names is opened from the ``[network]``
    section (`swarmnode.net.factory`). Without `identity`/`genesis`,
    they are loaded from the config's key file and genesis file.
    """
    if options is None:
        options = NodeOptions(inline_compute=inline_compute)
    elif inline_compute and not options.inline_compute:
        raise ValueError("pass inline_compute either directly or in options, not both ways")
    ident = identity if identity is not None else NodeIdentity.load(config.node.key_file)
    gen = genesis if genesis is not None else Genesis.load(config.ledger.genesis)
    async with AsyncExitStack() as stack:
        if transport is None:
            transport = await stack.enter_async_context(open_transport(config.network, ident))
        node = Node(config, gen, ident, transport, options)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            try:
                yield node
                if node.contract.stopped is not None and not node._closed:
                    # Stay a little so peers a block behind can still sync the stop and
                    # fetch the final model from us before we disappear.
                    linger = node.options.stop_linger
                    await trio.sleep(2 * config.ledger.propose_timeout if linger is None else linger)
            finally:
                await node.aclose()
