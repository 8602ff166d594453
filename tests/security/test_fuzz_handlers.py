"""Fuzzing the stateful handlers: the consensus core and the contract.

- `TendermintCore.handle(MessageReceived(...))`, fed the way the node's gossip pump
  feeds it (wire bytes -> `EnvelopeOpener.open` -> core): hostile wire bytes, and
  well-formed, correctly signed messages that are invalid for the core (from
  non-validators, for past heights, blocks with forged certificates, unknown or
  malformed transactions). Nothing may crash, and none of them may change what the
  core has decided or is about to sign: height, round, step, lock, mempool, evidence
  and application hash compare equal before and after, and the core signs nothing.
- `Contract.check_tx` / `apply_block` with hostile transaction bytes and with
  well-typed, correctly signed transactions of every kind with random fields, from
  members and outsiders: a rejected transaction leaves the state exactly as an
  empty block would, `check_tx` agrees with `apply_block`, no outsider's
  transaction is ever accepted, and no transaction hits the contract's internal
  error guard.
"""

from __future__ import annotations

import dataclasses
import random
import types
import typing
from typing import TYPE_CHECKING

from consensus.blocks import Block, CommitCertificate, EnvelopeOpener
from consensus.contract import Contract
from consensus.core import Broadcast, Commit, CoreConfig, MessageReceived, PersistSigned, TendermintCore
from consensus.messages import (
    CONSENSUS_MESSAGES,
    BlockResponse,
    Precommit,
    Prevote,
    Proposal,
    SyncedBlock,
    TxGossip,
)
from consensus.simulator import SIM_TIMEOUTS, KVApp, kv_set
from consensus.store import LedgerStore, recover
from consensus.transactions import TX_BODIES, JoinRequest, TxSigner
from crypto import cbor
from crypto.envelope import EnvelopeCodec
from crypto.errors import ProtocolError
from crypto.identity import NodeId, NodeIdentity

if TYPE_CHECKING:  # the fixtures' types; conftest is not importable at run time
    from conftest import ContractKit, FuzzKit, LedgerSample

OUTSIDER = NodeIdentity.from_seed(b"\x99" * 32)


def core_at_tip(ledger: LedgerSample, me: int = 0) -> TendermintCore:
    """Validator `me` restarted from a store holding the sample ledger: the next height is open."""
    store = LedgerStore(":memory:", ledger.chain_id)
    for block, certificate in zip(ledger.blocks, ledger.certificates, strict=True):
        store.append_block(block, certificate)
    validators = tuple(i.node_id for i in ledger.identities)
    app, resume = recover(store, lambda: KVApp(validators))
    store.close()
    opener = EnvelopeOpener(EnvelopeCodec(ledger.chain_id, CONSENSUS_MESSAGES))
    core = TendermintCore(
        identity=ledger.identities[me],
        opener=opener,
        app=app,
        resume=resume,
        config=CoreConfig(timeouts=SIM_TIMEOUTS),
    )
    core.start()
    return core


def observable(core: TendermintCore) -> tuple[object, ...]:
    return (
        core.height,
        core.state,
        len(core.mempool),
        core.mempool.total_bytes,
        core.mempool.pending(),
        core.evidence,
        core.app.app_hash(),
    )


def forged_block(rnd: random.Random, ledger: LedgerSample, height: int, proposer: NodeId) -> SyncedBlock:
    """A block at `height` whose certificate cannot hold: reused, truncated or foreign precommits."""
    tip = ledger.blocks[-1]
    block = Block(
        height=height,
        prev_hash=tip.hash if rnd.random() < 0.8 else rnd.randbytes(32),
        proposer=proposer,
        txs=(kv_set("forged", rnd.randrange(1000)),),
        app_hash=rnd.randbytes(32),
        last_commit=ledger.certificates[-1],
    )
    old = ledger.certificates[rnd.randrange(len(ledger.certificates))]
    choice = rnd.randrange(3)
    if choice == 0:  # real precommits, but for another block
        certificate = CommitCertificate(height, old.round, block.hash, old.precommits)
    elif choice == 1:  # too few of them
        certificate = CommitCertificate(height, old.round, block.hash, old.precommits[:1])
    else:  # garbage signatures
        fake = tuple(sorted({rnd.randbytes(rnd.randrange(1, 300)) for _ in range(3)}))
        certificate = CommitCertificate(height, 0, block.hash, fake)
    return SyncedBlock(block=block, certificate=certificate)


def test_core_ignores_invalid_messages(fuzz: FuzzKit, ledger_sample: LedgerSample) -> None:
    core = core_at_tip(ledger_sample)
    opener = EnvelopeOpener(EnvelopeCodec(ledger_sample.chain_id, CONSENSUS_MESSAGES))
    codec = opener.codec
    height = core.height
    validators = ledger_sample.identities
    outsiders = [OUTSIDER, NodeIdentity.from_seed(b"\x98" * 32)]
    valid_wires = list(ledger_sample.votes[:8])

    def message(rnd: random.Random) -> tuple[bytes, bool]:
        """(wire, from_validator) of a signed message the core must not act on."""
        kind = rnd.randrange(6)
        round_ = rnd.choice((0, 0, 1, 2, 5, 999, 2**31 - 1))
        digest = rnd.choice((None, rnd.randbytes(32), ledger_sample.blocks[-1].hash))
        if kind == 0:  # a vote of this or a future height from an outsider
            sender = rnd.choice(outsiders)
            cls = rnd.choice((Prevote, Precommit))
            body: object = cls(height=height + rnd.choice((0, 0, 1, 5)), round=round_, block_hash=digest)
        elif kind == 1:  # a validator's vote for a height already decided
            sender = rnd.choice(validators)
            cls = rnd.choice((Prevote, Precommit))
            body = cls(height=rnd.randrange(1, height), round=round_, block_hash=digest)
        elif kind == 2:  # a proposal from an outsider or from a validator that is not the proposer
            proposer = core.proposer(height, round_ % 1000)
            candidates = [*outsiders, *(v for v in validators if v.node_id != proposer)]
            sender = rnd.choice(candidates)
            synced = forged_block(rnd, ledger_sample, height, sender.node_id)
            body = Proposal(height=height, round=round_ % 1000, block=synced.block, pol_round=-1)
        elif kind == 3:  # block sync with a forged certificate, from anyone
            sender = rnd.choice([*validators, *outsiders])
            body = BlockResponse(
                blocks=(forged_block(rnd, ledger_sample, height, sender.node_id),), tip=height
            )
        elif kind == 4:  # transactions the application refuses
            sender = rnd.choice([*validators, *outsiders])
            mutated = [fuzz.mutate(rnd, kv_set("k", 1)) for _ in range(rnd.randrange(1, 4))]
            # A mutation may land on another valid KV transaction: keep only refused ones.
            refused = tuple(tx for tx in mutated if tx and core.app.check_tx(tx) is not None)
            body = TxGossip(txs=refused or (b"\xff",))
        else:  # hostile wire bytes around a real vote (mostly refused by the opener)
            return fuzz.mutate(rnd, rnd.choice(valid_wires)), True
        return codec.seal(sender, body), any(sender is v for v in validators)

    def case(rnd: random.Random) -> str:
        wire, from_validator = message(rnd)
        try:
            envelope = opener.open(wire)
        except ProtocolError as exc:
            return f"dropped by opener: {type(exc).__name__}"
        before = observable(core)
        actions = core.handle(MessageReceived(envelope))
        assert observable(core) == before, envelope.body
        assert not any(isinstance(a, PersistSigned | Broadcast | Commit) for a in actions), actions
        if not from_validator:
            assert actions == [], actions
        return "ignored"

    stats = fuzz.run(case)
    print(stats.outcomes)
    assert stats.outcomes["ignored"] > stats.cases // 2, stats.outcomes


# -- the contract -------------------------------------------------------------------------------


def random_field(rnd: random.Random, hint: object, people: list[NodeId]) -> object:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        return random_field(rnd, rnd.choice(options), people)
    if hint is type(None):
        return None
    if hint is int:
        return rnd.choice((0, 1, 1, 2, 3, 4, 5, rnd.randrange(0, 100), 2**40))
    if hint is float:
        return rnd.choice((0.0, 0.5, 1.0, 0.99))
    if hint is bool:
        return rnd.random() < 0.5
    if hint is str:
        phases = ("contribute", "aggregate", "verify", "decrypt", "ready")
        stages = ("commit", "reveal", "check", "confirm")  # key-epoch stages (EpochTimeout)
        return rnd.choice(("", *phases, *stages, "site-0", "site-x"))
    if hint is bytes:
        return rnd.randbytes(32)
    if hint is NodeId:
        return rnd.choice(people)
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        if item is NodeId:
            chosen = rnd.sample(people, rnd.randrange(0, len(people) + 1))
            return tuple(sorted(chosen, key=lambda n: n.public_key))
        if item is bytes:  # e.g. a complaint's segment hashes
            return tuple(rnd.randbytes(32) for _ in range(rnd.choice((1, 8))))
        return ("/ip4/127.0.0.1/tcp/4100",) if rnd.random() < 0.7 else ()
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):  # e.g. a complaint's evidence
        fields = typing.get_type_hints(hint)
        return hint(**{f.name: random_field(rnd, fields[f.name], people) for f in dataclasses.fields(hint)})
    raise AssertionError(f"no generator for {hint!r}")


def random_body(rnd: random.Random, people: list[NodeId]) -> object:
    """A well-typed transaction body of a random kind with random fields (retries past
    values its own constructor refuses, as an attacker's signer would not bother to)."""
    while True:
        cls = rnd.choice(TX_BODIES)
        hints = typing.get_type_hints(cls)
        values = {f.name: random_field(rnd, hints[f.name], people) for f in dataclasses.fields(cls)}
        try:
            return cls(**values)
        except ValueError:
            continue


def test_contract_refuses_invalid_transactions_without_change(
    fuzz: FuzzKit, contract_kit: ContractKit
) -> None:
    contract = Contract(contract_kit.genesis)

    def fresh() -> None:
        nonlocal contract
        contract = Contract(contract_kit.genesis)

    members = list(contract_kit.members)
    outsiders = list(contract_kit.outsiders)
    people = [i.node_id for i in members + outsiders]
    signers = {i.node_id: TxSigner(contract_kit.genesis.chain_id, i) for i in members + outsiders}
    valid = [signers[m.node_id].sign(random_body(random.Random(k), people)) for k, m in enumerate(members)]

    def case(rnd: random.Random) -> str:
        if rnd.random() < 0.3:
            tx = fuzz.mutate(rnd, rnd.choice(valid))  # hostile bytes
            signer_id = None
        else:
            signer_id = rnd.choice(people)
            tx = signers[signer_id].sign(random_body(rnd, people))  # type: ignore[arg-type]
        before = contract.state
        was_member = signer_id is not None and contract.member(signer_id) is not None
        checked = contract.check_tx(tx)
        assert contract.state is before  # check_tx never changes state
        (reason,) = contract.apply_block(contract.height + 1, [tx]) if tx else (checked,)
        assert reason == checked
        if reason is not None:
            assert "internal error" not in reason, reason
            if tx:
                assert contract.state == dataclasses.replace(before, height=before.height + 1)
            return "rejected"
        envelope = contract.decode(tx)
        kind = type(envelope.body)
        # Hostile bytes that decode to a valid transaction (a mutation that changed nothing)
        # carry their real signer: judge membership by it.
        was_member = was_member or before.member(envelope.sender) is not None
        # A non-member may only ask to join; everything else needs membership.
        assert was_member or kind is JoinRequest, f"a non-member's {kind.__name__} was accepted"
        return f"accepted {kind.__name__}"

    stats = fuzz.run(case, fresh=fresh)
    print(stats.outcomes)
    # The random walk must also exercise accepted transactions, or it tests nothing deep.
    accepted = {k: v for k, v in stats.outcomes.items() if k.startswith("accepted")}
    assert len(accepted) >= 4, stats.outcomes
    assert cbor.loads(contract.snapshot())  # the state after the walk still encodes
