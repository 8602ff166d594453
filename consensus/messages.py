"""Consensus wire messages: frozen, validated bodies of signed envelopes.

Every message travels as an envelope of `crypto.envelope` (chain id, type,
sender and signature come from there), so these bodies carry no signatures of
their own. `CONSENSUS_MESSAGES` is the registry the node merges with the other
layers' registries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, final

from crypto.envelope import MessageTypes

from .blocks import (
    HASH_SIZE,
    MAX_BLOCK_TX_BYTES,
    MAX_TX_BYTES,
    MAX_VALIDATORS,
    Block,
    CommitCertificate,
)

MAX_SYNC_BLOCKS: Final = 16  # blocks per BlockResponse
MAX_GOSSIP_TXS: Final = 64  # transactions per TxGossip
# A certificate holds at most MAX_VALIDATORS precommits of ~260 bytes each.
_CERTIFICATE_BUDGET: Final = MAX_VALIDATORS * 320
PROPOSAL_MAX_SIZE: Final = MAX_BLOCK_TX_BYTES + 64 * 1024 + _CERTIFICATE_BUDGET
SYNC_RESPONSE_MAX_SIZE: Final = 4 * PROPOSAL_MAX_SIZE
VOTE_MAX_SIZE: Final = 512


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_position(height: int, round: int) -> None:
    _check(height >= 1, "height must be >= 1")
    _check(0 <= round < 2**31, "round must be in [0, 2^31)")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Proposal:
    """The proposer of (height, round) proposes `block`; `pol_round` is its valid round or -1."""

    height: int
    round: int
    block: Block
    pol_round: int

    def __post_init__(self) -> None:
        _check_position(self.height, self.round)
        _check(-1 <= self.pol_round < self.round, "pol_round must be -1 or in [0, round)")
        _check(self.block.height == self.height, "proposed block is for another height")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Prevote:
    height: int
    round: int
    block_hash: bytes | None  # None = nil

    def __post_init__(self) -> None:
        _check_position(self.height, self.round)
        _check(self.block_hash is None or len(self.block_hash) == HASH_SIZE, "block hash must be 32 bytes")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Precommit:
    height: int
    round: int
    block_hash: bytes | None  # None = nil

    def __post_init__(self) -> None:
        _check_position(self.height, self.round)
        _check(self.block_hash is None or len(self.block_hash) == HASH_SIZE, "block hash must be 32 bytes")


Vote = Prevote | Precommit


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BlockRequest:
    """Ask a peer for its committed blocks from `from_height` on (block sync)."""

    from_height: int

    def __post_init__(self) -> None:
        _check(self.from_height >= 1, "from_height must be >= 1")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncedBlock:
    block: Block
    certificate: CommitCertificate

    def __post_init__(self) -> None:
        _check(self.certificate.height == self.block.height, "certificate is for another height")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BlockResponse:
    """Consecutive committed blocks with their certificates; `tip` = the sender's last height."""

    blocks: tuple[SyncedBlock, ...]
    tip: int

    def __post_init__(self) -> None:
        _check(len(self.blocks) <= MAX_SYNC_BLOCKS, f"at most {MAX_SYNC_BLOCKS} blocks per response")
        heights = [b.block.height for b in self.blocks]
        _check(
            heights == list(range(heights[0], heights[0] + len(heights))) if heights else True,
            "blocks must be consecutive",
        )
        _check(self.tip >= (heights[-1] if heights else 0), "tip below the blocks sent")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TxGossip:
    txs: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check(0 < len(self.txs) <= MAX_GOSSIP_TXS, f"1-{MAX_GOSSIP_TXS} transactions per gossip")
        _check(
            all(0 < len(tx) <= MAX_TX_BYTES for tx in self.txs), f"a transaction has 1-{MAX_TX_BYTES} bytes"
        )


CONSENSUS_MESSAGES: Final = MessageTypes()
CONSENSUS_MESSAGES.register("ledger/proposal", Proposal, max_size=PROPOSAL_MAX_SIZE)
CONSENSUS_MESSAGES.register("ledger/prevote", Prevote, max_size=VOTE_MAX_SIZE)
CONSENSUS_MESSAGES.register("ledger/precommit", Precommit, max_size=VOTE_MAX_SIZE)
CONSENSUS_MESSAGES.register("ledger/block-request", BlockRequest, max_size=VOTE_MAX_SIZE)
CONSENSUS_MESSAGES.register("ledger/block-response", BlockResponse, max_size=SYNC_RESPONSE_MAX_SIZE)
CONSENSUS_MESSAGES.register("ledger/tx", TxGossip, max_size=MAX_GOSSIP_TXS * (MAX_TX_BYTES + 16) + 1024)
