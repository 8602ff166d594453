"""A dealer of PRSS keys (robust decryption's smudging keys, `crypto.prss`) that sends a
member a key off the commitment it committed on the ledger.

Without a check the member's point shares would sit off the noise polynomial and every
robust merge would name an honest member. Now the member checks every key against the
dealer's commitment in the key epoch, complains with the dealer-signed box
(`EpochPrssComplaint`), and the contract names the dealer (`BAD_DEALING`) and starts the
epoch over without it; a false complaint names the complainer, a forged one is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib

from consensus.contract import BAD_DEALING, FALSE_COMPLAINT
from consensus.genesis import FoundingMember, Genesis, TrainingParams
from consensus.transactions import (
    EpochFingerprint,
    EpochPrssComplaint,
    EpochPublicShare,
    EpochSealedShares,
    EpochStage,
)
from crypto import cbor, dealing
from crypto import threshold as th
from crypto.ckks import context
from crypto.ckks_params import DEFAULT_PARAMS
from crypto.identity import NodeIdentity
from swarmnode.testing.contract_chain import ContractChain

IDS = sorted(
    (NodeIdentity.from_seed(hashlib.sha256(b"prss dealing %d" % i).digest()) for i in range(4)),
    key=lambda i: i.node_id.public_key,
)
NODES = [i.node_id for i in IDS]
DEALER, VICTIM = 0, 2


def sha(label: object) -> bytes:
    return hashlib.sha256(repr(label).encode()).digest()


class Chain(ContractChain):
    def __init__(self) -> None:
        genesis = Genesis(
            name="prss-dealing-test",
            members=tuple(FoundingMember(name=f"site-{i}", node_id=n) for i, n in enumerate(NODES)),
            training=TrainingParams(model_spec_hash=sha("spec"), min_peers=2),
        )
        super().__init__(genesis, IDS)


def forged_box(spec: th.EpochSpec, box: th.SealedKeyShare) -> th.SealedKeyShare:
    """The dealer's box for the victim with one PRSS key changed, signed as an honest one."""
    dealer, victim = IDS[DEALER], IDS[VICTIM]
    content = cbor.loads_dataclass(th.KeyShareContent, victim.unseal(box.box))
    keys = bytearray(content.prss_keys)
    keys[5] ^= 1
    signature = dealing.sign_share(
        th.dealing_params(context()), dealer, spec.epoch_id, victim.node_id, content.share, content.blinding,
        bytes(keys),
    )  # fmt: skip
    forged = dataclasses.replace(content, prss_keys=bytes(keys), signature=signature)
    return dataclasses.replace(box, box=victim.node_id.seal(cbor.dumps_dataclass(forged)))


def run_to_confirm(chain: Chain, *, forge: bool) -> list[th.KeyEpoch]:
    """Every stage of epoch 1 on the ledger up to confirm, every body delivered."""
    e = chain.contract.key_epoch()
    spec = th.EpochSpec(e.seed, e.members, e.threshold)
    epochs = [th.KeyEpoch(spec, identity, DEFAULT_PARAMS) for identity in IDS]
    chain.ok(
        [(m, EpochPublicShare(epoch=1, share_hash=k.commitment)) for m, k in zip(NODES, epochs, strict=True)]
    )
    chain.ok([(m, EpochSealedShares(epoch=1, shares_hash=sha(("bundle", m)))) for m in NODES])
    coin = chain.contract.key_epoch().coin
    assert coin is not None
    chain.ok(
        [
            (m, EpochFingerprint(epoch=1, fingerprint=k.fingerprint(coin)))
            for m, k in zip(NODES, epochs, strict=True)
        ]
    )
    assert chain.contract.key_epoch().stage == EpochStage.CONFIRM
    commitments = {m: k.commitment for m, k in zip(NODES, epochs, strict=True)}
    for k in epochs:
        k.expect_commitments(commitments)
    for sender, epoch in zip(IDS, epochs, strict=True):
        for body in epoch.outgoing():
            for receiver, other in zip(IDS, epochs, strict=True):
                if receiver is sender or (
                    isinstance(body, th.SealedKeyShare) and body.recipient != receiver.node_id
                ):
                    continue
                if (
                    forge
                    and isinstance(body, th.SealedKeyShare)
                    and (sender, receiver) == (IDS[DEALER], IDS[VICTIM])
                ):
                    body = forged_box(spec, body)
                other.receive(sender.node_id, body)
    return epochs


def test_a_dealer_of_a_wrong_prss_key_is_named_and_the_epoch_restarts_without_it() -> None:
    chain = Chain()
    epochs = run_to_confirm(chain, forge=True)
    assert epochs[VICTIM].prss_faults() == (NODES[DEALER],)
    assert [k.prss_faults() for i, k in enumerate(epochs) if i != VICTIM] == [(), (), ()]
    proof = epochs[VICTIM].prss_evidence(NODES[DEALER])
    chain.ok([(NODES[VICTIM], EpochPrssComplaint(epoch=1, dealer=NODES[DEALER], evidence=proof))])
    (named,) = chain.contract.evidence()
    assert (named.kind, named.offender) == (BAD_DEALING, NODES[DEALER])
    assert cbor.loads(named.detail) == [1, NODES[VICTIM].public_key, "prss"]
    epoch = chain.contract.key_epoch()
    assert epoch.number == 2
    assert NODES[DEALER] not in epoch.members


def test_a_false_prss_complaint_names_the_complainer() -> None:
    chain = Chain()
    epochs = run_to_confirm(chain, forge=False)
    proof = epochs[1].prss_evidence(NODES[DEALER])
    chain.ok([(NODES[1], EpochPrssComplaint(epoch=1, dealer=NODES[DEALER], evidence=proof))])
    (named,) = chain.contract.evidence()
    assert (named.kind, named.offender) == (FALSE_COMPLAINT, NODES[1])


def test_a_forged_prss_complaint_is_refused() -> None:
    """The complainer's best moves to frame an honest dealer: change a key it got (the
    dealer's signature no longer covers it), or the commitments too (the ledger's public
    share commitment no longer covers them)."""
    chain = Chain()
    epochs = run_to_confirm(chain, forge=False)
    proof = epochs[1].prss_evidence(NODES[DEALER])
    keys = bytearray(proof.prss_keys)
    keys[0] ^= 1
    commitments = bytearray(proof.prss_commitments)
    commitments[0] ^= 1
    for forged in (
        dataclasses.replace(proof, prss_keys=bytes(keys)),
        dataclasses.replace(proof, prss_commitments=bytes(commitments)),
        dataclasses.replace(proof, prss_keys=b""),
    ):
        (error,) = chain.block(
            [(NODES[1], EpochPrssComplaint(epoch=1, dealer=NODES[DEALER], evidence=forged))]
        )
        assert error is not None
        assert "refused" in error
    assert chain.contract.evidence() == ()
    assert chain.contract.key_epoch().number == 1
