"""The node runtime: one trio program per site, wired from parts with one job each.

A `Node` owns the identity, the genesis and a `Transport`, and wires:

* `swarmnode.ledgershell.LedgerShell`: the ledger (SQLite `LedgerStore`, the `Contract`,
  the sans-I/O `TendermintCore` with its idle pacing), gossip, timers and block sync;
* `swarmnode.blobstore.BlobStore`: blobs by hash, their disk copies and replication, and
  the merged models we hold;
* `swarmnode.epochs.KeyEpochs`: our dealings and keys of the key epochs;
* `swarmnode.merge_scheme`: `SecureMerge` or `PlainMerge`, chosen once from genesis
  ``training.secure``;
* `swarmnode.jobs.JobRunner`: the round driver over `swarmnode.round.reconcile`'s jobs;
* `swarmnode.results.ResultSink`: merged rounds and the stop as `merge` callers see them.

Every task runs in one nursery that `open_swarm_node` owns (nothing outlives the
``async with``). Crypto runs in a worker thread unless ``inline_compute=True``
(simulations on trio's MockClock). Misbehaviour for fault-injection tests is an injected
`swarmnode.behaviour.Behaviour` (`NodeOptions.behaviour`; the honest one by default).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, final

import numpy as np
import numpy.typing as npt
import trio

from consensus.contract import MERGED, Contract, summarize
from consensus.genesis import Genesis
from consensus.transactions import Approve, JoinRequest, Leave, Stop, TxBody
from crypto.ckks_params import param_set
from crypto.identity import NodeId, NodeIdentity
from models.flatten import spec_layout
from models.spec import SpecError
from models.structure import StructureMismatch

from .behaviour import HONEST, Behaviour
from .blobstore import REPLICATE_PROTOCOL, REPLICATE_TIMEOUT, BlobStore, ReplicateRequest
from .compute import Compute, OnceCache
from .config import NodeConfig
from .epochs import EpochBundle, KeyEpochs
from .global_models import GlobalModels
from .jobs import JobRunner, MergeRequest
from .keystore import NodeFiles
from .ledgershell import BLOCKS_PROTOCOL, CONSENSUS_TOPIC, LedgerShell
from .merge_scheme import (
    MergeScheme,
    PlainMerge,
    PlaintextConfirmation,
    PlaintextUpdate,
    SecureMerge,
    decode_plaintext_model,
    decode_plaintext_update,
    encode_plaintext_update,
)
from .model_identity import check_config_model
from .net.base import Transport
from .privacy import node_privacy
from .results import (
    FloatVector,
    MergeResult,
    MergeTimeout,
    NodeClosed,
    NodeStatus,
    ResultSink,
    StopInfo,
    SwarmError,
    SwarmStopped,
    Waiter,
    params_hash,
)
from .round import MergeWanted
from .sharelog import ShareLog, ShareLogError

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = [
    "BLOCKS_PROTOCOL",
    "CONSENSUS_TOPIC",
    "REPLICATE_PROTOCOL",
    "REPLICATE_TIMEOUT",
    "EpochBundle",
    "FloatVector",
    "MergeResult",
    "MergeTimeout",
    "Node",
    "NodeClosed",
    "NodeOptions",
    "NodeStatus",
    "PlaintextConfirmation",
    "PlaintextUpdate",
    "ReplicateRequest",
    "StopInfo",
    "SwarmError",
    "SwarmStopped",
    "decode_plaintext_model",
    "decode_plaintext_update",
    "encode_plaintext_update",
    "open_swarm_node",
    "params_hash",
]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeOptions:
    inline_compute: bool = False
    idle_block_interval: float | None = None  # default: half the propose timeout
    stop_linger: float | None = (
        None  # seconds a stopped node keeps serving on exit (default: 2 propose timeouts)
    )
    behaviour: Behaviour = HONEST  # how this node acts where a member could cheat (tests inject faults)


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
        _check_setup(config, genesis, identity, transport)
        self.config: Final = config
        self.genesis: Final = genesis
        self.identity: Final = identity
        self.node_id: Final = identity.node_id
        self.transport: Final = transport
        self.options: Final = options
        self.n_params: Final = spec_layout(config.model).size
        log = self._log = logging.getLogger(f"swarmnode.node.{config.node.name}")
        storage = Path(config.node.storage_dir)
        storage.mkdir(parents=True, exist_ok=True)
        self.storage_dir: Final = storage
        # Before the ledger opens: a directory of another node or chain stops us here.
        self.files: Final = NodeFiles(storage, identity, genesis.chain_id)
        try:
            share_log = ShareLog(storage)  # one decryption share per aggregate, ever
        except ShareLogError as exc:
            raise SwarmError(str(exc)) from None
        self.ledger: Final = LedgerShell(
            config, genesis, identity, transport, options.idle_block_interval, log
        )
        self.contract: Final[Contract] = self.ledger.contract
        compute, once = Compute(inline=options.inline_compute), OnceCache()
        self._once = once
        behaviour = options.behaviour
        self.blobs: Final = BlobStore(transport, self.files, self.contract, self.n_params, log)
        # Genesis's CKKS set, the one the contract gives every key epoch (`KeyEpoch.ckks_params`).
        params = param_set(genesis.training.ckks_params).params
        self.epochs: Final = KeyEpochs(
            identity, params, self.contract, self.files, transport, compute, behaviour, log
        )
        scheme: MergeScheme
        if genesis.training.secure:
            scheme = SecureMerge(
                genesis, self.epochs, self.n_params, self.blobs.fetch, self.blobs.keep, compute, once,
                share_log, behaviour, log,
            )  # fmt: skip
        else:
            scheme = PlainMerge(
                genesis, self.node_id, self.n_params, self.blobs.fetch, self.blobs.keep, compute
            )
        self.global_models: Final = GlobalModels(genesis.training, self.contract, self.blobs, storage, log)
        self.results: Final = ResultSink(self.contract, self.global_models.models, storage, log)
        self.privacy: Final = node_privacy(
            genesis, config, self.contract, self.node_id, self.global_models.ensure
        )
        self.jobs: Final = JobRunner(
            self.contract, genesis, transport, self.files, self.ledger.submit, self.epochs, self.blobs,
            self.global_models, scheme, self.results, once, behaviour, self._crash, log, self.privacy,
        )  # fmt: skip
        self._closed = False
        self._crashed = False
        self._cancel_scope = trio.CancelScope()
        self.epochs.load()
        self.blobs.restore()

    @property
    def round_times(self) -> dict[int, float]:
        """Round -> time from its start to its merge here."""
        return self.results.round_times

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until `aclose` (or a simulated crash). `open_swarm_node` calls this."""
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    self.transport.set_handler(REPLICATE_PROTOCOL, self.blobs.serve_replicate)
                    await self.ledger.start(nursery, self._on_commit)
                    nursery.start_soon(self.jobs.run, nursery)
                    self._log.info(
                        "node %s up at height %d (chain %s)",
                        self.node_id.short,
                        self.contract.height,
                        self.genesis.chain_id.hex()[:12],
                    )
                    task_status.started()
        finally:
            self._closed = True
            self.results.fail_waiter(
                NodeClosed("the node crashed" if self._crashed else "the node was closed")
            )
            self.results.stopped.set()
            self.ledger.close()
            if self._crashed:
                with trio.CancelScope(shield=True):
                    await self.transport.aclose()

    async def aclose(self) -> None:
        self._cancel_scope.cancel()

    def _crash(self) -> None:
        """A fault-injected crash: every task stops and the transport closes."""
        self._crashed = True
        self._cancel_scope.cancel()

    def _on_commit(self) -> None:
        self.blobs.prune()
        self._once.forget_before(self.contract.round.number)
        self.epochs.prune()
        self.jobs.wake()

    async def submit(self, body: TxBody) -> None:
        """Sign `body` as this node and hand it to the ledger (gossiped, then committed)."""
        await self.ledger.submit(body)

    async def submit_transaction(self, tx: bytes) -> None:
        """Submit a transaction signed by someone else (e.g. a joiner's request); ProtocolError if bad."""
        await self.ledger.submit_transaction(tx)

    # -- merge, delivery, stop -------------------------------------------------------------------

    async def merge(
        self,
        parameters: npt.ArrayLike,
        num_samples: int,
        *,
        val_metric: float | None = None,
        timeout: float | None = None,
    ) -> MergeResult:
        """Sync point: submit Ready(weight = num_samples x weightage; 1 under genesis
        ``training.privacy``, whose merge is an equal-weight mean) and wait for the merged model.

        Returns the round's merged float32 parameters (bit-identical on every node). If a
        round aborts, Ready is submitted again for the next one. Raises `SwarmStopped` once
        training is over, `MergeTimeout` after `timeout` (default: the config's
        ``swarm.merge_timeout``) and `NodeClosed` if the node shuts down meanwhile.
        """
        if self.results.stop_info is not None or self.contract.stopped is not None:
            raise SwarmStopped(
                f"training stopped: {self.contract.stopped.reason if self.contract.stopped else '?'}",
                self.results.final_result(),
            )
        if self._closed:
            raise NodeClosed("the node is closed")
        if self.results.waiter is not None:
            raise SwarmError("another merge() is already waiting on this node")
        vector = self._checked_parameters(parameters, num_samples, val_metric)
        weight = num_samples * self.config.swarm.weightage
        if self.privacy is not None:
            self.privacy.check_budget(self.contract.round.number)  # PrivacyBudgetSpent
            weight = 1
        wanted = MergeWanted(weight=weight, val_metric=val_metric, since_round=self.contract.round.number)
        waiter = self.results.waiter = Waiter()
        self.jobs.want(MergeRequest(wanted, vector.copy()))
        limit = self.config.swarm.merge_timeout if timeout is None else timeout
        with trio.move_on_after(limit):
            return await waiter.wait()
        if self.results.waiter is waiter:
            self.results.waiter = None
        raise MergeTimeout(f"no merged model within {limit:g} s (round {self.contract.round.number})")

    def _checked_parameters(
        self, parameters: npt.ArrayLike, num_samples: int, val_metric: float | None
    ) -> FloatVector:
        vector = np.asarray(parameters, dtype=np.float32).reshape(-1)
        if vector.size != self.n_params:
            raise ValueError(f"expected {self.n_params} parameters (the genesis model), got {vector.size}")
        if not bool(np.all(np.isfinite(vector))):
            raise ValueError("parameters must be finite")
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if val_metric is not None and not math.isfinite(val_metric):
            raise ValueError("val_metric must be finite")
        return vector

    async def merged_parameters(self, params_hash: bytes) -> FloatVector:
        """A merged model by its ledger hash: held, on disk, or fetched from any peer (the
        transport checks the hash); read-only."""
        return await self.blobs.merged_parameters(params_hash)

    async def latest_model(self, *, timeout: float = 60.0) -> MergeResult | None:
        """The latest merged model on the ledger, fetched by hash if needed (None before any merge)."""
        for closed in reversed(self.contract.history()):
            if closed.outcome == MERGED and closed.merged_hash is not None:
                digest = closed.merged_hash
                if digest not in self.global_models.models:
                    with trio.fail_after(timeout):
                        await self.global_models.ensure(digest)
                stopped = self.contract.final_model_hash == digest
                return self.results.result(
                    closed.number, digest, closed.participants, closed.contributor_weight, stopped
                )
        return None

    async def wait_stopped(self) -> StopInfo:
        """Wait until training stopped and the final model is saved (NodeClosed if the node closes)."""
        await self.results.stopped.wait()
        if self.results.stop_info is None:
            raise NodeClosed("the node closed before training stopped")
        return self.results.stop_info

    # -- membership ------------------------------------------------------------------------------

    def join_request(self, addresses: Sequence[str] = ()) -> bytes:
        """Our signed `JoinRequest` (hand it to a member, who submits it with `submit_transaction`)."""
        former = next((f for f in self.contract.former_members() if f.node_id == self.node_id), None)
        body = JoinRequest(
            name=self.config.node.name,
            addresses=tuple(addresses),
            last_left=0 if former is None else former.left,
        )
        return self.ledger.sign(body)

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
        await self.ledger.wait_for(predicate)

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


def _check_setup(config: NodeConfig, genesis: Genesis, identity: NodeIdentity, transport: Transport) -> None:
    if transport.node_id != identity.node_id:
        raise SwarmError("the transport belongs to another identity")
    if config.model.spec_hash() != genesis.training.model_spec_hash:
        raise SwarmError(
            f"{config.source or 'config'}: the [model] section does not match the genesis model spec "
            f"({config.model.spec_hash().hex()[:12]} vs {genesis.training.model_spec_hash.hex()[:12]})"
        )
    try:
        check_config_model(genesis, config.model, f"{config.source or 'config'}: [model]")
    except (StructureMismatch, SpecError) as exc:
        raise SwarmError(str(exc)) from None


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

    Without `transport`, the one ``[network] transport`` names (`swarmnode.net.factory`)
    listens on ``[network] listen:port``, tells peers ``[network] advertise`` and dials the
    bootstrap peers. Without `identity`/`genesis`,
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
            from .net.factory import open_transport

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
