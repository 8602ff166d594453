"""The node's own conduct at the points where a member could cheat, as one injected object.

`Behaviour` is the honest member, what every node runs. Fault-injection tests pass a
misbehaving subclass (`swarmnode.faults`, never imported by runtime code) through
`NodeOptions.behaviour`; each hook gets what the honest step computes (or a way to
compute it) and returns what the node goes on with.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from consensus.contract import ContributionRecord
from crypto.ckks_params import CkksParams
from crypto.identity import NodeIdentity
from crypto.secure_merge import KeyEpoch

from .round import AggregateContributions, VerifyAggregate


class Behaviour:
    """The honest member."""

    def crashes_before(self, job_kind: str) -> bool:
        """Whether the node stops every task (and closes its transport) before a job of this kind."""
        return False

    def dealing(self, epoch: KeyEpoch, identity: NodeIdentity) -> KeyEpoch:
        """Our key-epoch dealing, as sent to the other members."""
        return epoch

    async def aggregate(
        self,
        job: AggregateContributions,
        honest: bytes,
        sum_of: Callable[[Sequence[ContributionRecord]], Awaitable[bytes]],
        secure: bool,
    ) -> bytes:
        """As leader: the aggregate whose hash we commit (`honest` is our sum of the
        contributions; `sum_of` sums another set; `secure`: ciphertexts, else float32)."""
        return honest

    async def verdict(self, job: VerifyAggregate, recompute: Callable[[], Awaitable[bytes]]) -> bytes:
        """As verifier: the hash we vote for the leader's aggregate (`recompute` sums the
        committed contributions ourselves and keeps the sum)."""
        return await recompute()

    async def aggregate_to_decrypt(
        self, checked: Callable[[], Awaitable[bytes | None]], committed: Callable[[], Awaitable[bytes]]
    ) -> bytes | None:
        """As decryptor: what we decrypt: `checked` is our own sum when it has the committed
        hash (None: refused), `committed` whatever blob the leader committed."""
        return await checked()

    def prepares_shares(self) -> bool:
        """Whether we make our share of our own sum while the leader still aggregates."""
        return True

    def released_share(self, share: bytes, params: CkksParams) -> bytes:
        """As decryptor: the share we publish, given the one we made (under `params`)."""
        return share

    def combines(self) -> bool:
        """Whether, when the round asks us to combine the shares, we do and vote the merged model."""
        return True


HONEST = Behaviour()
