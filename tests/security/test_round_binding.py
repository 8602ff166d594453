"""Attack 4 of issue 20: contributions of another round mixed into this round's aggregate.

The crypto used to check how many contributions an aggregate held, not which: a victim's
fresh contribution summed with blobs of earlier rounds of the same key epoch (or with a
blob made for another chain) passed the aggregate builder and the decryption share, so
colluders could have a combination of updates decrypted that no round ever committed.
Every contribution now binds chain id, key epoch, round number and the contract's round
nonce (`crypto.ckks.RoundBinding`) in its header and in its mask. The colluders' best
moves below: slip the old blob into the honest builder, build the mixed sum by hand,
present a whole old aggregate for decryption, and rewrite an old blob's header to the
current round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import pytest

from crypto import ckks
from crypto import secure_merge as sm
from crypto.ckks_params import DEFAULT_PARAMS
from crypto.errors import InvalidAggregate
from crypto.identity import NodeId
from crypto.testing import round_binding, run_key_epoch
from crypto.threshold import DecryptionRefused

SPEC, _, KEYS = run_key_epoch(4)  # t = 3
LENGTH = 64
ROUND_ONE = round_binding(SPEC.epoch_id, 1)
ROUND_TWO = round_binding(SPEC.epoch_id, 2)
OTHER_CHAIN = round_binding(SPEC.epoch_id, 2, chain_id=hashlib.sha256(b"another chain").digest())
VICTIM, HONEST = SPEC.members[:2]  # the colluders are the other two members
DECRYPT_SET = list(SPEC.members[:3])
CTX = ckks.context()


def contributions(binding: ckks.RoundBinding) -> dict[NodeId, bytes]:
    """Every member's update for the round of `binding`: member i sends ``10 * round + i``."""
    return {
        k.me: sm.encrypt_update(
            k, np.full(LENGTH, 10.0 * binding.round + i, np.float32), 1.0, 4.0, binding=binding
        )
        for i, k in enumerate(KEYS)
    }


OLD = contributions(ROUND_ONE)
FRESH = contributions(ROUND_TWO)


def decode(blob: bytes) -> ckks.EncryptedVector:
    return ckks.EncryptedVector.from_bytes(CTX, blob)


def decrypted_mean(aggregate: bytes) -> np.ndarray | None:
    """What the decrypt set's shares of a round-two `aggregate` combine to (None: refused as implausible)."""
    shares = [
        sm.decryption_share(k, aggregate, DECRYPT_SET, contributions=4, min_peers=2, binding=ROUND_TWO)
        for k in KEYS[:3]
    ]
    try:
        return sm.combine(SPEC, aggregate, shares, params=DEFAULT_PARAMS).mean
    except InvalidAggregate:
        return None


def test_an_old_round_blob_of_the_same_epoch_is_refused_by_the_builder() -> None:
    builder = sm.AggregateBuilder(LENGTH, DEFAULT_PARAMS, binding=ROUND_TWO)
    for member, blob in FRESH.items():
        if member != HONEST:
            builder.add(blob, member)
    before = builder.result()
    # HONEST's round-one blob, committed under its own name: a well-formed contribution of
    # the same contributor and key epoch, but of another round.
    with pytest.raises(InvalidAggregate, match="two rounds"):
        builder.add(OLD[HONEST], HONEST)
    assert builder.count == 3
    assert builder.result() == before
    first = sm.AggregateBuilder(LENGTH, DEFAULT_PARAMS, binding=ROUND_TWO)  # not even as a sum's first blob
    with pytest.raises(InvalidAggregate, match="two rounds"):
        first.add(OLD[HONEST], HONEST)
    assert first.count == 0
    with pytest.raises(InvalidAggregate, match="two rounds"):
        sm.aggregate_contributions(
            {**FRESH, HONEST: OLD[HONEST]}, length=LENGTH, binding=ROUND_TWO, params=DEFAULT_PARAMS
        )
    builder.add(FRESH[HONEST], HONEST)
    assert builder.result() == sm.aggregate_contributions(
        FRESH, length=LENGTH, binding=ROUND_TWO, params=DEFAULT_PARAMS
    )


def test_a_hand_made_aggregate_mixing_rounds_is_refused_by_the_aggregator() -> None:
    aggregator = ckks.Aggregator(CTX, LENGTH)  # no expected binding: the first vector's
    aggregator.add(decode(FRESH[VICTIM]))
    with pytest.raises(InvalidAggregate, match="two rounds"):
        aggregator.add(decode(OLD[HONEST]))
    assert aggregator.count == 1
    with pytest.raises(InvalidAggregate, match="two rounds"):
        ckks.add([decode(OLD[VICTIM]), decode(FRESH[HONEST])])
    # The same round number under another nonce (a round of another history) is another round.
    renonced = dataclasses.replace(ROUND_TWO, nonce=os.urandom(32))
    replayed = sm.encrypt_update(KEYS[1], np.ones(LENGTH, np.float32), 1.0, 4.0, binding=renonced)
    with pytest.raises(InvalidAggregate, match="two round nonces"):
        aggregator.add(decode(replayed))
    assert aggregator.count == 1


def test_decryption_share_refuses_an_aggregate_whose_binding_is_not_the_current_rounds() -> None:
    # round one's own sum
    old_aggregate = sm.aggregate_contributions(OLD, length=LENGTH, binding=ROUND_ONE, params=DEFAULT_PARAMS)
    for keys in KEYS[:3]:
        with pytest.raises(DecryptionRefused, match="another round"):
            sm.decryption_share(
                keys, old_aggregate, DECRYPT_SET, contributions=4, min_peers=2, binding=ROUND_TWO
            )
    # The current round's aggregate is decrypted: the refusal is about the binding alone.
    expected = np.mean([20.0 + i for i in range(4)])
    mean = decrypted_mean(
        sm.aggregate_contributions(FRESH, length=LENGTH, binding=ROUND_TWO, params=DEFAULT_PARAMS)
    )
    assert mean is not None
    np.testing.assert_allclose(mean, expected, atol=1e-4)


def test_a_blob_or_aggregate_of_another_chain_is_refused() -> None:
    foreign = contributions(OTHER_CHAIN)  # the same members, key epoch and round number
    builder = sm.AggregateBuilder(LENGTH, DEFAULT_PARAMS, binding=ROUND_TWO)
    builder.add(FRESH[VICTIM], VICTIM)
    with pytest.raises(InvalidAggregate, match="two chains"):
        builder.add(foreign[HONEST], HONEST)
    assert builder.count == 1
    foreign_sum = sm.aggregate_contributions(
        foreign, length=LENGTH, binding=OTHER_CHAIN, params=DEFAULT_PARAMS
    )
    with pytest.raises(DecryptionRefused, match="another chain"):
        sm.decryption_share(
            KEYS[0], foreign_sum, DECRYPT_SET, contributions=4, min_peers=2, binding=ROUND_TWO
        )


def test_masks_differ_across_rounds_for_the_same_seed() -> None:
    seed = os.urandom(ckks.SEED_SIZE)
    current = ckks.mask(CTX, ROUND_TWO, VICTIM, seed, 0, 1)
    for other in (ROUND_ONE, OTHER_CHAIN, dataclasses.replace(ROUND_TWO, nonce=os.urandom(32))):
        assert not bool(np.any(ckks.mask(CTX, other, VICTIM, seed, 0, 1) == current))


def test_an_old_blob_relabelled_as_this_rounds_decrypts_to_garbage() -> None:
    """The colluders rewrite HONEST's round-one blob to carry round two's binding (same seed and
    residues): it passes every check, but its mask was drawn under round one, so the decrypt
    set removes a mask that is not in it. The merge is refused or garbage, never a mean over
    HONEST's old update."""
    old = decode(OLD[HONEST])
    relabelled = ckks.EncryptedVector.from_residues(
        CTX, LENGTH, ROUND_TWO, {HONEST: old.header.seeds[0]}, [old.batch(0, old.chunks)]
    ).to_bytes()
    aggregate = sm.aggregate_contributions(
        {**FRESH, HONEST: relabelled}, length=LENGTH, binding=ROUND_TWO, params=DEFAULT_PARAMS
    )
    mean = decrypted_mean(aggregate)
    if mean is not None:
        assert float(np.abs(mean.astype(np.float64)).min()) > 1e3
