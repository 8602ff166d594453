"""Table-driven step tests of the round reconciler: ledger in, jobs out.

A real `Contract` is driven block by block with signed transactions; after
each step the test asks `reconcile()` what given nodes should do and compares
the job kinds (and the fields that matter) with the table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from consensus.contract import Contract
from consensus.genesis import FoundingMember, Genesis, StoppingRule, Timeouts, TrainingParams
from consensus.transactions import (
    Aggregate,
    AggregateVerdict,
    Contribution,
    DecryptionShare,
    EpochComplete,
    EpochFingerprint,
    EpochPublicShare,
    EpochSealedShares,
    MergedModel,
    Phase,
    Ready,
    TxBody,
    TxSigner,
)
from crypto import cbor, prss
from crypto.identity import NodeId, NodeIdentity
from crypto.testing import placeholder_fingerprint
from swarmnode.round import (
    OUTSIDER_COMBINE_GRACE,
    REPLICAS,
    AggregateContributions,
    CombineShares,
    CommitEpochShare,
    ConfirmEpoch,
    Contribute,
    LoadMerged,
    LocalFacts,
    MakeDecryptionShare,
    MergeWanted,
    PrefetchContributions,
    PrefetchShare,
    PrepareAggregate,
    RevealEpochShares,
    SubmitPhaseTimeout,
    SubmitReady,
    VerifyAggregate,
    reconcile,
)

IDS = [NodeIdentity.from_seed(hashlib.sha256(f"round-steps/{i}".encode()).digest()) for i in range(4)]
TIMEOUTS = Timeouts(ready_wait=50.0, contribute=10.0, aggregate=11.0, verify=12.0, decrypt=13.0)


@pytest.fixture(autouse=True)
def lagrange_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    """These steps plan the Lagrange decrypt set (t members, the others combine after a
    grace), which key epochs above the PRSS key limit use (about n > 10); here the ledger
    treats the small test epochs the same way. Robust epochs' rounds (every active
    participant decrypts) are planned in tests/node/test_swarm_sim_robust.py and checked in
    tests/consensus/test_contract.py."""
    monkeypatch.setattr(prss, "robust_epoch", lambda members, threshold, **_: False)


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def make_contract(max_rounds: int = 2, min_peers: int = 2) -> Contract:
    genesis = Genesis(
        name="steps",
        members=tuple(FoundingMember(name=f"n{i}", node_id=ident.node_id) for i, ident in enumerate(IDS)),
        training=TrainingParams(
            model_spec_hash=h("spec"),
            min_peers=min_peers,
            timeouts=TIMEOUTS,
            stopping=StoppingRule(max_rounds=max_rounds),
        ),
    )
    return Contract(genesis)


def ident(node: NodeId) -> NodeIdentity:
    return next(i for i in IDS if i.node_id == node)


def commit(contract: Contract, *txs: tuple[NodeId, TxBody]) -> None:
    wires = [TxSigner(contract.chain_id, ident(sender)).sign(body) for sender, body in txs]
    results = contract.apply_block(contract.height + 1, wires)
    assert results == (None,) * len(wires), results


def facts(me: NodeId, **kw: object) -> LocalFacts:
    base: dict[str, object] = {"me": me, "now": 100.0, "key_epochs": frozenset({1})}
    base.update(kw)
    return LocalFacts(**base)  # type: ignore[arg-type]


def kinds(contract: Contract, f: LocalFacts) -> list[str]:
    return [type(j).__name__ for j in reconcile(contract, f).jobs]


WANT = MergeWanted(weight=10, val_metric=0.5, since_round=1)


def to_epoch_complete(c: Contract) -> None:
    commit(c, *[(i.node_id, EpochPublicShare(epoch=1, share_hash=h(f"p{k}"))) for k, i in enumerate(IDS)])
    commit(c, *[(i.node_id, EpochSealedShares(epoch=1, shares_hash=h(f"s{k}"))) for k, i in enumerate(IDS)])
    commit(c, *[(i.node_id, EpochFingerprint(epoch=1, fingerprint=placeholder_fingerprint(3))) for i in IDS])
    commit(c, *[(i.node_id, EpochComplete(epoch=1, collective_key_hash=h("ck"))) for i in IDS])


def to_contribute(c: Contract) -> None:
    to_epoch_complete(c)
    commit(c, *[(i.node_id, Ready(round=1, weight=10 * (k + 1), val_metric=0.5)) for k, i in enumerate(IDS)])


def to_aggregate(c: Contract) -> None:
    to_contribute(c)
    commit(
        c, *[(i.node_id, Contribution(round=1, blob_hash=h(f"c{k}"), blob_size=9)) for k, i in enumerate(IDS)]
    )


def to_verify(c: Contract) -> None:
    to_aggregate(c)
    r = c.round
    assert r.leader is not None
    commit(
        c, (r.leader, Aggregate(round=1, step=r.step, aggregate_hash=h("agg"), contributors=r.contributors))
    )


def to_decrypt(c: Contract) -> None:
    to_verify(c)
    r = c.round
    assert r.verifier is not None
    verdict = AggregateVerdict(round=1, step=r.step, aggregate_hash=h("agg"), recomputed_hash=h("agg"))
    commit(c, (r.verifier, verdict))


def to_shares(c: Contract) -> None:
    to_decrypt(c)
    r = c.round
    commit(
        c, *[(p, DecryptionShare(round=1, step=r.step, share_hash=h(f"d{p.short}"))) for p in r.decrypt_set]
    )


def to_merged(c: Contract) -> None:
    to_shares(c)
    r = c.round
    commit(c, *[(p, MergedModel(round=1, step=r.step, params_hash=h("merged"))) for p in r.decrypt_set])


@dataclass(frozen=True)
class Step:
    desc: str
    setup: Callable[[Contract], None]
    who: Callable[[Contract], NodeId]
    facts: dict[str, object]
    expect: list[str]


def first(c: Contract) -> NodeId:
    return IDS[0].node_id


def leader(c: Contract) -> NodeId:
    assert c.round.leader is not None
    return c.round.leader


def verifier(c: Contract) -> NodeId:
    assert c.round.verifier is not None
    return c.round.verifier


def decryptor(c: Contract) -> NodeId:
    return c.round.decrypt_set[0]


def non_decryptor(c: Contract) -> NodeId:
    return next(p for p in c.round.participants if p not in c.round.decrypt_set)


def bystander(c: Contract) -> NodeId:
    r = c.round
    return next(p for p in r.participants if p not in (r.leader, r.verifier))


def tail(c: Contract) -> NodeId:
    return c.round.active[-1]


def nothing(c: Contract) -> None:
    pass


def published(c: Contract) -> None:
    commit(c, *[(i.node_id, EpochPublicShare(epoch=1, share_hash=h(f"p{k}"))) for k, i in enumerate(IDS)])
    commit(c, *[(i.node_id, EpochSealedShares(epoch=1, shares_hash=h(f"s{k}"))) for k, i in enumerate(IDS)])
    commit(c, *[(i.node_id, EpochFingerprint(epoch=1, fingerprint=placeholder_fingerprint(3))) for i in IDS])


def half_published(c: Contract) -> None:
    committed(c)
    commit(c, (IDS[0].node_id, EpochSealedShares(epoch=1, shares_hash=h("s0"))))


def committed(c: Contract) -> None:
    commit(c, *[(i.node_id, EpochPublicShare(epoch=1, share_hash=h(f"p{k}"))) for k, i in enumerate(IDS)])


def committed_partly(c: Contract) -> None:
    commit(c, *[(i.node_id, EpochPublicShare(epoch=1, share_hash=h(f"p{k}"))) for k, i in enumerate(IDS[:3])])


STEPS = [
    Step("genesis: every member commits its public share", nothing, first, {}, ["CommitEpochShare"]),
    Step("some commitments missing: reveal nothing yet", committed_partly, first, {}, []),
    Step("all commitments on the ledger: reveal", committed, first, {}, ["RevealEpochShares"]),
    Step("own bundle committed, others missing: wait", half_published, first, {}, []),
    Step("all bundles committed: confirm the epoch", published, first, {}, ["ConfirmEpoch"]),
    Step("epoch complete, no merge waiting: idle", to_epoch_complete, first, {}, []),
    Step("epoch complete, merge waiting: Ready", to_epoch_complete, first, {"wanted": WANT}, ["SubmitReady"]),
    Step("contribute phase: participant contributes", to_contribute, first, {"wanted": WANT}, ["Contribute"]),
    Step(
        "contribute without the epoch's keys: nothing",
        to_contribute,
        first,
        {"wanted": WANT, "key_epochs": frozenset()},
        [],
    ),
    Step("contribute after the merge call left: nothing", to_contribute, first, {}, []),
    Step(
        "aggregate phase: the leader aggregates (and holds copies, prepares its share)",
        to_aggregate,
        leader,
        {},
        ["AggregateContributions", "PrefetchContributions", "PrepareAggregate"],
    ),
    Step(
        "aggregate phase: the verifier copies and adds them now",
        to_aggregate,
        verifier,
        {},
        ["PrefetchContributions", "PrepareAggregate"],
    ),
    Step(
        "aggregate phase: the next in rotation (a decryptor) copies and adds them now",
        to_aggregate,
        bystander,
        {},
        ["PrefetchContributions", "PrepareAggregate"],
    ),
    Step("aggregate phase: the tail waits", to_aggregate, tail, {}, []),
    Step(
        "aggregate deadline passed: waiting party votes",
        to_aggregate,
        tail,
        {"stage_since": "stage-minus-12"},
        ["SubmitPhaseTimeout"],
    ),
    Step(
        "aggregate deadline passed: the leader votes too (every key-epoch member does)",
        to_aggregate,
        leader,
        {"stage_since": "stage-minus-12"},
        ["AggregateContributions", "PrefetchContributions", "PrepareAggregate", "SubmitPhaseTimeout"],
    ),
    Step("verify phase: the verifier recomputes", to_verify, verifier, {}, ["VerifyAggregate"]),
    Step(
        "decrypt phase: a decrypt-set member makes its share",
        to_decrypt,
        decryptor,
        {},
        ["MakeDecryptionShare"],
    ),
    Step("decrypt phase: others wait for the shares", to_decrypt, non_decryptor, {}, []),
    Step(
        "decrypt phase without the epoch's keys: no share",
        to_decrypt,
        decryptor,
        {"key_epochs": frozenset()},
        [],
    ),
    Step("all shares committed: a decryptor combines", to_shares, decryptor, {}, ["CombineShares"]),
    Step("all shares committed: an outsider waits for the decryptors", to_shares, non_decryptor, {}, []),
    Step(
        "all shares committed, round still open after the grace: an outsider combines too",
        to_shares,
        non_decryptor,
        {"stage_since": "past-combine-grace"},
        ["CombineShares"],
    ),
    Step("merged, hash not held: load it", to_merged, first, {"wanted": WANT}, ["LoadMerged"]),
    Step(
        "merged, hash held: deliver, nothing to do",
        to_merged,
        first,
        {"wanted": WANT, "held_models": frozenset({h("merged")})},
        [],
    ),
    Step(
        "merged, next round: Ready again for a new merge",
        to_merged,
        first,
        {"wanted": MergeWanted(weight=5, val_metric=None, since_round=2)},
        ["SubmitReady"],
    ),
]


@pytest.mark.parametrize("step", STEPS, ids=[s.desc for s in STEPS])
def test_step(step: Step) -> None:
    c = make_contract()
    step.setup(c)
    me = step.who(c)
    kw = dict(step.facts)
    if kw.get("stage_since") == "stage-minus-12":
        r = c.round
        kw["stage_since"] = ((r.number, r.phase, r.step), 100.0 - 12.0)
    if kw.get("stage_since") == "past-combine-grace":
        r = c.round
        kw["stage_since"] = ((r.number, r.phase, r.step), 100.0 - TIMEOUTS.decrypt / OUTSIDER_COMBINE_GRACE)
    assert kinds(c, facts(me, **kw)) == step.expect


def test_job_fields_follow_the_ledger() -> None:
    c = make_contract()
    to_contribute(c)
    (job,) = reconcile(c, facts(IDS[1].node_id, wanted=WANT)).jobs
    head = tuple(p for p in c.round.active[:3] if p != IDS[1].node_id)
    assert job == Contribute(round=1, epoch=1, weight=20, total_weight=100, replicas=head)
    assert job.key == ("contribute", 1)
    c = make_contract()
    to_verify(c)
    (verify,) = reconcile(c, facts(verifier(c))).jobs
    assert isinstance(verify, VerifyAggregate)
    assert verify.claimed_hash == h("agg")
    assert [x.node_id for x in verify.contributions] == list(c.round.contributors)
    c = make_contract()
    to_shares(c)
    me = next(p for p in c.round.decrypt_set if p != c.round.leader)  # no share job left
    (combine,) = reconcile(c, facts(me)).jobs
    assert isinstance(combine, CombineShares)
    assert [v.node_id for v in combine.shares] == list(c.round.decrypt_set)


def test_prepare_carries_the_committed_contributions_and_decrypt_set() -> None:
    c = make_contract()
    to_aggregate(c)
    r = c.round
    (prepare,) = [j for j in reconcile(c, facts(verifier(c))).jobs if isinstance(j, PrepareAggregate)]
    assert [x.node_id for x in prepare.contributions] == list(r.contributors)
    assert (prepare.round, prepare.step, prepare.epoch, prepare.decrypt_set) == (1, r.step, 1, r.decrypt_set)
    assert prepare.key == ("prepare", 1, r.step)
    # Nothing to prepare once the aggregate is committed (the verdict job takes over).
    to_verify(c2 := make_contract())
    assert not [j for j in reconcile(c2, facts(verifier(c2))).jobs if isinstance(j, PrepareAggregate)]


def test_outsider_plan_rechecks_when_its_combine_grace_ends() -> None:
    """The driver must wake up by itself when the grace ends: no block may come (the
    decryptors that would close the round are gone)."""
    c = make_contract()
    to_shares(c)
    stage = (1, Phase.DECRYPT.value, c.round.step)
    outsider = reconcile(c, facts(non_decryptor(c), now=100.0, stage_since=(stage, 99.0)))
    assert outsider.jobs == ()
    assert outsider.recheck == 99.0 + TIMEOUTS.decrypt / OUTSIDER_COMBINE_GRACE
    inside = reconcile(c, facts(decryptor(c), now=100.0, stage_since=(stage, 99.0)))
    assert inside.recheck is None
    # Once it voted (it combined after all): nothing more to wait for.
    outsider_id = non_decryptor(c)
    commit(c, (outsider_id, MergedModel(round=1, step=c.round.step, params_hash=h("merged"))))
    assert reconcile(c, facts(outsider_id, now=100.0, stage_since=(stage, 99.0))).recheck is None


def test_epoch_jobs_carry_the_epoch_spec() -> None:
    c = make_contract()
    (job,) = reconcile(c, facts(IDS[2].node_id, key_epochs=frozenset())).jobs
    assert isinstance(job, CommitEpochShare)
    epoch = c.key_epoch()
    assert (job.epoch, job.epoch_id, job.members, job.threshold) == (1, epoch.seed, epoch.members, 3)
    committed(c)
    (reveal,) = reconcile(c, facts(IDS[2].node_id, key_epochs=frozenset())).jobs
    assert isinstance(reveal, RevealEpochShares)
    assert dict(reveal.commitments)[IDS[3].node_id] == h("p3")
    commit(c, *[(i.node_id, EpochSealedShares(epoch=1, shares_hash=h(f"s{k}"))) for k, i in enumerate(IDS)])
    commit(c, *[(i.node_id, EpochFingerprint(epoch=1, fingerprint=placeholder_fingerprint(3))) for i in IDS])
    (confirm,) = reconcile(c, facts(IDS[2].node_id, key_epochs=frozenset())).jobs
    assert isinstance(confirm, ConfirmEpoch)
    assert dict(confirm.commitments)[IDS[3].node_id] == h("p3")
    assert dict(confirm.bundles)[IDS[1].node_id] == h("s1")


def test_deadline_is_measured_from_first_sight_of_the_stage() -> None:
    c = make_contract()
    to_aggregate(c)
    me = tail(c)
    plan = reconcile(c, facts(me, now=7.0))
    assert plan.stage == (1, Phase.AGGREGATE.value, c.round.step)
    assert plan.deadline == 7.0 + TIMEOUTS.aggregate
    assert plan.stage is not None
    later = reconcile(c, facts(me, now=7.0 + TIMEOUTS.aggregate, stage_since=(plan.stage, 7.0)))
    assert later.jobs == (SubmitPhaseTimeout(round=1, phase="aggregate", step=c.round.step),)
    other_stage = reconcile(c, facts(me, now=50.0, stage_since=((1, "contribute", 1), 0.0)))
    assert other_stage.jobs == ()
    assert other_stage.deadline == 50.0 + TIMEOUTS.aggregate


def test_ready_deadline_for_every_member_of_the_key_epoch() -> None:
    """Not only the Ready members: those already waiting must not decide the deadline alone."""
    c = make_contract()
    to_epoch_complete(c)
    commit(c, (IDS[0].node_id, Ready(round=1, weight=3)), (IDS[1].node_id, Ready(round=1, weight=3)))
    ready = reconcile(c, facts(IDS[0].node_id, now=0.0))
    assert ready.deadline == TIMEOUTS.ready_wait
    assert reconcile(c, facts(IDS[3].node_id, now=0.0)).deadline == TIMEOUTS.ready_wait
    seen = ((1, "ready", c.round.step), 0.0)
    late = reconcile(c, facts(IDS[3].node_id, now=TIMEOUTS.ready_wait, stage_since=seen))
    assert [type(j).__name__ for j in late.jobs] == ["SubmitPhaseTimeout"]


def test_delivery_names_the_answering_round() -> None:
    c = make_contract()
    to_merged(c)
    plan = reconcile(c, facts(IDS[0].node_id, wanted=WANT, held_models=frozenset({h("merged")})))
    assert plan.delivery is not None
    assert plan.delivery.round == 1
    assert plan.delivery.params_hash == h("merged")
    assert plan.delivery.weight == 100
    assert not plan.stopped


def test_stop_plans_the_final_model_download() -> None:
    c = make_contract(max_rounds=1)
    to_merged(c)
    plan = reconcile(c, facts(IDS[0].node_id))
    assert plan.stopped
    assert plan.stage is None
    assert plan.jobs == (LoadMerged(round=1, params_hash=h("merged")),)
    held = reconcile(c, facts(IDS[0].node_id, held_models=frozenset({h("merged")})))
    assert held.jobs == ()


def _restored(c: Contract, mutate: Callable[[object], object]) -> Contract:
    state = c.state
    changed = mutate(state)
    fresh = Contract(c.genesis)
    fresh.restore(cbor.dumps_dataclass(changed))
    return fresh


def test_never_plans_a_share_for_fewer_than_min_peers_contributions() -> None:
    """Even if a (buggy or forged) ledger state shows a decrypt phase over one contribution."""
    c = make_contract()
    to_decrypt(c)
    r = c.round
    lonely = _restored(c, lambda s: replace(s, round=replace(r, contributors=r.contributors[:1])))  # type: ignore[type-var]
    assert kinds(lonely, facts(decryptor(lonely))) == []
    assert kinds(c, facts(decryptor(c))) == ["MakeDecryptionShare"]


def test_non_member_plans_nothing() -> None:
    c = make_contract()
    stranger = NodeIdentity.from_seed(h("stranger")).node_id
    assert kinds(c, facts(stranger, wanted=WANT)) == []
    to_contribute(c)
    assert kinds(c, facts(stranger, wanted=WANT)) == []


def test_job_keys_are_stable_and_distinct() -> None:
    jobs = [
        SubmitReady(round=1, weight=1, val_metric=None),
        Contribute(round=1, epoch=1, weight=1, total_weight=2),
        AggregateContributions(round=1, step=2, contributions=()),
        VerifyAggregate(round=1, step=3, claimed_hash=h("a"), contributions=()),
        MakeDecryptionShare(
            round=1,
            step=4,
            epoch=1,
            aggregate_hash=h("a"),
            aggregator=None,
            decrypt_set=(),
            threshold=1,
            contributions=2,
            committed=(),
        ),
        CombineShares(round=1, step=4, epoch=1, aggregate_hash=h("a"), aggregator=None, shares=()),
        LoadMerged(round=1, params_hash=h("m")),
        SubmitPhaseTimeout(round=1, phase="aggregate", step=2),
    ]
    assert len({j.key for j in jobs}) == len(jobs)
    assert SubmitReady(round=1, weight=9, val_metric=0.1).key == jobs[0].key


def test_contributions_are_copied_by_the_head_of_the_rotation() -> None:
    c = make_contract()
    to_contribute(c)
    head, last = c.round.active[0], c.round.active[-1]
    commit(c, (last, Contribution(round=1, blob_hash=h("late"), blob_size=9)))
    plan = reconcile(c, facts(head))
    (prefetch,) = [j for j in plan.jobs if isinstance(j, PrefetchContributions)]
    assert [x.node_id for x in prefetch.contributions] == [last]
    assert prefetch.key == ("prefetch", 1, 1)
    assert not [
        j for j in reconcile(c, facts(last, wanted=WANT)).jobs if isinstance(j, PrefetchContributions)
    ]


def test_in_a_robust_epoch_every_future_decryptor_copies_the_contributions_as_they_land(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every active participant makes a point share of the sum of all contributions: the tail
    of the rotation fetches each one as it is committed, not only once the phase closes."""
    monkeypatch.setattr(prss, "robust_epoch", lambda members, threshold, **_: True)
    c = make_contract()
    to_contribute(c)
    assert c.round.robust
    head, tail = c.round.active[0], c.round.active[-1]
    assert tail not in c.round.active[:REPLICAS]
    commit(c, (head, Contribution(round=1, blob_hash=h("early"), blob_size=9)))
    (prefetch,) = [j for j in reconcile(c, facts(tail)).jobs if isinstance(j, PrefetchContributions)]
    assert [x.node_id for x in prefetch.contributions] == [head]


def test_in_a_robust_epoch_the_first_combiners_copy_each_point_share_as_it_is_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the last decryptors still make their shares, the t that combine at once fetch
    the shares already committed; the others (they load the merged model) fetch none."""
    monkeypatch.setattr(prss, "robust_epoch", lambda members, threshold, **_: True)
    c = make_contract()
    to_decrypt(c)
    r = c.round
    assert len(r.decrypt_set) == len(IDS) > r.threshold
    first, outsider = r.active[: r.threshold], r.active[-1]
    early = first[1]
    commit(c, (early, DecryptionShare(round=1, step=r.step, share_hash=h("early"))))

    def prefetched(node: NodeId) -> list[PrefetchShare]:
        return [j for j in reconcile(c, facts(node)).jobs if isinstance(j, PrefetchShare)]

    assert [j.share.value for j in prefetched(first[0])] == [h("early")]
    assert prefetched(early) == []  # its own share
    assert prefetched(outsider) == []
    rest = [p for p in r.decrypt_set if p != early]
    commit(c, *[(p, DecryptionShare(round=1, step=r.step, share_hash=h(f"d{p.short}"))) for p in rest])
    assert prefetched(first[0]) == []  # every share is in: the combine fetches what is left


def test_a_stuck_job_does_not_hold_back_the_timeout_vote() -> None:
    """All shares are in but the combine job keeps failing (say the aggregate blob is gone
    everywhere): past the decrypt deadline the same plan also holds the timeout vote, so the
    contract can abort the round instead of the node retrying forever."""
    c = make_contract()
    to_shares(c)
    me = c.round.participants[0]
    stage = (1, Phase.DECRYPT.value, c.round.step)
    before = reconcile(c, facts(me, now=10.0, stage_since=(stage, 10.0)))
    assert [type(j).__name__ for j in before.jobs] == ["CombineShares"]
    after = reconcile(c, facts(me, now=10.0 + TIMEOUTS.decrypt, stage_since=(stage, 10.0)))
    assert [type(j).__name__ for j in after.jobs] == ["CombineShares", "SubmitPhaseTimeout"]
    assert len({j.key for j in after.jobs}) == 2  # independent keys: one's retries never block the other
