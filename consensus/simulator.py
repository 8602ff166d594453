"""Deterministic simulator: N consensus cores over a seeded `SimNetwork`, virtual time.

The simulator is the cores' shell, the same role the trio node plays for real:
it performs their actions (persist, then send; schedule timers; write commits
to each node's SQLite store), delivers messages and fires timers in virtual
time order, answers block-sync requests from the stores, and injects faults:
drop, delay, duplicate and reorder (`LinkFaults`), partitions, crashes with
restart from the store, and Byzantine validators that equivocate.

Everything derives from the seed, so a failing schedule replays exactly.
Invariants are checked as the schedule runs (`InvariantViolation`):
agreement among honest nodes, and a valid certificate on every commit.

`KVApp` is a tiny deterministic `Application` (a key/value store with a
validator-set change transaction) for tests, the simulator and benchmarks.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, final

from crypto import cbor
from crypto.envelope import Envelope, EnvelopeCodec
from crypto.errors import MalformedMessage, ProtocolError
from crypto.identity import NodeId, NodeIdentity

from .app import Application
from .blocks import Block, EnvelopeOpener, sha256, verify_certificate
from .core import (
    Action,
    Broadcast,
    Commit,
    CoreConfig,
    MessageReceived,
    PersistSigned,
    ReportEvidence,
    RequestBlocks,
    ScheduleTimeout,
    TendermintCore,
    TimeoutConfig,
    TimeoutFired,
    TxRejected,
    TxSubmitted,
)
from .messages import CONSENSUS_MESSAGES, BlockRequest, Precommit, Prevote, Proposal
from .simnet import LinkFaults, SimNetwork
from .store import LedgerStore, recover
from .votes import Equivocation

# -- a small deterministic application -----------------------------------------------------


def kv_set(key: str, value: int) -> bytes:
    """A KVApp transaction setting `key` to `value`."""
    return cbor.dumps({"op": "set", "key": key, "value": value})


def kv_validators(members: Iterable[NodeId]) -> bytes:
    """A KVApp transaction replacing the validator set (effective two heights later)."""
    return cbor.dumps({"op": "validators", "keys": [m.public_key for m in members]})


@final
class KVApp:
    """Key/value store with a validator set that a transaction can replace.

    Transactions are canonical CBOR maps: ``{"op": "set", "key": str (1-32 chars),
    "value": int >= 0}`` or ``{"op": "validators", "keys": [32-byte keys, ...]}``.
    A validator-set change committed in block H governs heights H+2 onwards.
    """

    __slots__ = ("_height", "_kv", "_validator_history")

    def __init__(self, validators: Sequence[NodeId]) -> None:
        if not validators:
            raise ValueError("KVApp needs at least one validator")
        self._kv: dict[str, int] = {}
        self._height = 0
        self._validator_history: list[tuple[int, tuple[NodeId, ...]]] = [(1, tuple(validators))]

    @property
    def state(self) -> dict[str, int]:
        return dict(self._kv)

    @property
    def height(self) -> int:
        return self._height

    def validators(self, height: int) -> tuple[NodeId, ...]:
        if height > self._height + 2:
            raise ValueError(f"validators of height {height} are not known yet (applied {self._height})")
        current = self._validator_history[0][1]
        for start, members in self._validator_history:
            if start <= height:
                current = members
        return current

    @staticmethod
    def _decode(tx: bytes) -> tuple[str, str | tuple[NodeId, ...], int]:
        try:
            value = cbor.loads(tx)
        except ProtocolError as exc:
            raise ValueError(f"not canonical CBOR: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("a transaction is a CBOR map")
        op = value.get("op")
        if op == "set" and value.keys() == {"op", "key", "value"}:
            key, number = value["key"], value["value"]
            if not isinstance(key, str) or not 0 < len(key) <= 32:
                raise ValueError("key must be 1-32 characters")
            if type(number) is not int or number < 0:
                raise ValueError("value must be a non-negative integer")
            return "set", key, number
        if op == "validators" and value.keys() == {"op", "keys"}:
            keys = value["keys"]
            if not isinstance(keys, list) or not keys:
                raise ValueError("validators: a non-empty list of keys")
            try:
                members = tuple(NodeId(k) for k in keys if isinstance(k, bytes))
            except ValueError:
                raise ValueError("validators: keys must be 32 bytes") from None
            if len(members) != len(keys) or len(set(members)) != len(members):
                raise ValueError("validators: distinct 32-byte keys")
            return "validators", members, 0
        raise ValueError("unknown transaction")

    def check_tx(self, tx: bytes) -> str | None:
        try:
            self._decode(tx)
        except ValueError as exc:
            return str(exc)
        return None

    def apply_block(self, height: int, txs: Sequence[bytes]) -> tuple[str | None, ...]:
        if height != self._height + 1:
            raise ValueError(f"block {height} applied after {self._height}")
        results: list[str | None] = []
        for tx in txs:
            try:
                op, target, number = self._decode(tx)
            except ValueError as exc:
                results.append(str(exc))
                continue
            if op == "set":
                assert isinstance(target, str)
                self._kv[target] = number
            else:
                assert isinstance(target, tuple)
                start = height + 2
                self._validator_history = [(s, m) for s, m in self._validator_history if s < start]
                self._validator_history.append((start, target))
            results.append(None)
        self._height = height
        return tuple(results)

    def _state(self) -> cbor.CborValue:
        history: list[cbor.CborValue] = [
            [start, [m.public_key for m in members]] for start, members in self._validator_history
        ]
        kv: dict[str, cbor.CborValue] = dict(self._kv.items())
        return {"height": self._height, "kv": kv, "validators": history}

    def app_hash(self) -> bytes:
        return hashlib.sha256(cbor.dumps(self._state())).digest()

    def snapshot(self) -> bytes:
        return cbor.dumps(self._state())

    def restore(self, snapshot: bytes) -> None:
        state = cbor.loads(snapshot)
        if not isinstance(state, dict) or state.keys() != {"height", "kv", "validators"}:
            raise MalformedMessage("KVApp snapshot is a map of height, kv and validators")
        height, kv, history = state["height"], state["kv"], state["validators"]
        if not (isinstance(height, int) and isinstance(kv, dict) and isinstance(history, list)):
            raise MalformedMessage("KVApp snapshot fields have wrong types")
        restored: list[tuple[int, tuple[NodeId, ...]]] = []
        for entry in history:
            if not (isinstance(entry, list) and len(entry) == 2):
                raise MalformedMessage("KVApp snapshot: bad validator history entry")
            start, keys = entry
            if not (isinstance(start, int) and isinstance(keys, list) and keys):
                raise MalformedMessage("KVApp snapshot: bad validator history entry")
            restored.append((start, tuple(NodeId(k) for k in keys if isinstance(k, bytes))))
        values = {k: v for k, v in kv.items() if type(v) is int}
        if len(values) != len(kv):
            raise MalformedMessage("KVApp snapshot: values must be integers")
        self._height, self._kv, self._validator_history = height, values, restored


# -- the simulation -----------------------------------------------------------------------


class InvariantViolation(AssertionError):
    """A safety or liveness property of the ledger failed in a simulated schedule."""


SIM_TIMEOUTS: Final = TimeoutConfig(
    propose=0.3, prevote=0.1, precommit=0.1, delta=0.1, rebroadcast=0.25, commit=0.1
)


def sim_identity(index: int) -> NodeIdentity:
    return NodeIdentity.from_seed(sha256(b"swarmnode-sim-validator-" + str(index).encode()))


@final
@dataclass(slots=True)
class SimNode:
    """One simulated node: identity and store survive crashes; app and core do not."""

    index: int
    identity: NodeIdentity
    store: LedgerStore
    byzantine: bool
    app: Application | None = None
    core: TendermintCore | None = None
    incarnation: int = 0
    commits: dict[int, bytes] = field(default_factory=dict)  # height -> block hash
    commit_times: dict[int, float] = field(default_factory=dict)
    applied_txs: dict[bytes, int] = field(default_factory=dict)  # tx hash -> height applied

    @property
    def address(self) -> str:
        return f"v{self.index}"

    @property
    def up(self) -> bool:
        return self.core is not None

    @property
    def height(self) -> int:
        """Committed height (from the store: also right while crashed)."""
        return len(self.commits)


@final
class Simulation:
    """N nodes, one seeded network, one virtual clock. See the module docstring."""

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        validators: int | None = None,
        byzantine: Iterable[int] = (),
        faults: LinkFaults = LinkFaults(),  # noqa: B008 (frozen value)
        timeouts: TimeoutConfig = SIM_TIMEOUTS,
        snapshot_every: int = 5,
        app_factory: Callable[[Sequence[NodeId]], Application] = KVApp,
        store_dir: str | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.network: SimNetwork[bytes] = SimNetwork(seed, faults)
        self.identities = [sim_identity(i) for i in range(n)]
        genesis = tuple(ident.node_id for ident in self.identities[: validators or n])
        self.genesis_validators: Final = genesis
        self.chain_id: Final = sha256(b"swarmnode-sim-chain" + bytes([n]))
        self.opener: Final = EnvelopeOpener(EnvelopeCodec(self.chain_id, CONSENSUS_MESSAGES))
        self._app_factory = app_factory
        self.config: Final = CoreConfig(timeouts=timeouts, snapshot_every=snapshot_every)
        byz = set(byzantine)
        self.nodes = [
            SimNode(
                i,
                ident,
                LedgerStore(":memory:" if store_dir is None else f"{store_dir}/v{i}.sqlite", self.chain_id),
                i in byz,
            )
            for i, ident in enumerate(self.identities)
        ]
        self._by_id = {node.identity.node_id: node for node in self.nodes}
        self._timers: list[tuple[float, int, int, int, TimeoutFired]] = []
        self._seq = 0
        self.decided: dict[int, bytes] = {}  # height -> block hash committed by honest nodes
        self.evidence: list[Equivocation] = []
        self.rejected: list[TxRejected] = []
        self.events = 0
        for node in self.nodes:
            self.network.add(node.address)
        for node in self.nodes:
            self._boot(node)

    # -- node lifecycle --------------------------------------------------------------------

    def app_factory(self) -> Application:
        return self._app_factory(self.genesis_validators)

    def _boot(self, node: SimNode) -> None:
        app, resume = recover(node.store, self.app_factory)
        node.app = app
        node.core = TendermintCore(
            identity=node.identity, opener=self.opener, app=app, resume=resume, config=self.config
        )
        self._perform(node, node.core.start())

    def crash(self, index: int) -> None:
        """Kill node `index`: its app, core, timers and in-flight messages are lost."""
        node = self.nodes[index]
        if not node.up:
            return
        node.core = None
        node.app = None
        node.incarnation += 1
        self.network.crash(node.address)

    def restart(self, index: int) -> None:
        """Bring a crashed node back from its store (it catches up through block sync)."""
        node = self.nodes[index]
        if node.up:
            return
        self.network.restart(node.address)
        self._boot(node)

    @property
    def honest(self) -> list[SimNode]:
        return [node for node in self.nodes if not node.byzantine]

    # -- inputs ---------------------------------------------------------------------------

    def submit(self, index: int, tx: bytes) -> None:
        node = self.nodes[index]
        if node.core is not None:
            self._perform(node, node.core.handle(TxSubmitted(tx)))

    # -- the event loop ------------------------------------------------------------------------

    def next_event_time(self) -> float | None:
        times = [
            t
            for t in (self.network.next_time(), self._timers[0][0] if self._timers else None)
            if t is not None
        ]
        return min(times) if times else None

    def step(self) -> bool:
        """Advance to the next event time and process everything due then. False if idle."""
        at = self.next_event_time()
        if at is None:
            return False
        self.now = max(self.now, at)
        for delivery in self.network.pop_due(self.now):
            self._deliver(self.nodes[int(delivery.dst[1:])], delivery.src, delivery.payload)
        while self._timers and self._timers[0][0] <= self.now:
            _, _, index, incarnation, timeout = heapq.heappop(self._timers)
            node = self.nodes[index]
            if node.core is not None and node.incarnation == incarnation:
                self.events += 1
                self._perform(node, node.core.handle(timeout))
        return True

    def run_until(self, done: Callable[[], bool], *, max_time: float) -> bool:
        """Step until `done()` or virtual time passes `max_time`; return whether done."""
        while not done():
            if self.now > max_time or not self.step():
                return done()
        return True

    def advance_to(self, when: float) -> None:
        """Process every event up to virtual time `when`, then set the clock to it."""
        while (at := self.next_event_time()) is not None and at <= when:
            self.step()
        self.now = max(self.now, when)

    def _deliver(self, node: SimNode, src: str, wire: bytes) -> None:
        if node.core is None:
            return
        try:
            envelope = self.opener.open(wire)
        except ProtocolError:
            return  # logged and dropped by a real node; never reaches the core
        self.events += 1
        if isinstance(envelope.body, BlockRequest):
            response = node.store.block_response(envelope.body)
            if response.blocks:
                reply = self.opener.codec.seal(node.identity, response)
                self.network.send(self.now, node.address, src, reply)
            return
        self._perform(node, node.core.handle(MessageReceived(envelope)))

    # -- the shell: perform actions in order --------------------------------------------------

    def _perform(self, node: SimNode, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, PersistSigned):
                node.store.persist_signed(
                    action.height, action.round, action.step, action.wire, action.locked_block
                )
            elif isinstance(action, Broadcast):
                self._broadcast(node, action.envelope)
            elif isinstance(action, RequestBlocks):
                peer = self._by_id.get(action.peer)
                if peer is not None:
                    self.network.send(self.now, node.address, peer.address, action.envelope.wire)
            elif isinstance(action, ScheduleTimeout):
                self._seq += 1
                timeout = TimeoutFired(action.kind, action.height, action.round)
                entry = (self.now + action.duration, self._seq, node.index, node.incarnation, timeout)
                heapq.heappush(self._timers, entry)
            elif isinstance(action, Commit):
                self._on_commit(node, action)
            elif isinstance(action, ReportEvidence):
                self.evidence.append(action.evidence)
            else:
                self.rejected.append(action)

    def _broadcast(self, node: SimNode, envelope: Envelope) -> None:
        others = [other for other in self.nodes if other is not node]
        if not node.byzantine or not isinstance(envelope.body, Proposal | Prevote | Precommit):
            for other in others:
                self.network.send(self.now, node.address, other.address, envelope.wire)
            return
        # Byzantine: each peer gets the message, a conflicting validly signed sibling, or both.
        sibling = self.opener.codec.seal(node.identity, _conflicting(envelope.body))
        for other in others:
            choice = self.rng.random()
            if choice < 0.4:
                wires = [envelope.wire]
            elif choice < 0.8:
                wires = [sibling]
            else:
                wires = [sibling, envelope.wire]
            for wire in wires:
                self.network.send(self.now, node.address, other.address, wire)

    def _on_commit(self, node: SimNode, commit: Commit) -> None:
        block, certificate = commit.block, commit.certificate
        node.store.append_block(block, certificate)
        if commit.snapshot is not None:
            node.store.save_snapshot(block.height, commit.app_hash, commit.snapshot)
        node.commits[block.height] = block.hash
        node.commit_times[block.height] = self.now
        for tx, result in zip(block.txs, commit.results, strict=True):
            if result is None:
                node.applied_txs.setdefault(sha256(tx), block.height)
        if node.byzantine:
            return
        # Invariant: every committed block carries a valid certificate for that height's validators.
        assert node.app is not None
        try:
            verify_certificate(certificate, self.opener, node.app.validators(block.height))
        except ProtocolError as exc:
            raise InvariantViolation(f"{node.address} committed block {block.height} with {exc}") from None
        if certificate.block_hash != block.hash:
            raise InvariantViolation(
                f"{node.address}: certificate of block {block.height} is for another block"
            )
        # Invariant: no two honest nodes commit different blocks at one height.
        agreed = self.decided.setdefault(block.height, block.hash)
        if agreed != block.hash:
            raise InvariantViolation(f"honest nodes committed different blocks at height {block.height}")

    # -- observations ---------------------------------------------------------------------------

    def min_honest_height(self) -> int:
        return min(node.height for node in self.honest)

    def max_honest_height(self) -> int:
        return max(node.height for node in self.honest)

    def committed_everywhere(self, tx: bytes) -> bool:
        digest = sha256(tx)
        return all(digest in node.applied_txs for node in self.honest)

    def close(self) -> None:
        for node in self.nodes:
            node.store.close()


# -- seeded random fault schedules ------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class ScheduleResult:
    n: int
    seed: int
    byzantine: tuple[int, ...]
    stable_height: int  # highest honest height when the faults stopped
    final_height: int  # lowest honest height at the end
    tx_commit_heights: tuple[int, ...]  # height at which each valid tx was applied (by every honest node)
    virtual_time: float
    evidence: int
    events: int


def run_schedule(
    n: int,
    seed: int,
    *,
    fault_time: float = 1.5,
    txs: int = 3,
    liveness_heights: int | None = None,
    max_time: float = 60.0,
) -> ScheduleResult:
    """Run one seeded adversarial schedule and check the ledger's invariants.

    Faults during ``[0, fault_time)``: random drop/duplicate rates and delay
    spread (reordering), up to f Byzantine equivocators, a partition that heals,
    a crash with restart from the store; valid and invalid transactions are
    submitted meanwhile. Then the network stabilises (healed, no loss, every node
    up) and every valid transaction must be applied by every honest node within
    `liveness_heights` (default 2n + 2) heights of the height reached at that
    point. Raises `InvariantViolation` (agreement, certificates: checked on every
    commit; liveness: here).
    """
    rng = random.Random(seed * 7919 + n)
    f = (n - 1) // 3
    byzantine = tuple(sorted(rng.sample(range(n), rng.randint(0, f))))
    honest = [i for i in range(n) if i not in byzantine]
    faults = LinkFaults(
        drop=rng.uniform(0.0, 0.25),
        duplicate=rng.uniform(0.0, 0.2),
        min_delay=0.001,
        max_delay=rng.uniform(0.005, 0.08),
    )
    sim = Simulation(n, seed, byzantine=byzantine, faults=faults)
    plan, valid_txs = _fault_plan(rng, sim, honest, txs, fault_time)
    try:
        for at, _, act in sorted(plan, key=lambda item: (item[0], item[1])):
            sim.advance_to(at)
            act()
        sim.advance_to(fault_time)
        stable, heights = _check_after_faults(sim, seed, valid_txs, liveness_heights, max_time)
        return ScheduleResult(
            n=n,
            seed=seed,
            byzantine=byzantine,
            stable_height=stable,
            final_height=sim.min_honest_height(),
            tx_commit_heights=heights,
            virtual_time=sim.now,
            evidence=len(sim.evidence),
            events=sim.events,
        )
    finally:
        sim.close()


def _fault_plan(
    rng: random.Random, sim: Simulation, honest: Sequence[int], txs: int, fault_time: float
) -> tuple[list[tuple[float, int, Callable[[], None]]], list[bytes]]:
    """The schedule's actions during ``[0, fault_time)`` (time, order, action), drawn from
    `rng`: `txs` valid transactions and one invalid one submitted, maybe a partition that
    heals and a crash with restart from the store; and the valid transactions."""
    n = len(sim.nodes)
    victim = rng.choice(honest)
    submitters = [i for i in honest if i != victim] or list(honest)
    plan: list[tuple[float, int, Callable[[], None]]] = []
    valid_txs: list[bytes] = []
    for k in range(txs):
        tx = kv_set(f"k{k}", rng.randrange(1000))
        valid_txs.append(tx)
        target = rng.choice(submitters)
        plan.append((rng.uniform(0, fault_time), len(plan), functools.partial(sim.submit, target, tx)))
    junk_target = rng.choice(submitters)
    plan.append((rng.uniform(0, fault_time), len(plan), functools.partial(sim.submit, junk_target, b"\xff")))
    if rng.random() < 0.5:
        start = rng.uniform(0, fault_time)
        side = set(rng.sample([node.address for node in sim.nodes], rng.randint(1, n // 2)))
        plan.append((start, len(plan), lambda: sim.network.partition(side)))
        plan.append((rng.uniform(start, fault_time), len(plan), sim.network.heal))
    if rng.random() < 0.5:
        down = rng.uniform(0, fault_time)
        plan.append((down, len(plan), lambda: sim.crash(victim)))
        plan.append((rng.uniform(down, fault_time), len(plan), lambda: sim.restart(victim)))
    return plan, valid_txs


def _check_after_faults(
    sim: Simulation, seed: int, valid_txs: Sequence[bytes], liveness_heights: int | None, max_time: float
) -> tuple[int, tuple[int, ...]]:
    """Stabilise the network (healed, no loss, every node up), then check liveness: every
    valid tx applied by every honest node within the bound, the invalid one by none.
    Returns the height reached when the faults stopped and each valid tx's commit height."""
    n = len(sim.nodes)
    sim.network.heal()
    sim.network.set_faults(LinkFaults())
    for node in sim.nodes:
        sim.restart(node.index)
    stable = sim.max_honest_height()
    bound = stable + (liveness_heights if liveness_heights is not None else 2 * n + 2)
    done = sim.run_until(
        lambda: (
            all(sim.committed_everywhere(tx) for tx in valid_txs) and sim.min_honest_height() >= stable + 1
        ),
        max_time=max_time,
    )
    if not done:
        raise InvariantViolation(
            f"n={n} seed={seed}: no progress to height {stable + 1} with all txs by t={max_time} "
            f"(heights {[node.height for node in sim.nodes]})"
        )
    heights = tuple(max(node.applied_txs[sha256(tx)] for node in sim.honest) for tx in valid_txs)
    late = [h for h in heights if h > bound]
    if late:
        raise InvariantViolation(f"n={n} seed={seed}: txs committed at {late}, after the bound {bound}")
    for node in sim.honest:
        if sha256(b"\xff") in node.applied_txs:
            raise InvariantViolation(f"n={n} seed={seed}: an invalid tx was applied")
    return stable, heights


def _conflicting(body: Proposal | Prevote | Precommit) -> Proposal | Prevote | Precommit:
    """A different message for the same height/round/step (what an equivocator signs)."""
    if isinstance(body, Proposal):
        block = body.block
        forged = Block(
            height=block.height,
            prev_hash=block.prev_hash,
            proposer=block.proposer,
            txs=(*block.txs, kv_set("byzantine", body.round)),
            app_hash=block.app_hash,
            last_commit=block.last_commit,
        )
        return Proposal(height=body.height, round=body.round, block=forged, pol_round=body.pol_round)
    other = None if body.block_hash is not None else sha256(b"no such block" + bytes([body.round % 256]))
    if isinstance(body, Prevote):
        return Prevote(height=body.height, round=body.round, block_hash=other)
    return Precommit(height=body.height, round=body.round, block_hash=other)


__all__ = [
    "SIM_TIMEOUTS",
    "InvariantViolation",
    "KVApp",
    "ScheduleResult",
    "SimNode",
    "Simulation",
    "kv_set",
    "kv_validators",
    "run_schedule",
    "sim_identity",
]
