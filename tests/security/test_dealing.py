"""Attack 5 of issue 20: a dealer sends inconsistent or malformed Shamir shares.

Without verifiable dealing, one member's bad share of one dealer's secret makes every
aggregate holding that dealer's contribution decode to garbage and nobody is named. Now
(`crypto.dealing`): every box holds a dealer-signed content with blinding shares, every
dealer publishes a blinded fingerprint for the ledger's public coin, the recipient checks
its share against it and complains with the signed segment, and the contract judges the
complaint: the dealer is named (`BAD_DEALING`) and the epoch starts over without it, a
false complaint names the complainer, a forged one is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from consensus.contract import BAD_DEALING, FALSE_COMPLAINT
from consensus.genesis import (
    DEFAULT_CKKS_PARAMS,
    DecryptionThreshold,
    FoundingMember,
    Genesis,
    TrainingParams,
)
from consensus.transactions import (
    EpochComplaint,
    EpochComplete,
    EpochFingerprint,
    EpochPublicShare,
    EpochSealedShares,
    EpochStage,
)
from crypto import cbor, ckks, dealing
from crypto import threshold as th
from crypto.ckks_params import DEFAULT_PARAMS, param_set
from crypto.errors import InvalidKeyShare, ProtocolError
from crypto.identity import NodeId, NodeIdentity
from crypto.testing import placeholder_fingerprint
from models import logistic_regression
from swarmnode.faults import Faults
from swarmnode.net.memory import open_memory_network
from swarmnode.node import Node, NodeOptions, SwarmStopped, open_swarm_node
from swarmnode.round import ConfirmEpoch, LocalFacts, PublishEpochFingerprint, reconcile
from swarmnode.simswarm import SwarmPlan
from swarmnode.testing.contract_chain import ContractChain

PARAMS = param_set(DEFAULT_CKKS_PARAMS).dealing
CTX = ckks.context(ckks.DEFAULT_PARAMS)
IDS = sorted(
    (NodeIdentity.from_seed(hashlib.sha256(b"dealing %d" % i).digest()) for i in range(4)),
    key=lambda i: i.node_id.public_key,
)
NODES = [i.node_id for i in IDS]
DEALER, VICTIM = 0, 2

Tamper = Callable[[np.ndarray], np.ndarray]  # the (L, N) share the dealer sends the victim


def off_polynomial(share: np.ndarray) -> np.ndarray:
    """One residue moved: the victim's point is no longer on the dealer's polynomial."""
    out = share.copy()
    out[1, 5000] = (int(out[1, 5000]) + 1) % PARAMS.moduli[1]
    return out


def out_of_range(share: np.ndarray) -> np.ndarray:
    out = share.copy()
    out[0, 7] = np.uint64(PARAMS.moduli[0])  # not below its prime
    return out


def sha(label: object) -> bytes:
    return hashlib.sha256(repr(label).encode()).digest()


def open_box(recipient: NodeIdentity, box: th.SealedKeyShare) -> th.KeyShareContent:
    return cbor.loads_dataclass(th.KeyShareContent, recipient.unseal(box.box))


def rebox(
    dealer: NodeIdentity, recipient: NodeIdentity, box: th.SealedKeyShare, tamper: Tamper
) -> th.SealedKeyShare:
    """The dealer's box to `recipient` with a tampered share, signed by the dealer (it is the attacker)."""
    content = open_box(recipient, box)
    share = ckks.unpack60(content.share, 2 * CTX.params.degree).reshape(2, -1)
    packed = ckks.pack60(tamper(share))
    signature = dealing.sign_share(
        PARAMS, dealer, content.epoch, recipient.node_id, packed, content.blinding, content.prss_keys
    )
    forged = dataclasses.replace(content, share=packed, signature=signature)
    return dataclasses.replace(box, box=recipient.node_id.seal(cbor.dumps_dataclass(forged)))


def deal(spec: th.EpochSpec, tamper: Tamper | None = None) -> list[th.KeyEpoch]:
    """Every member's key epoch with every message delivered; the dealer's box to the
    victim tampered with if `tamper` is given."""
    ids = [next(i for i in IDS if i.node_id == m) for m in spec.members]
    epochs = [th.KeyEpoch(spec, i, DEFAULT_PARAMS) for i in ids]
    commitments = {m: e.commitment for m, e in zip(spec.members, epochs, strict=True)}
    for e in epochs:
        e.expect_commitments(commitments)
    for k, (sender, epoch) in enumerate(zip(ids, epochs, strict=True)):
        for body in epoch.outgoing():
            for j, (receiver, other) in enumerate(zip(ids, epochs, strict=True)):
                if receiver is sender:
                    continue
                if isinstance(body, th.SealedKeyShare):
                    if body.recipient != receiver.node_id:
                        continue
                    if tamper is not None and (k, j) == (DEALER, VICTIM):
                        body = rebox(sender, receiver, body, tamper)
                other.receive(sender.node_id, body)
    return epochs


def test_pinned_dealing_params_are_the_ckks_data_level() -> None:
    assert dealing.DealingParams(tuple(CTX.data_moduli), CTX.params.degree) == PARAMS
    assert th.dealing_params(CTX) == PARAMS


# -- crypto level -----------------------------------------------------------------------------

SPEC = th.EpochSpec(sha("epoch"), tuple(NODES), 3)
COIN = dealing.fingerprint_coin(SPEC.epoch_id, [sha(("bundle", n)) for n in NODES])


def fingerprints(epochs: Sequence[th.KeyEpoch], coin: bytes = COIN) -> dict[NodeId, bytes]:
    return {e.spec.members[k]: e.fingerprint(coin) for k, e in enumerate(epochs)}


def test_an_honest_epoch_raises_no_complaint() -> None:
    epochs = deal(SPEC)
    prints = fingerprints(epochs)
    for fingerprint in prints.values():
        assert len(fingerprint) == PARAMS.fingerprint_size(SPEC.threshold)
        assert dealing.fingerprint_fault(PARAMS, SPEC.threshold, fingerprint) is None
    assert all(e.complaints(COIN, prints) == () for e in epochs)


@pytest.mark.parametrize("tamper", [off_polynomial, out_of_range], ids=["inconsistent", "malformed"])
def test_a_bad_share_is_found_by_its_recipient_and_proves_the_dealer_wrong(tamper: Tamper) -> None:
    epochs = deal(SPEC, tamper)
    prints = fingerprints(epochs)
    for k, e in enumerate(epochs):
        assert e.complaints(COIN, prints) == () or k == VICTIM
    ((dealer, proof),) = epochs[VICTIM].complaints(COIN, prints)
    assert dealer == NODES[DEALER]
    assert proof.segment == (0 if tamper is out_of_range else 4 + 5000 // dealing.SEGMENT_VALUES)
    assert len(cbor.dumps_dataclass(proof)) < 17_000  # one segment: fits a ledger transaction
    verdict = dealing.judge_complaint(
        PARAMS, SPEC.epoch_id, dealer, NODES[VICTIM], VICTIM + 1, SPEC.threshold, COIN, prints[dealer], proof
    )
    assert verdict is True


def honest_evidence(epochs: list[th.KeyEpoch], complainer: int, segment: int = 0) -> dealing.DealingEvidence:
    box = next(b for b in epochs[DEALER].outgoing() if getattr(b, "recipient", None) == NODES[complainer])
    assert isinstance(box, th.SealedKeyShare)
    content = open_box(IDS[complainer], box)
    signed = (content.signature, segment, content.prss_keys)
    return dealing.evidence(PARAMS, content.share, content.blinding, *signed)


def test_a_false_complaint_clears_the_dealer() -> None:
    epochs = deal(SPEC)
    prints = fingerprints(epochs)
    for segment in (0, PARAMS.segments - 1):
        proof = honest_evidence(epochs, 1, segment)
        verdict = dealing.judge_complaint(
            PARAMS,
            SPEC.epoch_id,
            NODES[DEALER],
            NODES[1],
            2,
            SPEC.threshold,
            COIN,
            prints[NODES[DEALER]],
            proof,
        )
        assert verdict is False


def forged_evidence(epochs: list[th.KeyEpoch], complainer: int) -> list[tuple[str, dealing.DealingEvidence]]:
    """The complainer's best moves to frame an honest dealer with a share it did not get."""
    proof = honest_evidence(epochs, complainer)
    shares = bytearray(proof.shares)
    shares[3] ^= 1
    altered = bytes(shares)
    box = next(b for b in epochs[DEALER].outgoing() if getattr(b, "recipient", None) == NODES[complainer])
    assert isinstance(box, th.SealedKeyShare)
    content = open_box(IDS[complainer], box)
    whole = bytearray(content.share)
    whole[3] ^= 1
    keys = content.prss_keys
    rehashed = dealing.evidence(PARAMS, bytes(whole), content.blinding, content.signature, 0, keys)
    own = dealing.sign_share(
        PARAMS, IDS[complainer], content.epoch, NODES[complainer], bytes(whole), content.blinding, keys
    )
    self_signed = dealing.evidence(PARAMS, bytes(whole), content.blinding, own, 0, content.prss_keys)
    return [
        ("altered segment, signed hashes", dataclasses.replace(proof, shares=altered)),
        ("altered segment, hashes recomputed", rehashed),
        ("signed by the complainer", self_signed),
        ("truncated segment", dataclasses.replace(proof, shares=proof.shares[:-15])),
        (
            "blinding moved into the shares",
            dataclasses.replace(proof, shares=proof.blinding + proof.shares[8:], blinding=b""),
        ),
        ("another segment's hash list", dataclasses.replace(proof, segment_hashes=proof.segment_hashes[:-1])),
    ]


def test_forged_evidence_is_refused() -> None:
    epochs = deal(SPEC)
    prints = fingerprints(epochs)
    for _name, proof in forged_evidence(epochs, 1):
        with pytest.raises(dealing.InvalidEvidence):
            dealing.judge_complaint(
                PARAMS, SPEC.epoch_id, NODES[DEALER], NODES[1], 2, SPEC.threshold, COIN,
                prints[NODES[DEALER]], proof,
            )  # fmt: skip


def test_an_unsigned_box_content_is_refused_on_receipt() -> None:
    epochs = deal(SPEC)
    box = next(b for b in epochs[DEALER].outgoing() if getattr(b, "recipient", None) == NODES[1])
    assert isinstance(box, th.SealedKeyShare)
    content = open_box(IDS[1], box)
    unsigned = dataclasses.replace(content, signature=bytes(64))
    fresh = th.KeyEpoch(SPEC, IDS[1], DEFAULT_PARAMS)
    bad = dataclasses.replace(box, box=NODES[1].seal(cbor.dumps_dataclass(unsigned)))
    with pytest.raises(InvalidKeyShare, match="not signed by its dealer"):
        fresh.receive(NODES[DEALER], bad)


def test_fingerprints_of_two_secrets_are_identically_distributed() -> None:
    """t = 2, one colluder at x = 1. For secrets s != s' the bijection
    ``(c, eta) -> (c + s - s', eta + (delta, -delta))`` with ``delta = gamma . (s - s')``
    maps each dealing of s to one of s' with the same fingerprint and the same colluder view
    (its share and blinding share): uniform (c, eta) stay uniform, so the fingerprint and the
    colluder's view have the same distribution whatever the secret."""
    rng = np.random.default_rng(7)
    q = np.array(PARAMS.moduli, dtype=np.uint64).reshape(-1, 1)
    n = PARAMS.degree

    def uniform() -> np.ndarray:
        return rng.integers(0, q, size=(2, n), dtype=np.uint64)

    s, s2, c = uniform(), uniform(), uniform()
    c2 = (c.astype(object) + s.astype(object) - s2.astype(object)) % q.astype(object)
    c2 = c2.astype(np.uint64)
    eta = [[int(rng.integers(0, PARAMS.prime(b))) for _ in range(2)] for b in range(PARAMS.segments)]
    diff = ((s.astype(object) - s2.astype(object)) % q.astype(object)).astype(np.uint64)
    zeros = [[0] for _ in range(PARAMS.segments)]
    delta = dealing._scalars(
        dealing.fingerprint_of(PARAMS, COIN, [diff], zeros)
    )  # gamma . (s - s') per segment
    eta2 = [
        [(e0 + d) % PARAMS.prime(b), (e1 - d) % PARAMS.prime(b)]
        for b, ((e0, e1), d) in enumerate(zip(eta, delta, strict=True))
    ]
    assert not np.array_equal(s, s2)
    assert dealing.fingerprint_of(PARAMS, COIN, [s, c], eta) == dealing.fingerprint_of(
        PARAMS, COIN, [s2, c2], eta2
    )
    share1 = (s.astype(object) + c.astype(object)) % q.astype(object)
    share2 = (s2.astype(object) + c2.astype(object)) % q.astype(object)
    assert np.array_equal(share1, share2)  # the colluder's share f(1)
    assert [sum(e) % PARAMS.prime(b) for b, e in enumerate(eta)] == [
        sum(e) % PARAMS.prime(b) for b, e in enumerate(eta2)
    ]  # and its blinding shares eta_b(1)


# -- contract level ---------------------------------------------------------------------------


class Chain(ContractChain):
    def __init__(self) -> None:
        genesis = Genesis(
            name="dealing-test",
            members=tuple(FoundingMember(name=f"site-{i}", node_id=n) for i, n in enumerate(NODES)),
            training=TrainingParams(model_spec_hash=sha("spec"), min_peers=2),
        )
        super().__init__(genesis, IDS)

    def spec(self) -> th.EpochSpec:
        e = self.contract.key_epoch()
        return th.EpochSpec(e.seed, e.members, e.threshold)

    def run_to_check(
        self, tamper: Tamper | None = None
    ) -> tuple[list[th.KeyEpoch], bytes, dict[NodeId, bytes]]:
        """Commit, reveal and publish every real fingerprint of epoch 1."""
        spec = self.spec()
        epochs = deal(spec, tamper)
        self.ok(
            [
                (m, EpochPublicShare(epoch=1, share_hash=e.commitment))
                for m, e in zip(spec.members, epochs, strict=True)
            ]
        )
        self.ok([(m, EpochSealedShares(epoch=1, shares_hash=sha(("bundle", m)))) for m in spec.members])
        coin = self.contract.key_epoch().coin
        assert coin is not None
        assert self.contract.key_epoch().stage == EpochStage.CHECK
        prints = fingerprints(epochs, coin)
        self.ok([(m, EpochFingerprint(epoch=1, fingerprint=prints[m])) for m in spec.members])
        return epochs, coin, prints


def test_an_honest_epoch_completes_on_the_ledger_without_complaints() -> None:
    chain = Chain()
    epochs, coin, prints = chain.run_to_check()
    assert all(e.complaints(coin, prints) == () for e in epochs)
    keys = [e.finish() for e in epochs]
    chain.ok(
        [
            (m, EpochComplete(epoch=1, collective_key_hash=k.public_key_digest))
            for m, k in zip(NODES, keys, strict=True)
        ]
    )
    assert chain.contract.key_epoch().complete
    assert chain.contract.evidence() == ()


@pytest.mark.parametrize("tamper", [off_polynomial, out_of_range], ids=["inconsistent", "malformed"])
def test_a_bad_dealer_is_named_and_the_epoch_completes_without_it(tamper: Tamper) -> None:
    chain = Chain()
    epochs, coin, prints = chain.run_to_check(tamper)
    # The honest members that got good shares confirm; the victim complains instead.
    for k, e in enumerate(epochs):
        if k != VICTIM:
            assert e.complaints(coin, prints) == ()
    ((dealer, proof),) = epochs[VICTIM].complaints(coin, prints)
    chain.ok([(NODES[VICTIM], EpochComplaint(epoch=1, dealer=dealer, evidence=proof))])
    (named,) = chain.contract.evidence()
    assert (named.kind, named.offender) == (BAD_DEALING, NODES[DEALER])
    assert cbor.loads(named.detail) == [1, NODES[VICTIM].public_key, proof.segment]
    epoch = chain.contract.key_epoch()
    assert epoch.number == 2
    assert epoch.members == tuple(n for n in NODES if n != NODES[DEALER])
    assert epoch.threshold == 3  # t of the whole membership: max(min_peers, t) = 3 remain
    chain.complete_epoch()
    assert NODES[DEALER] not in chain.contract.key_epoch().members


def test_a_false_complaint_names_the_complainer_not_the_dealer() -> None:
    chain = Chain()
    epochs, _, _ = chain.run_to_check()
    proof = honest_evidence(epochs, 1)
    chain.ok([(NODES[1], EpochComplaint(epoch=1, dealer=NODES[DEALER], evidence=proof))])
    (named,) = chain.contract.evidence()
    assert (named.kind, named.offender) == (FALSE_COMPLAINT, NODES[1])
    epoch = chain.contract.key_epoch()
    assert epoch.number == 2
    assert NODES[DEALER] in epoch.members
    assert NODES[1] not in epoch.members


def test_a_forged_complaint_is_refused_and_changes_nothing() -> None:
    chain = Chain()
    epochs, _, _ = chain.run_to_check()
    for _name, proof in forged_evidence(epochs, 1):
        before = chain.contract.state
        (reason,) = chain.block([(NODES[1], EpochComplaint(epoch=1, dealer=NODES[DEALER], evidence=proof))])
        assert reason is not None
        assert reason.startswith("complaint refused"), reason
        assert chain.contract.state == dataclasses.replace(before, height=before.height + 1)
    assert chain.contract.evidence() == ()
    assert chain.contract.key_epoch().number == 1


def test_fingerprints_are_checked_and_needed_before_confirming() -> None:
    chain = Chain()
    spec = chain.spec()
    chain.ok([(m, EpochPublicShare(epoch=1, share_hash=sha(("pk", m)))) for m in spec.members])
    early = EpochFingerprint(epoch=1, fingerprint=placeholder_fingerprint(3))
    assert "coin is not fixed" in (chain.block([(NODES[0], early)])[0] or "")
    chain.ok([(m, EpochSealedShares(epoch=1, shares_hash=sha(("s", m)))) for m in spec.members])
    assert "incomplete" in (
        chain.block([(NODES[0], EpochComplete(epoch=1, collective_key_hash=sha(1)))])[0] or ""
    )
    wrong_size = EpochFingerprint(epoch=1, fingerprint=placeholder_fingerprint(2))
    assert "bytes, expected" in (chain.block([(NODES[0], wrong_size)])[0] or "")
    too_big = (PARAMS.moduli[0]).to_bytes(8, "little") + placeholder_fingerprint(3)[8:]
    assert "not below its prime" in (
        chain.block([(NODES[0], EpochFingerprint(epoch=1, fingerprint=too_big))])[0] or ""
    )


def test_the_planner_publishes_the_fingerprint_then_checks_with_all_of_them() -> None:
    chain = Chain()
    spec = chain.spec()
    chain.ok([(m, EpochPublicShare(epoch=1, share_hash=sha(("pk", m)))) for m in spec.members])
    chain.ok([(m, EpochSealedShares(epoch=1, shares_hash=sha(("s", m)))) for m in spec.members])
    coin = chain.contract.key_epoch().coin
    assert coin is not None
    jobs = reconcile(chain.contract, LocalFacts(me=NODES[0], now=0.0)).jobs
    assert PublishEpochFingerprint(epoch=1, coin=coin) in jobs
    fingerprint = placeholder_fingerprint(3)
    chain.ok([(m, EpochFingerprint(epoch=1, fingerprint=fingerprint)) for m in spec.members])
    (confirm,) = [
        j
        for j in reconcile(chain.contract, LocalFacts(me=NODES[0], now=0.0)).jobs
        if isinstance(j, ConfirmEpoch)
    ]
    assert confirm.coin == coin
    assert confirm.fingerprints == tuple((m, fingerprint) for m in spec.members)


def test_a_restarted_dealer_publishes_the_same_fingerprint_and_old_dealings_are_refused() -> None:
    epoch = th.KeyEpoch(SPEC, IDS[0], DEFAULT_PARAMS)
    stored = epoch.export_secret()
    restored = th.KeyEpoch.import_secret(stored, IDS[0], DEFAULT_PARAMS)
    assert restored.fingerprint(COIN) == epoch.fingerprint(COIN)
    fields = cbor.loads(stored)
    assert isinstance(fields, dict)
    old = {k: v for k, v in fields.items() if k != "seed"} | {"version": 2}
    with pytest.raises(ProtocolError):
        th.KeyEpoch.import_secret(cbor.dumps(old), IDS[0], DEFAULT_PARAMS)
    with pytest.raises(InvalidKeyShare, match="seed"):
        th.KeyEpoch.import_secret(cbor.dumps(fields | {"seed": bytes(31)}), IDS[0], DEFAULT_PARAMS)


# -- whole nodes ------------------------------------------------------------------------------


async def test_swarm_names_an_inconsistent_dealer_and_trains_without_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Four real nodes on MemoryTransport; node 1 deals its next member a share off its
    polynomial in every epoch it is in. The victim's node complains, the ledger names node 1
    (`BAD_DEALING`) and the epoch completes without it; the honest three train to the end
    with identical models (node 1 rejoins after each complete epoch and is named again)."""
    spec = logistic_regression(30, 2)
    # t = 2 of 4: the three honest sites left are t + 1, enough contributions for a round.
    plan = SwarmPlan.create(
        tmp_path, spec, founders=4, max_rounds=2, threshold=DecryptionThreshold(numerator=1, denominator=4)
    )
    bad = 1
    finals: dict[int, bytes] = {}
    nodes: dict[int, Node] = {}

    async with open_memory_network(seed=3) as net:

        async def run(i: int) -> None:
            faults = Faults(bad_dealing=i == bad)
            async with open_swarm_node(
                plan.configs[i], transport=net.transport(plan.ids[i]), identity=plan.identities[i],
                genesis=plan.genesis, options=NodeOptions(inline_compute=True, behaviour=faults),
            ) as node:  # fmt: skip
                nodes[i] = node
                params = np.full(62, float(i), np.float32)  # logistic regression, 30 features x 2 classes
                with trio.fail_after(2000):
                    while True:
                        try:
                            result = await node.merge(params, 10, val_metric=0.5, timeout=1000)
                        except SwarmStopped as stopped:
                            if stopped.final is not None:
                                finals[i] = stopped.final.params_hash
                            break
                        if result.stopped:
                            finals[i] = result.params_hash
                            break
                await node.wait_stopped()

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(run, i)

    honest = [i for i in range(4) if i != bad]
    assert len({finals[i] for i in honest}) == 1, "honest nodes disagree on the final model"
    for i in honest:
        contract = nodes[i].contract
        named = {(e.kind, e.offender) for e in contract.evidence()}
        assert named == {(BAD_DEALING, plan.ids[bad])}, named
        history = contract.history()
        assert [r.outcome for r in history] == ["merged"] * 2
        assert all(plan.ids[bad] not in r.participants for r in history)


def test_a_content_of_the_wrong_size_is_proven_on_the_ledger() -> None:
    """A dealer that signs an oversized share (more segments than the parameters have)
    is still named: the complaint carries the signed length, whatever it is."""
    chain = Chain()
    spec = chain.spec()

    def oversized(share: np.ndarray) -> np.ndarray:
        return np.concatenate([share, share], axis=1)  # twice the residues

    epochs, coin, prints = chain.run_to_check(oversized)
    ((dealer, proof),) = epochs[VICTIM].complaints(coin, prints)
    assert proof.share_length == 2 * PARAMS.share_bytes
    chain.ok([(NODES[VICTIM], EpochComplaint(epoch=1, dealer=dealer, evidence=proof))])
    (named,) = chain.contract.evidence()
    assert (named.kind, named.offender) == (BAD_DEALING, spec.members[DEALER])
