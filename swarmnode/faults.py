"""Misbehaving members for fault-injection tests (test kit: runtime code never imports it).

Pass one as `NodeOptions(behaviour=Faults(...))`; every fault is off by default, so
`Faults()` acts as the honest `swarmnode.behaviour.Behaviour`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import final

import numpy as np

from consensus.contract import ContributionRecord
from crypto.ckks_params import CkksParams
from crypto.identity import NodeIdentity
from crypto.secure_merge import KeyEpoch
from crypto.testing import byzantine_share, inconsistent_dealing

from .behaviour import Behaviour
from .merge_scheme import decode_plaintext_model
from .round import AggregateContributions, VerifyAggregate


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Faults(Behaviour):
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

    def crashes_before(self, job_kind: str) -> bool:
        return job_kind in self.crash_before

    def dealing(self, epoch: KeyEpoch, identity: NodeIdentity) -> KeyEpoch:
        return inconsistent_dealing(epoch, identity) if self.bad_dealing else epoch

    async def aggregate(
        self,
        job: AggregateContributions,
        honest: bytes,
        sum_of: Callable[[Sequence[ContributionRecord]], Awaitable[bytes]],
        secure: bool,
    ) -> bytes:
        if not self.wrong_aggregate:
            return honest
        # A well-formed but wrong sum: the last committed contribution left out.
        if secure:
            return await sum_of(job.contributions[:-1])
        wrong = decode_plaintext_model(honest, length=len(honest) // 4) + np.float32(1.0)
        return wrong.astype("<f4").tobytes()

    async def verdict(self, job: VerifyAggregate, recompute: Callable[[], Awaitable[bytes]]) -> bytes:
        return job.claimed_hash if self.wrong_verdict else await recompute()

    async def aggregate_to_decrypt(
        self, checked: Callable[[], Awaitable[bytes | None]], committed: Callable[[], Awaitable[bytes]]
    ) -> bytes | None:
        return await committed() if self.trust_aggregate else await checked()

    def prepares_shares(self) -> bool:
        return not self.trust_aggregate  # it decrypts the committed aggregate, not its own sum

    def released_share(self, share: bytes, params: CkksParams) -> bytes:
        return byzantine_share(share, params) if self.byzantine_share else share


@final
class SwitchableFaults(Behaviour):
    """A member whose `faults` a test changes while it runs (e.g. turning Byzantine later)."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults

    def crashes_before(self, job_kind: str) -> bool:
        return self.faults.crashes_before(job_kind)

    def dealing(self, epoch: KeyEpoch, identity: NodeIdentity) -> KeyEpoch:
        return self.faults.dealing(epoch, identity)

    async def aggregate(
        self,
        job: AggregateContributions,
        honest: bytes,
        sum_of: Callable[[Sequence[ContributionRecord]], Awaitable[bytes]],
        secure: bool,
    ) -> bytes:
        return await self.faults.aggregate(job, honest, sum_of, secure)

    async def verdict(self, job: VerifyAggregate, recompute: Callable[[], Awaitable[bytes]]) -> bytes:
        return await self.faults.verdict(job, recompute)

    async def aggregate_to_decrypt(
        self, checked: Callable[[], Awaitable[bytes | None]], committed: Callable[[], Awaitable[bytes]]
    ) -> bytes | None:
        return await self.faults.aggregate_to_decrypt(checked, committed)

    def prepares_shares(self) -> bool:
        return self.faults.prepares_shares()

    def released_share(self, share: bytes, params: CkksParams) -> bytes:
        return self.faults.released_share(share, params)
