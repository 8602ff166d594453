"""Complaints about PRSS keys dealt in a key epoch (`crypto.prss`, `crypto.threshold`).

A dealer's PRSS keys for member j travel in j's sealed box, signed with the rest of the
content (`dealing.sign_share`); the dealer's commitments to them travel with its public
share, both fixed on the ledger by its public-share commitment
(`threshold.public_share_commitment`). A key off its commitment is therefore provable:
j reveals the keys of that box with the dealer's signed statement, the dealer's
commitments and the SHA-256 of its public share (`dealing.PrssEvidence`, made by
`threshold.KeyEpoch.prss_evidence`), and anyone (the contract) recomputes both hashes and
compares (`judge_prss_complaint`). The revealed keys are lost, but a complaint starts the
key epoch over with fresh dealings anyway.
"""

from __future__ import annotations

from . import dealing, prss
from .dealing import PrssEvidence
from .identity import NodeId
from .threshold import commitment_of_digest


def judge_prss_complaint(
    epoch_id: bytes, members: tuple[NodeId, ...], threshold: int, dealer: NodeId, complainer: NodeId,
    public_share_hash: bytes, proof: PrssEvidence,
) -> bool:  # fmt: skip
    """True if `proof` shows `dealer` dealt `complainer` PRSS keys that are missing, extra or
    off its committed commitments; False if they all check out (a false complaint).

    Raises `dealing.InvalidEvidence` if the commitments are not the ones behind the
    dealer's `public_share_hash` on the ledger or the keys are not what it signed."""
    if commitment_of_digest(epoch_id, dealer, proof.public_share_digest, proof.prss_commitments) != (
        public_share_hash
    ):
        raise dealing.InvalidEvidence(f"the PRSS commitments are not the ones {dealer.short} committed")
    dealing.verify_statement(
        epoch_id, dealer, complainer, proof.share_length, proof.blinding_length, proof.segment_hashes,
        dealing.prss_digest(proof.prss_keys), proof.signature,
    )  # fmt: skip
    n, size = len(members), prss.PRSS_KEY_SIZE
    if not prss.robust_epoch(n, threshold):
        return proof.prss_keys != b""
    point, own = members.index(dealer) + 1, members.index(complainer) + 1
    dealt = prss.subsets_dealt(n, threshold, point)
    for_us = prss.subsets_dealt(n, threshold, point, own)
    if len(proof.prss_commitments) != size * len(dealt) or len(proof.prss_keys) != size * len(for_us):
        return True
    committed = {s: proof.prss_commitments[k * size : (k + 1) * size] for k, s in enumerate(dealt)}
    return any(
        prss.key_commitment(epoch_id, s, proof.prss_keys[k * size : (k + 1) * size]) != committed[s]
        for k, s in enumerate(for_us)
    )
