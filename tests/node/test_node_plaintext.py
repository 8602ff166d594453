"""Plaintext merges (genesis `training.secure = false`): the same phases and contract as the
secure runtime, but contributions are raw float32 parameters and the aggregate is the genesis
merge method (models.merge) over them; the decrypt phase only confirms the aggregate."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from crypto import cbor
from crypto.errors import MalformedMessage, ProtocolError, SchemaError
from models import logistic_regression
from models.merge import merge
from swarmnode.net.memory import open_memory_network
from swarmnode.node import (
    MergeResult,
    Node,
    PlaintextUpdate,
    SwarmStopped,
    decode_plaintext_update,
    encode_plaintext_update,
    params_hash,
)
from swarmnode.simswarm import SwarmPlan

SPEC = logistic_regression(30, 2)
N_PARAMS = 62
pytestmark = pytest.mark.timeout(300)


def submitted_params(site: int, round_index: int) -> np.ndarray:
    """Distinct, site-dependent parameters so mean and median differ."""
    rng = np.random.default_rng(100 * site + round_index)
    return (rng.standard_normal(N_PARAMS) * (site + 1)).astype(np.float32)


@pytest.mark.parametrize("method", ["median", "mean"])
async def test_plaintext_training_completes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, method: str
) -> None:
    plan = SwarmPlan.create(tmp_path, SPEC, founders=3, max_rounds=2)
    training = replace(plan.genesis.training, secure=False, merge_method=method)
    genesis = replace(plan.genesis, training=training)
    weights = {i: 10 * (i + 1) for i in range(3)}
    # (submitted params, result) per site, in order
    history: dict[int, list[tuple[np.ndarray, MergeResult]]] = {i: [] for i in range(3)}
    finals: dict[int, bytes] = {}
    nodes: dict[int, Node] = {}

    async with open_memory_network(seed=5) as net:

        async def site(i: int) -> None:
            async with plan.open_node(i, net, genesis=genesis) as node:
                nodes[i] = node
                params = submitted_params(i, 0)
                while True:
                    try:
                        result = await node.merge(params, weights[i], timeout=900)
                    except SwarmStopped as stopped:
                        if stopped.final is not None:
                            finals[i] = stopped.final.params_hash
                        break
                    history[i].append((params, result))
                    if result.stopped:
                        finals[i] = result.params_hash
                        break
                    params = result.parameters + submitted_params(i, len(history[i]))
                await node.wait_stopped()

        with trio.fail_after(1200):
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(site, i)

    final_hash = nodes[0].contract.final_model_hash
    assert final_hash is not None
    assert all(n.contract.final_model_hash == final_hash for n in nodes.values())
    assert finals == {i: final_hash for i in range(3)}
    for i in range(3):
        saved = np.load(plan.configs[i].node.storage_dir / "final_model.npy")
        assert params_hash(saved) == final_hash

    # Round 1 (every site took part): merged = models.merge over the submitted parameters.
    first = {i: history[i][0] for i in range(3)}
    result = first[0][1]
    assert all(first[i][1].round == result.round for i in range(3))
    assert set(result.participants) == set(plan.ids)
    order = sorted(range(3), key=lambda i: plan.ids[i].public_key)
    expected = merge(method, [first[i][0] for i in order], [float(weights[i]) for i in order])  # type: ignore[arg-type]
    assert np.array_equal(result.parameters, expected)
    assert all(np.array_equal(first[i][1].parameters, expected) for i in range(3))
    assert result.params_hash == params_hash(expected)


def test_plaintext_update_roundtrip_and_rejects_bad_blobs() -> None:
    params = np.arange(N_PARAMS, dtype=np.float32) / 7
    vector, weight = decode_plaintext_update(encode_plaintext_update(params, 12), length=N_PARAMS)
    assert weight == 12
    assert np.array_equal(vector, params)

    bad_values = params.copy()
    bad_values[3] = np.nan
    for blob, error in [
        (encode_plaintext_update(params, 12), None),
        (encode_plaintext_update(params[:-1], 12), MalformedMessage),  # wrong length
        (encode_plaintext_update(bad_values, 12), MalformedMessage),  # NaN
        (encode_plaintext_update(params, 12)[:-1], MalformedMessage),  # truncated CBOR
        (encode_plaintext_update(params, 12) + b"\x00", MalformedMessage),  # trailing bytes
        (cbor.dumps({"weight": 0, "length": N_PARAMS, "params": params.tobytes()}), SchemaError),
        (cbor.dumps({"weight": 1, "length": N_PARAMS, "params": params.tobytes()[:-4]}), SchemaError),
        (cbor.dumps({"weight": 1, "length": N_PARAMS}), SchemaError),
    ]:
        if error is None:
            decode_plaintext_update(blob, length=N_PARAMS)
            continue
        with pytest.raises(error):
            decode_plaintext_update(blob, length=N_PARAMS)
        with pytest.raises(ProtocolError):
            decode_plaintext_update(blob, length=N_PARAMS)
    assert PlaintextUpdate(weight=1, length=1, params=b"\0" * 4).length == 1
