"""SwarmNode (the synchronous wrapper) against a small fake node with the PLAN-8 Node API.

The fake swarm merges in memory (weighted mean of whatever its members offer in a
round), so these tests check only the wrapper: the background loop and thread,
blocking merge with modules and vectors, exceptions crossing the thread
boundary, timeouts and bounded shutdown. Real nodes: test_api_real_node.py.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import trio
from torch import nn

from consensus.genesis import Genesis, GenesisError
from crypto.identity import NodeId, NodeIdentity
from models.spec import logistic_regression
from swarmnode.api import SwarmNode, create_local_swarm, local_swarm
from swarmnode.config import ConfigError, NodeConfig
from swarmnode.net.base import Transport
from swarmnode.node import MergeResult, MergeTimeout, NodeClosed, SwarmError, SwarmStopped
from swarmnode.testing.blocking import run_in_thread

pytestmark = pytest.mark.timeout(60)

SPEC = logistic_regression(n_features=3, n_classes=2)  # 8 parameters


class OwnLinear(nn.Module):
    """A user's own module (not a SpecNet) with the structure genesis records for SPEC: its
    tensors are named as the spec's (`head.0.weight`, `head.0.bias`)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(3, 2))

    @property
    def weight(self) -> torch.Tensor:
        return self.head[0].weight

    @property
    def bias(self) -> torch.Tensor:
        return self.head[0].bias


class FakeSwarm:
    """Rounds of `size` members: a round merges once every member offered parameters."""

    def __init__(self, size: int, max_rounds: int) -> None:
        self.size = size
        self.max_rounds = max_rounds
        self.round = 1
        self.offers: dict[NodeId, tuple[np.ndarray, int]] = {}
        self.merged = trio.Event()
        self.results: list[MergeResult] = []
        self.final: MergeResult | None = None
        self.stopped = trio.Event()
        self.transports: list[Transport | None] = []

    def offer(self, node: NodeId, params: np.ndarray, weight: int) -> None:
        self.offers[node] = (params, weight)
        if len(self.offers) < self.size:
            return
        weights = np.array([w for _, w in self.offers.values()], dtype=np.float64)
        stacked = np.stack([p.astype(np.float64) for p, _ in self.offers.values()])
        mean = (stacked * weights[:, None]).sum(axis=0) / weights.sum()
        parameters = mean.astype(np.float32)
        stopped = self.round >= self.max_rounds
        result = MergeResult(
            round=self.round,
            parameters=parameters,
            params_hash=hashlib.sha256(parameters.tobytes()).digest(),
            participants=tuple(sorted(self.offers, key=lambda n: n.public_key)),
            weight=int(weights.sum()),
            stopped=stopped,
        )
        self.results.append(result)
        self.offers = {}
        self.round += 1
        done, self.merged = self.merged, trio.Event()
        done.set()
        if stopped:
            self.final = result
            self.stopped.set()


class FakeNode:
    def __init__(self, config: NodeConfig, identity: NodeId, swarm: FakeSwarm) -> None:
        self.config = config
        self.node_id = identity
        self.swarm = swarm
        self.crash = trio.Event()
        self.merge_calls = 0

    async def merge(
        self,
        parameters: np.ndarray,
        num_samples: int,
        *,
        val_metric: float | None = None,
        timeout: float | None = None,
    ) -> MergeResult:
        self.merge_calls += 1
        if self.swarm.stopped.is_set():
            raise SwarmStopped("training stopped: max rounds", self.swarm.final)
        merged = self.swarm.merged
        self.swarm.offer(self.node_id, parameters.copy(), num_samples * self.config.swarm.weightage)
        limit = timeout if timeout is not None else self.config.swarm.merge_timeout
        with trio.move_on_after(limit):
            await merged.wait()
            return self.swarm.results[-1]
        self.swarm.offers.pop(self.node_id, None)  # a timed-out sync point is withdrawn
        raise MergeTimeout(f"no merge within {limit:g} s")

    def status(self) -> dict[str, object]:
        return {"name": self.config.node.name, "round": self.swarm.round}

    async def wait_stopped(self) -> MergeResult | None:
        await self.swarm.stopped.wait()
        return self.swarm.final


def fake_opener(
    swarm: FakeSwarm, nodes: list[FakeNode] | None = None, *, fail_on_enter: BaseException | None = None
) -> Callable[..., object]:
    @asynccontextmanager
    async def open_fake(
        config: NodeConfig,
        *,
        transport: Transport | None = None,
        identity: NodeIdentity | None = None,
        inline_compute: bool = False,
        genesis: Genesis | None = None,
    ) -> AsyncIterator[FakeNode]:
        assert genesis is not None
        assert genesis.training.model_spec_hash == config.model.spec_hash()
        if fail_on_enter is not None:
            raise fail_on_enter
        swarm.transports.append(transport)
        node_id = (identity or NodeIdentity.load(config.node.key_file)).node_id
        node = FakeNode(config, node_id, swarm)
        if nodes is not None:
            nodes.append(node)

        async def watchdog() -> None:  # a node failing in the background, as a crashed ledger would
            await node.crash.wait()
            raise RuntimeError("ledger store is corrupt")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watchdog)
            yield node
            nursery.cancel_scope.cancel()

    return open_fake


def swarmnode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("swarmnode-")]


@pytest.fixture
def configs(tmp_path: Path) -> tuple[NodeConfig, ...]:
    # Fake nodes; a secure genesis would need t + 1 = 3 founders.
    return create_local_swarm(tmp_path, 2, model=SPEC, max_rounds=3, weightages=(1, 3), secure=False)


@pytest.fixture(autouse=True)
def no_orphan_threads() -> object:
    before = set(swarmnode_threads())
    yield
    leaked = [t for t in swarmnode_threads() if t not in before]
    assert not leaked, f"threads left running: {leaked}"


def test_create_local_swarm_writes_loadable_keys_genesis_and_configs(configs: tuple[NodeConfig, ...]) -> None:
    assert [c.node.name for c in configs] == ["site-0", "site-1"]
    assert [c.swarm.weightage for c in configs] == [1, 3]
    genesis_path = configs[0].ledger.genesis
    assert all(c.ledger.genesis == genesis_path for c in configs)
    genesis = Genesis.load(genesis_path)
    assert genesis.training.model_spec_hash == SPEC.spec_hash()
    assert genesis.training.stopping.max_rounds == 3
    members = {m.node_id for m in genesis.members}
    assert members == {NodeIdentity.load(c.node.key_file).node_id for c in configs}
    with pytest.raises(Exception, match="refusing to overwrite"):
        create_local_swarm(genesis_path.parent, 2, model=SPEC, secure=False)


def test_two_nodes_merge_vectors_then_stop(configs: tuple[NodeConfig, ...]) -> None:
    swarm = FakeSwarm(size=2, max_rounds=2)
    with local_swarm(configs, opener=fake_opener(swarm)) as (a, b):
        assert a.running
        assert a.sync_every == 1
        assert all(t is not None for t in swarm.transports)  # each node got a memory transport
        assert swarm.transports[0] is not swarm.transports[1]
        ones, threes = np.ones(8, np.float32), np.full(8, 3.0, np.float32)
        thread, box = run_in_thread(lambda: b.merge(threes, 10, val_metric=0.5))
        first = a.merge(ones, 10)
        thread.join(10)
        # weights: 10 x weightage 1 and 10 x weightage 3
        np.testing.assert_array_equal(first.parameters, np.full(8, 2.5, np.float32))
        assert box == [first]
        assert first.round == 1
        assert not first.stopped
        assert first.weight == 40
        thread, box = run_in_thread(lambda: b.merge(threes, 10))
        second = a.merge(ones, 30)
        thread.join(10)
        assert second.round == 2
        assert second.stopped
        with pytest.raises(SwarmStopped) as stop:
            a.merge(ones, 10)
        assert stop.value.final == second
        assert b.wait_stopped(timeout=5) == second
        assert a.status() == {"name": "site-0", "round": 3}
    assert not a.running
    assert not b.running
    with pytest.raises(NodeClosed, match="closed"):
        a.merge(ones, 10)
    with pytest.raises(NodeClosed, match="closed"):
        a.status()


def test_merge_loads_module_in_place(configs: tuple[NodeConfig, ...]) -> None:
    swarm = FakeSwarm(size=2, max_rounds=5)
    model = OwnLinear()  # not a SpecNet: its own layout is used
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(1.0)
    with local_swarm(configs, opener=fake_opener(swarm)) as (a, b):
        thread, _ = run_in_thread(lambda: b.merge(np.full(8, 3.0, np.float32), 1))
        result = a.merge(model, 1)  # weights 1 and 3: (1 + 9) / 4
        thread.join(10)
    assert result.round == 1
    assert torch.equal(model.weight.detach(), torch.full((2, 3), 2.5))
    assert torch.equal(model.bias.detach(), torch.full((2,), 2.5))


def test_swarm_stopped_loads_final_model_into_module(configs: tuple[NodeConfig, ...]) -> None:
    swarm = FakeSwarm(size=1, max_rounds=1)
    model = OwnLinear()
    with local_swarm(configs[:1], opener=fake_opener(swarm)) as (a,):
        final = a.merge(np.full(8, 7.0, np.float32), 1)
        assert final.stopped
        with torch.no_grad():
            model.weight.zero_()
        with pytest.raises(SwarmStopped):
            a.merge(model, 1)
    assert torch.equal(model.weight.detach(), torch.full((2, 3), 7.0))


def test_bad_inputs_are_refused_before_reaching_the_node(configs: tuple[NodeConfig, ...]) -> None:
    swarm = FakeSwarm(size=1, max_rounds=3)
    nodes: list[FakeNode] = []
    with local_swarm(configs[:1], opener=fake_opener(swarm, nodes)) as (a,):
        with pytest.raises(TypeError, match="float32"):
            a.merge(np.ones(8, np.float64), 1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="float32"):
            a.merge(np.ones((2, 4), np.float32), 1)
        with pytest.raises(ValueError, match="num_samples"):
            a.merge(np.ones(8, np.float32), 0)
        assert nodes[0].merge_calls == 0


def test_merge_timeout_reaches_the_caller_and_the_node_keeps_working(
    configs: tuple[NodeConfig, ...],
) -> None:
    swarm = FakeSwarm(size=2, max_rounds=3)
    with local_swarm(configs, opener=fake_opener(swarm)) as (a, b):
        with pytest.raises(MergeTimeout):
            a.merge(np.ones(8, np.float32), 1, timeout=0.2)  # b never comes
        assert a.running
        thread, _ = run_in_thread(lambda: b.merge(np.ones(8, np.float32), 1))
        assert a.merge(np.ones(8, np.float32), 1).round == 1
        thread.join(10)


def test_startup_errors_are_raised_by_the_constructor(configs: tuple[NodeConfig, ...]) -> None:
    swarm = FakeSwarm(size=1, max_rounds=1)
    bad = ConfigError("site.toml: network.port = 99999: expected 0-65535")
    with pytest.raises(ConfigError, match=r"network\.port"):
        SwarmNode(configs[0], opener=fake_opener(swarm, fail_on_enter=bad))
    with (
        pytest.raises(ConfigError, match=r"network\.port"),
        local_swarm(configs, opener=fake_opener(swarm, fail_on_enter=bad)),
    ):
        pass


def test_missing_genesis_is_named(tmp_path: Path, configs: tuple[NodeConfig, ...]) -> None:
    import dataclasses

    missing = dataclasses.replace(
        configs[0], ledger=dataclasses.replace(configs[0].ledger, genesis=tmp_path / "nope.cbor")
    )
    with pytest.raises(GenesisError, match=r"nope\.cbor"):
        SwarmNode(missing, opener=fake_opener(FakeSwarm(1, 1)))


def test_node_failure_wakes_a_blocked_merge_with_the_cause(configs: tuple[NodeConfig, ...]) -> None:
    swarm = FakeSwarm(size=2, max_rounds=3)
    nodes: list[FakeNode] = []
    with SwarmNode(configs[0], opener=fake_opener(swarm, nodes)) as node:
        thread, box = run_in_thread(lambda: node.merge(np.ones(8, np.float32), 1))
        while not nodes[0].merge_calls:
            threading.Event().wait(0.01)
        trio.from_thread.run_sync(nodes[0].crash.set, trio_token=node._loop._token)
        thread.join(10)
        assert not thread.is_alive()
        (error,) = box
        assert isinstance(error, SwarmError)
        assert "ledger store is corrupt" in str(error)
        assert isinstance(error.__cause__, RuntimeError)
        assert not node.running
        with pytest.raises(SwarmError, match="corrupt"):
            node.merge(np.ones(8, np.float32), 1)


def test_close_wakes_a_blocked_merge(configs: tuple[NodeConfig, ...]) -> None:
    swarm = FakeSwarm(size=2, max_rounds=3)
    nodes: list[FakeNode] = []
    node = SwarmNode(configs[0], opener=fake_opener(swarm, nodes))
    thread, box = run_in_thread(lambda: node.merge(np.ones(8, np.float32), 1))
    while not nodes[0].merge_calls:
        threading.Event().wait(0.01)
    node.close()
    node.close()  # idempotent
    thread.join(10)
    (error,) = box
    assert isinstance(error, NodeClosed)
    assert "closed" in str(error)


def test_close_cancels_a_node_that_does_not_shut_down(configs: tuple[NodeConfig, ...]) -> None:
    exited = []

    @asynccontextmanager
    async def stubborn(config: NodeConfig, **kwargs: object) -> AsyncIterator[FakeNode]:
        node = FakeNode(config, NodeIdentity.load(config.node.key_file).node_id, FakeSwarm(1, 1))
        try:
            yield node
        finally:
            try:
                await trio.sleep_forever()  # e.g. waiting for a peer that is gone
            finally:
                exited.append(True)

    node = SwarmNode(configs[0], opener=stubborn, close_timeout=0.3)
    node.close()
    assert exited == [True]


def test_calls_from_the_loop_thread_are_refused(configs: tuple[NodeConfig, ...]) -> None:
    swarm = FakeSwarm(size=1, max_rounds=3)
    with SwarmNode(configs[0], opener=fake_opener(swarm)) as node:

        async def call_back_in() -> None:
            with pytest.raises(RuntimeError, match="own event loop"):
                node.status()

        trio.from_thread.run(call_back_in, trio_token=node._loop._token)


def test_a_node_that_never_starts_is_given_up_after_the_startup_timeout(
    configs: tuple[NodeConfig, ...],
) -> None:
    @asynccontextmanager
    async def hanging(config: NodeConfig, **kwargs: object) -> AsyncIterator[FakeNode]:
        await trio.sleep_forever()  # e.g. a listen address that never comes up
        yield FakeNode(config, NodeIdentity.load(config.node.key_file).node_id, FakeSwarm(1, 1))

    with pytest.raises(SwarmError, match=r"did not start within 0\.3 s"):
        SwarmNode(configs[0], opener=hanging, startup_timeout=0.3)


def test_nodes_left_open_are_closed_at_exit(configs: tuple[NodeConfig, ...]) -> None:
    from swarmnode import api

    node = SwarmNode(configs[0], opener=fake_opener(FakeSwarm(1, 1)))
    assert node in api._OPEN_NODES
    api._close_open_nodes()  # what atexit runs
    assert not node.running
    assert node not in api._OPEN_NODES
