"""Genesis ``training.privacy``: nonsense values are refused with an error naming the
field, a budget one round already overspends is refused, DP needs the secure merge,
and the fields survive the canonical genesis bytes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from consensus.genesis import FoundingMember, Genesis, GenesisError, PrivacyParams, TrainingParams
from crypto import cbor
from crypto.identity import NodeIdentity

SPEC_HASH = bytes(32)
MEMBERS = tuple(
    FoundingMember(name=f"site-{i}", node_id=NodeIdentity.from_seed(bytes([i + 1]) * 32).node_id)
    for i in range(3)
)
GOOD = PrivacyParams(clip_norm=1.0, noise_multiplier=1.0, delta=1e-5, epsilon_budget=8.0)


def private_genesis() -> Genesis:
    training = TrainingParams(model_spec_hash=SPEC_HASH, privacy=GOOD)
    return Genesis(name="dp", members=MEMBERS, training=training)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"clip_norm": 0.0}, "training.privacy.clip_norm"),
        ({"clip_norm": -1.0}, "training.privacy.clip_norm"),
        ({"noise_multiplier": 0.0}, "training.privacy.noise_multiplier"),
        ({"noise_multiplier": -2.0}, "training.privacy.noise_multiplier"),
        ({"delta": 0.0}, "training.privacy.delta"),
        ({"delta": 1.0}, "training.privacy.delta"),
        ({"epsilon_budget": 0.0}, "training.privacy.epsilon_budget"),
        ({"epsilon_budget": -3.0}, "training.privacy.epsilon_budget"),
        # One round at multiplier 1 spends epsilon ~4.7 at delta 1e-5: a budget of 1 is never met.
        ({"epsilon_budget": 1.0}, "training.privacy.epsilon_budget: one merged round already spends"),
    ],
)
def test_nonsense_privacy_fields_are_refused_naming_the_field(changes: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        replace(GOOD, **changes)


def test_a_genesis_file_with_nonsense_privacy_names_the_field() -> None:
    genesis = private_genesis()
    value = cbor.loads(genesis.to_bytes())
    assert isinstance(value, dict)
    assert isinstance(value["training"], dict)
    privacy = value["training"]["privacy"]
    assert isinstance(privacy, dict)
    privacy["delta"] = 2.0
    with pytest.raises(GenesisError, match=r"training\.privacy\.delta: must be in"):
        Genesis.from_bytes(cbor.dumps(value))


def test_privacy_needs_the_secure_merge() -> None:
    with pytest.raises(ValueError, match=r"^training\.privacy: .*needs secure = true"):
        TrainingParams(model_spec_hash=SPEC_HASH, secure=False, privacy=GOOD)


def test_privacy_survives_the_genesis_bytes_and_is_described() -> None:
    genesis = private_genesis()
    again = Genesis.from_bytes(genesis.to_bytes())
    assert again.training.privacy == GOOD
    assert again.chain_id == genesis.chain_id
    assert "differential privacy: clip_norm 1, noise_multiplier 1" in genesis.describe()
    off = Genesis(name="dp", members=MEMBERS, training=TrainingParams(model_spec_hash=SPEC_HASH))
    assert off.chain_id != genesis.chain_id
    assert Genesis.from_bytes(off.to_bytes()).training.privacy is None
