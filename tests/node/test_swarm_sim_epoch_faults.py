"""Key-epoch faults with whole nodes on MemoryTransport (virtual time, trio's MockClock).

* A node crashes right after committing its public share (before revealing) and
  restarts from its storage directory: its persisted dealing lets it reveal exactly
  what it committed to, key epoch 1 completes with all four members, and training
  finishes with identical models everywhere.
* A node crashes at the same point and never comes back: the key epoch's deadline
  passes, the others abandon it and key epoch 2 runs over the three that did their
  part; training finishes over those three.
* A left-out node that comes back asks to rejoin and gets keys in the next epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from consensus.contract import EPOCH_TIMEOUT
from consensus.genesis import DecryptionThreshold, Timeouts
from models import logistic_regression
from swarmnode.faults import Faults
from swarmnode.net.memory import open_memory_network
from swarmnode.node import MergeResult, Node, NodeClosed, NodeOptions, open_swarm_node
from swarmnode.simswarm import SIM_TIMEOUTS, SwarmPlan
from swarmnode.testing.merge_loop import merge_until_stopped

SPEC = logistic_regression(30, 2)
N_PARAMS = 62
VICTIM = 2
CRASH_AFTER_COMMIT = Faults(crash_before=frozenset({"epoch-reveal"}))
pytestmark = pytest.mark.timeout(300)


async def merge_loop(i: int, node: Node, results: list[MergeResult]) -> MergeResult | None:
    """Merge until training stops; returns the final model (None if the node went down)."""
    try:
        return await merge_until_stopped(
            node,
            np.full(N_PARAMS, float(i), np.float32),
            10 * (i + 1),
            results=results,
            next_params=lambda result: result.parameters + 1.0 + i,
            val_metric=0.5,
        )
    except NodeClosed:
        return None


def assert_identical(finals: dict[int, MergeResult], results: dict[int, list[MergeResult]]) -> None:
    assert len({f.params_hash for f in finals.values()}) == 1, "nodes disagree on the final model"
    by_round: dict[int, set[bytes]] = {}
    for rs in results.values():
        for r in rs:
            by_round.setdefault(r.round, set()).add(r.parameters.tobytes())
    assert by_round
    assert all(len(v) == 1 for v in by_round.values())


async def test_node_crashing_after_its_epoch_commitment_restarts_and_finishes_the_epoch(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    plan = SwarmPlan.create(tmp_path, SPEC, founders=4, max_rounds=3)
    finals: dict[int, MergeResult] = {}
    results: dict[int, list[MergeResult]] = {i: [] for i in range(4)}
    nodes: dict[int, Node] = {}
    dealing_on_disk: list[bool] = []

    async with open_memory_network(seed=5) as net:

        async def run(i: int, options: NodeOptions) -> Node:
            async with open_swarm_node(
                plan.configs[i], transport=net.transport(plan.ids[i]), identity=plan.identities[i],
                genesis=plan.genesis, options=options,
            ) as node:  # fmt: skip
                nodes[i] = node
                final = await merge_loop(i, node, results[i])
                if final is not None:
                    await node.wait_stopped()
                    finals[i] = final
            return node

        async def steady(i: int) -> None:
            await run(i, NodeOptions(inline_compute=True))

        async def victim() -> None:
            crashed = await run(VICTIM, NodeOptions(inline_compute=True, behaviour=CRASH_AFTER_COMMIT))
            assert VICTIM not in finals  # it did crash
            epoch = crashed.contract.key_epoch()
            assert epoch.number == 1
            assert not epoch.complete
            record = epoch.record(plan.ids[VICTIM])
            assert record is not None
            assert record.public_share_hash is not None  # committed on the ledger...
            assert record.sealed_shares_hash is None  # ...but never revealed
            dealing_on_disk.append(crashed.files.load_epoch(1, "dealing") is not None)
            await trio.sleep(5.0)  # well within the key-epoch deadline
            await run(VICTIM, NodeOptions(inline_compute=True))  # the same storage directory

        async with trio.open_nursery() as nursery:
            for i in range(4):
                if i != VICTIM:
                    nursery.start_soon(steady, i)
            nursery.start_soon(victim)

    assert dealing_on_disk == [True]
    assert sorted(finals) == [0, 1, 2, 3]
    assert_identical(finals, results)
    for node in nodes.values():
        epoch = node.contract.key_epoch()
        assert (epoch.number, epoch.complete, len(epoch.members)) == (1, True, 4)  # no timeout needed
        assert not [e for e in node.contract.evidence() if e.kind == EPOCH_TIMEOUT]
        assert [r.outcome for r in node.contract.history()] == ["merged"] * 3
    assert results[VICTIM], "the restarted node took part in no round"
    # The dealing is gone once the epoch's keys are saved; the key file stays private.
    victim_files = nodes[VICTIM].files
    assert victim_files.load_epoch(1, "dealing") is None
    assert victim_files.load_epoch(1, "keys") is not None
    assert (victim_files.keys / "epoch-1.keys").stat().st_mode & 0o077 == 0


T2_OF_4 = DecryptionThreshold(numerator=1, denominator=3)  # the 3 left are t + 1: rounds go on
FAST_EPOCH = Timeouts(
    ready_wait=SIM_TIMEOUTS.ready_wait,
    contribute=SIM_TIMEOUTS.contribute,
    aggregate=SIM_TIMEOUTS.aggregate,
    verify=SIM_TIMEOUTS.verify,
    decrypt=SIM_TIMEOUTS.decrypt,
    key_epoch=40.0,
)


async def test_node_dead_mid_epoch_is_left_out_by_the_deadline_and_rejoins_later(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    plan = SwarmPlan.create(tmp_path, SPEC, founders=4, max_rounds=4, timeouts=FAST_EPOCH, threshold=T2_OF_4)
    finals: dict[int, MergeResult] = {}
    results: dict[int, list[MergeResult]] = {i: [] for i in range(4)}
    nodes: dict[int, Node] = {}
    left_out: list[tuple[int, tuple[object, ...]]] = []
    victim_id = plan.ids[VICTIM]

    async with open_memory_network(seed=7) as net:

        async def run(i: int, options: NodeOptions, body: object) -> None:
            async with open_swarm_node(
                plan.configs[i], transport=net.transport(plan.ids[i]), identity=plan.identities[i],
                genesis=plan.genesis, options=options,
            ) as node:  # fmt: skip
                nodes[i] = node
                await body(node)  # type: ignore[operator]

        async def steady_body(i: int, node: Node) -> None:
            final = await merge_loop(i, node, results[i])
            assert final is not None
            await node.wait_stopped()
            finals[i] = final

        async def steady(i: int) -> None:
            await run(i, NodeOptions(inline_compute=True), lambda node: steady_body(i, node))

        async def crashing_body(node: Node) -> None:
            assert await merge_loop(VICTIM, node, results[VICTIM]) is None  # crashed

        async def returning_body(node: Node) -> None:
            # Back from its store (its ledger still in epoch 1), it catches up, finds itself
            # left out of epoch 2, asks to be taken back in and gets the keys of a later epoch.
            await node.wait_for(lambda c: victim_id in c.key_epoch().members and c.key_epoch().complete)
            assert node.contract.key_epoch().number >= 3
            final = await merge_loop(VICTIM, node, results[VICTIM])
            assert final is not None
            await node.wait_stopped()
            finals[VICTIM] = final

        async def victim() -> None:
            await run(VICTIM, NodeOptions(inline_compute=True, behaviour=CRASH_AFTER_COMMIT), crashing_body)
            observer = None
            while observer is None:
                observer = next((nodes[i] for i in (0, 1, 3) if i in nodes), None)
                await trio.sleep(1.0)
            # The others time the epoch out and run epoch 2 without the dead node.
            await observer.wait_for(lambda c: c.key_epoch().number == 2 and c.key_epoch().complete)
            epoch = observer.contract.key_epoch()
            left_out.append((epoch.number, epoch.members))
            status = observer.status()
            assert status.key_epoch_waiting_for == ()
            await observer.wait_for(lambda c: c.state.merged_rounds >= 1)  # training goes on without it
            await run(VICTIM, NodeOptions(inline_compute=True), returning_body)

        async with trio.open_nursery() as nursery:
            for i in range(4):
                if i != VICTIM:
                    nursery.start_soon(steady, i)
            nursery.start_soon(victim)

    others = tuple(plan.ids[i] for i in range(4) if i != VICTIM)
    assert left_out == [(2, tuple(sorted(others, key=lambda n: n.public_key)))]
    assert sorted(finals) == [0, 1, 2, 3]
    assert_identical(finals, results)
    contract = nodes[0].contract
    assert (EPOCH_TIMEOUT, victim_id) in {(e.kind, e.offender) for e in contract.evidence()}
    first = contract.history()[0]
    assert first.epoch == 2
    assert victim_id not in first.participants  # the first round ran without it
    assert victim_id in contract.key_epoch().members  # and it is back in the last epoch
    assert any(victim_id in r.participants for r in contract.history())
    assert nodes[VICTIM].files.epochs_with("dealing") == []  # the abandoned epoch's dealing is gone


async def test_node_dead_for_good_mid_epoch_does_not_stop_training(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    plan = SwarmPlan.create(tmp_path, SPEC, founders=4, max_rounds=2, timeouts=FAST_EPOCH, threshold=T2_OF_4)
    finals: dict[int, MergeResult] = {}
    results: dict[int, list[MergeResult]] = {i: [] for i in range(4)}
    nodes: dict[int, Node] = {}

    async with open_memory_network(seed=11) as net:

        async def run(i: int) -> None:
            faults = CRASH_AFTER_COMMIT if i == VICTIM else Faults()
            async with open_swarm_node(
                plan.configs[i], transport=net.transport(plan.ids[i]), identity=plan.identities[i],
                genesis=plan.genesis, options=NodeOptions(inline_compute=True, behaviour=faults),
            ) as node:  # fmt: skip
                nodes[i] = node
                final = await merge_loop(i, node, results[i])
                if final is not None:
                    await node.wait_stopped()
                    finals[i] = final

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(run, i)

    assert sorted(finals) == [0, 1, 3]
    assert_identical(finals, results)
    victim_id = plan.ids[VICTIM]
    for i in (0, 1, 3):
        contract = nodes[i].contract
        epoch = contract.key_epoch()
        assert (epoch.number, epoch.complete, epoch.threshold) == (2, True, 2)  # t of T2_OF_4
        assert victim_id not in epoch.members
        assert contract.epoch_left_out() == (victim_id,)
        assert [r.outcome for r in contract.history()] == ["merged"] * 2
        assert all(r.epoch == 2 and victim_id not in r.participants for r in contract.history())
