"""VoteKeeper: thresholds emitted once, equal power, evidence instead of errors."""

from __future__ import annotations

from consensus.simulator import sim_identity
from consensus.votes import Equivocation, SignedVote, Threshold, ThresholdKind, VoteKeeper, VoteStep

IDS = [sim_identity(i).node_id for i in range(7)]  # n = 7: quorum 5, f+1 = 3
A, B = b"A" * 32, b"B" * 32


def vote(
    who: int, value: bytes | None, r: int = 0, step: VoteStep = VoteStep.PREVOTE, height: int = 1
) -> SignedVote:
    wire = b"|".join([bytes([who]), value or b"nil", bytes([r]), step.value.encode()])
    return SignedVote(IDS[who], step, height, r, value, wire)


def test_polka_value_and_any_emitted_once_at_quorum() -> None:
    keeper = VoteKeeper(1, IDS)
    outs = [keeper.add(vote(i, A)) for i in range(4)]
    assert outs == [(), (), (Threshold(ThresholdKind.SKIP_ROUND, 0),), ()]
    assert keeper.add(vote(4, A)) == (
        Threshold(ThresholdKind.POLKA_ANY, 0),
        Threshold(ThresholdKind.POLKA_VALUE, 0, A),
    )
    assert keeper.add(vote(5, A)) == ()  # already emitted
    assert keeper.quorum_value(0, VoteStep.PREVOTE) == A
    assert keeper.count(0, VoteStep.PREVOTE, A) == 6


def test_polka_nil_and_mixed_any() -> None:
    keeper = VoteKeeper(1, IDS)
    for i in range(3):
        keeper.add(vote(i, None))
    keeper.add(vote(3, A))
    assert keeper.add(vote(4, B)) == (Threshold(ThresholdKind.POLKA_ANY, 0),)
    assert keeper.quorum_value(0, VoteStep.PREVOTE) is None
    keeper.add(vote(5, None))
    assert keeper.add(vote(6, None)) == (Threshold(ThresholdKind.POLKA_NIL, 0, None),)


def test_precommit_thresholds_and_nil_never_decides() -> None:
    keeper = VoteKeeper(1, IDS)
    emitted = [t for i in range(5) for t in keeper.add(vote(i, A, step=VoteStep.PRECOMMIT))]
    assert Threshold(ThresholdKind.PRECOMMIT_ANY, 0) in emitted
    assert Threshold(ThresholdKind.PRECOMMIT_VALUE, 0, A) in emitted
    nil_keeper = VoteKeeper(1, IDS)
    emitted = [t for i in range(7) for t in nil_keeper.add(vote(i, None, step=VoteStep.PRECOMMIT))]
    assert all(t.kind is not ThresholdKind.PRECOMMIT_VALUE for t in emitted)


def test_skip_round_needs_more_than_a_third_of_distinct_senders() -> None:
    keeper = VoteKeeper(1, IDS)
    keeper.add(vote(0, None, r=4))
    keeper.add(vote(0, None, r=4, step=VoteStep.PRECOMMIT))  # same sender counts once
    keeper.add(vote(1, None, r=4))
    assert keeper.skip_rounds_above(0) is None
    assert keeper.add(vote(2, A, r=4)) == (Threshold(ThresholdKind.SKIP_ROUND, 4),)
    assert keeper.skip_rounds_above(0) == 4
    assert keeper.skip_rounds_above(4) is None


def test_equivocation_is_evidence_and_counts_once_per_value() -> None:
    keeper = VoteKeeper(1, IDS)
    first, second = vote(0, A), vote(0, B)
    keeper.add(first)
    assert keeper.add(second) == ()
    assert keeper.evidence == (Equivocation(IDS[0], 1, 0, "prevote", first.wire, second.wire),)
    assert keeper.count_any(0, VoteStep.PREVOTE) == 1
    assert (keeper.count(0, VoteStep.PREVOTE, A), keeper.count(0, VoteStep.PREVOTE, B)) == (1, 1)
    keeper.add(second)  # the same conflicting vote again: no new evidence
    assert len(keeper.evidence) == 1


def test_two_value_quorums_are_impossible_even_with_equivocators() -> None:
    # f = 2 equivocators vote both ways; 5 honest split 3/2: at most one value reaches 5.
    keeper = VoteKeeper(1, IDS)
    for i in (0, 1):
        keeper.add(vote(i, A))
        keeper.add(vote(i, B))
    for i in (2, 3, 4):
        keeper.add(vote(i, A))
    for i in (5, 6):
        keeper.add(vote(i, B))
    assert keeper.quorum(0, VoteStep.PREVOTE, A)
    assert not keeper.quorum(0, VoteStep.PREVOTE, B)


def test_non_validators_and_other_heights_are_dropped() -> None:
    keeper = VoteKeeper(1, IDS[:4])
    assert keeper.add(vote(5, A)) == ()
    assert keeper.add(vote(1, A, height=2)) == ()
    assert keeper.count_any(0, VoteStep.PREVOTE) == 0
    assert keeper.note_sender(3, IDS[6]) == ()
