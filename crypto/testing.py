"""Test kit for threshold CKKS: run a whole key epoch in one process.

For tests of code built on `crypto.secure_merge` (the round protocol, simulations):
every member's `KeyEpoch` is driven here with the exact bodies it would send, routed
the way the network would (commitments first, as the ledger would fix them; then public
shares to everyone, each sealed share only to its recipient).
`round_binding` stands in for the binding a round's ledger entry would give.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Final

import numpy as np

from . import cbor, dealing
from .ckks import DEFAULT_PARAMS, CkksParams, RoundBinding, context, encode_blob, pack60, unpack60
from .ckks_params import DEFAULT_SET, param_set
from .errors import InvalidDecryptionShare
from .identity import NodeIdentity
from .pointshare import PointShare
from .prss import PRSS_KEY_SIZE, PrssKeyCollector, PrssKeys, deal_keys, robust_epoch, subsets_dealt
from .threshold import (
    DecryptionShare,
    EpochKeys,
    EpochSpec,
    KeyEpoch,
    KeyShareContent,
    SealedKeyShare,
    StoredKeyEpoch,
    StoredSealedShare,
    dealing_params,
    default_threshold,
)


def run_key_epoch(
    members: int | list[NodeIdentity],
    threshold: int | None = None,
    *,
    epoch_id: bytes | None = None,
    params: CkksParams = DEFAULT_PARAMS,
) -> tuple[EpochSpec, list[NodeIdentity], list[EpochKeys]]:
    """A completed key epoch: its spec, the members' identities and each member's keys."""
    identities = [NodeIdentity.generate() for _ in range(members)] if isinstance(members, int) else members
    n = len(identities)
    spec = EpochSpec(
        epoch_id if epoch_id is not None else os.urandom(32),
        tuple(identity.node_id for identity in identities),
        threshold if threshold is not None else default_threshold(n),
    )
    epochs = [KeyEpoch(spec, identity, params) for identity in identities]
    commitments = {epoch.spec.members[k]: epoch.commitment for k, epoch in enumerate(epochs)}
    for epoch in epochs:  # in a swarm: once every commitment is on the ledger
        epoch.expect_commitments(commitments)
    for sender, epoch in zip(identities, epochs, strict=True):
        for body in epoch.outgoing():
            for receiver, other in zip(identities, epochs, strict=True):
                if receiver is sender:
                    continue
                if isinstance(body, SealedKeyShare) and body.recipient != receiver.node_id:
                    continue
                other.receive(sender.node_id, body)
    return spec, identities, [epoch.finish() for epoch in epochs]


def run_prss_dealing(spec: EpochSpec) -> list[PrssKeys]:
    """Every member's PRSS keys for `spec`, dealt as in a key epoch: each dealer draws its keys
    and commits to them, each key goes to its holders only and is checked against its commitment."""
    dealt = {member: deal_keys(spec, member) for member in spec.members}
    commitments = {d.subset: d.commitment(spec.epoch_id) for keys in dealt.values() for d in keys}
    collectors = {m: PrssKeyCollector(spec, m, dealt[m], commitments) for m in spec.members}
    for dealer, keys in dealt.items():
        for key in keys:
            for recipient in key.recipients:
                collectors[spec.members[recipient - 1]].receive(dealer, key.subset, key.key)
    return [collectors[m].finish() for m in spec.members]


TEST_CHAIN_ID: Final = hashlib.sha256(b"swarmnode/test-chain").digest()


def round_binding(epoch_id: bytes, round_number: int = 1, *, chain_id: bytes = TEST_CHAIN_ID) -> RoundBinding:
    """The `RoundBinding` of round `round_number` of key epoch `epoch_id`, without a ledger: the
    nonce is derived from the other fields (a contract derives it from its state)."""
    nonce = hashlib.sha256(
        b"swarmnode/test-round-nonce\x00" + chain_id + epoch_id + round_number.to_bytes(8, "big")
    ).digest()
    return RoundBinding(chain_id, epoch_id, round_number, nonce)


def placeholder_fingerprint(threshold: int, ckks_params: str = DEFAULT_SET) -> bytes:
    """A well-formed (all-zero) dealing fingerprint, for ledger tests that drive key epochs
    with placeholder hashes instead of real dealings."""
    return bytes(param_set(ckks_params).dealing.fingerprint_size(threshold))


def _prss_keys_for(spec: EpochSpec, dealer: NodeIdentity, drawn: bytes, x: int) -> bytes:
    """The PRSS keys `dealer` (which drew `drawn`, in `deal_keys` order) puts in point x's box."""
    n, t = len(spec.members), spec.threshold
    subsets = subsets_dealt(n, t, spec.point(dealer.node_id)) if robust_epoch(n, t) else ()
    size = PRSS_KEY_SIZE
    return b"".join(drawn[k * size : (k + 1) * size] for k, subset in enumerate(subsets) if x not in subset)


def inconsistent_dealing(epoch: KeyEpoch, identity: NodeIdentity) -> KeyEpoch:
    """`epoch` (ours, not yet revealed) with the share for the next member in epoch order
    moved off the dealing's polynomial, signed as an honest share would be: the
    inconsistent dealer of issue 20's attack 5, for fault-injection tests."""
    stored = cbor.loads_dataclass(StoredKeyEpoch, epoch.export_secret())
    spec, params = epoch.spec, dealing_params(context(epoch.params))
    x = (spec.point(identity.node_id) % len(spec.members)) + 1
    victim = spec.members[x - 1]
    secret = unpack60(stored.secret, len(params.moduli) * params.degree).reshape(len(params.moduli), -1)
    coefficients = dealing.shamir_coefficients(params, stored.seed, spec.threshold)
    share = dealing.shamir_shares(params, secret, coefficients, len(spec.members))[x - 1]
    share[0, 0] = (int(share[0, 0]) + 1) % params.moduli[0]
    packed = pack60(share)
    blinding = dealing.blinding_shares(params, stored.seed, spec.threshold, x)
    keys = _prss_keys_for(spec, identity, stored.prss_keys, x)
    signature = dealing.sign_share(params, identity, spec.epoch_id, victim, packed, blinding, keys)
    content = KeyShareContent(spec.epoch_id, identity.node_id, victim, packed, blinding, signature, keys)
    box = victim.seal(cbor.dumps_dataclass(content))
    sealed = tuple(
        StoredSealedShare(recipient=b.recipient, box=box if b.recipient == victim else b.box)
        for b in stored.sealed
    )
    return KeyEpoch.import_secret(
        cbor.dumps_dataclass(dataclasses.replace(stored, sealed=sealed)), identity, epoch.params
    )


BYZANTINE_SHIFT: Final = 1 << 83  # about 0.008 in every merged parameter at scale 2^90


def byzantine_share(blob: bytes, params: CkksParams, delta: int = BYZANTINE_SHIFT) -> bytes:
    """A decryption share or point share `blob` with `delta` added (mod each prime) to every
    coefficient but the weight coefficient: the Byzantine decryptor of issue 20's attack 3,
    whose share passes the weight-sum check (for fault-injection tests)."""
    ctx = context(params)
    share: PointShare | DecryptionShare
    try:
        share = PointShare.from_bytes(ctx, blob)
    except InvalidDecryptionShare:
        share = DecryptionShare.from_bytes(ctx, blob)
    header = share.header
    body = share.batch(0, header.chunks).copy()
    for j, q in enumerate(ctx.data_moduli):
        row = body[:, j, :].reshape(-1)
        weight = row[header.length]
        row[:] = (row + np.uint64(delta % q)) % np.uint64(q)
        row[header.length] = weight
        body[:, j, :] = row.reshape(body.shape[0], -1)
    return encode_blob(blob[:4], header, [pack60(body)])
