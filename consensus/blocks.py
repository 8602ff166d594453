"""Ledger blocks and commit certificates.

A block at height h holds the ordered transactions (opaque canonical-CBOR
bytes whose meaning the application defines), the hash of block h-1, the
proposer, the application hash *after* block h-1 and the certificate that
committed block h-1. Its hash is SHA-256 of the canonical CBOR of its header,
which binds the transactions and the certificate through their own hashes.

A certificate is the list of >2/3 precommit envelopes (their exact wire bytes)
for one block: anyone with the chain id and the height's validator set can
re-verify it offline (`verify_certificate`).
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

from crypto import cbor
from crypto.envelope import Envelope, EnvelopeCodec
from crypto.errors import ProtocolError
from crypto.identity import NodeId

from .errors import InvalidBlock, InvalidCertificate

HASH_SIZE: Final = 32
GENESIS_PREV_HASH: Final = bytes(HASH_SIZE)  # prev_hash of block 1
MAX_TX_BYTES: Final = 64 * 1024
MAX_BLOCK_TX_BYTES: Final = 1024 * 1024
MAX_BLOCK_TXS: Final = 4096
MAX_VALIDATORS: Final = 256


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def has_quorum(count: int, total: int) -> bool:
    """More than two thirds of `total` equal votes."""
    return 3 * count > 2 * total


def has_one_third(count: int, total: int) -> bool:
    """More than one third (f+1 when n = 3f+1): at least one of them is honest."""
    return 3 * count > total


@final
@dataclass(frozen=True, slots=True)
class CommitCertificate:
    """>2/3 signed precommits for `block_hash` at (`height`, `round`)."""

    height: int
    round: int
    block_hash: bytes
    precommits: tuple[bytes, ...]  # precommit envelope wires, sorted, distinct

    def __post_init__(self) -> None:
        if self.height < 1 or self.round < 0:
            raise ValueError("certificate height must be >= 1 and round >= 0")
        if len(self.block_hash) != HASH_SIZE:
            raise ValueError("certificate block hash must be 32 bytes")
        if not 0 < len(self.precommits) <= MAX_VALIDATORS:
            raise ValueError(f"a certificate holds 1-{MAX_VALIDATORS} precommits")
        if list(self.precommits) != sorted(set(self.precommits)):
            raise ValueError("certificate precommits must be sorted and distinct")


@final
@dataclass(frozen=True, slots=True)
class BlockHeader:
    height: int
    prev_hash: bytes
    proposer: NodeId
    txs_hash: bytes
    app_hash: bytes
    last_commit_hash: bytes


@final
@dataclass(frozen=True)  # no slots: `hash` is cached in the instance dict
class Block:
    height: int
    prev_hash: bytes
    proposer: NodeId
    txs: tuple[bytes, ...]
    app_hash: bytes  # application state after block height-1
    last_commit: CommitCertificate | None  # None only at height 1

    def __post_init__(self) -> None:
        if self.height < 1:
            raise ValueError("block height must be >= 1")
        if len(self.prev_hash) != HASH_SIZE or len(self.app_hash) != HASH_SIZE:
            raise ValueError("prev_hash and app_hash must be 32 bytes")
        if (self.last_commit is None) != (self.height == 1):
            raise ValueError("exactly the blocks above height 1 carry the last commit")
        if self.last_commit is not None and self.last_commit.height != self.height - 1:
            raise ValueError("last commit must be for the previous height")
        if len(self.txs) > MAX_BLOCK_TXS:
            raise ValueError(f"a block holds at most {MAX_BLOCK_TXS} transactions")
        total = 0
        for tx in self.txs:
            if not 0 < len(tx) <= MAX_TX_BYTES:
                raise ValueError(f"a transaction has 1-{MAX_TX_BYTES} bytes")
            total += len(tx)
        if total > MAX_BLOCK_TX_BYTES:
            raise ValueError(f"block transactions exceed {MAX_BLOCK_TX_BYTES} bytes")

    def header(self) -> BlockHeader:
        last = b"" if self.last_commit is None else sha256(cbor.dumps_dataclass(self.last_commit))
        return BlockHeader(
            height=self.height,
            prev_hash=self.prev_hash,
            proposer=self.proposer,
            txs_hash=sha256(cbor.dumps([list(self.txs)])),
            app_hash=self.app_hash,
            last_commit_hash=last,
        )

    @functools.cached_property
    def hash(self) -> bytes:
        """SHA-256 of the canonical CBOR of the header (computed once: blocks are immutable)."""
        return sha256(cbor.dumps_dataclass(self.header()))


@final
class EnvelopeOpener:
    """`EnvelopeCodec.open` with a bounded cache keyed by the wire bytes.

    Verifying an Ed25519 signature dominates the cost of consensus; the same
    precommit is checked once as a vote and again in each certificate that
    carries it. A cached result is exactly what `open` would return again, since
    opening is a pure function of the bytes. Failures are not cached.
    """

    __slots__ = ("_budget", "_bytes", "_cache", "codec")

    def __init__(self, codec: EnvelopeCodec, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.codec: Final = codec
        self._cache: OrderedDict[bytes, Envelope] = OrderedDict()
        self._budget = max_bytes  # of wire bytes held (a proposal may be ~1 MiB, a vote ~200 B)
        self._bytes = 0

    @property
    def chain_id(self) -> bytes:
        return self.codec.chain_id

    def open(self, wire: bytes) -> Envelope:
        """Verify and decode; raises only `ProtocolError` subclasses."""
        cached = self._cache.get(wire)
        if cached is not None:
            return cached
        envelope = self.codec.open(wire)
        self._cache[wire] = envelope
        self._bytes += len(wire)
        while self._bytes > self._budget:
            evicted, _ = self._cache.popitem(last=False)
            self._bytes -= len(evicted)
        return envelope


def verify_certificate(
    certificate: CommitCertificate, opener: EnvelopeOpener, validators: Sequence[NodeId]
) -> None:
    """Raise `InvalidCertificate` unless it holds >2/3 valid precommits of `validators`."""
    from .messages import Precommit  # messages imports blocks: break the cycle here

    members = set(validators)
    signers: set[NodeId] = set()
    for index, wire in enumerate(certificate.precommits):
        try:
            envelope = opener.open(wire)
        except ProtocolError as exc:
            raise InvalidCertificate(f"precommit {index}: {exc}") from None
        body = envelope.body
        if not isinstance(body, Precommit):
            raise InvalidCertificate(f"precommit {index} is a {envelope.type}, not a precommit")
        if (body.height, body.round, body.block_hash) != (
            certificate.height,
            certificate.round,
            certificate.block_hash,
        ):
            raise InvalidCertificate(f"precommit {index} is for another height, round or block")
        if envelope.sender not in members:
            raise InvalidCertificate(
                f"precommit {index} is signed by {envelope.sender.short}, not a validator"
            )
        if envelope.sender in signers:
            raise InvalidCertificate(f"precommit {index}: {envelope.sender.short} signed twice")
        signers.add(envelope.sender)
    if not has_quorum(len(signers), len(members)):
        raise InvalidCertificate(
            f"{len(signers)} of {len(members)} validators signed: not more than two thirds"
        )


def check_block_links(block: Block, *, height: int, prev_hash: bytes, app_hash: bytes) -> None:
    """Raise `InvalidBlock` unless `block` sits at `height` on `prev_hash` with `app_hash`."""
    if block.height != height:
        raise InvalidBlock(f"block height {block.height}, expected {height}")
    if block.prev_hash != prev_hash:
        raise InvalidBlock(f"block {height}: prev_hash does not match block {height - 1}")
    if block.app_hash != app_hash:
        raise InvalidBlock(f"block {height}: app_hash differs from our state after block {height - 1}")
    if block.last_commit is not None and block.last_commit.block_hash != prev_hash:
        raise InvalidBlock(f"block {height}: last commit certifies another block")
