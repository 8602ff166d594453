"""SwarmNode with real nodes: two sites in this process over a MemoryNetwork (real time,
plaintext merges: a secure swarm needs 3 sites; compute in worker threads)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from crypto.errors import KeyFileError
from models.flatten import flatten, layout_of
from models.nets import build_model
from models.spec import logistic_regression, mlp
from swarmnode.api import SwarmNode, create_local_swarm, local_swarm
from swarmnode.config import NodeConfig
from swarmnode.node import MergeResult, MergeTimeout, NodeStatus, SwarmError, SwarmStopped, params_hash
from swarmnode.simswarm import SIM_TIMEOUTS
from swarmnode.testing.blocking import run_in_thread

pytestmark = pytest.mark.timeout(120)

SPEC = logistic_regression(4, 2)  # 10 parameters


@pytest.fixture
def configs(tmp_path: Path) -> tuple[NodeConfig, ...]:
    # Plaintext: a secure swarm needs t + 1 = 3 sites (secure rounds: test_swarm_sim*, test_e2e_libp2p).
    return create_local_swarm(
        tmp_path, 2, model=SPEC, max_rounds=2, timeouts=SIM_TIMEOUTS, weightages=(1, 3), secure=False
    )


def swarmnode_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("swarmnode-")}


def test_two_sites_merge_to_identical_models_until_the_swarm_stops(configs: tuple[NodeConfig, ...]) -> None:
    before = swarmnode_threads()
    model = build_model(SPEC, torch.Generator().manual_seed(0))
    start = flatten(model)
    other = np.linspace(-1, 1, start.size).astype(np.float32)
    with local_swarm(configs) as (a, b):
        thread, box = run_in_thread(lambda: b.merge(other, 30, val_metric=0.7))
        first = a.merge(model, 10, val_metric=0.6)  # a torch module: merged weights loaded in place
        thread.join(60)
        (first_b,) = box
        assert isinstance(first_b, MergeResult)
        np.testing.assert_array_equal(first.parameters, first_b.parameters)  # bit-identical
        assert first.params_hash == first_b.params_hash == params_hash(first.parameters)
        np.testing.assert_array_equal(flatten(model), first.parameters)
        assert first.round == 1
        assert first.weight == 10 * 1 + 30 * 3
        expected = (start * 10 + other * 90) / 100
        np.testing.assert_allclose(first.parameters, expected, atol=1e-3)  # CKKS approximation

        thread, box = run_in_thread(lambda: b.merge(other, 30))
        second = a.merge(start, 10)
        thread.join(60)
        (second_b,) = box
        assert isinstance(second_b, MergeResult)
        assert second_b.params_hash == second.params_hash
        assert second.round == 2
        with pytest.raises(SwarmStopped) as stopped:
            a.merge(start, 10)
        final = stopped.value.final
        assert final is not None
        assert final.params_hash == second.params_hash
        info = a.wait_stopped(timeout=30)
        assert info.final_model_hash == second.params_hash
        assert info.saved_to is not None
        np.testing.assert_array_equal(np.load(info.saved_to), second.parameters)
        latest = b.latest_model()
        assert latest is not None
        assert latest.params_hash == second.params_hash
        status = a.status()
        assert isinstance(status, NodeStatus)
        assert status.stopped
        assert status.name == "site-0"
    assert swarmnode_threads() == before


def test_merge_timeout_with_a_real_node(configs: tuple[NodeConfig, ...]) -> None:
    with local_swarm(configs) as (a, _):
        with pytest.raises(MergeTimeout):
            a.merge(np.zeros(10, np.float32), 5, timeout=1.0)  # min_peers = 2, the other site never offers
        assert a.running
        with pytest.raises(ValueError, match="expected 10 parameters"):
            a.merge(np.zeros(11, np.float32), 5)  # the node's own check crosses the thread unchanged


def test_real_startup_errors_reach_the_constructor(tmp_path: Path, configs: tuple[NodeConfig, ...]) -> None:
    before = swarmnode_threads()
    wrong_model = dataclasses.replace(configs[0], model=mlp(4, 2, hidden=(3,)))
    with pytest.raises(SwarmError, match="does not match the genesis model spec"), local_swarm([wrong_model]):
        pass
    no_key = dataclasses.replace(
        configs[0], node=dataclasses.replace(configs[0].node, key_file=tmp_path / "missing.key")
    )
    with pytest.raises(KeyFileError, match=r"missing\.key"):
        SwarmNode(no_key)
    assert swarmnode_threads() == before


def test_train_with_swarm_on_real_nodes(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from torch.utils.data import DataLoader, TensorDataset

    from swarmnode.trainer import TrainingSummary, train_with_swarm

    configs = create_local_swarm(
        tmp_path, 2, model=SPEC, max_rounds=2, timeouts=SIM_TIMEOUTS, sync_every=2, secure=False
    )
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(80, 4, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    halves = [slice(0, 40), slice(40, 80)]
    # the genesis records the structure (names too) of logistic_regression(4, 2)
    models_ = [build_model(SPEC, torch.Generator().manual_seed(i)) for i in range(2)]

    def site(i: int, node: SwarmNode) -> TrainingSummary:
        data = TensorDataset(x[halves[i]], y[halves[i]])
        loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(i))
        optimizer = torch.optim.SGD(models_[i].parameters(), lr=0.1)
        return train_with_swarm(node, models_[i], loader, optimizer, val_loader=loader, test_loader=loader)

    with local_swarm(configs) as nodes, ThreadPoolExecutor(2) as pool:
        summaries = list(pool.map(site, range(2), nodes))
    assert [len(s.rounds) for s in summaries] == [2, 2]
    assert summaries[0].final_hash == summaries[1].final_hash is not None
    np.testing.assert_array_equal(summaries[0].parameters, summaries[1].parameters)
    for model in models_:  # each module ends at the swarm's final model
        np.testing.assert_array_equal(flatten(model, layout_of(model)), summaries[0].parameters)
    assert all(r.local_epochs == 2 * (k + 1) for s in summaries for k, r in enumerate(s.rounds))
    assert all(s.test is not None and s.test.accuracy > 0.8 for s in summaries)
