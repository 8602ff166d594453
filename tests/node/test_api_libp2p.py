"""SwarmNode's default path: each node with its own event loop thread and a real
Libp2pTransport on 127.0.0.1 (from config.network), two plaintext rounds."""

from __future__ import annotations

import dataclasses
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from crypto.identity import NodeIdentity
from models.spec import logistic_regression
from swarmnode.api import SwarmNode, create_local_swarm
from swarmnode.config import NetworkSection, NodeConfig
from swarmnode.node import MergeResult, SwarmStopped
from swarmnode.simswarm import SIM_TIMEOUTS

pytestmark = pytest.mark.timeout(240)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def libp2p_configs(tmp_path: Path) -> list[NodeConfig]:
    configs = create_local_swarm(
        tmp_path, 2, model=logistic_regression(4, 2), max_rounds=2, timeouts=SIM_TIMEOUTS, secure=False
    )  # a secure swarm needs t + 1 = 3 sites; test_e2e_libp2p runs secure rounds over libp2p
    ports = [free_port() for _ in configs]
    ids = [NodeIdentity.load(c.node.key_file).node_id for c in configs]
    return [
        dataclasses.replace(
            config,
            network=NetworkSection(
                listen="127.0.0.1",
                port=ports[i],
                bootstrap=tuple(
                    f"/ip4/127.0.0.1/tcp/{ports[j]}/p2p/{ids[j].peer_id}" for j in range(2) if j != i
                ),
            ),
        )
        for i, config in enumerate(configs)
    ]


def test_two_sync_nodes_over_libp2p(tmp_path: Path) -> None:
    configs = libp2p_configs(tmp_path)
    results: dict[int, list[MergeResult]] = {0: [], 1: []}
    finals: dict[int, MergeResult | None] = {}
    errors: list[BaseException] = []

    def site(i: int) -> None:
        try:
            with SwarmNode(configs[i]) as node:
                offer = np.full(10, float(i), np.float32)
                try:
                    while True:
                        results[i].append(node.merge(offer, 10 * (i + 1), timeout=120))
                except SwarmStopped as stop:
                    finals[i] = stop.final
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=site, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(200)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert [r.round for r in results[0]] == [r.round for r in results[1]] == [1, 2]
    for mine, theirs in zip(results[0], results[1], strict=True):
        np.testing.assert_array_equal(mine.parameters, theirs.parameters)
    np.testing.assert_allclose(results[0][0].parameters, np.full(10, 20 / 30, np.float32), atol=1e-3)
    assert finals[0] is not None
    assert finals[1] is not None
    assert finals[0].params_hash == finals[1].params_hash == results[0][1].params_hash
    assert not [t for t in threading.enumerate() if t.name.startswith("swarmnode-")]
