"""The CKKS parameter set in genesis (`training.ckks_params`) and in every key epoch the
contract opens: only known sets, and each epoch's dealing checks use its own set."""

from __future__ import annotations

import hashlib

import pytest

from consensus.contract import Contract
from consensus.genesis import DEFAULT_CKKS_PARAMS, FoundingMember, Genesis, TrainingParams
from consensus.transactions import (
    EpochFingerprint,
    EpochPublicShare,
    EpochSealedShares,
    TxBody,
    TxSigner,
)
from crypto.ckks_params import DEFAULT_SET, PARAM_SETS, param_set
from crypto.identity import NodeIdentity
from crypto.testing import placeholder_fingerprint

N16384 = "ckks-n16384-q60x3-coeff-s94"
IDENTITIES = [NodeIdentity.from_seed(hashlib.sha256(b"ckks node %d" % i).digest()) for i in range(3)]
SPEC_HASH = hashlib.sha256(b"spec").digest()


def make_genesis(ckks_params: str | None = None) -> Genesis:
    training = (
        TrainingParams(model_spec_hash=SPEC_HASH)
        if ckks_params is None
        else TrainingParams(model_spec_hash=SPEC_HASH, ckks_params=ckks_params)
    )
    members = tuple(FoundingMember(name=f"site-{i}", node_id=x.node_id) for i, x in enumerate(IDENTITIES))
    return Genesis(name="ckks-test", members=members, training=training)


def test_the_default_set_is_todays_and_keeps_existing_chain_ids() -> None:
    assert DEFAULT_CKKS_PARAMS == DEFAULT_SET
    assert make_genesis().training.ckks_params == DEFAULT_SET
    assert make_genesis().chain_id == make_genesis(DEFAULT_SET).chain_id


def test_an_unknown_set_is_refused_naming_the_field_and_the_known_sets() -> None:
    """Before the registry any ASCII id passed genesis; nodes then refused to start, and the
    contract refused every dealing fingerprint of the chain."""
    with pytest.raises(
        ValueError, match=r"^training\.ckks_params: unknown CKKS parameter set 'ckks-n4096'"
    ) as e:
        make_genesis("ckks-n4096")
    assert all(name in str(e.value) for name in PARAM_SETS)


def test_the_n16384_set_round_trips_through_genesis_bytes() -> None:
    genesis = make_genesis(N16384)
    assert Genesis.from_bytes(genesis.to_bytes()).training.ckks_params == N16384
    assert genesis.chain_id != make_genesis().chain_id


def apply(contract: Contract, genesis: Genesis, who: int, body: TxBody) -> str | None:
    tx = TxSigner(genesis.chain_id, IDENTITIES[who]).sign(body)
    return contract.apply_block(contract.height + 1, (tx,))[0]


def digest(label: object) -> bytes:
    return hashlib.sha256(repr(label).encode()).digest()


@pytest.mark.parametrize("name", [DEFAULT_SET, N16384])
def test_a_key_epoch_checks_fingerprints_under_its_own_set(name: str) -> None:
    """A dealer cannot pass a fingerprint shaped for another set than its epoch's: the
    contract would otherwise fix a dealing check that covers only part of the shares."""
    genesis = make_genesis(name)
    contract = Contract(genesis)
    epoch = contract.key_epoch()
    assert epoch.ckks_params == name
    for i in range(len(IDENTITIES)):
        assert apply(contract, genesis, i, EpochPublicShare(epoch=1, share_hash=digest(("pk", i)))) is None
        assert apply(contract, genesis, i, EpochSealedShares(epoch=1, shares_hash=digest(("s", i)))) is None
    other = N16384 if name == DEFAULT_SET else DEFAULT_SET
    foreign = placeholder_fingerprint(epoch.threshold, other)
    reason = apply(contract, genesis, 0, EpochFingerprint(epoch=1, fingerprint=foreign))
    expected = param_set(name).dealing.fingerprint_size(epoch.threshold)
    assert reason == f"fingerprint has {len(foreign)} bytes, expected {expected}"
    own = placeholder_fingerprint(epoch.threshold, name)
    assert apply(contract, genesis, 0, EpochFingerprint(epoch=1, fingerprint=own)) is None


def test_the_largest_fingerprint_of_every_set_fits_a_transaction() -> None:
    for found in PARAM_SETS.values():
        EpochFingerprint(epoch=1, fingerprint=bytes(found.dealing.fingerprint_size(256)))
