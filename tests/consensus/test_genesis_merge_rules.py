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
