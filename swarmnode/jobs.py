"""The round driver: after every commit or local change, `reconcile()` says which jobs this
node owes; each job key runs once (retried with back-off if it failed: a peer was
unreachable, a blob was missing). The vector to contribute reaches the driver as a value
(`MergeRequest`, over a channel) and the contribute job as an argument.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final, final

import trio

from consensus.contract import Contract, ContributionRecord
from consensus.genesis import Genesis
from consensus.transactions import (
    Aggregate,
    AggregateVerdict,
    Contribution,
    DecryptionShare,
    MergedModel,
    PhaseTimeout,
    Ready,
    ShareMismatch,
)
from crypto.errors import ProtocolError
from crypto.identity import NodeId

from .behaviour import Behaviour
from .blobstore import RETRY_FIRST, RETRY_MAX, BlobStore
from .compute import OnceCache, concurrently
from .epochs import KeyEpochs, Submit
from .global_models import GlobalModels
from .keystore import NodeFiles
from .merge_scheme import MergeScheme
from .net.base import Transport, TransportError
from .privacy import SitePrivacy
from .results import FloatVector, ResultSink, SwarmError
from .round import (
    AggregateContributions,
    CombineShares,
    CommitEpochShare,
    ConfirmEpoch,
    Contribute,
    EpochStageKey,
    Job,
    LoadMerged,
    LocalFacts,
    MakeDecryptionShare,
    MergeWanted,
    PrefetchContributions,
    PrefetchShare,
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

_RESUBMIT_AFTER: Final = 15.0  # a job done this long ago but still planned runs again
_SUM_WAIT: Final = 5.0  # seconds a job waits for another job's sum of the same blobs


@final
@dataclass(frozen=True, slots=True, eq=False)
class MergeRequest:
    """What `Node.merge` asks of the swarm: a merge with this weight, and our parameters."""

    wanted: MergeWanted
    parameters: FloatVector


class _Crash(Exception):
    """Internal: a fault-injected crash."""


@final
class JobRunner:
    """Runs the jobs `reconcile` plans, each key once, with retries."""

    def __init__(
        self, contract: Contract, genesis: Genesis, transport: Transport, files: NodeFiles, submit: Submit,
        epochs: KeyEpochs, blobs: BlobStore, global_models: GlobalModels, scheme: MergeScheme,
        results: ResultSink, once: OnceCache,
        behaviour: Behaviour, crash: Callable[[], None], log: logging.Logger,
        privacy: SitePrivacy | None = None,
    ) -> None:  # fmt: skip
        self._contract = contract
        self._training = genesis.training
        self._transport = transport
        self._me = transport.node_id
        self._files = files
        self.submit = submit
        self._epochs = epochs
        self._blobs = blobs
        self._global_models = global_models
        self._scheme = scheme
        self._results = results
        self._once = once
        self._behaviour = behaviour
        self._crash = crash
        self._log = log
        self._privacy = privacy
        self._changed = trio.Event()
        self._requests_send, self._requests = trio.open_memory_channel[MergeRequest](math.inf)
        self._stage_since: tuple[Stage, float] | None = None
        self._epoch_stage_since: tuple[EpochStageKey, float] | None = None
        self._running: set[tuple[object, ...]] = set()
        self._done: dict[tuple[object, ...], float] = {}
        self._retry: dict[tuple[object, ...], tuple[float, float]] = {}  # key -> (not before, backoff)
        # (round, step, aggregate hash) we would not decrypt: not the sum of the contributions.
        self._refused_aggregates: set[tuple[int, int, bytes]] = set()

    def wake(self) -> None:
        """Something changed (a commit, a local event): reconcile again."""
        self._changed.set()

    def want(self, request: MergeRequest) -> None:
        """Contribute to merges from now on as `request` says (replaces an earlier request)."""
        self._requests_send.send_nowait(request)
        self.wake()

    def _facts(self, wanted: MergeWanted | None) -> LocalFacts:
        return LocalFacts(
            me=self._me,
            now=trio.current_time(),
            wanted=wanted,
            key_epochs=frozenset(self._epochs.keys),
            held_models=frozenset(self._global_models.models),  # what a delivery hands out
            stage_since=self._stage_since,
            epoch_stage_since=self._epoch_stage_since,
        )

    async def run(self, nursery: trio.Nursery) -> None:
        """The round driver (forever); jobs run in `nursery`."""
        request: MergeRequest | None = None
        while True:
            self._changed = trio.Event()
            while True:
                try:
                    request = self._requests.receive_nowait()
                except trio.WouldBlock:
                    break
            wanted = None if request is None else request.wanted
            plan = reconcile(self._contract, self._facts(wanted))
            now = trio.current_time()
            if plan.stage is not None and (self._stage_since is None or self._stage_since[0] != plan.stage):
                self._stage_since = (plan.stage, now)
                self._log.debug("round %d phase %s step %d", *plan.stage)
                if plan.stage[1] == "contribute":
                    self._results.round_started(plan.stage[0], now)
            if plan.delivery is not None:
                self._results.deliver(plan.delivery, now)
                request = wanted = None
            if plan.stopped:
                self._results.on_stopped(plan.delivery is not None)
            # A deadline already passed is handled by its SubmitPhaseTimeout job: no busy wake-up.
            wake = plan.deadline if plan.deadline is not None and plan.deadline > now else math.inf
            if plan.recheck is not None and plan.recheck > now:
                wake = min(wake, plan.recheck)
            wake = min(wake, self._track_epoch_stage(now, wanted))
            parameters = None if request is None else request.parameters
            for job in plan.jobs:
                wake = min(wake, self._start(nursery, job, parameters, now))
            with trio.move_on_at(wake):
                await self._changed.wait()

    def _start(self, nursery: trio.Nursery, job: Job, parameters: FloatVector | None, now: float) -> float:
        """Start `job` unless it runs, ran lately or waits for its retry; returns when to look again."""
        key = job.key
        if key in self._running:
            return math.inf
        done = self._done.get(key)
        if done is not None and now < done + _RESUBMIT_AFTER:
            return done + _RESUBMIT_AFTER
        retry = self._retry.get(key)
        if retry is not None and now < retry[0]:
            return retry[0]
        self._running.add(key)
        nursery.start_soon(self._run_job, job, parameters)
        return math.inf

    def _track_epoch_stage(self, now: float, wanted: MergeWanted | None) -> float:
        """Note when we first saw the key-epoch stage; returns when our deadline vote for it
        is due (inf if none, or already due: the SubmitEpochTimeout job handles that)."""
        stage = epoch_stage(self._contract)
        if stage is None:
            self._epoch_stage_since = None
            return math.inf
        if self._epoch_stage_since is None or self._epoch_stage_since[0] != stage:
            self._epoch_stage_since = (stage, now)
            self._log.debug("key epoch %d stage %s", *stage)
        due = epoch_deadline(self._contract, self._facts(wanted))
        return due if due is not None and due > now else math.inf

    async def _run_job(self, job: Job, parameters: FloatVector | None) -> None:
        key = job.key
        kind = str(key[0])
        started = trio.current_time()
        try:
            if self._behaviour.crashes_before(kind):
                raise _Crash(kind)
            await self._perform(job, parameters)
            self._log.debug("job %s done in %.2fs", key, trio.current_time() - started)
        except _Crash:
            self._log.warning("simulated crash before %s", key)
            self._crash()
            return
        except (TransportError, ProtocolError, SwarmError, ValueError, ArithmeticError) as exc:
            previous = self._retry.get(key)
            backoff = RETRY_FIRST if previous is None else min(previous[1] * 2, RETRY_MAX)
            self._retry[key] = (trio.current_time() + backoff, backoff)
            self._log.info("job %s failed (%s: %s); retry in %.1fs", key, type(exc).__name__, exc, backoff)
        else:
            self._done[key] = trio.current_time()
            self._retry.pop(key, None)
        finally:
            self._running.discard(key)
            self._changed.set()

    async def _perform(self, job: Job, parameters: FloatVector | None) -> None:
        epochs, submit = self._epochs, self.submit
        if isinstance(job, CommitEpochShare):
            await epochs.commit(job, submit)
        elif isinstance(job, RevealEpochShares):
            await epochs.reveal(job, submit)
        elif isinstance(job, PublishEpochFingerprint):
            await epochs.publish_fingerprint(job, submit)
        elif isinstance(job, ConfirmEpoch):
            await epochs.confirm(job, submit, self._blobs.fetch)
        elif isinstance(job, SubmitEpochTimeout):
            await epochs.deadline(job, submit)
        elif isinstance(job, RejoinEpoch):
            await epochs.rejoin(job, submit)
        elif isinstance(job, SubmitReady):
            await submit(Ready(round=job.round, weight=job.weight, val_metric=job.val_metric))
        elif isinstance(job, Contribute):
            await self._contribute(job, parameters)
        elif isinstance(job, PrefetchContributions):
            await self._prefetch(job)
        elif isinstance(job, PrepareAggregate):
            await self._prepare(job)
        elif isinstance(job, AggregateContributions):
            await self._aggregate(job)
        elif isinstance(job, VerifyAggregate):
            await self._verify(job)
        elif isinstance(job, MakeDecryptionShare):
            await self._decryption_share(job)
        elif isinstance(job, PrefetchShare):
            await self._blobs.fetch(job.share.value, job.share.node_id, keep_round=job.round)
        elif isinstance(job, CombineShares):
            await self._combine(job)
        elif isinstance(job, LoadMerged):
            await self._global_models.ensure(job.params_hash)
        else:
            assert isinstance(job, SubmitPhaseTimeout)
            self._log.info("round %d: %s deadline passed (step %d)", job.round, job.phase, job.step)
            await submit(PhaseTimeout(round=job.round, phase=job.phase, step=job.step))

    async def _contribute(self, job: Contribute, parameters: FloatVector | None) -> None:
        if parameters is None:
            raise SwarmError("no parameters to contribute")
        if self._privacy is not None:  # clipped and noised (PrivacyBudgetSpent: we do not contribute)
            parameters = await self._privacy.contribution(job.round, parameters)
        blob = await self._scheme.encode(job, parameters)
        digest = self._blobs.keep(job.round, blob)
        # The leader, verifier and next in line copy the blob before its hash is committed,
        # so the update survives if we (or the leader) crash right after.
        await self._blobs.replicate(job.replicas, job.round, digest)
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
        connected = self._transport.peers() | {self._me}
        sources = tuple(
            holder if holder is not None else c.node_id if c.node_id in connected else None for c in ordered
        )
        return await self._once.once(
            key, lambda: self._scheme.sum(round_number, ordered, sources), wait_limit=_SUM_WAIT
        )

    async def _prefetch(self, job: PrefetchContributions) -> None:
        async def fetch(c: ContributionRecord) -> None:
            await self._blobs.fetch(c.blob_hash, c.node_id, keep_round=job.round)  # kept and served on

        await concurrently([partial(fetch, c) for c in job.contributions])

    async def _prepare(self, job: PrepareAggregate) -> None:
        """Verifier / decrypt set during the aggregate phase: our own sum now, and (decrypt
        set) whatever decrypting it needs, kept here until the ledger asks for exactly that sum."""
        aggregate = await self._sum(job.round, job.contributions)
        if self._me in job.decrypt_set:
            await self._scheme.prepare(job, aggregate)

    async def _aggregate(self, job: AggregateContributions) -> None:
        honest = await self._sum(job.round, job.contributions)
        aggregate = await self._behaviour.aggregate(
            job, honest, partial(self._sum, job.round), self._scheme.secure
        )
        digest = self._blobs.keep(job.round, aggregate)
        contributors = tuple(c.node_id for c in job.contributions)
        await self.submit(
            Aggregate(round=job.round, step=job.step, aggregate_hash=digest, contributors=contributors)
        )
        self._log.info("round %d: aggregated %d contributions", job.round, len(contributors))

    async def _verify(self, job: VerifyAggregate) -> None:
        async def recompute() -> bytes:
            aggregate = await self._sum(job.round, job.contributions)
            return self._blobs.keep(job.round, aggregate)  # if the claim is wrong, ours becomes the claim

        digest = await self._behaviour.verdict(job, recompute)
        await self.submit(
            AggregateVerdict(
                round=job.round, step=job.step, aggregate_hash=job.claimed_hash, recomputed_hash=digest
            )
        )
        if digest != job.claimed_hash:
            self._log.warning("round %d: the leader's aggregate is wrong; committing the proof", job.round)

    async def _decryption_share(self, job: MakeDecryptionShare) -> None:
        refusal = (job.round, job.step, job.aggregate_hash)
        if refusal in self._refused_aggregates:
            return  # already refused: the decrypt deadline replaces us or aborts the round

        async def committed() -> bytes:
            return await self._blobs.fetch(job.aggregate_hash, job.aggregator, keep_round=job.round)

        aggregate = await self._behaviour.aggregate_to_decrypt(
            partial(self._checked_aggregate, job), committed
        )
        if aggregate is None:
            self._refused_aggregates.add(refusal)
            return
        digest = await self._scheme.share(job, aggregate)
        if digest is None:
            self._refused_aggregates.add(refusal)
            return
        await self.submit(DecryptionShare(round=job.round, step=job.step, share_hash=digest))

    async def _checked_aggregate(self, job: MakeDecryptionShare) -> bytes | None:
        """Privacy: decrypt only what we summed ourselves from the committed contributions
        (fetched by their committed hashes, verified by the transport). A leader and a
        verifier colluding cannot get a single update (or any other blob) decrypted.
        None if the committed aggregate is not that sum (logged)."""
        if len(job.committed) != job.contributions or len(job.committed) < self._training.min_contributions(
            job.threshold
        ):
            raise SwarmError(f"round {job.round}: the committed contributions do not match the aggregate")
        # Usually summed already (`PrepareAggregate`, while the leader was adding).
        aggregate = await self._sum(job.round, job.committed, holder=job.aggregator)
        if hashlib.sha256(aggregate).digest() != job.aggregate_hash:
            self._log.warning(
                "round %d step %d: the committed aggregate %s is not the sum of the %d committed "
                "contributions; refusing to make a decryption share",
                job.round,
                job.step,
                job.aggregate_hash.hex()[:12],
                len(job.committed),
            )
            return None
        self._blobs.keep(job.round, aggregate)  # serve it to the combiners as well
        return aggregate

    async def _combine(self, job: CombineShares) -> None:
        if not self._behaviour.combines():
            return
        # All at once; a decryptor holds the aggregate (its own sum) and its own share already.
        blobs: dict[bytes, bytes] = {}

        async def fetch(digest: bytes, owner: NodeId | None) -> None:
            blobs[digest] = await self._blobs.fetch(digest, owner, keep_round=job.round)

        await concurrently(
            [partial(fetch, job.aggregate_hash, job.aggregator)]
            + [partial(fetch, vote.value, vote.node_id) for vote in job.shares]
        )
        shares = [blobs[vote.value] for vote in job.shares]
        merged = await self._scheme.combine(job, blobs[job.aggregate_hash], shares)
        if merged is None:
            await self.submit(ShareMismatch(round=job.round, step=job.step))
            return
        data, culprits = merged
        n_params = self._blobs.n_params
        if len(data) != 4 * n_params:
            raise SwarmError(f"merged model has {len(data) // 4} parameters, expected {n_params}")
        digest = self._files.save_model(data)
        self._blobs.hold_model(digest, data)
        await self.submit(MergedModel(round=job.round, step=job.step, params_hash=digest, culprits=culprits))
        self._log.info("round %d: merged model %s", job.round, digest.hex()[:12])
