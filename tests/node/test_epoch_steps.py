"""Step tests of the key-epoch planner (`swarmnode.round`): ledger in, jobs out.

The key-epoch deadline is planned like a phase deadline: `key_epoch` seconds after a
node first saw the stage, only by members that did their part of it and have not
voted yet; a member left out of the complete epoch plans `RejoinEpoch`.
"""

from __future__ import annotations

import hashlib

import pytest

from consensus.contract import Contract
from consensus.genesis import FoundingMember, Genesis, Timeouts, TrainingParams
from consensus.transactions import (
    EpochPublicShare,
    EpochTimeout,
    TxBody,
    TxSigner,
)
from crypto.identity import NodeId, NodeIdentity
from swarmnode.round import (
    LocalFacts,
    RejoinEpoch,
    SubmitEpochTimeout,
    epoch_deadline,
    epoch_stage,
    reconcile,
)
from swarmnode.testing.contract_chain import placeholder_epoch_blocks

IDS = sorted(
    (NodeIdentity.from_seed(hashlib.sha256(f"epoch-steps/{i}".encode()).digest()) for i in range(4)),
    key=lambda i: i.node_id.public_key,
)
NODES = [i.node_id for i in IDS]
KEY_EPOCH = 30.0


def h(label: object) -> bytes:
    return hashlib.sha256(repr(label).encode()).digest()


def make_contract() -> Contract:
    genesis = Genesis(
        name="epoch-steps",
        members=tuple(FoundingMember(name=f"n{i}", node_id=n) for i, n in enumerate(NODES)),
        training=TrainingParams(model_spec_hash=h("spec"), timeouts=Timeouts(key_epoch=KEY_EPOCH)),
    )
    return Contract(genesis)


def commit(contract: Contract, *txs: tuple[NodeId, TxBody]) -> None:
    wires = [
        TxSigner(contract.chain_id, next(i for i in IDS if i.node_id == sender)).sign(body)
        for sender, body in txs
    ]
    assert contract.apply_block(contract.height + 1, wires) == (None,) * len(wires)


def timeout_jobs(contract: Contract, me: NodeId, now: float, since: float | None) -> list[SubmitEpochTimeout]:
    stage = epoch_stage(contract)
    seen = None if since is None or stage is None else (stage, since)
    plan = reconcile(contract, LocalFacts(me=me, now=now, epoch_stage_since=seen))
    return [j for j in plan.jobs if isinstance(j, SubmitEpochTimeout)]


def three_committed() -> Contract:
    c = make_contract()
    commit(c, *[(n, EpochPublicShare(epoch=1, share_hash=h(("p", n)))) for n in NODES[:3]])
    return c


# (name, me, now, first seen the stage at, due?)
DEADLINES = [
    ("before the deadline", 0, 129.9, 100.0, False),
    ("at the deadline", 0, 130.0, 100.0, True),
    ("first sight: the clock starts now", 0, 500.0, None, False),
    ("the silent member never votes", 3, 1000.0, 0.0, False),
]


@pytest.mark.parametrize(
    ("who", "now", "since", "due"), [d[1:] for d in DEADLINES], ids=[d[0] for d in DEADLINES]
)
def test_epoch_timeout_is_planned_at_the_deadline_by_waiting_members_only(
    who: int, now: float, since: float | None, due: bool
) -> None:
    c = three_committed()
    jobs = timeout_jobs(c, NODES[who], now, since)
    assert bool(jobs) == due
    if due:
        (job,) = jobs
        assert (job.epoch, job.stage, job.waiting_for) == (1, "commit", (NODES[3],))
        assert job.key == ("epoch-timeout", 1, "commit")
        # Having seen another stage (here: of another epoch) does not count: measured from now.
        other = LocalFacts(me=NODES[who], now=now, epoch_stage_since=((2, "commit"), 0.0))
        assert epoch_deadline(c, other) == now + KEY_EPOCH


def test_no_second_vote_and_a_new_stage_restarts_the_clock() -> None:
    c = three_committed()
    commit(c, (NODES[0], EpochTimeout(epoch=1, stage="commit")))
    assert timeout_jobs(c, NODES[0], 1000.0, 0.0) == []  # already voted
    assert timeout_jobs(c, NODES[1], 1000.0, 0.0) != []
    commit(c, (NODES[3], EpochPublicShare(epoch=1, share_hash=h(("p", NODES[3])))))
    assert epoch_stage(c) == (1, "reveal")
    # Our clock for the reveal stage starts when we see it, whatever we saw before.
    assert timeout_jobs(c, NODES[0], 1000.0, None) == []


def test_left_out_member_asks_to_rejoin_once_the_epoch_is_complete() -> None:
    c = three_committed()
    commit(c, *[(n, EpochTimeout(epoch=1, stage="commit")) for n in NODES[:2]])
    assert c.key_epoch().number == 2
    late = NODES[3]
    assert reconcile(c, LocalFacts(me=late, now=0.0)).jobs == ()  # epoch 2 is still running
    for block in placeholder_epoch_blocks(c.key_epoch()):
        commit(c, *block)
    assert c.key_epoch().complete
    assert reconcile(c, LocalFacts(me=late, now=0.0)).jobs == (RejoinEpoch(epoch=2),)
    assert not any(isinstance(j, RejoinEpoch) for j in reconcile(c, LocalFacts(me=NODES[0], now=0.0)).jobs)
