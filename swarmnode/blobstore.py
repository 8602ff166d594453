"""Content-addressed blobs of a node: fetching, keeping for restarts, replication, models.

Round blobs (contributions, aggregates, decryption shares) this node puts or fetches are
persisted to ``storage_dir/blobs`` before their hashes are committed or used and re-served
after a restart (a restart of the whole swarm loses no round); they are deleted once their
round closed. Merged models are held in memory (read-only) and in ``storage_dir``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, final

import numpy as np
import trio

from consensus.contract import Contract
from crypto import cbor
from crypto.errors import MalformedMessage, ProtocolError
from crypto.identity import NodeId

from .keystore import NodeFiles
from .net.base import BlobNotFound, Transport, TransportError
from .results import FloatVector, SwarmError

REPLICATE_PROTOCOL: Final = "/swarmnode/replicate/1"
REPLICATE_TIMEOUT: Final = 30.0
RETRY_FIRST: Final = 0.5
RETRY_MAX: Final = 8.0
_PEER_WATCH: Final = 0.5  # seconds between checks that a blob's source is still connected
# A node just (re)started has no peers for its first seconds, and a merged model it missed
# is only on its peers: keep asking for this long before giving up.
_MODEL_FETCH_PATIENCE: Final = 120.0


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
class BlobStore:
    """Blobs by hash over the transport's store, with disk copies of the open round's."""

    def __init__(
        self, transport: Transport, files: NodeFiles, contract: Contract, n_params: int, log: logging.Logger
    ) -> None:
        self._transport = transport
        self._files = files
        self._contract = contract
        self.n_params = n_params
        self._log = log
        self.models: dict[bytes, FloatVector] = {}  # merged models we hold (read-only)
        # Round blobs persisted by this process -> their round (blobs/ outlives a restart).
        self._blob_rounds: dict[bytes, int] = {}
        self._pruned_for = 0  # the open round when blobs/ was last pruned
        # Blob fetches under way (digest -> done): a second fetch of the same blob waits for
        # the first and then reads the transport's store, so no blob crosses the wire twice.
        self._fetching: dict[tuple[bytes, NodeId | None], trio.Event] = {}

    def restore(self) -> None:
        """After a start: the latest merged models and the blobs of the round that was open
        when we went down (peers may need them: after a full restart nobody else has them;
        blobs of rounds closed since go at the next prune)."""
        hashes = [r.merged_hash for r in self._contract.history() if r.merged_hash is not None]
        for digest in hashes[-2:]:  # the latest merged model (and the one before, for a slow peer)
            data = self._files.load_model(digest)
            if data is not None:
                self.hold_model(digest, data)
        for _digest, data in self._files.stored_blobs():
            self._transport.put_blob(data)
        self._pruned_for = self._contract.round.number

    def hold_model(self, digest: bytes, data: bytes) -> FloatVector:
        params = np.frombuffer(data, dtype="<f4").astype(np.float32)
        params.setflags(write=False)
        self.models[digest] = params
        self._transport.put_blob(data)
        return params

    async def fetch(self, digest: bytes, owner: NodeId | None, *, keep_round: int | None = None) -> bytes:
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
            self.keep(keep_round, data)
        return data

    async def _fetch_once(self, digest: bytes, owner: NodeId | None) -> bytes:
        data: bytes | None = None
        if owner is not None and owner != self._transport.node_id:
            try:
                data = await self._from_connected(digest, owner)
            except (TransportError, ProtocolError) as exc:
                self._log.debug(
                    "blob %s not from %s (%s); asking anyone", digest.hex()[:12], owner.short, exc
                )
        if data is None:
            data = await self._transport.get_blob(digest, timeout=60.0)
        return data

    async def _from_connected(self, digest: bytes, owner: NodeId) -> bytes | None:
        """The blob from `owner`; None as soon as `owner`, connected when we asked, is no longer
        among our peers (it died mid-transfer: ask someone else now, not after the timeout)."""
        got: list[bytes] = []
        failed: list[Exception] = []
        async with trio.open_nursery() as nursery:

            async def fetch() -> None:
                try:
                    got.append(await self._transport.get_blob(digest, peer=owner, timeout=30.0))
                except (TransportError, ProtocolError) as exc:
                    failed.append(exc)
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                if owner not in self._transport.peers():
                    return  # not connected now: the fetch dials it (bounded by its timeout)
                while owner in self._transport.peers():
                    await trio.sleep(_PEER_WATCH)
                nursery.cancel_scope.cancel()

            nursery.start_soon(fetch)
            nursery.start_soon(watch)
        if got:
            return got[0]
        if failed:
            raise failed[0]
        return None

    def keep(self, round_number: int, data: bytes) -> bytes:
        """Persist a blob of round `round_number` (before its hash is committed or used) and
        serve it; returns its hash. `prune` deletes it once the round closed."""
        # The transport knows the hash of a blob it handed us (no 30 MB re-hash); the disk copy
        # is written once: a hash still in `_blob_rounds` has its file (pruning drops both).
        digest = self._transport.put_blob(data)
        if digest not in self._blob_rounds:
            self._files.save_blob(data, digest=digest)
        self._blob_rounds[digest] = max(round_number, self._blob_rounds.get(digest, 0))
        return digest

    def prune(self) -> None:
        """After the open round changed: delete the stored blobs of closed rounds."""
        r = self._contract.round
        if r.number <= self._pruned_for:
            return
        self._pruned_for = r.number
        keep = {c.blob_hash for c in r.contributions} | {v.value for v in r.decryption_shares}
        if r.aggregate_hash is not None:
            keep.add(r.aggregate_hash)
        keep |= {d for d, n in self._blob_rounds.items() if n >= r.number}
        self._blob_rounds = {d: n for d, n in self._blob_rounds.items() if n >= r.number}
        deleted = self._files.delete_blobs_except(keep)
        if deleted:
            self._log.debug("deleted %d blobs of closed rounds", deleted)

    async def replicate(self, peers: tuple[NodeId, ...], round_number: int, digest: bytes) -> None:
        """Ask `peers` to copy our blob `digest` of round `round_number` (each may refuse)."""
        request = cbor.dumps_dataclass(ReplicateRequest(round=round_number, digest=digest))
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(self._ask_to_replicate, peer, request)

    async def _ask_to_replicate(self, peer: NodeId, request: bytes) -> None:
        try:
            await self._transport.request(peer, REPLICATE_PROTOCOL, request, timeout=REPLICATE_TIMEOUT)
        except TransportError as exc:
            self._log.info("%s did not copy our contribution: %s", peer.short, exc)

    async def serve_replicate(self, sender: NodeId, data: bytes) -> bytes:
        """A participant asks us (head of the rotation) to copy its contribution blob."""
        request = cbor.loads_dataclass(ReplicateRequest, data)
        current = self._contract.round.number
        # Members only, for the open round or the next (our ledger may be a block behind).
        if self._contract.member(sender) is None or not current <= request.round <= current + 1:
            raise SwarmError(f"no copy for {sender.short} in round {request.round} (we are at {current})")
        data = await self._transport.get_blob(request.digest, peer=sender, timeout=REPLICATE_TIMEOUT)
        self.keep(request.round, data)
        return b"ok"

    async def merged_parameters(self, params_hash: bytes) -> FloatVector:
        """A merged model by its ledger hash: held, on disk, or fetched from any peer (the
        transport checks the hash); read-only."""
        held = self.models.get(params_hash)
        if held is not None:
            return held
        data = self._files.load_model(params_hash)
        if data is None:
            data = await self._fetch_model(params_hash)
        if len(data) != 4 * self.n_params:
            raise MalformedMessage(f"merged model blob has {len(data)} bytes, expected {4 * self.n_params}")
        self._files.save_model(data)
        return self.hold_model(params_hash, data)

    async def _fetch_model(self, params_hash: bytes) -> bytes:
        """A merged model from any peer, asked again (backing off) while nobody delivers it,
        up to `_MODEL_FETCH_PATIENCE`: a restarted node's trainer asks before it is connected."""
        deadline = trio.current_time() + _MODEL_FETCH_PATIENCE
        delay = RETRY_FIRST
        while True:
            try:
                return await self.fetch(params_hash, None)
            except BlobNotFound as exc:
                if trio.current_time() + delay > deadline:
                    raise
                self._log.info("merged model %s: %s; again in %.1f s", params_hash.hex()[:12], exc, delay)
                await trio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX)
