"""Test kit for threshold CKKS: run a whole key epoch in one process.

For tests of code built on `crypto.secure_merge` (the round protocol, simulations):
every member's `KeyEpoch` is driven here with the exact bodies it would send, routed
the way the network would (commitments first, as the ledger would fix them; then public
shares to everyone, each sealed share only to its recipient).
"""

from __future__ import annotations

import os

from .ckks import DEFAULT_PARAMS, CkksParams
from .dealing import DEALING_PARAMS
from .identity import NodeIdentity
from .threshold import EpochKeys, EpochSpec, KeyEpoch, SealedKeyShare, default_threshold


def run_key_epoch(
    members: int | list[NodeIdentity],
    threshold: int | None = None,
    *,
    epoch_id: bytes | None = None,
    params: CkksParams = DEFAULT_PARAMS,
) -> tuple[EpochSpec, list[NodeIdentity], list[EpochKeys]]:
    """A completed key epoch: its spec, the members' identities and each member's keys."""
    identities = [NodeIdentity.generate() for _ in range(members)] if isinstance(members, int) else members
    n = len(identities)
    spec = EpochSpec(
        epoch_id if epoch_id is not None else os.urandom(32),
        tuple(identity.node_id for identity in identities),
        threshold if threshold is not None else default_threshold(n),
    )
    epochs = [KeyEpoch(spec, identity, params) for identity in identities]
    commitments = {epoch.spec.members[k]: epoch.commitment for k, epoch in enumerate(epochs)}
    for epoch in epochs:  # in a swarm: once every commitment is on the ledger
        epoch.expect_commitments(commitments)
    for sender, epoch in zip(identities, epochs, strict=True):
        for body in epoch.outgoing():
            for receiver, other in zip(identities, epochs, strict=True):
                if receiver is sender:
                    continue
                if isinstance(body, SealedKeyShare) and body.recipient != receiver.node_id:
                    continue
                other.receive(sender.node_id, body)
    return spec, identities, [epoch.finish() for epoch in epochs]


def placeholder_fingerprint(threshold: int, ckks_params: str = "ckks-n8192-q60x3-coeff-s90") -> bytes:
    """A well-formed (all-zero) dealing fingerprint, for ledger tests that drive key epochs
    with placeholder hashes instead of real dealings."""
    return bytes(DEALING_PARAMS[ckks_params].fingerprint_size(threshold))
