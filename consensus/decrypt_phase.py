"""Decrypt-phase rules of robust key epochs (point shares, `crypto.robust_merge`).

In a robust epoch (`consensus.contract_state.KeyEpoch.robust`) every decryption share is a
point on one polynomial, not bound to a decrypt set, and extra points check each other:

* **Decrypt set.** Every active participant of the round, not only t: more points name
  more wrong ones (``min(max_faulty, m - t - max_faulty)`` of m points). Members named
  for a wrong share earlier in the key epoch (`WRONG_SHARE` evidence) are left out, as
  long as t + 1 others remain, else they fill the set up to t + 1: never exactly t points,
  which would decode whatever they say (t points always lie on one polynomial). A filler's
  share is checked like any other: if it lies again the round aborts, nothing merges.
* **Merge vote.** A combiner votes for the merged model's hash *and* the members whose
  shares were off the polynomial (`MergedModel.culprits`); the contract closes the round
  at t matching (hash, culprits) votes and records `WRONG_SHARE` evidence per culprit
  with the hash of its committed share (anyone can re-run `combine_points` on the
  committed blobs and get the same verdict).
* **Detected, not named.** When the points disagree and nobody can be named (too few
  points: e.g. four of four at t = 3), combiners vote `ShareMismatch`; t such votes abort
  the round without a merge. The closed round keeps every share hash for inspection.

Pure functions of the round's fields; `consensus.rounds` and `consensus.round_phases` apply them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Final

from crypto.identity import NodeId

WRONG_SHARE: Final = "wrong-share"
_VOTE_DOMAIN: Final = b"swarmnode/merged-vote/v1\x00"


def _sorted(nodes: Iterable[NodeId]) -> tuple[NodeId, ...]:
    return tuple(sorted(set(nodes), key=lambda n: n.public_key))


def named_culprits(evidence: Iterable[tuple[str, int, NodeId]], epoch_start: int) -> tuple[NodeId, ...]:
    """Members with `WRONG_SHARE` evidence (kind, height, offender) since the key epoch began."""
    return _sorted(o for kind, height, o in evidence if kind == WRONG_SHARE and height >= epoch_start)


def robust_decrypt_set(
    active: Sequence[NodeId], barred: Iterable[NodeId], threshold: int
) -> tuple[NodeId, ...]:
    """Every active participant but the barred ones; barred ones fill up to t + 1 (rotation
    order), so that every decrypt set has a point that checks the others."""
    left_out = set(barred)
    chosen = [p for p in active if p not in left_out]
    chosen += [p for p in active if p in left_out][: max(0, threshold + 1 - len(chosen))]
    return _sorted(chosen)


def merged_vote(params_hash: bytes, culprits: Sequence[NodeId]) -> bytes:
    """What a `MergedModel` vote counts as: the hash alone without culprits (as in Lagrange
    epochs), else a hash of both, so only votes that name the same culprits match."""
    if not culprits:
        return params_hash
    return hashlib.sha256(_VOTE_DOMAIN + params_hash + b"".join(c.public_key for c in culprits)).digest()


def culprits_fault(culprits: Sequence[NodeId], decrypt_set: Sequence[NodeId]) -> str | None:
    """Why a vote's culprit list is unacceptable: not sorted, repeated, or outside the decrypt set."""
    if tuple(culprits) != _sorted(culprits):
        return "culprits must be sorted and distinct"
    if not set(culprits) <= set(decrypt_set):
        return "a named culprit is not in the decrypt set"
    return None
