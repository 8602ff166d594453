"""Shared kit of the security suite: seeded input mutators and a batched fuzz driver.

Hypothesis drives every fuzz test, but one hypothesis example costs ~0.5 ms of its
own bookkeeping on a loaded 2-core CI machine, more than most decoders take to refuse
an input. So each hypothesis example draws a 64-bit seed and the test runs a *batch*
of cases from `random.Random(seed)`: 10,000 cases per entry point cost a few seconds,
a failure still reproduces from the seed hypothesis prints, and the number of cases
is counted, not assumed (`FuzzKit.run` asserts it).

``SWARMNODE_FUZZ_CASES`` scales every entry point (default 10,000): set it higher
for a long local run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.blocks import Block, CommitCertificate
from consensus.genesis import FoundingMember, Genesis, StoppingRule, TrainingParams
from consensus.messages import (
    BlockRequest,
    BlockResponse,
    Precommit,
    Prevote,
    Proposal,
    SyncedBlock,
    TxGossip,
)
from consensus.simulator import Simulation, kv_set
from consensus.transactions import (
    TxSigner,
)
from crypto import cbor
from crypto.envelope import DOMAIN, VERSION
from crypto.identity import NodeIdentity
from crypto.threshold import PublicKeyShare, SealedKeyShare
from swarmnode.testing.transactions import transaction_examples

FUZZ_CASES: Final = int(os.environ.get("SWARMNODE_FUZZ_CASES", "10000"))
BATCH: Final = 50

# Raw CBOR fragments a hostile peer would try: tags, indefinite lengths, undefined,
# simple values, huge length arguments, half floats, a break byte.
_HOSTILE_HEADS: Final = (
    b"\xc0",  # tag 0
    b"\xd8\x18",  # tag 24 (embedded CBOR)
    b"\x9f",  # indefinite array
    b"\xbf",  # indefinite map
    b"\x5f",  # indefinite byte string
    b"\xff",  # break
    b"\xf7",  # undefined
    b"\xf0",  # simple value 16
    b"\xf9\x7e\x00",  # half-precision NaN
    b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # byte string of 2^64-1 bytes
    b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00",  # array of 2^32 items
    b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff",  # map of 2^63-1 pairs
    b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff",  # uint 2^64-1
    b"\x3b\xff\xff\xff\xff\xff\xff\xff\xff",  # nint -2^64
    b"\x18\x01",  # non-canonical 1
)


def random_value(rnd: random.Random, depth: int = 0) -> cbor.CborValue:
    """A random CBOR value of any supported kind, biased to the edges of each type."""
    kind = rnd.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return rnd.choice([0, 1, -1, 2**31, -(2**31), 2**53, 2**63 - 1, -(2**63), 2**64 - 1, -(2**64)])
    if kind == 1:
        return rnd.randrange(-1000, 1000)
    if kind == 2:
        return rnd.choice([0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan"), 1e308, 5e-324])
    if kind == 3:
        return rnd.choice([True, False, None])
    if kind == 4:
        return rnd.choice(["", "x", "\u0000", "é" * rnd.randrange(1, 64), "a" * rnd.randrange(200, 5000)])
    if kind == 5:
        return rnd.randbytes(rnd.choice([0, 1, 31, 32, 33, 64, 65, rnd.randrange(1000, 70_000)]))
    if kind == 6:
        return rnd.randbytes(32)  # looks like a hash or a public key
    if kind == 7:
        return deep_list(rnd.randrange(33, 200))
    if kind in (8, 9):
        return [random_value(rnd, depth + 1) for _ in range(rnd.randrange(0, 5))]
    return {rnd.choice(["a", "v", "height", "round", "body", "x" * 10]): random_value(rnd, depth + 1)}


def deep_list(depth: int) -> cbor.CborValue:
    value: cbor.CborValue = 0
    for _ in range(depth):
        value = [value]
    return value


def confuse(rnd: random.Random, tree: cbor.CborValue) -> cbor.CborValue:
    """`tree` with one random node (map value, list item, or the whole) replaced or altered."""
    if isinstance(tree, dict) and tree and rnd.random() < 0.85:
        out = dict(tree)
        key = rnd.choice(sorted(out))
        action = rnd.randrange(6)
        if action == 0:
            del out[key]  # missing field
        elif action == 1:
            out[rnd.choice(["extra", key + "_", "sig", ""])] = random_value(rnd)  # unknown field
        else:
            out[key] = confuse(rnd, out[key])  # recurse into the field
        return out
    if isinstance(tree, list) and tree and rnd.random() < 0.85:
        out_list = list(tree)
        action = rnd.randrange(4)
        index = rnd.randrange(len(out_list))
        if action == 0:
            del out_list[index]
        elif action == 1:
            out_list.insert(index, random_value(rnd))
        else:
            out_list[index] = confuse(rnd, out_list[index])
        return out_list
    return random_value(rnd)


def mutate_bytes(rnd: random.Random, data: bytes) -> bytes:
    """One to three byte-level mutations: flips, truncation, splices of hostile CBOR heads."""
    out = bytearray(data)
    for _ in range(rnd.choice((1, 1, 2, 3))):
        if not out:
            out += rnd.randbytes(rnd.randrange(1, 16))
            continue
        op = rnd.randrange(9)
        pos = rnd.randrange(len(out))
        if op == 0:
            out[pos] ^= 1 << rnd.randrange(8)
        elif op == 1:
            out[pos] = rnd.randrange(256)
        elif op == 2:
            del out[rnd.randrange(len(out)) :]  # truncate
        elif op == 3:
            out[pos:pos] = rnd.randbytes(rnd.randrange(1, 9))
        elif op == 4:
            del out[pos : pos + rnd.randrange(1, 9)]
        elif op == 5:
            out[pos:pos] = rnd.choice(_HOSTILE_HEADS)
        elif op == 6:
            out[pos : pos + 1] = rnd.choice(_HOSTILE_HEADS)
        elif op == 7:
            out += rnd.randbytes(rnd.randrange(1, 4))  # trailing bytes
        else:
            end = min(len(out), pos + rnd.randrange(1, 32))
            out[pos:pos] = out[pos:end]  # duplicate a span
    return bytes(out)


def hostile_bytes(rnd: random.Random, valid: bytes) -> bytes:
    """A hostile variant of a valid canonical CBOR encoding: structural or byte-level."""
    choice = rnd.randrange(10)
    if choice < 4:
        return cbor.dumps(confuse(rnd, cbor.loads(valid)))  # canonical, type-confused
    if choice < 8:
        return mutate_bytes(rnd, valid)
    if choice == 8:
        return b"\x81" * rnd.randrange(33, 20_000) + b"\x00"  # deeply nested array
    return rnd.randbytes(rnd.randrange(0, 256))


def sign_raw_envelope(identity: NodeIdentity, chain_id: bytes, type_name: str, body: bytes) -> bytes:
    """A correctly signed envelope around arbitrary body bytes (what `EnvelopeCodec.seal`
    would produce for a body it could encode): the input reaches the body decoder."""
    unsigned: dict[str, cbor.CborValue] = {
        "v": VERSION,
        "chain": chain_id,
        "type": type_name,
        "from": identity.public_key,
        "body": body,
    }
    signature = identity.sign(DOMAIN + cbor.dumps(unsigned))
    return cbor.dumps({**unsigned, "sig": signature})


@dataclass(frozen=True, slots=True)
class FuzzStats:
    cases: int
    outcomes: dict[str, int]  # outcome label -> count


@dataclass(frozen=True, slots=True)
class FuzzKit:
    """Fixture object: the batched driver and the memory bound."""

    cases: int = FUZZ_CASES
    # The mutators, as methods so that test modules reach them through the fixture.
    value = staticmethod(random_value)
    confuse = staticmethod(confuse)
    mutate = staticmethod(mutate_bytes)
    hostile = staticmethod(hostile_bytes)
    sign_raw = staticmethod(sign_raw_envelope)

    def run(
        self,
        case: Callable[[random.Random], str],
        *,
        cases: int | None = None,
        fresh: Callable[[], None] | None = None,
    ) -> FuzzStats:
        """Run `case(rnd)` at least `cases` times (default FUZZ_CASES) from hypothesis-drawn
        seeds, `BATCH` per example; `case` asserts and returns an outcome label. A stateful
        entry point passes `fresh`, called before each batch, so every example replays alone."""
        wanted = self.cases if cases is None else cases
        outcomes: dict[str, int] = {}
        examples = max(1, -(-wanted // BATCH))

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.integers(min_value=0, max_value=2**64 - 1))
        def batch(seed: int) -> None:
            rnd = random.Random(seed)
            if fresh is not None:
                fresh()
            for _ in range(BATCH):
                label = case(rnd)
                outcomes[label] = outcomes.get(label, 0) + 1

        batch()
        total = sum(outcomes.values())
        # Hypothesis may stop early only if it runs out of distinct seeds, which 2^64 rules out.
        assert total >= wanted, f"ran {total} cases, wanted {wanted}"
        return FuzzStats(total, outcomes)

    @contextmanager
    def bounded_memory(self, limit_bytes: int) -> Iterator[None]:
        """Fail if Python allocations peak above `limit_bytes` inside the block."""
        tracemalloc.start()
        try:
            yield
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < limit_bytes, f"peak allocation {peak} bytes exceeds {limit_bytes}"


@pytest.fixture(scope="session")
def fuzz() -> FuzzKit:
    return FuzzKit()


# -- valid samples of everything a peer can send ------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerSample:
    """A short real ledger (4 validators, KVApp) made by the deterministic simulator."""

    chain_id: bytes
    identities: tuple[NodeIdentity, ...]  # the validators' keys
    blocks: tuple[Block, ...]
    certificates: tuple[CommitCertificate, ...]
    votes: tuple[bytes, ...]  # precommit envelope wires taken from the certificates


@pytest.fixture(scope="session")
def ledger_sample() -> LedgerSample:
    sim = Simulation(4, 7)
    for k in range(6):
        sim.submit(k % 4, kv_set(f"k{k}", k))
    assert sim.run_until(lambda: sim.min_honest_height() >= 5, max_time=60)
    store = sim.nodes[0].store
    stored = store.blocks()
    sim.close()
    votes = tuple(wire for s in stored for wire in s.certificate.precommits)
    return LedgerSample(
        sim.chain_id,
        tuple(sim.identities),
        tuple(s.block for s in stored),
        tuple(s.certificate for s in stored),
        votes,
    )


@pytest.fixture(scope="session")
def body_samples(ledger_sample: LedgerSample) -> dict[type, list[object]]:
    """At least one valid body of every registered message type (consensus, tx, key epoch)."""
    h = bytes(range(32))
    ledger = ledger_sample
    keys = sorted((i.node_id for i in ledger.identities), key=lambda n: n.public_key)
    block = ledger.blocks[2]
    synced = tuple(
        SyncedBlock(block=b, certificate=c)
        for b, c in zip(ledger.blocks[1:4], ledger.certificates[1:4], strict=True)
    )
    samples: list[object] = [
        Proposal(height=block.height, round=0, block=block, pol_round=-1),
        Prevote(height=3, round=1, block_hash=h),
        Prevote(height=3, round=1, block_hash=None),
        Precommit(height=3, round=0, block_hash=h),
        BlockRequest(from_height=2),
        BlockResponse(blocks=synced, tip=9),
        TxGossip(txs=(kv_set("a", 1), b"\x00")),
        *transaction_examples(
            peer=keys[1], contributors=keys, digest=h, equivocation=(ledger.votes[0], ledger.votes[1])
        ),
        # Key-epoch bodies with short stand-in polynomials: the codec checks types, not sizes.
        PublicKeyShare(epoch=h, share=bytes(300), prss_commitments=bytes(64)),
        SealedKeyShare(epoch=h, recipient=keys[0], box=bytes(120)),
    ]
    out: dict[type, list[object]] = {}
    for body in samples:
        out.setdefault(type(body), []).append(body)
    return out


# -- a contract chain: 4 founding members plus outsiders -------------------------------------------

MEMBER_KEYS: Final = tuple(
    NodeIdentity.from_seed(hashlib.sha256(b"member %d" % i).digest()) for i in range(4)
)
OUTSIDER_KEYS: Final = tuple(
    NodeIdentity.from_seed(hashlib.sha256(b"outsider %d" % i).digest()) for i in range(2)
)


def make_genesis(name: str = "security-test", *, min_peers: int = 3, max_rounds: int = 5) -> Genesis:
    return Genesis(
        name=name,
        members=tuple(
            FoundingMember(name=f"site-{i}", node_id=k.node_id, addresses=(f"/ip4/127.0.0.1/tcp/{4001 + i}",))
            for i, k in enumerate(MEMBER_KEYS)
        ),
        training=TrainingParams(
            model_spec_hash=hashlib.sha256(b"spec").digest(),
            min_peers=min_peers,
            stopping=StoppingRule(max_rounds=max_rounds),
        ),
    )


@dataclass(frozen=True, slots=True)
class ContractKit:
    """A genesis, its members' and two outsiders' transaction signers."""

    genesis: Genesis
    members: tuple[NodeIdentity, ...] = MEMBER_KEYS
    outsiders: tuple[NodeIdentity, ...] = OUTSIDER_KEYS

    def signer(self, identity: NodeIdentity) -> TxSigner:
        return TxSigner(self.genesis.chain_id, identity)

    def by_key_order(self) -> list[NodeIdentity]:
        """Members in key order: the contract's rotation (leader, verifier, ...) follows it."""
        return sorted(self.members, key=lambda i: i.public_key)


@pytest.fixture(scope="session")
def contract_kit() -> ContractKit:
    return ContractKit(make_genesis())


CHAOS_SCRIPT: Final = Path(__file__).resolve().parents[2] / "scripts" / "chaos.py"


def _run_chaos(workdir: Path, arguments: Sequence[str], *, limit: float) -> tuple[dict[str, Any], str]:
    """One bounded run of ``scripts/chaos.py`` in `workdir` (its own timeout a minute under
    `limit`); asserts it passed and returns its JSON result and console output. On timeout a
    SIGINT lets the script stop every site process group in its `finally`."""
    command = [sys.executable, str(CHAOS_SCRIPT), *arguments, "--workdir", str(workdir),
               "--timeout", str(limit - 60)]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    print(text)
    assert proc.returncode == 0, text[-3000:]
    return json.loads((workdir / "chaos.json").read_text()), text


ChaosRunner = Callable[..., tuple[dict[str, Any], str]]


@pytest.fixture(scope="session")
def run_chaos() -> ChaosRunner:
    """`run_chaos(workdir, arguments, limit=seconds) -> (result JSON, output)`: see `_run_chaos`."""
    return _run_chaos
