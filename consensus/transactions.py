"""Ledger transactions: signed envelopes whose bodies the contract understands.

A transaction's bytes are the wire bytes of an envelope (`crypto.envelope`)
sealed for this chain with `TX_MESSAGES`: the signature authenticates the
sender (who is asking, approving, contributing...) and binds the chain id, so
a transaction cannot be replayed on another swarm.

Replays on the same chain are refused by the contract's state, not by a
growing set of seen ids: every body is bound to the state it acts on (a join
request to the joiner's last departure height, a leave to the member's join
height, key-epoch records to an epoch and its stage, round records to a round and its
`step`), so submitting the same transaction again always finds its slot
already filled or stale and is rejected with a reason.

Bodies validate their own fields when built (and therefore when decoded):
hash sizes, ranges, canonical (sorted, distinct) node lists.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, final

from crypto import cbor
from crypto.ckks_params import PARAM_SETS
from crypto.dealing import SCALAR_BYTES, SEGMENT_BYTES, DealingEvidence, PrssEvidence
from crypto.envelope import Envelope, EnvelopeCodec, MessageTypes
from crypto.identity import NodeId, NodeIdentity
from crypto.prss import MAX_PRSS_KEYS, PRSS_KEY_SIZE

from .genesis import MAX_FOUNDING_MEMBERS, check_addresses, check_name

HASH_SIZE: Final = 32
MAX_REASON: Final = 200
MAX_WEIGHT: Final = 2**53  # exact in a float, and far above samples x weightage (1-100)
MAX_BLOB_SIZE: Final = 2**40
MAX_ROUND: Final = 2**40
_TX_ID_DOMAIN: Final = b"swarmnode/tx-id/v1\x00"


class Phase(StrEnum):
    """Where the current training round is (see `consensus.contract`)."""

    READY = "ready"  # collecting Ready(round) from members; start is decided by the contract
    CONTRIBUTE = "contribute"  # participants commit the hashes of their encrypted updates
    AGGREGATE = "aggregate"  # the leader commits the hash of the sum of the contributions
    VERIFY = "verify"  # the verifier recomputes the sum and agrees or proves the leader wrong
    DECRYPT = "decrypt"  # the decrypt set commits decryption shares, then merged-model hashes
    STOPPED = "stopped"  # the stopping rule held (or members voted Stop): training is over


def _hash(value: bytes, name: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ValueError(f"{name}: must be a {HASH_SIZE}-byte SHA-256")


def _range(value: int, low: int, high: int, name: str) -> None:
    if type(value) is not int:  # a bool would encode as CBOR true and never decode
        raise ValueError(f"{name}: must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name}: must be in [{low}, {high}], got {value}")


def _reason(value: str) -> None:
    if len(value) > MAX_REASON or not value.isprintable():
        raise ValueError(f"reason: at most {MAX_REASON} printable characters")


# -- membership -----------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class JoinRequest:
    """The signer asks to join. `last_left` is the height of its last departure (0 if
    never a member): a request from an earlier membership cannot be replayed."""

    name: str
    addresses: tuple[str, ...]
    last_left: int = 0

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check_addresses(self.addresses, "addresses")
        _range(self.last_left, 0, 2**62, "last_left")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Approve:
    """A member (or the admin key) approves the pending join request `request`
    (its `tx_id`) of `joiner`."""

    joiner: NodeId
    request: bytes

    def __post_init__(self) -> None:
        _hash(self.request, "request")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Leave:
    """The signer leaves; `member_since` (its join height) binds this to one membership."""

    member_since: int

    def __post_init__(self) -> None:
        _range(self.member_since, 0, 2**62, "member_since")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Evict:
    """A member votes to evict `target` (member since `target_since`)."""

    target: NodeId
    target_since: int
    reason: str = ""

    def __post_init__(self) -> None:
        _range(self.target_since, 0, 2**62, "target_since")
        _reason(self.reason)


# -- key epochs -----------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EpochPublicShare:
    """Hash of the signer's public key share b_i = -a*s_i + e_i for `epoch`."""

    epoch: int
    share_hash: bytes

    def __post_init__(self) -> None:
        _range(self.epoch, 1, 2**62, "epoch")
        _hash(self.share_hash, "share_hash")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EpochSealedShares:
    """Hash of the set of sealed Shamir shares of s_i the signer sent to the other members."""

    epoch: int
    shares_hash: bytes

    def __post_init__(self) -> None:
        _range(self.epoch, 1, 2**62, "epoch")
        _hash(self.shares_hash, "shares_hash")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EpochComplete:
    """The signer holds valid shares from every member and computed the collective
    public key with this hash. The epoch completes when every member said so, equally."""

    epoch: int
    collective_key_hash: bytes

    def __post_init__(self) -> None:
        _range(self.epoch, 1, 2**62, "epoch")
        _hash(self.collective_key_hash, "collective_key_hash")


# Segments x t scalars x 8 bytes for t <= 256 under the CKKS set with the most segments
# (32 KiB: 16 segments at N = 16384).
MAX_FINGERPRINT: Final = max(s.dealing.fingerprint_size(MAX_FOUNDING_MEMBERS) for s in PARAM_SETS.values())
MAX_SEGMENTS: Final = 64
_MAX_PRSS_BYTES: Final = MAX_PRSS_KEYS * PRSS_KEY_SIZE


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EpochFingerprint:
    """The signer's dealing fingerprint for `epoch` (`crypto.dealing.make_fingerprint`: t
    scalars per share segment), published once every member's bundle hash is on the ledger."""

    epoch: int
    fingerprint: bytes

    def __post_init__(self) -> None:
        _range(self.epoch, 1, 2**62, "epoch")
        if not 0 < len(self.fingerprint) <= MAX_FINGERPRINT or len(self.fingerprint) % SCALAR_BYTES:
            raise ValueError(f"fingerprint: 1-{MAX_FINGERPRINT} bytes of 8-byte scalars")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EpochComplaint:
    """The signer's share from `dealer` in `epoch` is malformed or off the dealer's
    fingerprint: `evidence` reveals the failing segment with the dealer's signature. The
    contract judges it (`crypto.dealing.judge_complaint`) and names the dealer, or the
    signer for a false complaint."""

    epoch: int
    dealer: NodeId
    evidence: DealingEvidence

    def __post_init__(self) -> None:
        _range(self.epoch, 1, 2**62, "epoch")
        e = self.evidence
        _range(e.segment, 0, MAX_SEGMENTS - 1, "evidence.segment")
        # Any length the dealer signed: a content of the wrong size is what proves it wrong.
        _range(e.share_length, 0, 2**62, "evidence.share_length")
        _range(e.blinding_length, 0, 2**62, "evidence.blinding_length")
        if not 0 < len(e.segment_hashes) <= MAX_SEGMENTS:
            raise ValueError(f"evidence.segment_hashes: 1-{MAX_SEGMENTS} hashes")
        for digest in e.segment_hashes:
            _hash(digest, "evidence.segment_hashes")
        _hash(e.prss_digest, "evidence.prss_digest")
        if len(e.shares) > SEGMENT_BYTES or len(e.blinding) > SCALAR_BYTES or len(e.signature) != 64:
            raise ValueError("evidence: at most one segment of shares and blinding, a 64-byte signature")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EpochPrssComplaint:
    """The PRSS keys `dealer` dealt the signer in `epoch` are missing, extra or off the
    dealer's committed commitments: `evidence` reveals them with the dealer's signature. The
    contract judges it (`crypto.prss_complaint.judge_prss_complaint`) and names the dealer,
    or the signer for a false complaint."""

    epoch: int
    dealer: NodeId
    evidence: PrssEvidence

    def __post_init__(self) -> None:
        _range(self.epoch, 1, 2**62, "epoch")
        e = self.evidence
        _range(e.share_length, 0, 2**62, "evidence.share_length")
        _range(e.blinding_length, 0, 2**62, "evidence.blinding_length")
        if not 0 < len(e.segment_hashes) <= MAX_SEGMENTS:
            raise ValueError(f"evidence.segment_hashes: 1-{MAX_SEGMENTS} hashes")
        for digest in (*e.segment_hashes, e.public_share_digest):
            _hash(digest, "evidence hashes")
        if len(e.signature) != 64:
            raise ValueError("evidence.signature: 64 bytes")
        for name, keys in (("prss_keys", e.prss_keys), ("prss_commitments", e.prss_commitments)):
            if len(keys) > _MAX_PRSS_BYTES or len(keys) % PRSS_KEY_SIZE:
                raise ValueError(f"evidence.{name}: at most {MAX_PRSS_KEYS} of {PRSS_KEY_SIZE} bytes")


class EpochStage(StrEnum):
    """Where the current key epoch is: which record every member still has to commit."""

    COMMIT = "commit"  # `EpochPublicShare`: the hash of each member's public share
    REVEAL = "reveal"  # `EpochSealedShares`: each member's bundle of public + sealed shares
    CHECK = "check"  # `EpochFingerprint`: each member's dealing fingerprint for the public coin
    CONFIRM = "confirm"  # `EpochComplete`: each member's hash of the collective public key


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EpochTimeout:
    """The signer's deadline for `stage` of key epoch `epoch` passed while it was waiting on
    other members (it had done its own part of that stage)."""

    epoch: int
    stage: str

    def __post_init__(self) -> None:
        _range(self.epoch, 1, 2**62, "epoch")
        if self.stage not in {s.value for s in EpochStage}:
            raise ValueError(f"stage: {self.stage!r} is not a key-epoch stage")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EpochRejoin:
    """The signer, a member left out of the complete key epoch `epoch` (it missed a deadline
    of an earlier one), is back: a new epoch starts over `epoch`'s members and the signer."""

    epoch: int

    def __post_init__(self) -> None:
        _range(self.epoch, 1, 2**62, "epoch")


# -- training rounds ------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    """The signer reached its sync point for `round`: `weight` = local samples x site
    weightage, `val_metric` = its validation metric (None if it has no validation data)."""

    round: int
    weight: int
    val_metric: float | None = None

    def __post_init__(self) -> None:
        _range(self.round, 1, MAX_ROUND, "round")
        _range(self.weight, 1, MAX_WEIGHT, "weight")
        if self.val_metric is not None:
            if type(self.val_metric) is int:  # one value, one encoding: metrics are floats
                object.__setattr__(self, "val_metric", float(self.val_metric))
            if type(self.val_metric) is not float or not math.isfinite(self.val_metric):
                raise ValueError("val_metric: must be a finite float or None")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Contribution:
    """Hash and size of the signer's encrypted update blob for `round`."""

    round: int
    blob_hash: bytes
    blob_size: int

    def __post_init__(self) -> None:
        _range(self.round, 1, MAX_ROUND, "round")
        _hash(self.blob_hash, "blob_hash")
        _range(self.blob_size, 1, MAX_BLOB_SIZE, "blob_size")


def _sorted_distinct(nodes: tuple[NodeId, ...], name: str) -> None:
    keys = [n.public_key for n in nodes]
    if keys != sorted(set(keys)):
        raise ValueError(f"{name}: must be sorted by public key and distinct")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Aggregate:
    """The leader's sum of the contributions of `contributors` (sorted by key)."""

    round: int
    step: int
    aggregate_hash: bytes
    contributors: tuple[NodeId, ...]

    def __post_init__(self) -> None:
        _range(self.round, 1, MAX_ROUND, "round")
        _range(self.step, 0, 2**62, "step")
        _hash(self.aggregate_hash, "aggregate_hash")
        _sorted_distinct(self.contributors, "contributors")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AggregateVerdict:
    """The verifier's recomputation of the aggregate claimed as `aggregate_hash`.

    Equal hashes: agreement. Different: proof the claim is wrong (anyone holding the
    blobs can recompute the deterministic sum); the claimant is marked faulty and the
    verifier's `recomputed_hash` becomes the claim checked by the next verifier.
    """

    round: int
    step: int
    aggregate_hash: bytes
    recomputed_hash: bytes

    def __post_init__(self) -> None:
        _range(self.round, 1, MAX_ROUND, "round")
        _range(self.step, 0, 2**62, "step")
        _hash(self.aggregate_hash, "aggregate_hash")
        _hash(self.recomputed_hash, "recomputed_hash")

    @property
    def agrees(self) -> bool:
        return self.aggregate_hash == self.recomputed_hash


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class DecryptionShare:
    """Hash of the signer's decryption share of the round's aggregate (decrypt set only)."""

    round: int
    step: int
    share_hash: bytes

    def __post_init__(self) -> None:
        _range(self.round, 1, MAX_ROUND, "round")
        _range(self.step, 0, 2**62, "step")
        _hash(self.share_hash, "share_hash")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MergedModel:
    """Hash of the merged parameters the signer decoded from the committed shares and, in a
    robust key epoch, the members whose shares were off the polynomial (sorted; see
    `consensus.decrypt_phase`)."""

    round: int
    step: int
    params_hash: bytes
    culprits: tuple[NodeId, ...] = ()

    def __post_init__(self) -> None:
        _range(self.round, 1, MAX_ROUND, "round")
        _range(self.step, 0, 2**62, "step")
        _hash(self.params_hash, "params_hash")
        if len(self.culprits) > MAX_FOUNDING_MEMBERS:
            raise ValueError(f"culprits: at most {MAX_FOUNDING_MEMBERS}")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ShareMismatch:
    """The committed point shares of a robust key epoch's round disagree and the signer cannot
    name the wrong ones (`crypto.robust_merge.WrongShareDetected`): t such votes abort the round."""

    round: int
    step: int

    def __post_init__(self) -> None:
        _range(self.round, 1, MAX_ROUND, "round")
        _range(self.step, 0, 2**62, "step")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseTimeout:
    """The signer's deadline for (`round`, `phase`, `step`) passed while it was waiting."""

    round: int
    phase: str
    step: int

    def __post_init__(self) -> None:
        _range(self.round, 1, MAX_ROUND, "round")
        _range(self.step, 0, 2**62, "step")
        if self.phase not in {p.value for p in Phase} or self.phase == Phase.STOPPED:
            raise ValueError(f"phase: {self.phase!r} is not a round phase with a deadline")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    """A member votes to end training now (during `round`); a majority of members stops it."""

    round: int
    reason: str = ""

    def __post_init__(self) -> None:
        _range(self.round, 1, MAX_ROUND, "round")
        _reason(self.reason)


# -- evidence ---------------------------------------------------------------------------

MAX_EVIDENCE_VOTE: Final = 1024


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class VoteEquivocation:
    """Proof that a validator signed two different ledger votes (prevote or precommit
    envelope wires, as `consensus.votes.Equivocation` reports them) for one height,
    round and step. Any member may submit it; the contract checks the signatures."""

    first: bytes
    second: bytes

    def __post_init__(self) -> None:
        for name in ("first", "second"):
            if not 0 < len(getattr(self, name)) <= MAX_EVIDENCE_VOTE:
                raise ValueError(f"{name}: must be 1-{MAX_EVIDENCE_VOTE} bytes of a vote envelope")
        if self.first == self.second:
            raise ValueError("second: must differ from first")


TxBody = (
    JoinRequest
    | Approve
    | Leave
    | Evict
    | EpochPublicShare
    | EpochSealedShares
    | EpochFingerprint
    | EpochComplaint
    | EpochPrssComplaint
    | EpochComplete
    | EpochTimeout
    | EpochRejoin
    | Ready
    | Contribution
    | Aggregate
    | AggregateVerdict
    | DecryptionShare
    | MergedModel
    | ShareMismatch
    | PhaseTimeout
    | Stop
    | VoteEquivocation
)

TX_BODIES: Final[tuple[type, ...]] = (
    JoinRequest,
    Approve,
    Leave,
    Evict,
    EpochPublicShare,
    EpochSealedShares,
    EpochFingerprint,
    EpochComplaint,
    EpochPrssComplaint,
    EpochComplete,
    EpochTimeout,
    EpochRejoin,
    Ready,
    Contribution,
    Aggregate,
    AggregateVerdict,
    DecryptionShare,
    MergedModel,
    ShareMismatch,
    PhaseTimeout,
    Stop,
    VoteEquivocation,
)

_SMALL: Final = 1024
TX_MESSAGES: Final = MessageTypes()
TX_MESSAGES.register("tx.join", JoinRequest, max_size=4096)
TX_MESSAGES.register("tx.approve", Approve, max_size=_SMALL)
TX_MESSAGES.register("tx.leave", Leave, max_size=_SMALL)
TX_MESSAGES.register("tx.evict", Evict, max_size=_SMALL)
TX_MESSAGES.register("tx.epoch.public-share", EpochPublicShare, max_size=_SMALL)
TX_MESSAGES.register("tx.epoch.sealed-shares", EpochSealedShares, max_size=_SMALL)
TX_MESSAGES.register("tx.epoch.fingerprint", EpochFingerprint, max_size=MAX_FINGERPRINT + 512)
TX_MESSAGES.register("tx.epoch.complaint", EpochComplaint, max_size=SEGMENT_BYTES + MAX_SEGMENTS * 34 + 1024)
TX_MESSAGES.register(
    "tx.epoch.prss-complaint", EpochPrssComplaint, max_size=2 * _MAX_PRSS_BYTES + MAX_SEGMENTS * 34 + 1024
)
TX_MESSAGES.register("tx.epoch.complete", EpochComplete, max_size=_SMALL)
TX_MESSAGES.register("tx.epoch.timeout", EpochTimeout, max_size=_SMALL)
TX_MESSAGES.register("tx.epoch.rejoin", EpochRejoin, max_size=_SMALL)
TX_MESSAGES.register("tx.round.ready", Ready, max_size=_SMALL)
TX_MESSAGES.register("tx.round.contribution", Contribution, max_size=_SMALL)
# 256 members x (32-byte key + 2 bytes of CBOR header) plus the rest.
TX_MESSAGES.register("tx.round.aggregate", Aggregate, max_size=16 * 1024)
TX_MESSAGES.register("tx.round.verdict", AggregateVerdict, max_size=_SMALL)
TX_MESSAGES.register("tx.round.decryption-share", DecryptionShare, max_size=_SMALL)
TX_MESSAGES.register("tx.round.merged", MergedModel, max_size=_SMALL + 40 * MAX_FOUNDING_MEMBERS)
TX_MESSAGES.register("tx.round.share-mismatch", ShareMismatch, max_size=_SMALL)
TX_MESSAGES.register("tx.round.timeout", PhaseTimeout, max_size=_SMALL)
TX_MESSAGES.register("tx.stop", Stop, max_size=_SMALL)
TX_MESSAGES.register("tx.evidence.equivocation", VoteEquivocation, max_size=2 * MAX_EVIDENCE_VOTE + 512)


def tx_codec(chain_id: bytes) -> EnvelopeCodec:
    """The codec that seals and opens this chain's transactions."""
    return EnvelopeCodec(chain_id, TX_MESSAGES)


def tx_id(envelope: Envelope) -> bytes:
    """A transaction's identity: SHA-256 over its type, signer and body (not the
    signature), so the id is the same however the signature bytes were produced."""
    content = cbor.dumps([envelope.type, envelope.sender.public_key, cbor.dumps_dataclass(envelope.body)])
    return hashlib.sha256(_TX_ID_DOMAIN + content).digest()


@final
class TxSigner:
    """Seals transaction bodies as one node for one chain: ``signer.sign(Ready(...))``."""

    __slots__ = ("_codec", "_identity")

    def __init__(self, chain_id: bytes, identity: NodeIdentity) -> None:
        self._codec = tx_codec(chain_id)
        self._identity = identity

    @property
    def node_id(self) -> NodeId:
        return self._identity.node_id

    def sign(self, body: TxBody) -> bytes:
        return self._codec.seal(self._identity, body)

    def tx_id(self, body: TxBody) -> bytes:
        """The id `sign(body)` will have (e.g. the request an `Approve` must name)."""
        return tx_id(self._codec.open(self.sign(body)))
