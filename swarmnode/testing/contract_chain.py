"""A contract fed block by block, for tests of the contract and of what runs on it.

`ContractChain` signs each (sender, body) pair as its sender and applies them as one
block. The contract checks who sent which key-epoch transaction at which stage, not the
key material behind the hashes (the nodes check that off the ledger): a test that only
needs a complete key epoch commits `placeholder_epoch_blocks`, one block per stage.

    chain = ContractChain(genesis, identities)
    chain.complete_epoch()
    chain.ok([(node, Ready(round=1, weight=10))])
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from consensus.contract import Contract
from consensus.contract_state import KeyEpoch
from consensus.genesis import Genesis
from consensus.transactions import (
    EpochComplete,
    EpochFingerprint,
    EpochPublicShare,
    EpochSealedShares,
    TxBody,
    TxSigner,
)
from crypto.identity import NodeId, NodeIdentity
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


class ContractChain:
    """`genesis`'s contract, fed one block per `block` call, with a signer for each of
    `identities` (members and outsiders alike)."""

    def __init__(self, genesis: Genesis, identities: Iterable[NodeIdentity]) -> None:
        self.contract = Contract(genesis)
        self.signers = {i.node_id: TxSigner(genesis.chain_id, i) for i in identities}

    def block(self, txs: Sequence[tuple[NodeId, TxBody]]) -> tuple[str | None, ...]:
        """Applies `txs`, each signed by its sender, as the next block; the contract's reasons."""
        wires = [self.signers[sender].sign(body) for sender, body in txs]
        return self.contract.apply_block(self.contract.height + 1, wires)

    def ok(self, txs: Sequence[tuple[NodeId, TxBody]]) -> None:
        """`block`, which must accept every transaction."""
        reasons = self.block(txs)
        if reasons != (None,) * len(txs):
            raise AssertionError(f"block at height {self.contract.height} rejected: {reasons}")

    def complete_epoch(self) -> None:
        """The current key epoch, completed by every member with `placeholder_epoch_blocks`."""
        epoch = self.contract.key_epoch()
        for block in placeholder_epoch_blocks(epoch):
            self.ok(block)
        if not self.contract.key_epoch().complete:
            raise AssertionError(f"key epoch {epoch.number} did not complete")
