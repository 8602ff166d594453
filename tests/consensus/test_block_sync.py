"""Block sync: a node far behind catches up from peers; forged sync responses are ignored."""

from __future__ import annotations

from consensus.blocks import CommitCertificate
from consensus.core import Commit, MessageReceived, TendermintCore
from consensus.messages import BlockResponse, SyncedBlock
from consensus.simulator import Simulation, kv_set
from consensus.verify import verify_chain


def test_restarted_node_catches_up_many_heights_through_block_sync() -> None:
    sim = Simulation(4, 5, snapshot_every=7)
    sim.submit(0, kv_set("before", 1))
    assert sim.run_until(lambda: sim.min_honest_height() >= 3, max_time=30)
    sim.crash(3)
    sim.submit(1, kv_set("during", 2))
    # The other three keep going: more than two sync responses' worth of blocks (16 each).
    assert sim.run_until(lambda: min(n.height for n in sim.nodes[:3]) >= 40, max_time=120)
    assert sim.nodes[3].height < 10
    sim.restart(3)
    target = max(n.height for n in sim.nodes[:3])
    assert sim.run_until(lambda: sim.nodes[3].height >= target, max_time=240)
    lagger, reference = sim.nodes[3].store, sim.nodes[0].store
    for height in range(1, target + 1):
        ours, theirs = lagger.block(height), reference.block(height)
        assert ours is not None
        assert theirs is not None
        assert ours.hash == theirs.hash
    assert verify_chain(lagger, sim.app_factory).ok
    app = sim.nodes[3].app
    assert app is not None
    assert app.state == {"before": 1, "during": 2}  # type: ignore[attr-defined]
    sim.close()


def test_sync_response_with_a_forged_certificate_is_ignored() -> None:
    source = Simulation(4, 8)
    assert source.run_until(lambda: source.min_honest_height() >= 2, max_time=30)
    stored = source.nodes[0].store.blocks(1, 2)
    fresh = Simulation(4, 8)  # same validators and chain, no blocks yet; drive one core by hand
    node = fresh.nodes[0]
    assert node.core is not None
    core: TendermintCore = node.core
    block, certificate = stored[0].block, stored[0].certificate
    weak = CommitCertificate(
        certificate.height, certificate.round, certificate.block_hash, certificate.precommits[:2]
    )
    forged = BlockResponse(blocks=(SyncedBlock(block=block, certificate=weak),), tip=2)
    sender = fresh.nodes[1].identity
    out = core.handle(MessageReceived(fresh.opener.open(fresh.opener.codec.seal(sender, forged))))
    assert not [a for a in out if isinstance(a, Commit)]
    assert core.height == 1
    good = BlockResponse(
        blocks=tuple(SyncedBlock(block=s.block, certificate=s.certificate) for s in stored), tip=2
    )
    out = core.handle(MessageReceived(fresh.opener.open(fresh.opener.codec.seal(sender, good))))
    assert [a.block.height for a in out if isinstance(a, Commit)] == [1, 2]
    assert core.height == 3
    source.close()
    fresh.close()
