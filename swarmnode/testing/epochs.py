"""Stand-in key epochs on the ledger, for tests of the contract and of what runs on it.

The contract checks who sent which key-epoch transaction at which stage, not the key
material behind the hashes (the nodes check that off the ledger): a test that only needs
a complete key epoch commits `placeholder_epoch_blocks`, one block per stage.

    for block in placeholder_epoch_blocks(contract.key_epoch()):
        commit(contract, *block)
"""

from __future__ import annotations

import hashlib

from consensus.contract_state import KeyEpoch
from consensus.transactions import (
    EpochComplete,
    EpochFingerprint,
    EpochPublicShare,
    EpochSealedShares,
    TxBody,
)
from crypto.identity import NodeId
from crypto.testing import placeholder_fingerprint


def placeholder_epoch_blocks(epoch: KeyEpoch) -> list[list[tuple[NodeId, TxBody]]]:
    """The four blocks in which every member of `epoch` completes it: public shares, sealed
    shares, fingerprints (`placeholder_fingerprint`, the size the contract expects) and
    completions, as (sender, body) pairs. The hashes stand in for blobs nobody fetches:
    SHA-256 of the repr of ``("pk", epoch, member)``, ``("sealed", epoch, member)`` and, the
    collective key's, ``("ck", epoch)``, so a test can name what was committed."""

    def stand_in(*label: object) -> bytes:
        return hashlib.sha256(repr(label).encode()).digest()

    n = epoch.number
    fingerprint = placeholder_fingerprint(epoch.threshold)
    return [
        [(m, EpochPublicShare(epoch=n, share_hash=stand_in("pk", n, m))) for m in epoch.members],
        [(m, EpochSealedShares(epoch=n, shares_hash=stand_in("sealed", n, m))) for m in epoch.members],
        [(m, EpochFingerprint(epoch=n, fingerprint=fingerprint)) for m in epoch.members],
        [(m, EpochComplete(epoch=n, collective_key_hash=stand_in("ck", n))) for m in epoch.members],
    ]
