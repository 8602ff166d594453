"""An unfinished key epoch survives a restart: `KeyEpoch.export_secret` / `import_secret`.

The restored epoch must commit to the same public share and reveal byte-identical
shares (the ledger already holds the commitment, peers may already hold the boxes),
and a stored file that is wrong in any way is refused with a `ProtocolError` naming it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from crypto import cbor, ckks
from crypto import threshold as th
from crypto.ckks_params import DEFAULT_PARAMS
from crypto.errors import InvalidKeyShare, MalformedMessage, ProtocolError, SchemaError
from crypto.identity import NodeIdentity
from crypto.testing import round_binding

IDENTITIES = [NodeIdentity.from_seed(bytes([i + 1]) * 32) for i in range(3)]
SPEC = th.EpochSpec(os.urandom(32), tuple(i.node_id for i in IDENTITIES), 2)


def fresh_epochs() -> list[th.KeyEpoch]:
    return [th.KeyEpoch(SPEC, identity, DEFAULT_PARAMS) for identity in IDENTITIES]


def run(epochs: list[th.KeyEpoch]) -> list[th.EpochKeys]:
    commitments = {SPEC.members[k]: e.commitment for k, e in enumerate(epochs)}
    for epoch in epochs:
        epoch.expect_commitments(commitments)
    for sender, epoch in zip(IDENTITIES, epochs, strict=True):
        for body in epoch.outgoing():
            for receiver, other in zip(IDENTITIES, epochs, strict=True):
                if receiver is sender:
                    continue
                if isinstance(body, th.SealedKeyShare) and body.recipient != receiver.node_id:
                    continue
                other.receive(sender.node_id, body)
    return [e.finish() for e in epochs]


EPOCHS = fresh_epochs()
STORED = EPOCHS[1].export_secret()


def test_restored_epoch_commits_and_reveals_exactly_the_same() -> None:
    restored = th.KeyEpoch.import_secret(STORED, IDENTITIES[1], DEFAULT_PARAMS)
    assert restored.commitment == EPOCHS[1].commitment
    assert restored.outgoing() == EPOCHS[1].outgoing()
    assert restored.spec == SPEC
    assert restored.export_secret() == STORED  # canonical: a second round trip is the identity


def test_an_epoch_finished_with_a_restored_member_decrypts() -> None:
    epochs = fresh_epochs()
    # Member 0 restarts after committing: only its stored dealing survives.
    epochs[0] = th.KeyEpoch.import_secret(epochs[0].export_secret(), IDENTITIES[0], DEFAULT_PARAMS)
    keys = run(epochs)
    assert len({k.public_key_digest for k in keys}) == 1
    values = np.linspace(-1.0, 1.0, 100)
    ctx = keys[0].context
    aggregate = ckks.add(  # the restored member encrypts with its stored secret
        ckks.encrypt(
            ctx, keys[k].secret, round_binding(SPEC.epoch_id), keys[k].me, values * (k + 1), 1.0, 2.0
        )
        for k in (0, 2)
    )
    decrypt_set = [SPEC.members[0], SPEC.members[1]]  # the restored member's dealer shares are needed
    shares = [th.make_decryption_share(keys[k], aggregate, decrypt_set) for k in (0, 1)]
    sums, weight = th.combine_shares(SPEC, aggregate, shares)
    assert np.abs(sums - 2 * values).max() < 1e-5  # (1 x values + 3 x values) / 2
    assert weight == pytest.approx(1.0, abs=1e-9)


def test_a_restored_epoch_refuses_a_ledger_commitment_that_is_not_its_own() -> None:
    restored = th.KeyEpoch.import_secret(STORED, IDENTITIES[1], DEFAULT_PARAMS)
    other = fresh_epochs()  # someone else's dealing: a different commitment for member 1
    commitments = {SPEC.members[k]: e.commitment for k, e in enumerate(other)}
    with pytest.raises(ValueError, match="not ours"):
        restored.expect_commitments(commitments)


def tampered(**changes: object) -> bytes:
    value = cbor.loads(STORED)
    assert isinstance(value, dict)
    value.update(changes)
    return cbor.dumps(value)


def _sealed() -> list[dict[str, object]]:
    value = cbor.loads(STORED)
    assert isinstance(value, dict)
    sealed = value["sealed"]
    assert isinstance(sealed, list)
    return [dict(s) for s in sealed]


def _coefficient_above_prime() -> bytes:
    value = cbor.loads(STORED)
    assert isinstance(value, dict)
    raw = bytearray(value["public_share"])  # type: ignore[arg-type]
    raw[:8] = b"\xff" * 8  # the first 60-bit coefficient becomes 2^60 - 1, above every prime
    return bytes(raw)


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (STORED[:-5], MalformedMessage, None),
        (STORED + b"\x00", MalformedMessage, None),
        (b"", MalformedMessage, None),
        (tampered(version=1), InvalidKeyShare, "version"),  # before members kept their own secret
        (tampered(extra=1), SchemaError, None),
        (tampered(threshold=4), InvalidKeyShare, "threshold"),
        (tampered(epoch_id=b"short"), InvalidKeyShare, "epoch id"),
        (tampered(me=IDENTITIES[2].node_id.public_key), InvalidKeyShare, "belongs to"),
        (tampered(public_share=b"\x00" * 100), InvalidKeyShare, "stored public share"),
        (tampered(public_share=_coefficient_above_prime()), InvalidKeyShare, "below its prime"),
        (tampered(own_share=b"\x00" * 100), InvalidKeyShare, "own key share"),
        (tampered(secret=b"\x00" * 100), InvalidKeyShare, "stored secret"),
        (tampered(sealed=_sealed()[::-1]), InvalidKeyShare, "member order"),
        (tampered(sealed=_sealed()[:1]), InvalidKeyShare, "one sealed share per other member"),
        (tampered(sealed=[{**s, "box": s["box"][:-1]} for s in _sealed()]), InvalidKeyShare, "bytes"),  # type: ignore[index]
    ],
    ids=[
        "truncated", "trailing", "empty", "version", "unknown-field", "threshold", "epoch-id", "other-node",
        "public-size", "public-range", "own-size", "secret-size", "sealed-order", "sealed-missing",
        "box-size",
    ],
)  # fmt: skip
def test_a_bad_stored_epoch_is_refused_naming_the_problem(
    data: bytes, error: type[ProtocolError], match: str | None
) -> None:
    with pytest.raises(error, match=match):
        th.KeyEpoch.import_secret(data, IDENTITIES[1], DEFAULT_PARAMS)


def test_the_stored_epoch_belongs_to_one_identity() -> None:
    with pytest.raises(InvalidKeyShare, match="belongs to"):
        th.KeyEpoch.import_secret(STORED, IDENTITIES[0], DEFAULT_PARAMS)
    outsider = NodeIdentity.from_seed(b"\x09" * 32)
    with pytest.raises(InvalidKeyShare):
        th.KeyEpoch.import_secret(STORED, outsider, DEFAULT_PARAMS)
