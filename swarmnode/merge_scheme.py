"""How contributions become a merged model: the secure (threshold CKKS) and the plaintext
scheme behind one interface, chosen once from genesis ``training.secure``.

Plaintext mode keeps the same phases and contract: the key epoch still runs (the contract
opens rounds only after one), a contribution is a `PlaintextUpdate` (raw float32
parameters + weight), the leader's "aggregate" is ``models.merge(genesis merge_method,
...)`` over the decoded updates in node-id order (the verifier recomputes it), each
decrypt-set member's "share" is a `PlaintextConfirmation` of the aggregate hash it
recomputed (still refused below min_peers), and combining yields the aggregate itself as
the merged parameters.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, cast, final

import numpy as np
import trio

from consensus.contract import ContributionRecord
from consensus.genesis import Genesis
from crypto import cbor
from crypto.errors import MalformedMessage
from crypto.identity import NodeId
from crypto.robust_merge import (
    UncheckablePoints,
    WrongShareDetected,
    combine_points,
    default_max_faulty,
    make_point_share,
    point_of,
)
from crypto.secure_merge import AggregateBuilder, DecryptionRefused, combine, decryption_share, encrypt_update
from models.merge import MergeMethod
from models.merge import merge as merge_parameters

from .behaviour import Behaviour
from .compute import Compute, OnceCache, concurrently
from .epochs import KeyEpochs
from .results import FloatVector, SwarmError
from .round import CombineShares, Contribute, MakeDecryptionShare, PrepareAggregate
from .sharelog import ShareLog, ShareRecord


class Fetch(Protocol):
    """`BlobStore.fetch`: a blob by hash from `owner` first, kept for round `keep_round`."""

    async def __call__(
        self, digest: bytes, owner: NodeId | None, *, keep_round: int | None = None
    ) -> bytes: ...


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


Merged = tuple[bytes, tuple[NodeId, ...]]  # merged float32 parameters (little endian), culprits named


class MergeScheme(Protocol):
    """One way of merging; every vector passes in and out as a value."""

    secure: bool  # ciphertexts (else float32 parameters) travel as blobs

    async def encode(self, job: Contribute, parameters: FloatVector) -> bytes:
        """Our contribution blob."""
        ...

    async def sum(
        self, round_number: int, contributions: Sequence[ContributionRecord], sources: Sequence[NodeId | None]
    ) -> bytes:
        """The aggregate of `contributions` (in node-id order), each fetched from its source."""
        ...

    async def prepare(self, job: PrepareAggregate, aggregate: bytes) -> None:
        """While the leader aggregates: get ready to decrypt our own sum `aggregate`."""
        ...

    async def share(self, job: MakeDecryptionShare, aggregate: bytes) -> bytes | None:
        """The hash of our (kept) share of the checked `aggregate`; None if we refuse (logged)."""
        ...

    async def combine(self, job: CombineShares, aggregate: bytes, shares: list[bytes]) -> Merged | None:
        """The merged parameters from the aggregate and the committed shares; None if the
        shares disagree and nobody can be named (the caller votes `ShareMismatch`)."""
        ...


@final
class PlainMerge:
    """Plaintext mode: the genesis merge method over float32 updates, confirmed by T."""

    secure = False

    def __init__(
        self, genesis: Genesis, node_id: NodeId, n_params: int, fetch: Fetch,
        keep: Callable[[int, bytes], bytes], compute: Compute,
    ) -> None:  # fmt: skip
        self._training = genesis.training
        self._node_id = node_id
        self._n_params = n_params
        self._fetch = fetch
        self._keep = keep
        self._compute = compute

    async def encode(self, job: Contribute, parameters: FloatVector) -> bytes:
        return encode_plaintext_update(parameters, job.weight)

    async def sum(
        self, round_number: int, contributions: Sequence[ContributionRecord], sources: Sequence[NodeId | None]
    ) -> bytes:
        blobs: list[bytes] = [b""] * len(contributions)

        async def fetch(k: int, c: ContributionRecord) -> None:
            blobs[k] = await self._fetch(c.blob_hash, sources[k], keep_round=round_number)

        await concurrently([partial(fetch, k, c) for k, c in enumerate(contributions)])
        return await self._compute(lambda: self._merge(blobs))

    def _merge(self, blobs: Sequence[bytes]) -> bytes:
        """The genesis merge method over decoded plaintext updates: the merged float32 params."""
        decoded = [decode_plaintext_update(blob, length=self._n_params) for blob in blobs]
        method = cast(MergeMethod, self._training.merge_method)  # validated by the genesis
        merged = merge_parameters(method, [v for v, _ in decoded], [float(w) for _, w in decoded])
        return np.ascontiguousarray(merged, dtype="<f4").tobytes()

    async def prepare(self, job: PrepareAggregate, aggregate: bytes) -> None:
        return None  # nothing to decrypt

    async def share(self, job: MakeDecryptionShare, aggregate: bytes) -> bytes | None:
        if job.contributions < self._training.min_contributions(job.threshold):
            raise SwarmError(f"round {job.round}: too few contributions; no confirmation")
        confirmation = PlaintextConfirmation(
            round=job.round,
            step=job.step,
            node_id=self._node_id,
            aggregate_hash=hashlib.sha256(aggregate).digest(),
        )
        return self._keep(job.round, cbor.dumps_dataclass(confirmation))

    async def combine(self, job: CombineShares, aggregate: bytes, shares: list[bytes]) -> Merged | None:
        # The aggregate IS the merged model; the shares only confirm it.
        for vote, share in zip(job.shares, shares, strict=True):
            confirmation = cbor.loads_dataclass(PlaintextConfirmation, share)
            if confirmation.node_id != vote.node_id or confirmation.aggregate_hash != job.aggregate_hash:
                raise MalformedMessage(f"{vote.node_id.short}'s confirmation is not for this aggregate")
        return decode_plaintext_model(aggregate, length=self._n_params).astype("<f4").tobytes(), ()


@final
class SecureMerge:
    """Threshold CKKS: encrypted updates, a ciphertext sum, decryption shares of that sum."""

    secure = True

    def __init__(
        self, genesis: Genesis, epochs: KeyEpochs, n_params: int, fetch: Fetch,
        keep: Callable[[int, bytes], bytes], compute: Compute, once: OnceCache, share_log: ShareLog,
        behaviour: Behaviour, log: logging.Logger,
    ) -> None:  # fmt: skip
        self._training = genesis.training
        self._epochs = epochs
        self._n_params = n_params
        self._fetch = fetch
        self._keep = keep
        self._compute = compute
        self._once = once
        self._share_log = share_log
        self._behaviour = behaviour
        self._log = log

    async def encode(self, job: Contribute, parameters: FloatVector) -> bytes:
        keys = self._epochs.keys[job.epoch]
        return await self._compute(
            partial(encrypt_update, binding=self._epochs.binding(job.round)),
            keys, parameters, float(job.weight), float(job.total_weight),
        )  # fmt: skip

    async def sum(
        self, round_number: int, contributions: Sequence[ContributionRecord], sources: Sequence[NodeId | None]
    ) -> bytes:
        # Add each ciphertext as it arrives (addition mod q is order-independent), so decoding
        # the first overlaps the transfer of the others.
        builder = AggregateBuilder(
            self._n_params, self._epochs.params, binding=self._epochs.binding(round_number)
        )
        adding = trio.Lock()

        async def fetch_and_add(c: ContributionRecord, source: NodeId | None) -> None:
            blob = await self._fetch(c.blob_hash, source, keep_round=round_number)
            async with adding:
                await self._compute(builder.add, blob, c.node_id)

        await concurrently(
            [partial(fetch_and_add, c, source) for c, source in zip(contributions, sources, strict=True)]
        )
        return await self._compute(builder.result)

    async def prepare(self, job: PrepareAggregate, aggregate: bytes) -> None:
        """Decrypt set: our share of our own sum now, kept until the ledger asks for exactly it."""
        if job.epoch in self._epochs.keys and self._behaviour.prepares_shares():
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
        keys = self._epochs.keys[epoch]
        min_peers, length = self._training.min_peers, self._n_params
        binding = self._epochs.binding(round_number)
        aggregate_hash = hashlib.sha256(aggregate).digest()
        if keys.prss is not None:
            prss_keys = keys.prss
            return await self._once.once(
                ("point", round_number, epoch, contributions, aggregate_hash),
                lambda: self._compute(
                    lambda: make_point_share(
                        keys, prss_keys, aggregate, contributions=contributions, min_peers=min_peers,
                        binding=binding, length=length,
                    )
                ),
            )  # fmt: skip
        return await self._once.once(
            ("share", round_number, epoch, decrypt_set, contributions, aggregate_hash),
            lambda: self._compute(
                lambda: decryption_share(
                    keys, aggregate, decrypt_set, contributions=contributions, min_peers=min_peers,
                    binding=binding, length=length,
                )
            ),
        )  # fmt: skip

    async def share(self, job: MakeDecryptionShare, aggregate: bytes) -> bytes | None:
        try:
            return await self._released_share(job, aggregate)
        except DecryptionRefused as exc:
            self._log.warning("round %d step %d: no decryption share: %s", job.round, job.step, exc)
            return None

    async def _released_share(self, job: MakeDecryptionShare, aggregate: bytes) -> bytes:
        """The hash of our one share of `job`'s aggregate: made, logged durably (`ShareLog`)
        and only then served; the same share again for the same decrypt set (a new step, a
        restart); `DecryptionRefused` for any other set: never a second share of a sum."""
        shared = self._share_log.get(job.epoch, job.aggregate_hash)
        if shared is None:
            share = await self._share_of(job.round, job.epoch, aggregate, job.decrypt_set, job.contributions)
            share = self._behaviour.released_share(share, self._epochs.params)
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
                self._keep(job.round, share)
                return digest
        if shared.decrypt_set != job.decrypt_set:
            raise DecryptionRefused(
                f"aggregate {job.aggregate_hash.hex()[:12]} was shared already for another decrypt set"
            )
        return shared.share_hash

    async def combine(self, job: CombineShares, aggregate: bytes, shares: list[bytes]) -> Merged | None:
        keys = self._epochs.keys[job.epoch]
        if keys.prss is not None:
            return await self._robust_combine(job, aggregate, shares)
        merged = await self._compute(
            lambda: combine(keys.spec, aggregate, shares, params=keys.context.params)
        )
        return merged.mean.astype("<f4").tobytes(), ()

    async def _robust_combine(
        self, job: CombineShares, aggregate: bytes, shares: list[bytes]
    ) -> Merged | None:
        """The checked merge of a robust epoch's point shares and the members named for wrong
        ones; None if wrong shares are detected but none is nameable."""
        keys = self._epochs.keys[job.epoch]
        spec, params = keys.spec, keys.context.params
        for vote, share in zip(job.shares, shares, strict=True):
            # Each point must be its committer's own: a member cannot pass off another's point.
            if point_of(share, params) != spec.point(vote.node_id):
                raise MalformedMessage(f"{vote.node_id.short}'s decryption share is not its own point")
        configured = self._training.robust_max_faulty
        faulty = configured or default_max_faulty(len(spec.members), spec.threshold)
        # Fewer points than t + f check less, but never none: t points always agree, so with
        # exactly t (a decrypt set the contract never draws) `combine_points` refuses to merge.
        faulty = max(1, min(faulty, len(shares) - spec.threshold))
        try:
            verdict = await self._compute(
                lambda: combine_points(
                    spec, aggregate, shares, max_faulty=faulty, length=self._n_params, params=params
                )
            )
        except (WrongShareDetected, UncheckablePoints) as exc:
            self._log.warning("round %d: point shares disagree, nobody can be named: %s", job.round, exc)
            return None
        culprits = tuple(sorted((w.member for w in verdict.wrong), key=lambda n: n.public_key))
        for culprit in culprits:
            self._log.warning("round %d: %s's decryption share is wrong; naming it", job.round, culprit.short)
        return verdict.merged.mean.astype("<f4").tobytes(), culprits
