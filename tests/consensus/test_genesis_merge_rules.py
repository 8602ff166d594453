"""Genesis ``training.merge_method`` and ``training.merge_params`` are checked through the
merge-rule registry (`models.rules`), with errors naming the field and the registered rules."""

from __future__ import annotations

import pytest

from consensus.genesis import FoundingMember, Genesis, MergeParam, TrainingParams
from crypto.identity import NodeIdentity

SPEC_HASH = bytes(32)
MEMBERS = tuple(
    FoundingMember(name=f"site-{i}", node_id=NodeIdentity.from_seed(bytes([i + 1]) * 32).node_id)
    for i in range(3)
)


def test_genesis_validates_the_rule_and_its_parameters_through_the_registry() -> None:
    mu = (MergeParam(name="mu", value=1),)
    params = TrainingParams(model_spec_hash=SPEC_HASH, merge_method="fedprox", merge_params=mu)
    assert params.merge_settings() == {"mu": 1.0}
    assert TrainingParams(model_spec_hash=SPEC_HASH, merge_method="fedprox").merge_settings() == {"mu": 0.01}
    for merge_params, message in [
        ((MergeParam(name="nu", value=1.0),), r"merge_params: .*no parameter nu \(its parameters: mu\)"),
        ((MergeParam(name="mu", value=-1.0),), r"training.merge_params.mu: must be in"),
        ((MergeParam(name="mu", value=1.0), MergeParam(name="mu", value=2.0)), "given twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainingParams(model_spec_hash=SPEC_HASH, merge_method="fedprox", merge_params=merge_params)
    with pytest.raises(ValueError, match=r"training\.merge_method: .*registered rules: mean, median"):
        TrainingParams(model_spec_hash=SPEC_HASH, merge_method="krum")
    with pytest.raises(ValueError, match="no parameter mu"):
        TrainingParams(model_spec_hash=SPEC_HASH, merge_params=mu)  # mean has no parameters


def test_merge_params_survive_the_genesis_bytes() -> None:
    training = TrainingParams(
        model_spec_hash=SPEC_HASH, merge_method="fedprox", merge_params=(MergeParam(name="mu", value=1),)
    )
    genesis = Genesis(name="prox", members=MEMBERS, training=training)
    again = Genesis.from_bytes(genesis.to_bytes())
    assert again.training.merge_params == (MergeParam(name="mu", value=1.0),)
    assert again.chain_id == genesis.chain_id
    assert "merge fedprox mu=1" in genesis.describe()


def test_genesis_validates_the_server_optimizer_and_its_parameters() -> None:
    assert TrainingParams(model_spec_hash=SPEC_HASH).server_optimizer == "none"
    beta = (MergeParam(name="beta_1", value=0.5),)
    params = TrainingParams(
        model_spec_hash=SPEC_HASH, merge_method="fedprox", server_optimizer="fedadam", server_params=beta
    )  # FedProx's local term and FedAdam's step combine
    assert params.server_settings() == {"server_lr": 0.01, "beta_1": 0.5, "beta_2": 0.99, "tau": 0.001}
    for optimizer, server_params, message in [
        ("adam", (), r"training\.server_optimizer: unknown server optimizer 'adam'; registered"),
        ("fedavgm", beta, r"training\.server_params: .*no parameter beta_1 \(its parameters: server_lr, mom"),
        ("fedadam", (MergeParam(name="tau", value=0.0),), r"training\.server_params\.tau: must be in"),
        ("fedyogi", beta + beta, r"training\.server_params: a parameter is given twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainingParams(model_spec_hash=SPEC_HASH, server_optimizer=optimizer, server_params=server_params)


def test_the_server_optimizer_survives_the_genesis_bytes() -> None:
    training = TrainingParams(
        model_spec_hash=SPEC_HASH,
        server_optimizer="fedyogi",
        server_params=(MergeParam(name="tau", value=1),),
    )
    genesis = Genesis(name="yogi", members=MEMBERS, training=training)
    again = Genesis.from_bytes(genesis.to_bytes())
    assert (again.training.server_optimizer, again.training.server_params) == (
        "fedyogi", (MergeParam(name="tau", value=1.0),),
    )  # fmt: skip
    assert "server optimizer fedyogi tau=1" in genesis.describe()
