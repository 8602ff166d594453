"""Fuzzing every byte decoder that is not an envelope body.

Entry points: the libp2p transport's stream formats (`swarmnode.net.wire`), the
genesis file, stored blocks and certificates, contract snapshots (what
`recover`/`verify_chain` restore), CKKS ciphertext blobs (contributions and
aggregates), decryption-share blobs and `combine` over a hostile share.

Each case derives a hostile input from a valid sample (canonical but type-confused
CBOR, byte flips, truncation, splices of hostile CBOR heads, deep nesting, garbage),
and the decoder must either refuse it with its documented error or return a value of
the right type that encodes back to exactly the input bytes (one meaning per encoding).
A refused snapshot leaves the contract's state untouched.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pytest

from consensus.blocks import Block, CommitCertificate
from consensus.contract import Contract
from consensus.genesis import Genesis, GenesisError
from consensus.transactions import EpochPublicShare, Ready
from crypto import cbor, ckks
from crypto import secure_merge as sm
from crypto.errors import MessageTooLarge, ProtocolError
from crypto.testing import run_key_epoch
from crypto.threshold import DecryptionShare as ShareBlob
from crypto.threshold import InsufficientShares
from swarmnode.net import wire

if TYPE_CHECKING:  # the fixtures' types; conftest is not importable at run time
    from conftest import ContractKit, FuzzKit, LedgerSample

NODE_KEY = hashlib.sha256(b"peer").digest()


def cbor_entry(
    fuzz: FuzzKit,
    samples: list[bytes],
    decode: Callable[[bytes], object],
    allowed: tuple[type[Exception], ...],
) -> Callable[[random.Random], str]:
    """A fuzz case for a canonical-CBOR decoder: refuse, or decode to the input's one meaning."""

    def case(rnd: random.Random) -> str:
        data = fuzz.hostile(rnd, rnd.choice(samples))
        try:
            value = decode(data)
        except allowed as exc:
            return type(exc).__name__
        assert cbor.dumps_dataclass(value) == data
        return "accepted"

    return case


def wire_samples() -> dict[str, tuple[list[bytes], Callable[[bytes], object]]]:
    from crypto.identity import NodeId

    node = NodeId(NODE_KEY)
    return {
        "rpc-request": (
            [wire.encode(wire.RpcRequest("consensus/blocks", b"\x00\x01"))],
            wire.decode_rpc_request,
        ),
        "rpc-response": (
            [
                wire.encode(wire.RpcResponse(ok=True, data=b"answer", error="")),
                wire.encode(wire.RpcResponse(ok=False, data=b"", error="no handler")),
            ],
            wire.decode_rpc_response,
        ),
        "blob-header": (
            [wire.encode(wire.BlobHeader(found=True, size=50 << 20)), wire.encode(wire.BlobHeader(False, 0))],
            wire.decode_blob_header,
        ),
        "peer-list": (
            [
                wire.encode(wire.PeerList((wire.PeerEntry(node, ("/ip4/127.0.0.1/tcp/4001",)),))),
                wire.encode(wire.PeerList(())),
            ],
            wire.decode_peer_list,
        ),
    }


@pytest.mark.parametrize("name", sorted(wire_samples()))
def test_transport_wire_decoders(fuzz: FuzzKit, name: str) -> None:
    samples, decode = wire_samples()[name]
    stats = fuzz.run(cbor_entry(fuzz, samples, decode, (ProtocolError,)))
    assert stats.outcomes.get("accepted", 0) < stats.cases, stats.outcomes


def test_frame_length_refuses_before_reading(fuzz: FuzzKit) -> None:
    def case(rnd: random.Random) -> str:
        limit = rnd.choice((0, 64, 1 << 20, 2**32 - 1))
        header = rnd.randbytes(4)
        (announced,) = struct.unpack(">I", header)
        try:
            length = wire.frame_length(header, limit)
        except MessageTooLarge:
            assert announced > limit
            return "too large"
        assert length == announced <= limit
        return "accepted"

    fuzz.run(case)


def test_genesis_decoding(fuzz: FuzzKit, contract_kit: ContractKit) -> None:
    samples = [contract_kit.genesis.to_bytes()]
    stats = fuzz.run(cbor_entry(fuzz, samples, Genesis.from_bytes, (GenesisError,)))
    assert stats.outcomes["GenesisError"] > stats.cases // 2


def test_block_and_certificate_decoding(fuzz: FuzzKit, ledger_sample: LedgerSample) -> None:
    blocks = [cbor.dumps_dataclass(b) for b in ledger_sample.blocks]
    certificates = [cbor.dumps_dataclass(c) for c in ledger_sample.certificates]
    block_case = cbor_entry(fuzz, blocks, lambda d: cbor.loads_dataclass(Block, d), (ProtocolError,))
    cert_case = cbor_entry(
        fuzz, certificates, lambda d: cbor.loads_dataclass(CommitCertificate, d), (ProtocolError,)
    )
    fuzz.run(block_case)
    fuzz.run(cert_case)


def test_contract_snapshot_restore(fuzz: FuzzKit, contract_kit: ContractKit) -> None:
    genesis = contract_kit.genesis
    source = Contract(genesis)
    signers = [contract_kit.signer(m) for m in contract_kit.members]
    source.apply_block(1, [s.sign(EpochPublicShare(epoch=1, share_hash=bytes(32))) for s in signers])
    source.apply_block(2, [signers[0].sign(Ready(round=1, weight=10, val_metric=0.5))])
    samples = [Contract(genesis).snapshot(), source.snapshot()]
    target = Contract(genesis)
    target.apply_block(1, [])

    def case(rnd: random.Random) -> str:
        before = target.app_hash()
        data = fuzz.hostile(rnd, rnd.choice(samples))
        try:
            target.restore(data)
        except (ProtocolError, ValueError) as exc:
            assert target.app_hash() == before  # a refused snapshot changes nothing
            return type(exc).__name__
        assert target.snapshot() == data
        target.restore(samples[0])  # back to a known state for the next case
        target.apply_block(1, [])
        return "accepted"

    stats = fuzz.run(case)
    assert stats.outcomes.get("SchemaError", 0) > 0, stats.outcomes


# -- CKKS blobs: mutations of small valid blobs (10 parameters = one ciphertext chunk) ---------


@pytest.fixture(scope="module")
def ckks_sample() -> tuple[object, bytes, list[bytes]]:
    spec, _, keys = run_key_epoch(3)
    blobs = [sm.encrypt_update(k, np.full(10, 0.25 * i, np.float32), 1.0, 3.0) for i, k in enumerate(keys)]
    aggregate = sm.aggregate_contributions(blobs, length=10)
    decrypt_set = list(spec.members[:2])
    shares = [
        sm.decryption_share(keys[i], aggregate, decrypt_set, contributions=3, min_peers=2) for i in (0, 1)
    ]
    return spec, aggregate, shares


def blob_variant(fuzz: FuzzKit, rnd: random.Random, blob: bytes) -> bytes:
    """A hostile variant of a ``magic | u32 | CBOR header | body`` blob."""
    (head_len,) = struct.unpack_from(">I", blob, 4)
    head_end = 8 + head_len
    choice = rnd.randrange(10)
    if choice < 3:  # type-confused header, length prefix kept consistent
        header = cbor.dumps(fuzz.confuse(rnd, cbor.loads(blob[8:head_end])))
        return blob[:4] + struct.pack(">I", len(header)) + header + blob[head_end:]
    if choice < 6:  # byte mutations inside the prefix and header
        return fuzz.mutate(rnd, blob[:head_end]) + blob[head_end:]
    if choice < 8:  # a flipped or replaced body byte (may set a residue >= its prime)
        out = bytearray(blob)
        pos = rnd.randrange(head_end, len(out))
        out[pos] = rnd.randrange(256) if rnd.random() < 0.5 else out[pos] | 0xF0
        return bytes(out)
    if choice == 8:
        return blob[: rnd.randrange(len(blob))]  # truncated
    return blob + rnd.randbytes(rnd.randrange(1, 64))  # trailing garbage


def test_ciphertext_blob_decoding(fuzz: FuzzKit, ckks_sample: tuple[object, bytes, list[bytes]]) -> None:
    """What a leader does with a fetched contribution: `AggregateBuilder.add` (decode, length
    check, residue check, add). A refused blob leaves the running sum as it was."""
    _, aggregate, _ = ckks_sample

    def one_contribution() -> sm.AggregateBuilder:
        builder = sm.AggregateBuilder(10)
        builder.add(aggregate)
        return builder

    builder = one_contribution()
    sum_before = builder.result()

    def case(rnd: random.Random) -> str:
        nonlocal builder
        data = blob_variant(fuzz, rnd, aggregate)
        try:
            builder.add(data)
        except ProtocolError as exc:
            assert builder.count == 1
            assert builder.result() == sum_before
            return type(exc).__name__
        # A body byte changed to another in-range residue: indistinguishable from a real
        # ciphertext (the verifier's recomputation, not the decoder, catches a wrong sum).
        assert ckks.EncryptedVector.from_bytes(ckks.context(), data).to_bytes() == data
        builder = one_contribution()
        return "accepted"

    stats = fuzz.run(case)
    assert stats.outcomes["InvalidCiphertext"] > stats.cases // 2, stats.outcomes


def test_decryption_share_blob_decoding(
    fuzz: FuzzKit, ckks_sample: tuple[object, bytes, list[bytes]]
) -> None:
    _, _, shares = ckks_sample
    ctx = ckks.context()

    def case(rnd: random.Random) -> str:
        data = blob_variant(fuzz, rnd, rnd.choice(shares))
        try:
            share = ShareBlob.from_bytes(ctx, data)
        except ProtocolError as exc:
            return type(exc).__name__
        assert share.to_bytes() == data
        return "accepted"

    stats = fuzz.run(case)
    assert stats.outcomes["InvalidDecryptionShare"] > stats.cases // 2, stats.outcomes


def test_combine_with_one_hostile_share(
    fuzz: FuzzKit, ckks_sample: tuple[object, bytes, list[bytes]]
) -> None:
    """The whole decryption path over a hostile share: refused, or a merge whose weight checks out.

    `combine` costs ~10 ms (a full CKKS decode), so this entry point runs 500 cases; the
    share decoder it starts with is fuzzed 10,000 times above.
    """
    spec, aggregate, shares = ckks_sample
    honest = sm.combine(spec, aggregate, shares)  # type: ignore[arg-type]

    def case(rnd: random.Random) -> str:
        index = rnd.randrange(2)
        hostile = list(shares)
        hostile[index] = blob_variant(fuzz, rnd, shares[index])
        try:
            merged = sm.combine(spec, aggregate, hostile)  # type: ignore[arg-type]
        except (ProtocolError, InsufficientShares) as exc:
            return type(exc).__name__
        if hostile[index] == shares[index]:
            assert merged.mean.tobytes() == honest.mean.tobytes()
            return "unchanged"
        # A body byte changed: undetectable without proofs of correct decryption (docs/SECURITY.md,
        # known limits); the weight-sum check is what bounds it.
        assert 0.0 < merged.weight_sum <= 1.0 + 1e-6
        return "accepted-garbled"

    stats = fuzz.run(case, cases=500)
    assert stats.outcomes.get("InvalidDecryptionShare", 0) > 0, stats.outcomes
