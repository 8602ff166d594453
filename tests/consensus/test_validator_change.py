"""Validator-set changes through the application: effective exactly two heights after commit."""

from __future__ import annotations

from consensus.blocks import sha256
from consensus.simulator import Simulation, kv_validators
from consensus.store import recover
from consensus.verify import verify_chain
from crypto.identity import NodeId


def signers(sim: Simulation, height: int) -> set[NodeId]:
    certificate = sim.nodes[0].store.certificate(height)
    assert certificate is not None
    return {sim.opener.open(wire).sender for wire in certificate.precommits}


def test_join_then_leave_take_effect_two_heights_after_their_block() -> None:
    sim = Simulation(5, 21, validators=4)  # v4 runs from the start as a non-validating follower
    everyone = tuple(node.identity.node_id for node in sim.nodes)
    grow = kv_validators(everyone)
    sim.submit(0, grow)
    assert sim.run_until(lambda: sim.committed_everywhere(grow), max_time=30)
    joined_at = sim.nodes[0].applied_txs[sha256(grow)]
    assert sim.run_until(lambda: sim.min_honest_height() >= joined_at + 4, max_time=60)
    app = sim.nodes[0].app
    assert app is not None
    assert app.validators(joined_at + 1) == everyone[:4]
    assert app.validators(joined_at + 2) == everyone
    for height in range(1, joined_at + 2):
        assert signers(sim, height) <= set(everyone[:4])
    assert any(everyone[4] in signers(sim, h) for h in range(joined_at + 2, joined_at + 5))
    # Two leave (5 -> 3): the remaining three must keep committing on their own.
    shrink = kv_validators(everyone[:3])
    sim.submit(1, shrink)
    assert sim.run_until(lambda: sim.committed_everywhere(shrink), max_time=60)
    left_at = sim.nodes[0].applied_txs[sha256(shrink)]
    # Height left_at + 1 still needs the old five (4 of 5 precommits); from left_at + 2 on,
    # the departed validators are no longer needed.
    assert sim.run_until(lambda: sim.min_honest_height() >= left_at + 1, max_time=120)
    sim.crash(3)
    sim.crash(4)
    assert sim.run_until(lambda: min(n.height for n in sim.nodes[:3]) >= left_at + 4, max_time=120)
    for height in range(left_at + 2, left_at + 5):
        assert signers(sim, height) <= set(everyone[:3])
    report = verify_chain(sim.nodes[0].store, sim.app_factory)
    assert report.ok, str(report)
    # A restart replays the changes and resumes with the right validator set.
    restored, resume = recover(sim.nodes[0].store, sim.app_factory)
    assert restored.validators(resume.height) == everyone[:3]
    sim.close()
