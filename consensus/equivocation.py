"""Evidence of a validator's equivocation: two conflicting signed votes for one step,
submitted by any member as `VoteEquivocation` and recorded as `EQUIVOCATION` evidence."""

from __future__ import annotations

import functools
from dataclasses import replace

from crypto import cbor
from crypto.envelope import EnvelopeCodec
from crypto.errors import ProtocolError
from crypto.identity import NodeId

from .contract_state import EQUIVOCATION, ContractState, Evidence, Result, validators_at
from .messages import CONSENSUS_MESSAGES, Precommit, Prevote
from .transactions import VoteEquivocation


@functools.cache
def _consensus_codec(chain_id: bytes) -> EnvelopeCodec:
    return EnvelopeCodec(chain_id, CONSENSUS_MESSAGES)


def vote_equivocation(s: ContractState, h: int, sender: NodeId, body: VoteEquivocation) -> Result:
    if s.member(sender) is None:
        return "not a member"
    codec = _consensus_codec(s.chain_id)
    try:
        first, second = codec.open(body.first), codec.open(body.second)
    except ProtocolError as exc:
        return f"invalid evidence: {exc}"
    a, b = first.body, second.body
    if not (isinstance(a, Prevote | Precommit) and type(a) is type(b)):
        return "invalid evidence: not two votes of the same step"
    assert isinstance(b, Prevote | Precommit)
    if first.sender != second.sender or (a.height, a.round) != (b.height, b.round):
        return "invalid evidence: the votes are not by one validator for one height and round"
    if a.block_hash == b.block_hash:
        return "invalid evidence: the votes do not conflict"
    if a.height > h + 1:
        return "invalid evidence: vote for a future height"
    offender = first.sender
    if offender not in validators_at(s, a.height):
        return f"invalid evidence: not a validator at height {a.height}"
    detail = cbor.dumps([first.type, a.height, a.round])
    if any(e.kind == EQUIVOCATION and e.offender == offender and e.detail == detail for e in s.evidence):
        return "equivocation already recorded"
    evidence = Evidence(height=h, round=s.round.number, kind=EQUIVOCATION, offender=offender, detail=detail)
    return replace(s, evidence=(*s.evidence, evidence))
