"""The node's request handlers and API refuse bad input without changing state.

Two or three nodes on MemoryTransport in virtual time; requests come from a
member's transport (a non-member is already cut off by the allow-list).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from consensus.blocks import EnvelopeOpener
from consensus.messages import CONSENSUS_MESSAGES, BlockRequest, BlockResponse
from crypto import cbor
from crypto.envelope import EnvelopeCodec
from models import logistic_regression, mlp
from swarmnode.net.base import BlobNotFound, RequestRefused, Transport
from swarmnode.net.memory import MemoryNetwork, open_memory_network
from swarmnode.node import (
    BLOCKS_PROTOCOL,
    CONSENSUS_TOPIC,
    REPLICATE_PROTOCOL,
    MergeTimeout,
    Node,
    ReplicateRequest,
    SwarmError,
    open_swarm_node,
)
from swarmnode.simswarm import SwarmPlan

SPEC = logistic_regression(30, 2)
pytestmark = pytest.mark.timeout(120)


@asynccontextmanager
async def swarm(tmp_path: Path, n: int = 2) -> AsyncIterator[tuple[SwarmPlan, MemoryNetwork, list[Node]]]:
    # A secure swarm needs t + 1 founders: the 2-node ones are plaintext.
    plan = SwarmPlan.create(tmp_path, SPEC, founders=n, max_rounds=2, secure=n > 2)
    async with open_memory_network(seed=1) as net, AsyncExitStack() as stack:
        nodes = []
        for i in range(n):
            node = await stack.enter_async_context(
                open_swarm_node(
                    plan.configs[i],
                    transport=net.transport(plan.ids[i]),
                    identity=plan.identities[i],
                    genesis=plan.genesis,
                    inline_compute=True,
                )
            )
            nodes.append(node)
        await nodes[0].wait_for(lambda c: c.key_epoch().complete)
        yield plan, net, nodes


async def test_replicate_refuses_garbage_wrong_round_and_missing_blob(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with swarm(tmp_path) as (_plan, _net, (a, b)):
        ask: Transport = b.transport
        for bad in (b"", b"\xff" * 40, cbor.dumps({"round": 1})):
            with pytest.raises(RequestRefused):
                await ask.request(a.node_id, REPLICATE_PROTOCOL, bad)
        far = cbor.dumps_dataclass(ReplicateRequest(round=99, digest=bytes(32)))
        with pytest.raises(RequestRefused, match="round 99"):
            await ask.request(a.node_id, REPLICATE_PROTOCOL, far)
        missing = cbor.dumps_dataclass(ReplicateRequest(round=1, digest=bytes(32)))
        with pytest.raises(RequestRefused):
            await ask.request(a.node_id, REPLICATE_PROTOCOL, missing, timeout=60)
        # A real blob of b's is copied.
        digest = ask.put_blob(b"contribution bytes")
        good = cbor.dumps_dataclass(ReplicateRequest(round=1, digest=digest))
        assert await ask.request(a.node_id, REPLICATE_PROTOCOL, good, timeout=60) == b"ok"
        assert await a.transport.get_blob(digest, peer=a.node_id) == b"contribution bytes"


async def test_block_sync_handler(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with swarm(tmp_path) as (plan, _net, (a, b)):
        opener = EnvelopeOpener(EnvelopeCodec(plan.genesis.chain_id, CONSENSUS_MESSAGES))
        with pytest.raises(RequestRefused):
            await b.transport.request(a.node_id, BLOCKS_PROTOCOL, b"not an envelope")
        # Signed by a, sent by b: refused (a request names its sender).
        forged = opener.codec.seal(plan.identities[0], BlockRequest(from_height=1))
        with pytest.raises(RequestRefused):
            await b.transport.request(a.node_id, BLOCKS_PROTOCOL, forged)
        # Another chain's request: refused.
        other = EnvelopeCodec(bytes(32), CONSENSUS_MESSAGES).seal(
            plan.identities[1], BlockRequest(from_height=1)
        )
        with pytest.raises(RequestRefused):
            await b.transport.request(a.node_id, BLOCKS_PROTOCOL, other)
        good = opener.codec.seal(plan.identities[1], BlockRequest(from_height=1))
        answer = opener.open(await b.transport.request(a.node_id, BLOCKS_PROTOCOL, good))
        assert isinstance(answer.body, BlockResponse)
        assert answer.sender == a.node_id
        assert answer.body.blocks[0].block.height == 1


async def test_garbage_gossip_is_dropped_and_the_ledger_goes_on(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with swarm(tmp_path) as (_plan, _net, (a, b)):
        height = a.contract.height
        for junk in (b"", b"\x00" * 100, cbor.dumps([1, 2, 3])):
            await b.transport.publish(CONSENSUS_TOPIC, junk)
        params = np.zeros(a.n_params, np.float32)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.merge, params, 3)
            result = await a.merge(params + 2, 1)
        assert a.contract.height > height
        np.testing.assert_allclose(result.parameters, 0.5, atol=1e-5)


async def test_merge_argument_checks_and_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with swarm(tmp_path) as (_plan, _net, (a, _b)):
        with pytest.raises(ValueError, match="parameters"):
            await a.merge(np.zeros(a.n_params + 1, np.float32), 5)
        with pytest.raises(ValueError, match="finite"):
            await a.merge(np.full(a.n_params, np.nan, np.float32), 5)
        with pytest.raises(ValueError, match="num_samples"):
            await a.merge(np.zeros(a.n_params, np.float32), 0)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def second() -> None:
                await trio.sleep(1)
                with pytest.raises(SwarmError, match="already waiting"):
                    await a.merge(np.zeros(a.n_params, np.float32), 5)

            nursery.start_soon(second)
            with pytest.raises(MergeTimeout):
                await a.merge(np.zeros(a.n_params, np.float32), 5, timeout=20.0)  # b never merges
        assert trio.current_time() - start == pytest.approx(20.0)


async def test_config_must_match_the_genesis_model(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    plan = SwarmPlan.create(tmp_path, SPEC, founders=2, secure=False)  # t + 1 = 3 for a secure one
    wrong = replace(plan.configs[0], model=mlp(30, 2, hidden=(4,)))
    async with open_memory_network(seed=1) as net:
        with pytest.raises(SwarmError, match="model spec"):
            async with open_swarm_node(
                wrong, transport=net.transport(plan.ids[0]), identity=plan.identities[0], genesis=plan.genesis
            ):
                pass


async def test_a_member_leaves_and_a_new_key_epoch_runs(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Four, so that the three left are t + 1 (t = 2 of 3): enough for a secure round.
    async with swarm(tmp_path, n=4) as (_plan, _net, (a, b, c, d)):
        await c.leave()
        await a.wait_for(lambda k: k.member(c.node_id) is None and k.key_epoch().complete)
        assert a.contract.key_epoch().number == 2
        remaining = tuple(sorted((a.node_id, b.node_id, d.node_id), key=lambda n: n.public_key))
        assert a.contract.key_epoch().members == remaining
        params = np.ones(a.n_params, np.float32)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.merge, params, 1)
            nursery.start_soon(d.merge, params * 2, 1)
            result = await a.merge(params * 3, 1)
        assert result.participants == remaining
        np.testing.assert_allclose(result.parameters, 2.0, atol=1e-5)


async def test_a_merged_model_nobody_holds_yet_is_asked_for_again_then_given_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A restarted node's trainer asks for a merged model before its peers are back: the
    node keeps asking (backing off) and gets it once a peer has it; a model nobody ever
    delivers fails with `BlobNotFound` after the patience, not at the first miss."""
    async with swarm(tmp_path) as (_plan, _net, (a, b)):
        model = np.arange(a.n_params, dtype="<f4").tobytes()
        digest = hashlib.sha256(model).digest()

        async def published_later() -> None:
            await trio.sleep(5)
            b.transport.put_blob(model)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(published_later)
            started = trio.current_time()
            got = await a.merged_parameters(digest)
        assert got.tobytes() == model
        assert trio.current_time() - started >= 5
        started = trio.current_time()
        with pytest.raises(BlobNotFound):
            await a.merged_parameters(bytes(32))
        assert trio.current_time() - started >= 100  # asked for about two minutes
