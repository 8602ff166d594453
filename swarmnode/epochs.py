"""This node's part in key epochs: its dealing, its keys, and the epoch jobs of
`swarmnode.round` (commit, reveal, fingerprint, confirm, deadline votes, rejoin).

Key-epoch messages travel as content-addressed blobs whose hashes the members commit
(`EpochPublicShare`, `EpochSealedShares`): a member that was offline fetches them later by
hash, and what was announced is bound by the ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import final

from consensus.contract import Contract
from consensus.transactions import (
    EpochComplaint,
    EpochComplete,
    EpochFingerprint,
    EpochPrssComplaint,
    EpochPublicShare,
    EpochRejoin,
    EpochSealedShares,
    EpochTimeout,
    TxBody,
)
from crypto import cbor
from crypto.ckks_params import CkksParams
from crypto.errors import InvalidKeyShare, ProtocolError
from crypto.identity import NodeId, NodeIdentity
from crypto.secure_merge import (
    EpochKeys,
    EpochSpec,
    KeyEpoch,
    PublicKeyShare,
    RoundBinding,
    SealedKeyShare,
    start_key_epoch,
)

from .behaviour import Behaviour
from .compute import Compute
from .keystore import KeyFileRefused, NodeFiles
from .net.base import Transport
from .results import SwarmError
from .round import (
    CommitEpochShare,
    ConfirmEpoch,
    PublishEpochFingerprint,
    RejoinEpoch,
    RevealEpochShares,
    SubmitEpochTimeout,
)

Submit = Callable[[TxBody], Awaitable[None]]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EpochBundle:
    """Blob of one member's key-epoch reveal: its public share (checked against the
    commitment on the ledger) and one sealed Shamir share per other member."""

    public: PublicKeyShare
    sealed: tuple[SealedKeyShare, ...]


@final
class KeyEpochs:
    """Our dealings of running key epochs and the keys of finished ones (on disk as well)."""

    def __init__(
        self, identity: NodeIdentity, params: CkksParams, contract: Contract, files: NodeFiles,
        transport: Transport,
        compute: Compute, behaviour: Behaviour, log: logging.Logger,
    ) -> None:  # fmt: skip
        self._identity = identity
        self.params = params
        self._me = identity.node_id
        self._contract = contract
        self._files = files
        self._transport = transport
        self._compute = compute
        self._behaviour = behaviour
        self._log = log
        self.keys: dict[int, EpochKeys] = {}
        self._dealings: dict[int, KeyEpoch] = {}

    def load(self) -> None:
        """Our keys, our dealing of the running epoch and the bundle we announced in it.

        A refused key file leaves us without that epoch's keys (logged); an unsafe one
        (UnsafeKeyFile: a symlink or open to others) stops the node before anything runs."""
        for epoch in self._files.epochs_with_keys():
            try:
                data = self._files.load_epoch(epoch, "keys")
                if data is not None:
                    self.keys[epoch] = EpochKeys.import_secret(data, self.params)
            except KeyFileRefused as exc:
                self._log.error("running without the keys of key epoch %d: %s", epoch, exc)
            except ProtocolError as exc:
                path = self._files.epoch_file(epoch, "keys")
                self._log.error("running without the keys of key epoch %d: %s: %s", epoch, path, exc)
        self._load_dealings()
        # Re-serve what we announced in the current key epoch (lost with a restart).
        epoch = self._contract.key_epoch().number
        try:
            bundle = self._files.load_epoch(epoch, "bundle")
        except KeyFileRefused as exc:
            self._log.error("key epoch %d: not serving our bundle: %s", epoch, exc)
            bundle = None
        if bundle is not None:
            self._transport.put_blob(bundle)

    def _load_dealings(self) -> None:
        """Take back our part of the key epoch that was running when we went down (persisted
        before its commitment went out), so that we can still reveal and finish it."""
        current = self._contract.key_epoch()
        for number in self._files.epochs_with("dealing"):
            if number in self.keys or number != current.number or current.complete:
                self._files.delete_epoch(number, "dealing")  # finished or superseded
                continue
            try:
                data = self._files.load_epoch(number, "dealing")
                if data is None:
                    continue
                epoch = KeyEpoch.import_secret(data, self._identity, self.params)
            except KeyFileRefused as exc:
                self._log.error("key epoch %d: our stored dealing is unusable: %s", number, exc)
                continue
            except ProtocolError as exc:
                path = self._files.epoch_file(number, "dealing")
                self._log.error("key epoch %d: our stored dealing is unusable: %s: %s", number, path, exc)
                continue
            if epoch.spec != EpochSpec(current.seed, current.members, current.threshold):
                self._log.error("key epoch %d: our stored dealing is for another epoch setup", number)
                continue
            self._dealings[number] = epoch
            self._log.info("key epoch %d: resumed with our stored dealing", number)

    def prune(self) -> None:
        """Drop dealings of epochs the ledger has moved past (abandoned or superseded)."""
        current = self._contract.key_epoch().number
        for number in [n for n in self._dealings if n < current]:
            del self._dealings[number]
            self._files.delete_epoch(number, "dealing")

    def binding(self, round_number: int) -> RoundBinding:
        """What every ciphertext of round `round_number` is bound to: our chain, the round's key
        epoch and the nonce the ledger fixed when it started (`consensus.contract.Round.nonce`)."""
        r = self._contract.round_record(round_number)
        keys = self.keys.get(r.epoch) if r is not None else None
        if r is None or keys is None:
            raise SwarmError(f"round {round_number}: not on our ledger, or we hold no keys of its key epoch")
        return RoundBinding(self._contract.chain_id, keys.spec.epoch_id, round_number, r.nonce)

    def _dealing_of(self, number: int) -> KeyEpoch:
        epoch = self._dealings.get(number)
        if epoch is None:
            # Our stored dealing was lost or unusable (logged at start): the epoch's deadline
            # excludes us and a following epoch takes us back in (see `consensus.contract`).
            raise SwarmError(f"key epoch {number}: our secret is gone (restarted mid-epoch)")
        return epoch

    # -- jobs ------------------------------------------------------------------------------------

    async def commit(self, job: CommitEpochShare, submit: Submit) -> None:
        epoch = self._dealings.get(job.epoch)
        if epoch is None:
            spec = EpochSpec(job.epoch_id, job.members, job.threshold)
            epoch = await self._compute(start_key_epoch, spec, self._identity, self.params)
            epoch = self._behaviour.dealing(epoch, self._identity)
            # Persist before the commitment goes out: a restart must still be able to reveal
            # (and finish with) exactly what the ledger will hold our commitment to.
            self._files.save_epoch(job.epoch, "dealing", epoch.export_secret())
            self._dealings[job.epoch] = epoch
        await submit(EpochPublicShare(epoch=job.epoch, share_hash=epoch.commitment))
        self._log.info("key epoch %d: committed our public share", job.epoch)

    async def reveal(self, job: RevealEpochShares, submit: Submit) -> None:
        epoch = self._dealing_of(job.epoch)
        epoch.expect_commitments(dict(job.commitments))
        outgoing = epoch.outgoing()
        public = next(b for b in outgoing if isinstance(b, PublicKeyShare))
        sealed = tuple(b for b in outgoing if isinstance(b, SealedKeyShare))
        bundle = cbor.dumps_dataclass(EpochBundle(public=public, sealed=sealed))
        # Persist before the hash goes out: after a restart we still serve what we announced.
        self._files.save_epoch(job.epoch, "bundle", bundle)
        digest = self._transport.put_blob(bundle)
        await submit(EpochSealedShares(epoch=job.epoch, shares_hash=digest))
        self._log.info("key epoch %d: revealed our shares", job.epoch)

    async def publish_fingerprint(self, job: PublishEpochFingerprint, submit: Submit) -> None:
        fingerprint = await self._compute(self._dealing_of(job.epoch).fingerprint, job.coin)
        await submit(EpochFingerprint(epoch=job.epoch, fingerprint=fingerprint))
        self._log.info("key epoch %d: published our dealing fingerprint", job.epoch)

    async def confirm(
        self, job: ConfirmEpoch, submit: Submit, fetch: Callable[[bytes, NodeId], Awaitable[bytes]]
    ) -> None:
        keys = self.keys.get(job.epoch)
        if keys is None:
            keys = await self._finish(job, submit, fetch)
            if keys is None:
                return  # complained: the contract judges and the epoch starts over
        await submit(EpochComplete(epoch=job.epoch, collective_key_hash=keys.public_key_digest))
        self._log.info("key epoch %d: collective key %s", job.epoch, keys.public_key_digest.hex()[:12])

    async def _finish(
        self, job: ConfirmEpoch, submit: Submit, fetch: Callable[[bytes, NodeId], Awaitable[bytes]]
    ) -> EpochKeys | None:
        """Our keys from every member's bundle; None after complaining about a dealer."""
        epoch = self._dealing_of(job.epoch)
        epoch.expect_commitments(dict(job.commitments))
        for member, bundle_hash in job.bundles:
            if member == self._me:
                continue
            bundle = cbor.loads_dataclass(EpochBundle, await fetch(bundle_hash, member))
            epoch.receive(member, bundle.public)  # checked against its commitment
            mine = [s for s in bundle.sealed if s.recipient == self._me]
            if len(mine) != 1:
                raise InvalidKeyShare(f"{member.short}'s bundle holds {len(mine)} shares for us")
            epoch.receive(member, mine[0])
        complaints = await self._compute(epoch.complaints, job.coin, dict(job.fingerprints))
        for dealer, proof in complaints:
            self._log.warning("key epoch %d: bad share from %s: complaining", job.epoch, dealer.short)
            await submit(EpochComplaint(epoch=job.epoch, dealer=dealer, evidence=proof))
        bad_keys = () if complaints else epoch.prss_faults()
        for dealer in bad_keys:
            self._log.warning("key epoch %d: bad PRSS keys from %s: complaining", job.epoch, dealer.short)
            opened = epoch.prss_evidence(dealer)
            await submit(EpochPrssComplaint(epoch=job.epoch, dealer=dealer, evidence=opened))
        if complaints or bad_keys:
            return None
        keys = await self._compute(epoch.finish)
        self._files.save_epoch(job.epoch, "keys", keys.export_secret())
        self.keys[job.epoch] = keys
        self._dealings.pop(job.epoch, None)
        self._files.delete_epoch(job.epoch, "dealing")  # the keys supersede it
        return keys

    async def deadline(self, job: SubmitEpochTimeout, submit: Submit) -> None:
        missing = ", ".join(m.short for m in job.waiting_for) or "nobody (the confirmations differ)"
        self._log.warning("key epoch %d: %s deadline passed, waiting for %s", job.epoch, job.stage, missing)
        await submit(EpochTimeout(epoch=job.epoch, stage=job.stage))
        done = len(self._contract.epoch_timeout_voters())
        quorum = self._contract.epoch_quorum()
        if job.waiting_for and done < quorum:
            self._log.warning(
                "key epoch %d cannot start over without %s: only %d members did their part, %d needed "
                "(max(min_peers, t)); the swarm waits for them",
                job.epoch,
                missing,
                done,
                quorum,
            )

    async def rejoin(self, job: RejoinEpoch, submit: Submit) -> None:
        self._log.info("left out of key epoch %d (a missed deadline): asking to rejoin", job.epoch)
        await submit(EpochRejoin(epoch=job.epoch))
