"""The contract under the real BFT engine: the deterministic simulator orders its
transactions, a key epoch and a whole secure round commit, a site joins and
becomes a validator exactly two heights later, and the chain re-verifies."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from consensus.app import Application
from consensus.blocks import sha256
from consensus.contract import MERGED, Contract
from consensus.genesis import FoundingMember, Genesis, TrainingParams
from consensus.simulator import Simulation
from consensus.store import recover
from consensus.transactions import (
    Aggregate,
    AggregateVerdict,
    Approve,
    Contribution,
    DecryptionShare,
    JoinRequest,
    MergedModel,
    Phase,
    Ready,
    TxBody,
    TxSigner,
)
from consensus.verify import verify_chain
from crypto.identity import NodeId
from swarmnode.testing.contract_chain import placeholder_epoch_blocks


def digest(label: object) -> bytes:
    return hashlib.sha256(repr(label).encode()).digest()


def contract_factory(validators: Sequence[NodeId]) -> Application:
    genesis = Genesis(
        name="ledger-sim",
        members=tuple(FoundingMember(name=f"v{i}", node_id=v) for i, v in enumerate(validators)),
        training=TrainingParams(model_spec_hash=digest("spec")),
    )
    return Contract(genesis)


class Swarm:
    def __init__(self, seed: int) -> None:
        self.sim = Simulation(5, seed, validators=4, app_factory=contract_factory)
        chain_id = self.contract(0).chain_id
        self.signers = {n.identity.node_id: TxSigner(chain_id, n.identity) for n in self.sim.nodes}
        self.ids = [n.identity.node_id for n in self.sim.nodes]

    def contract(self, index: int) -> Contract:
        app = self.sim.nodes[index].app
        assert isinstance(app, Contract)
        return app

    def commit(self, items: Sequence[tuple[NodeId, TxBody]]) -> int:
        """Submit signed txs to rotating nodes' mempools; wait until every node applied them."""
        txs = [self.signers[who].sign(body) for who, body in items]
        for i, tx in enumerate(txs):
            self.sim.submit(i % 4, tx)
        assert self.sim.run_until(
            lambda: all(self.sim.committed_everywhere(tx) for tx in txs), max_time=self.sim.now + 30
        ), [self.contract(0).check_tx(tx) for tx in txs]
        return max(self.sim.nodes[0].applied_txs[sha256(tx)] for tx in txs)


def test_a_round_and_a_join_through_consensus() -> None:
    swarm = Swarm(seed=3)
    founders = swarm.ids[:4]
    c = swarm.contract(0)
    epoch = c.key_epoch()
    for block in placeholder_epoch_blocks(epoch):
        swarm.commit(block)
    c = swarm.contract(0)
    assert c.key_epoch().complete
    assert c.key_epoch().seed == epoch.seed

    swarm.commit([(n, Ready(round=1, weight=10 * (i + 1), val_metric=0.8)) for i, n in enumerate(founders)])
    r = swarm.contract(0).round
    assert r.phase == Phase.CONTRIBUTE
    swarm.commit(
        [(n, Contribution(round=1, blob_hash=digest(("c", n)), blob_size=64)) for n in r.participants]
    )
    r = swarm.contract(0).round
    assert r.leader is not None
    aggregate = Aggregate(round=1, step=r.step, aggregate_hash=digest("agg"), contributors=r.contributors)
    swarm.commit([(r.leader, aggregate)])
    r = swarm.contract(0).round
    assert r.verifier is not None
    swarm.commit(
        [
            (
                r.verifier,
                AggregateVerdict(
                    round=1, step=r.step, aggregate_hash=digest("agg"), recomputed_hash=digest("agg")
                ),
            )
        ]
    )
    r = swarm.contract(0).round
    swarm.commit(
        [(n, DecryptionShare(round=1, step=r.step, share_hash=digest(("d", n)))) for n in r.decrypt_set]
    )
    swarm.commit(
        [(n, MergedModel(round=1, step=r.step, params_hash=digest("m"))) for n in r.participants[:3]]
    )
    for index in range(4):
        summary = swarm.contract(index).transparency()
        assert [(s.number, s.outcome, s.merged_hash) for s in summary] == [(1, MERGED, digest("m"))]

    # Node 4 has followed the chain from the start; it now joins and becomes a validator.
    newcomer = swarm.ids[4]
    join = JoinRequest(name="late", addresses=("/ip4/127.0.0.1/tcp/4004",))
    swarm.commit([(newcomer, join)])
    joined_at = swarm.commit(
        [(founders[0], Approve(joiner=newcomer, request=swarm.signers[newcomer].tx_id(join)))]
    )
    sim = swarm.sim
    assert sim.run_until(lambda: sim.min_honest_height() >= joined_at + 4, max_time=sim.now + 60)
    c = swarm.contract(0)
    assert newcomer not in c.validators(joined_at + 1)
    assert newcomer in c.validators(joined_at + 2)
    signers = set()
    for height in range(joined_at + 2, joined_at + 5):
        certificate = sim.nodes[0].store.certificate(height)
        assert certificate is not None
        signers |= {sim.opener.open(wire).sender for wire in certificate.precommits}
    assert newcomer in signers

    # Every node's store re-verifies, and a restart from disk lands on the same state.
    for node in sim.nodes:
        report = verify_chain(node.store, sim.app_factory)
        assert report.ok, str(report)
    restored, resume = recover(sim.nodes[0].store, sim.app_factory)
    assert isinstance(restored, Contract)
    assert restored.height == sim.nodes[0].height == swarm.contract(0).height
    assert restored.app_hash() == swarm.contract(0).app_hash()
    assert resume.height == restored.height + 1
    assert restored.is_member(newcomer)
    sim.close()
