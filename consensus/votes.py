"""VoteKeeper: the prevote/precommit tally of one height (Malachite's vote keeper).

Every validator has equal voting power. A second, different vote of one
validator for the same (round, step) is equivocation: both signed envelopes are
kept as `Equivocation` evidence. As in Algorithm 1, which counts messages from
distinct processes *per value*, the equivocator then counts once towards each
value it signed (and once towards "any"): that is exactly the view a Byzantine
node could give us anyway, and since 2(2f+1) > n + f no round can have two
value quorums. Dropping the second vote instead would let an equivocator hide
an honest polka from us for ever (a proof of lock change we forward could never
be counted). Votes from non-validators are dropped. Each threshold
(`Threshold`) is emitted once, the first time it is crossed.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

from crypto.identity import NodeId

from .blocks import has_one_third, has_quorum

Value = bytes | None  # a block hash, or None for nil


class VoteStep(enum.Enum):
    PREVOTE = "prevote"
    PRECOMMIT = "precommit"


class ThresholdKind(enum.Enum):
    POLKA_ANY = "polka-any"  # >2/3 prevotes for anything (L34)
    POLKA_NIL = "polka-nil"  # >2/3 prevotes for nil (L44)
    POLKA_VALUE = "polka-value"  # >2/3 prevotes for one block (L28, L36)
    PRECOMMIT_ANY = "precommit-any"  # >2/3 precommits for anything (L47)
    PRECOMMIT_VALUE = "precommit-value"  # >2/3 precommits for one block (L49)
    SKIP_ROUND = "skip-round"  # >1/3 of validators sent messages of this round (L55)


@final
@dataclass(frozen=True, slots=True)
class Threshold:
    kind: ThresholdKind
    round: int
    value: Value = None  # the block hash for POLKA_VALUE / PRECOMMIT_VALUE


@final
@dataclass(frozen=True, slots=True)
class SignedVote:
    """A verified vote: who voted what, and the envelope bytes that prove it."""

    validator: NodeId
    step: VoteStep
    height: int
    round: int
    value: Value
    wire: bytes


@final
@dataclass(frozen=True, slots=True)
class Equivocation:
    """Two different signed messages of one validator for one height/round/step."""

    validator: NodeId
    height: int
    round: int
    step: str  # "proposal", "prevote" or "precommit"
    first: bytes  # envelope wires
    second: bytes


@final
class _RoundTally:
    __slots__ = ("by_value", "votes")

    def __init__(self) -> None:
        self.votes: dict[NodeId, SignedVote] = {}  # first vote of each validator
        self.by_value: dict[Value, dict[NodeId, SignedVote]] = {}


@final
class VoteKeeper:
    """Tallies the votes of one height. Not thread-safe; pure bookkeeping, no I/O."""

    __slots__ = ("_decisions", "_emitted", "_evidence", "_round_senders", "_tallies", "height", "validators")

    def __init__(self, height: int, validators: Sequence[NodeId]) -> None:
        if not validators:
            raise ValueError("a height needs at least one validator")
        self.height: Final = height
        self.validators: Final = frozenset(validators)
        self._tallies: dict[tuple[int, VoteStep], _RoundTally] = {}
        self._round_senders: dict[int, set[NodeId]] = {}
        self._emitted: set[Threshold] = set()
        self._evidence: list[Equivocation] = []
        self._decisions: list[tuple[int, bytes]] = []

    @property
    def total(self) -> int:
        return len(self.validators)

    @property
    def evidence(self) -> tuple[Equivocation, ...]:
        return tuple(self._evidence)

    def note_sender(self, round: int, sender: NodeId) -> tuple[Threshold, ...]:
        """Count a message of `round` (proposal or vote) towards round skipping (L55)."""
        if sender not in self.validators:
            return ()
        senders = self._round_senders.setdefault(round, set())
        senders.add(sender)
        if has_one_third(len(senders), self.total):
            return self._emit(Threshold(ThresholdKind.SKIP_ROUND, round))
        return ()

    def add_evidence(self, evidence: Equivocation) -> None:
        self._evidence.append(evidence)

    def add(self, vote: SignedVote) -> tuple[Threshold, ...]:
        """Record `vote`; return the thresholds it crosses for the first time."""
        if vote.height != self.height or vote.validator not in self.validators:
            return ()
        tally = self._tallies.setdefault((vote.round, vote.step), _RoundTally())
        same_value = tally.by_value.setdefault(vote.value, {})
        if vote.validator in same_value:
            return ()  # a duplicate (or a re-signed identical vote)
        previous = tally.votes.get(vote.validator)
        if previous is not None:
            self._evidence.append(
                Equivocation(
                    vote.validator, vote.height, vote.round, vote.step.value, previous.wire, vote.wire
                )
            )
        else:
            tally.votes[vote.validator] = vote
        same_value[vote.validator] = vote
        out = self.note_sender(vote.round, vote.validator)
        total, r = self.total, vote.round
        if vote.step is VoteStep.PREVOTE:
            if has_quorum(len(tally.votes), total):
                out += self._emit(Threshold(ThresholdKind.POLKA_ANY, r))
            if has_quorum(len(tally.by_value[vote.value]), total):
                kind = ThresholdKind.POLKA_NIL if vote.value is None else ThresholdKind.POLKA_VALUE
                out += self._emit(Threshold(kind, r, vote.value))
        else:
            if has_quorum(len(tally.votes), total):
                out += self._emit(Threshold(ThresholdKind.PRECOMMIT_ANY, r))
            if vote.value is not None and has_quorum(len(tally.by_value[vote.value]), total):
                emitted = self._emit(Threshold(ThresholdKind.PRECOMMIT_VALUE, r, vote.value))
                if emitted:
                    self._decisions.append((r, vote.value))
                out += emitted
        return out

    def _emit(self, threshold: Threshold) -> tuple[Threshold, ...]:
        if threshold in self._emitted:
            return ()
        self._emitted.add(threshold)
        return (threshold,)

    # -- queries used by the core ---------------------------------------------------

    def count(self, round: int, step: VoteStep, value: Value) -> int:
        tally = self._tallies.get((round, step))
        return 0 if tally is None else len(tally.by_value.get(value, ()))

    def count_any(self, round: int, step: VoteStep) -> int:
        tally = self._tallies.get((round, step))
        return 0 if tally is None else len(tally.votes)

    def quorum(self, round: int, step: VoteStep, value: Value) -> bool:
        return has_quorum(self.count(round, step, value), self.total)

    def quorum_any(self, round: int, step: VoteStep) -> bool:
        return has_quorum(self.count_any(round, step), self.total)

    def quorum_value(self, round: int, step: VoteStep) -> bytes | None:
        """The block hash with >2/3 votes in (round, step), if any."""
        tally = self._tallies.get((round, step))
        if tally is None:
            return None
        for value, votes in tally.by_value.items():
            if value is not None and has_quorum(len(votes), self.total):
                return value
        return None

    def precommit_quorums(self) -> tuple[tuple[int, bytes], ...]:
        """Every (round, block hash) that has >2/3 precommits, in the order reached."""
        return tuple(self._decisions)

    def skip_rounds_above(self, round: int) -> int | None:
        """The highest round above `round` that >1/3 of validators have sent messages in."""
        best = None
        for r, senders in self._round_senders.items():
            if r > round and has_one_third(len(senders), self.total) and (best is None or r > best):
                best = r
        return best

    def votes_for(self, round: int, step: VoteStep, value: Value) -> tuple[SignedVote, ...]:
        tally = self._tallies.get((round, step))
        return () if tally is None else tuple(tally.by_value.get(value, {}).values())

    def rounds(self, step: VoteStep) -> tuple[int, ...]:
        return tuple(sorted(r for (r, s) in self._tallies if s is step))
