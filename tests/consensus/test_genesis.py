"""Genesis documents: validation naming the field, canonical bytes, chain id, files."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import pytest

from consensus.genesis import (
    DecryptionThreshold,
    FoundingMember,
    Genesis,
    GenesisError,
    JoinPolicy,
    StoppingRule,
    Timeouts,
    TrainingParams,
)
from crypto import cbor
from crypto.identity import NodeIdentity

KEYS = [NodeIdentity.from_seed(bytes([i + 1]) * 32).node_id for i in range(5)]
SPEC = hashlib.sha256(b"model spec").digest()


def founders(n: int = 4) -> tuple[FoundingMember, ...]:
    return tuple(
        FoundingMember(name=f"site-{i}", node_id=KEYS[i], addresses=(f"/ip4/127.0.0.1/tcp/{4000 + i}",))
        for i in range(n)
    )


def params(**changes: object) -> TrainingParams:
    return TrainingParams(model_spec_hash=SPEC, **changes)  # type: ignore[arg-type]


def member_at(addresses: tuple[str, ...]) -> FoundingMember:
    return FoundingMember(name="a", node_id=KEYS[0], addresses=addresses)


def genesis(**changes: object) -> Genesis:
    base = Genesis(name="test-swarm", members=founders(), training=TrainingParams(model_spec_hash=SPEC))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_round_trip_and_chain_id() -> None:
    g = genesis(nonce=b"\x01" * 16, join_policy=JoinPolicy(mode="members", approvals=2))
    data = g.to_bytes()
    assert Genesis.from_bytes(data) == g
    assert g.chain_id == hashlib.sha256(data).digest()
    assert cbor.loads(data)  # canonical: the strict decoder accepts it
    # Every field is part of the chain id.
    assert genesis(nonce=b"\x02").chain_id != g.chain_id
    assert genesis(name="other").chain_id != genesis().chain_id
    stopping = StoppingRule(max_rounds=11)
    other = TrainingParams(model_spec_hash=SPEC, stopping=stopping)
    assert genesis(training=other).chain_id != genesis().chain_id


def test_default_threshold_is_honest_majority() -> None:
    rule = DecryptionThreshold()
    assert [rule.threshold(n) for n in range(1, 9)] == [1, 2, 2, 3, 3, 4, 4, 5]
    assert DecryptionThreshold(numerator=2, denominator=3).threshold(6) == 5
    with pytest.raises(ValueError, match="a key epoch has at least one member"):
        rule.threshold(0)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: TrainingParams(model_spec_hash=b"short"), "training.model_spec_hash"),
        (lambda: TrainingParams(model_spec_hash=SPEC, class_names=("only",)), "training.class_names"),
        (lambda: TrainingParams(model_spec_hash=SPEC, class_names=("a", "a")), "training.class_names"),
        (lambda: TrainingParams(model_spec_hash=SPEC, class_names=("a", "")), "training.class_names"),
        (lambda: params(merge_method="median"), "training.merge_method"),
        (lambda: params(merge_method="mode", secure=False), "training.merge_method"),
        (lambda: params(min_peers=1), "training.min_peers"),
        (lambda: params(sync_every=0), "training.sync_every"),
        (lambda: params(sync_unit="hours"), "training.sync_unit"),
        (lambda: params(ckks_params=""), "training.ckks_params"),
        (lambda: DecryptionThreshold(numerator=2, denominator=2), "training.threshold.numerator"),
        (lambda: DecryptionThreshold(numerator=1, denominator=0), "training.threshold.denominator"),
        (lambda: Timeouts(contribute=0.0), "training.timeouts.contribute"),
        (lambda: Timeouts(decrypt=float("inf")), "training.timeouts.decrypt"),
        (lambda: StoppingRule(max_rounds=0), "training.stopping.max_rounds"),
        (lambda: StoppingRule(max_rounds=3, patience=4), "training.stopping.patience"),
        (lambda: StoppingRule(min_delta=-1.0), "training.stopping.min_delta"),
        (lambda: StoppingRule(goal="up"), "training.stopping.goal"),
        (lambda: JoinPolicy(mode="vote"), "join_policy.mode"),
        (lambda: JoinPolicy(approvals=0), "join_policy.approvals"),
        (lambda: JoinPolicy(mode="admin"), "join_policy.admin"),
        (lambda: JoinPolicy(mode="members", admin=KEYS[0]), "join_policy.admin"),
        (lambda: FoundingMember(name="", node_id=KEYS[0]), "members.name"),
        (lambda: member_at(("tcp://x",)), "members[a].addresses[0]"),
        (lambda: member_at(("/ip4/1", "/ip4/1")), "members[a].addresses"),
        (lambda: genesis(members=()), "members"),
        (lambda: genesis(members=(*founders(), founders()[0])), "members"),
        (lambda: genesis(join_policy=JoinPolicy(approvals=5)), "join_policy.approvals"),
        (lambda: genesis(name=" padded"), "name"),
        (lambda: genesis(nonce=bytes(33)), "nonce"),
        (lambda: genesis(version=2), "version"),
    ],
)
def test_invalid_values_name_their_field(build: object, field: str) -> None:
    assert callable(build)
    with pytest.raises(ValueError, match=f"^{re.escape(field)}: "):
        build()


def test_plaintext_robust_merges_need_secure_false() -> None:
    params = TrainingParams(model_spec_hash=SPEC, merge_method="trimmed_mean", secure=False)
    assert genesis(training=params).training.merge_method == "trimmed_mean"


def test_admin_policy() -> None:
    admin = NodeIdentity.from_seed(b"\x99" * 32).node_id
    policy = JoinPolicy(mode="admin", admin=admin)
    assert policy.required_approvals(10) == 1
    assert JoinPolicy(approvals=3).required_approvals(2) == 2  # capped by the member count
    assert Genesis.from_bytes(genesis(join_policy=policy).to_bytes()).join_policy.admin == admin


def test_decoding_rejects_bad_bytes_naming_the_field() -> None:
    value = cbor.loads(genesis().to_bytes())
    assert isinstance(value, dict)
    training = value["training"]
    assert isinstance(training, dict)
    training["min_peers"] = 1
    with pytest.raises(GenesisError, match=r"min_peers"):
        Genesis.from_bytes(cbor.dumps(value))
    training["min_peers"] = 2
    training["extra"] = 1
    with pytest.raises(GenesisError, match="unknown field"):
        Genesis.from_bytes(cbor.dumps(value))
    with pytest.raises(GenesisError, match="invalid genesis"):
        Genesis.from_bytes(genesis().to_bytes()[:-3])
    with pytest.raises(GenesisError):
        Genesis.from_bytes(b"\xff" * 10)


def test_save_load_and_refuse_overwrite(tmp_path: Path) -> None:
    g = genesis()
    path = tmp_path / "genesis.cbor"
    g.save(path)
    assert path.read_bytes() == g.to_bytes()
    assert Genesis.load(path).chain_id == g.chain_id
    with pytest.raises(GenesisError, match="refusing to overwrite"):
        g.save(path)
    with pytest.raises(GenesisError, match="cannot read"):
        Genesis.load(tmp_path / "missing.cbor")
    bad = tmp_path / "bad.cbor"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(GenesisError, match=str(bad)):
        Genesis.load(bad)


def test_describe_mentions_the_privacy_level() -> None:
    text = genesis().describe()
    assert "secure" in text
    assert genesis().chain_id.hex() in text
    plain = genesis(training=TrainingParams(model_spec_hash=SPEC, merge_method="median", secure=False))
    assert "PLAINTEXT" in plain.describe()
    assert all(m.node_id.peer_id in text for m in founders())
