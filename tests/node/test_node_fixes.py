"""Fixes to the node runtime: round blobs survive a full restart of the swarm (blobs/ in
each storage directory); handlers raise concrete ProtocolError subclasses; equivocation
evidence from the consensus core goes on the ledger."""

from __future__ import annotations

import hashlib
import stat
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from consensus.blocks import EnvelopeOpener
from consensus.contract import EQUIVOCATION
from consensus.core import ReportEvidence
from consensus.messages import CONSENSUS_MESSAGES, BlockRequest, Prevote
from consensus.transactions import TxBody, VoteEquivocation
from consensus.votes import Equivocation
from crypto.envelope import EnvelopeCodec
from crypto.errors import MalformedMessage, UnknownMessageType
from models import logistic_regression
from swarmnode.keystore import NodeFiles
from swarmnode.net.memory import open_memory_network
from swarmnode.node import MergeResult, Node, open_swarm_node
from swarmnode.simswarm import SwarmPlan
from swarmnode.testing import make_identity
from swarmnode.testing.merge_loop import merge_until_stopped

SPEC = logistic_regression(30, 2)
N_PARAMS = 62
pytestmark = pytest.mark.timeout(300)


async def test_full_restart_after_the_aggregate_was_committed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """All four nodes crash at once once round 1's aggregate is on the ledger (every blob
    held in memory is gone) and come back from their storage directories: round 1 still
    merges, from the blobs each node persisted, and training completes."""
    plan = SwarmPlan.create(tmp_path, SPEC, founders=4, max_rounds=2)
    results: dict[int, list[MergeResult]] = {i: [] for i in range(4)}
    finals: dict[int, bytes] = {}
    aggregate_seen: list[bytes] = []

    async with open_memory_network(seed=21) as net:

        async def first_life(i: int, up: trio.Event, crash: trio.Event, down: trio.Event) -> None:
            transport = net.transport(plan.ids[i])
            async with trio.open_nursery() as nursery, open_swarm_node(
                plan.configs[i], transport=transport, identity=plan.identities[i],
                genesis=plan.genesis, inline_compute=True,
            ) as node:  # fmt: skip
                nodes[i] = node

                async def merge_once(node: Node = node) -> None:
                    params = np.full(N_PARAMS, float(i), np.float32)
                    results[i].append(await node.merge(params, 10 * (i + 1)))

                nursery.start_soon(merge_once)
                up.set()
                await crash.wait()
                net.crash(plan.ids[i])  # nothing more in or out, then the process dies
                nursery.cancel_scope.cancel()
            await transport.aclose()
            down.set()

        async def second_life(i: int) -> None:
            net.restart(plan.ids[i])
            async with plan.open_node(i, net) as node:
                restarted[i] = node
                params = np.full(N_PARAMS, float(i), np.float32)
                final = await merge_until_stopped(node, params, 10 * (i + 1), results=results[i])
                if final is not None:
                    finals[i] = final.params_hash
                await node.wait_stopped()

        nodes: dict[int, Node] = {}
        restarted: dict[int, Node] = {}
        ups = [trio.Event() for _ in range(4)]
        downs = [trio.Event() for _ in range(4)]
        crash = trio.Event()
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(first_life, i, ups[i], crash, downs[i])
            for up in ups:
                await up.wait()
            with trio.fail_after(600):
                await nodes[0].wait_for(lambda c: c.round.number == 1 and c.round.aggregate_hash is not None)
            assert nodes[0].contract.round.aggregate_hash is not None
            aggregate_seen.append(nodes[0].contract.round.aggregate_hash)
            crash.set()
            for down in downs:
                await down.wait()
            assert all(not r for r in results.values()), "round 1 merged before the crash"
            for i in range(4):
                nursery.start_soon(second_life, i)

    assert sorted(finals) == [0, 1, 2, 3]
    assert len(set(finals.values())) == 1
    for i in range(4):
        assert [r.round for r in results[i]] == [1, 2]
    # Round 1 merged the aggregate committed before the crash: 4 contributions, weights 10(i+1).
    record = restarted[0].contract.round_record(1)
    assert record is not None
    assert record.outcome == "merged"
    assert record.aggregate_hash == aggregate_seen[0]
    weights = np.array([10 * (i + 1) for i in range(4)], dtype=np.float64)
    expected = np.dot(weights, np.arange(4)) / weights.sum()
    np.testing.assert_allclose(results[0][0].parameters, expected, atol=1e-4)
    # Blobs of closed rounds are deleted once the next round opens.
    for config in plan.configs:
        stored = {p.name for p in (Path(config.node.storage_dir) / "blobs").iterdir()}
        assert aggregate_seen[0].hex() not in stored


def test_round_blob_files_are_private_verified_and_pruned(tmp_path: Path) -> None:
    files = NodeFiles(tmp_path, make_identity(0), bytes(32))
    assert list(files.stored_blobs()) == []
    a, b = files.save_blob(b"contribution"), files.save_blob(b"aggregate")
    assert a == hashlib.sha256(b"contribution").digest()
    assert stat.S_IMODE((files.blobs / a.hex()).stat().st_mode) == 0o600
    (files.blobs / b.hex()).write_bytes(b"tampered")  # a file whose bytes lost their name is skipped
    (files.blobs / ".x.tmp").write_bytes(b"interrupted write")
    assert list(files.stored_blobs()) == [(a, b"contribution")]
    assert files.delete_blobs_except({a}) == 1
    assert sorted(p.name for p in files.blobs.iterdir()) == [".x.tmp", a.hex()]


async def test_handlers_raise_specific_protocol_errors(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Bad peer input raises a concrete ProtocolError subclass (ProtocolError itself is abstract)."""
    plan = SwarmPlan.create(tmp_path, SPEC, founders=2, max_rounds=2, secure=False)  # not about the crypto
    opener = EnvelopeOpener(EnvelopeCodec(plan.genesis.chain_id, CONSENSUS_MESSAGES))
    async with open_memory_network(seed=2) as net, AsyncExitStack() as stack:
        a, b = [await stack.enter_async_context(plan.open_node(i, net)) for i in range(2)]
        forged = opener.codec.seal(plan.identities[0], BlockRequest(from_height=1))
        with pytest.raises(MalformedMessage, match="signed by"):
            await a.ledger.serve_blocks(b.node_id, forged)
        good = opener.codec.seal(plan.identities[1], BlockRequest(from_height=1))
        response = await a.ledger.serve_blocks(b.node_id, good)
        with pytest.raises(UnknownMessageType):
            await a.ledger.serve_blocks(a.node_id, response)  # a response is no request
        short = a.transport.put_blob(b"\0" * 12)
        with pytest.raises(MalformedMessage, match="12 bytes"):
            await a.merged_parameters(short)
        assert short not in a.blobs.models


async def test_equivocation_evidence_is_submitted_once_and_recorded(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The core reports two conflicting prevotes of a member; the node submits one
    `VoteEquivocation` per piece of evidence (however often it is reported) and the
    contract records it. A double *proposal* (not recordable by the contract) is only logged."""
    plan = SwarmPlan.create(tmp_path, SPEC, founders=2, max_rounds=2, secure=False)  # not about the crypto
    codec = EnvelopeCodec(plan.genesis.chain_id, CONSENSUS_MESSAGES)
    async with open_memory_network(seed=3) as net, AsyncExitStack() as stack:
        a, b = [await stack.enter_async_context(plan.open_node(i, net)) for i in range(2)]
        submitted: list[object] = []
        real_submit = a.ledger.submit

        async def counting_submit(body: TxBody) -> None:
            submitted.append(body)
            await real_submit(body)

        a.ledger.submit = counting_submit  # type: ignore[method-assign]
        height = max(1, a.contract.height)
        votes = [
            codec.seal(
                plan.identities[1], Prevote(height=height, round=0, block_hash=hashlib.sha256(x).digest())
            )
            for x in (b"one", b"two")
        ]  # fmt: skip
        evidence = Equivocation(b.node_id, height, 0, "prevote", votes[0], votes[1])
        swapped = Equivocation(b.node_id, height, 0, "prevote", votes[1], votes[0])
        proposal = Equivocation(b.node_id, height, 0, "proposal", votes[0], votes[1])
        await a.ledger.perform([ReportEvidence(evidence), ReportEvidence(proposal)])
        await a.ledger.perform([ReportEvidence(evidence), ReportEvidence(swapped)])
        with trio.fail_after(120):
            await a.wait_for(lambda c: any(e.kind == EQUIVOCATION for e in c.evidence()))
        assert [type(x) for x in submitted] == [VoteEquivocation]
        (recorded,) = [e for e in a.contract.evidence() if e.kind == EQUIVOCATION]
        assert recorded.offender == b.node_id
