"""One valid body of every transaction kind, for codec, validation and fuzz tests."""

from __future__ import annotations

from collections.abc import Sequence

from consensus import transactions as tx
from crypto.dealing import SEGMENT_BYTES, DealingEvidence, PrssEvidence
from crypto.identity import NodeId


def transaction_examples(
    *, peer: NodeId, contributors: Sequence[NodeId], digest: bytes, equivocation: tuple[bytes, bytes]
) -> list[tx.TxBody]:
    """A body of every kind (two `Ready`: with and without a metric): `peer` is the one
    approved, evicted and complained about, `contributors` an aggregate's, `digest` every
    hash, `equivocation` the two votes of a `VoteEquivocation`."""
    return [
        tx.JoinRequest(name="site-x", addresses=("/ip4/127.0.0.1/tcp/4001",), last_left=0),
        tx.Approve(joiner=peer, request=digest),
        tx.Leave(member_since=3),
        tx.Evict(target=peer, target_since=0, reason="offline for a week"),
        tx.EpochPublicShare(epoch=1, share_hash=digest),
        tx.EpochSealedShares(epoch=1, shares_hash=digest),
        tx.EpochFingerprint(epoch=1, fingerprint=bytes(8 * 8 * 3)),
        tx.EpochComplaint(
            epoch=1,
            dealer=peer,
            evidence=DealingEvidence(
                segment=2,
                share_length=8 * SEGMENT_BYTES,
                blinding_length=64,
                segment_hashes=(digest,) * 8,
                shares=bytes(SEGMENT_BYTES),
                blinding=bytes(8),
                signature=bytes(64),
                prss_digest=digest,
            ),
        ),
        tx.EpochPrssComplaint(
            epoch=1,
            dealer=peer,
            evidence=PrssEvidence(
                share_length=8 * SEGMENT_BYTES,
                blinding_length=64,
                segment_hashes=(digest,) * 8,
                signature=bytes(64),
                prss_keys=bytes(96),
                public_share_digest=digest,
                prss_commitments=bytes(192),
            ),
        ),
        tx.EpochComplete(epoch=1, collective_key_hash=digest),
        tx.EpochTimeout(epoch=1, stage="reveal"),
        tx.EpochRejoin(epoch=2),
        tx.Ready(round=1, weight=120, val_metric=0.91),
        tx.Ready(round=2, weight=1, val_metric=None),
        tx.Contribution(round=1, blob_hash=digest, blob_size=4096),
        tx.Aggregate(round=1, step=2, aggregate_hash=digest, contributors=tuple(contributors)),
        tx.AggregateVerdict(round=1, step=3, aggregate_hash=digest, recomputed_hash=digest),
        tx.DecryptionShare(round=1, step=4, share_hash=digest),
        tx.MergedModel(round=1, step=4, params_hash=digest),
        tx.ShareMismatch(round=1, step=4),
        tx.PhaseTimeout(round=1, phase="contribute", step=1),
        tx.Stop(round=1, reason="good enough"),
        tx.VoteEquivocation(first=equivocation[0], second=equivocation[1]),
    ]
