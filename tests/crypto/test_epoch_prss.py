"""PRSS keys dealt in the key epoch (`crypto.threshold.KeyEpoch`): every robust epoch's
members end with checked PRSS keys their point shares decode with, the keys survive the
key store, and a dealer whose keys are off its committed commitments is named."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from crypto import cbor, dealing, prss
from crypto import robust_merge as rm
from crypto import secure_merge as sm
from crypto.ckks import context
from crypto.ckks_params import DEFAULT_PARAMS
from crypto.identity import NodeIdentity
from crypto.testing import round_binding, run_key_epoch
from crypto.threshold import EpochKeys, EpochSpec, KeyEpoch, KeyShareContent, SealedKeyShare, dealing_params

LENGTH = 100


def test_robust_epochs_are_those_within_the_key_limit() -> None:
    assert prss.robust_epoch(10, 6)  # C(10, 5) = 252
    assert not prss.robust_epoch(11, 6)  # C(11, 5) = 462: Lagrange shares
    assert prss.robust_epoch(4, 3)
    assert prss.robust_epoch(64, 1)


def test_key_epoch_deals_prss_keys_the_point_shares_decode_with() -> None:
    spec, _, keys = run_key_epoch(5)
    assert all(k.prss is not None for k in keys)
    rng = np.random.default_rng(5)
    values = [rng.uniform(-1, 1, LENGTH).astype(np.float32) for _ in keys]
    binding = round_binding(spec.epoch_id)
    blobs = {
        k.me: sm.encrypt_update(k, v, 1.0, len(keys), binding=binding)
        for k, v in zip(keys, values, strict=True)
    }
    aggregate = sm.aggregate_contributions(blobs, length=LENGTH, binding=binding, params=DEFAULT_PARAMS)
    points = []
    for k in keys:
        assert k.prss is not None
        points.append(
            rm.make_point_share(k, k.prss, aggregate, contributions=len(keys), min_peers=2, binding=binding)
        )
    verdict = rm.combine_points(spec, aggregate, points)
    assert verdict.wrong == ()
    np.testing.assert_allclose(verdict.merged.mean, np.mean(values, axis=0), atol=1e-5)


def test_stored_keys_keep_the_prss_keys() -> None:
    _, _, keys = run_key_epoch(4)
    restored = EpochKeys.import_secret(keys[1].export_secret(), DEFAULT_PARAMS)
    assert restored.prss == keys[1].prss


def _epochs(n: int) -> tuple[EpochSpec, list[NodeIdentity], list[KeyEpoch]]:
    identities = [NodeIdentity.generate() for _ in range(n)]
    spec = EpochSpec(os.urandom(32), tuple(i.node_id for i in identities), 3)
    epochs = [KeyEpoch(spec, identity, DEFAULT_PARAMS) for identity in identities]
    commitments = {spec.members[k]: e.commitment for k, e in enumerate(epochs)}
    for epoch in epochs:
        epoch.expect_commitments(commitments)
    return spec, identities, epochs


def _forged_box(
    spec: EpochSpec, dealer: NodeIdentity, victim: NodeIdentity, box: SealedKeyShare
) -> SealedKeyShare:
    """The dealer's box for `victim` with one PRSS key changed, signed as an honest box is:
    the key no longer matches the commitment the dealer committed on the ledger."""
    content = cbor.loads_dataclass(KeyShareContent, victim.unseal(box.box))
    keys = bytearray(content.prss_keys)
    keys[0] ^= 1
    signature = dealing.sign_share(
        dealing_params(context()), dealer, spec.epoch_id, victim.node_id, content.share, content.blinding,
        bytes(keys),
    )  # fmt: skip
    forged = dataclasses.replace(content, prss_keys=bytes(keys), signature=signature)
    return dataclasses.replace(box, box=victim.node_id.seal(cbor.dumps_dataclass(forged)))


def test_a_dealer_off_its_prss_commitment_is_named() -> None:
    spec, identities, epochs = _epochs(4)
    dealer, victim = identities[0], identities[1]
    for sender, epoch in zip(identities, epochs, strict=True):
        for body in epoch.outgoing():
            for receiver, other in zip(identities, epochs, strict=True):
                if receiver is sender or (
                    isinstance(body, SealedKeyShare) and body.recipient != receiver.node_id
                ):
                    continue
                if isinstance(body, SealedKeyShare) and sender is dealer and receiver is victim:
                    body = _forged_box(spec, dealer, victim, body)
                other.receive(sender.node_id, body)
    assert epochs[1].prss_faults() == (dealer.node_id,)
    with pytest.raises(prss.InvalidPrssKey, match=dealer.node_id.short):
        epochs[1].finish()
    assert epochs[2].prss_faults() == ()
    assert epochs[2].finish().prss is not None
