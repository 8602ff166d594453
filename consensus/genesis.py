"""The genesis document: who founds a swarm and the rules every member agrees to.

A genesis is a tree of frozen dataclasses. Its canonical CBOR bytes are what
the file holds and what is hashed: ``chain_id = sha256(genesis bytes)``, so
two swarms differing in any member, rule or parameter are different chains
and no signed message crosses from one to the other.

Every value is checked when the dataclass is built (by hand or when decoding
a file); a bad value raises `ValueError` whose message starts with the dotted
path of the field (``training.min_peers: ...``), and `Genesis.load` turns any
problem into a `GenesisError` that also names the file.

The file format is the canonical CBOR itself (not TOML): the bytes on disk are
exactly the bytes hashed into the chain id, with no second encoding that could
drift. Tools render it for humans (`Genesis.describe`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, final

from crypto import cbor
from crypto.errors import ProtocolError
from crypto.identity import NodeId
from crypto.quorum import min_contributions
from models.optimizers import optimizer_named
from models.rules import UnknownRuleError, rule_named
from models.schema import DataSchema
from models.structure import ModelTensor, check_structure_value

from .privacy_budget import gaussian_epsilon

GENESIS_VERSION: Final = 1
HASH_SIZE: Final = 32
MAX_NAME: Final = 64
MAX_ADDRESSES: Final = 8
MAX_ADDRESS: Final = 256
MAX_NONCE: Final = 32
MAX_FOUNDING_MEMBERS: Final = 256

SYNC_UNITS: Final = ("epochs", "steps")
METRIC_GOALS: Final = ("max", "min")
JOIN_MODES: Final = ("members", "admin")
SELECTIONS: Final = ("last", "best")
CLASS_WEIGHTS: Final = ("none", "balanced")
DEFAULT_CKKS_PARAMS: Final = "ckks-n8192-q60x3-coeff-s90"  # `crypto.ckks_params.DEFAULT_SET`


class GenesisError(ValueError):
    """A genesis document or file is invalid; the message names the file and/or field."""


def _require(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{path}: {message}")


def _check_ckks_params(name: str) -> None:
    # Imported here: crypto.ckks_params loads numpy, which `swarmnode --help` must not.
    from crypto.ckks_params import PARAM_SETS

    _require(
        isinstance(name, str) and name in PARAM_SETS,
        "training.ckks_params",
        f"unknown CKKS parameter set {name!r}; known sets: {', '.join(PARAM_SETS)}",
    )


def check_name(name: str, path: str) -> None:
    _require(isinstance(name, str) and 1 <= len(name) <= MAX_NAME, path, f"must be 1-{MAX_NAME} characters")
    _require(name.isprintable() and name.strip() == name, path, "must be printable, no outer spaces")


def check_addresses(addresses: tuple[str, ...], path: str) -> None:
    """Multiaddr strings: a light syntactic check (``/ip4/127.0.0.1/tcp/4001``)."""
    _require(len(addresses) <= MAX_ADDRESSES, path, f"at most {MAX_ADDRESSES} addresses")
    for i, address in enumerate(addresses):
        where = f"{path}[{i}]"
        _require(1 < len(address) <= MAX_ADDRESS, where, f"must be 2-{MAX_ADDRESS} characters")
        _require(
            address.startswith("/") and address.isascii(), where, "must be a multiaddr like /ip4/…/tcp/…"
        )
        _require(" " not in address and "//" not in address, where, "is not a well-formed multiaddr")
    _require(len(set(addresses)) == len(addresses), path, "addresses must be distinct")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class FoundingMember:
    """A member from the start: display name, public key and where to reach it."""

    name: str
    node_id: NodeId
    addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.name, "members.name")
        check_addresses(self.addresses, f"members[{self.name}].addresses")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class JoinPolicy:
    """How a new site is admitted.

    ``mode="members"``: `approvals` distinct current members must approve (capped at
    the member count, so a shrunken swarm can still admit). ``mode="admin"``: the
    `admin` key's approval alone admits (the admin need not be a member).
    """

    mode: str = "members"
    approvals: int = 1
    admin: NodeId | None = None

    def __post_init__(self) -> None:
        _require(self.mode in JOIN_MODES, "join_policy.mode", f"must be one of {JOIN_MODES}")
        if self.mode == "members":
            _require(self.approvals >= 1, "join_policy.approvals", "must be at least 1")
            _require(self.admin is None, "join_policy.admin", "only allowed with mode 'admin'")
        else:
            _require(self.admin is not None, "join_policy.admin", "mode 'admin' needs an admin key")
            _require(self.approvals == 1, "join_policy.approvals", "must be 1 with mode 'admin'")

    def required_approvals(self, member_count: int) -> int:
        return 1 if self.mode == "admin" else max(1, min(self.approvals, member_count))


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class DecryptionThreshold:
    """t = min(n, floor(n * numerator / denominator) + 1) for a key epoch of n members.

    The default 1/2 gives t = floor(n/2) + 1: an honest majority decrypts, and any
    minority learns nothing.
    """

    numerator: int = 1
    denominator: int = 2

    def __post_init__(self) -> None:
        path = "training.threshold"
        _require(1 <= self.denominator <= 1000, f"{path}.denominator", "must be 1-1000")
        _require(1 <= self.numerator < self.denominator, f"{path}.numerator", "must be in [1, denominator)")

    def threshold(self, members: int) -> int:
        if members < 1:
            raise ValueError("a key epoch has at least one member")
        return min(members, members * self.numerator // self.denominator + 1)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Phase deadlines in seconds, measured by each node from the block that opened the phase.

    The contract never reads a clock: a node whose deadline passed submits a
    `PhaseTimeout` transaction and the ledger decides once a majority did.
    """

    ready_wait: float = 600.0
    contribute: float = 120.0
    aggregate: float = 120.0
    verify: float = 120.0
    decrypt: float = 120.0
    key_epoch: float = 300.0

    def __post_init__(self) -> None:
        for name in ("ready_wait", "contribute", "aggregate", "verify", "decrypt", "key_epoch"):
            value = getattr(self, name)
            _require(
                isinstance(value, int | float) and 0 < value <= 86_400.0,
                f"training.timeouts.{name}",
                "must be in (0, 86400] seconds",
            )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class StoppingRule:
    """Stop after `max_rounds` merged training rounds, or earlier when the swarm's validation
    metric has not improved by more than `min_delta` for `patience` merged rounds
    (``patience = 0`` disables early stopping). `goal` says whether larger (``"max"``,
    e.g. ROC AUC) or smaller (``"min"``, e.g. loss) is better.

    `statistics_rounds`: the merged rounds before training that carry the swarm's
    statistics (pooled standardisation moments and class frequencies,
    `models.preprocess.statistics_rounds`, fixed when the genesis is written); they come on
    top of `max_rounds`, so the ledger stops after ``statistics_rounds + max_rounds`` merged
    rounds.

    `select` says which model training ends with and which metric the rule watches:
    ``"last"``: the last merged model; the metric is the median of the metrics the
    participants report for their locally trained models. ``"best"``: the merged model
    with the best pooled validation metric (`consensus.selection`): each site reports
    the metric of the merged model it starts a round from, clamped to
    [`metric_low`, `metric_high`] and weighted by its Ready weight (rows x weightage).
    """

    max_rounds: int = 10
    patience: int = 0
    min_delta: float = 0.0
    goal: str = "max"
    statistics_rounds: int = 0
    select: str = "last"
    metric_low: float = 0.0
    metric_high: float = 1.0

    def __post_init__(self) -> None:
        path = "training.stopping"
        _require(1 <= self.max_rounds <= 1_000_000, f"{path}.max_rounds", "must be 1-1000000")
        _require(0 <= self.patience <= self.max_rounds, f"{path}.patience", "must be 0-max_rounds")
        _require(0.0 <= self.min_delta < 1e12, f"{path}.min_delta", "must be >= 0 and finite")
        _require(self.goal in METRIC_GOALS, f"{path}.goal", f"must be one of {METRIC_GOALS}")
        _require(0 <= self.statistics_rounds <= 1_000_000, f"{path}.statistics_rounds", "must be 0-1000000")
        _require(self.select in SELECTIONS, f"{path}.select", f"must be one of {SELECTIONS}")
        _require(
            -1e12 < self.metric_low < self.metric_high < 1e12,
            f"{path}.metric_low",
            "must be finite and below metric_high",
        )

    @property
    def merged_rounds(self) -> int:
        """Merged rounds on the ledger before it stops: statistics, then training."""
        return self.statistics_rounds + self.max_rounds


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyParams:
    """Distributed differential privacy of the merged models (``training.privacy``).

    Each site clips its update (its model minus the global model it trained from) to L2
    norm `clip_norm` = C and adds Gaussian noise before encrypting it, sized so that the
    decrypted sum carries noise of standard deviation `noise_multiplier` x C from the honest
    sites alone, even if t - 1 colluding members removed their own (`models.privacy`).
    Each merged round is then the Gaussian mechanism with that multiplier for any one
    site's data; `consensus.privacy_budget` counts the (ε, `delta`) they spend together,
    and the swarm stops before ε would pass `epsilon_budget` (None: no budget, only report).
    """

    clip_norm: float
    noise_multiplier: float
    delta: float = 1e-5
    epsilon_budget: float | None = None

    def __post_init__(self) -> None:
        path = "training.privacy"
        _require(0.0 < self.clip_norm <= 1e6, f"{path}.clip_norm", "must be in (0, 1e6] (an L2 norm)")
        _require(0.1 <= self.noise_multiplier <= 1000.0, f"{path}.noise_multiplier", "must be in [0.1, 1000]")
        _require(0.0 < self.delta < 0.1, f"{path}.delta", "must be in (0, 0.1), well below 1 / sites")
        if self.epsilon_budget is not None:
            _require(0.0 < self.epsilon_budget <= 1000.0, f"{path}.epsilon_budget", "must be in (0, 1000]")
            first = gaussian_epsilon(self.noise_multiplier, 1, self.delta)
            _require(
                first <= self.epsilon_budget,
                f"{path}.epsilon_budget",
                f"one merged round already spends epsilon {first:.3g} > {self.epsilon_budget:g} "
                f"at noise_multiplier {self.noise_multiplier:g}: raise the multiplier or the budget",
            )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MergeParam:
    """One parameter of the merge rule (``training.merge_params``), e.g. FedProx's ``mu``."""

    name: str
    value: float


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingParams:
    """The training protocol every member agrees to by joining."""

    model_spec_hash: bytes
    # The model's structure (`models.structure`): every state-dict entry's name, shape and
    # dtype, so a different network with the same parameter count is refused by name. ()
    # only in hand-built test genesis documents; then a site checks the parameter count.
    model_structure: tuple[ModelTensor, ...] = ()
    merge_method: str = "mean"  # a rule of `models.rules.RULES`
    merge_params: tuple[MergeParam, ...] = ()  # the rule's parameters; absent ones take its defaults
    # What the members train from after a merge: an optimizer of `models.optimizers.OPTIMIZERS`
    # applied to the ledger's merged means ("none": the mean itself) and its parameters.
    server_optimizer: str = "none"
    server_params: tuple[MergeParam, ...] = ()
    secure: bool = True
    min_peers: int = 2
    sync_every: int = 1
    sync_unit: str = "epochs"
    threshold: DecryptionThreshold = field(default_factory=DecryptionThreshold)
    timeouts: Timeouts = field(default_factory=Timeouts)
    stopping: StoppingRule = field(default_factory=StoppingRule)
    ckks_params: str = DEFAULT_CKKS_PARAMS
    # Wrong point shares a robust merge must withstand (`crypto.robust_merge.combine_points`);
    # None: `crypto.pointshare.default_max_faulty` of the key epoch's n and t.
    robust_max_faulty: int | None = None
    # A member that withheld its decryption share in this many rounds of one key epoch is
    # left out of the decrypt sets of that epoch's later rounds (it still contributes).
    withhold_limit: int = 2
    # "balanced": every site weights its loss by 1 / (K f_c), f = the class frequencies of
    # all sites' rows, pooled through the secure merge before training (`swarmnode.trainer`).
    class_weights: str = "none"
    # Distributed differential privacy (None: off).
    privacy: PrivacyParams | None = None

    def __post_init__(self) -> None:
        _require(
            self.robust_max_faulty is None or 1 <= self.robust_max_faulty <= MAX_FOUNDING_MEMBERS,
            "training.robust_max_faulty",
            f"must be 1-{MAX_FOUNDING_MEMBERS} (or absent for the default)",
        )
        _require(
            isinstance(self.model_spec_hash, bytes) and len(self.model_spec_hash) == HASH_SIZE,
            "training.model_spec_hash",
            f"must be a {HASH_SIZE}-byte SHA-256",
        )
        check_structure_value(self.model_structure, "training.model_structure")
        self._check_merge_rule()
        self._check_server_optimizer()
        # One contribution would be decrypted alone: never allowed, so at least two.
        _require(2 <= self.min_peers <= MAX_FOUNDING_MEMBERS, "training.min_peers", "must be 2-256")
        _require(1 <= self.sync_every <= 1_000_000, "training.sync_every", "must be 1-1000000")
        _require(self.sync_unit in SYNC_UNITS, "training.sync_unit", f"must be one of {SYNC_UNITS}")
        _check_ckks_params(self.ckks_params)
        _require(1 <= self.withhold_limit <= 1000, "training.withhold_limit", "must be 1-1000 rounds")
        _require(
            self.class_weights in CLASS_WEIGHTS, "training.class_weights", f"must be one of {CLASS_WEIGHTS}"
        )
        _require(
            self.privacy is None or self.secure,
            "training.privacy",
            "distributed differential privacy needs secure = true: a plaintext update carries only "
            "its own site's share of the noise",
        )

    def _check_merge_rule(self) -> None:
        try:
            rule = rule_named(self.merge_method)
        except UnknownRuleError as exc:
            raise ValueError(f"training.merge_method: {exc}") from None
        _require(
            not self.secure or rule.secure,
            "training.merge_method",
            f"{self.merge_method!r} needs plaintext updates: only allowed with secure = false",
        )
        names = [p.name for p in self.merge_params]
        _require(len(set(names)) == len(names), "training.merge_params", "a parameter is given twice")
        try:
            rule.settings({p.name: p.value for p in self.merge_params})
        except UnknownRuleError as exc:
            raise ValueError(f"training.merge_params: {exc}") from None
        except ValueError as exc:  # "mu: must be in ..."
            raise ValueError(f"training.merge_params.{exc}") from None

    def _check_server_optimizer(self) -> None:
        try:
            optimizer = optimizer_named(self.server_optimizer)
        except UnknownRuleError as exc:
            raise ValueError(f"training.server_optimizer: {exc}") from None
        names = [p.name for p in self.server_params]
        _require(len(set(names)) == len(names), "training.server_params", "a parameter is given twice")
        try:
            optimizer.settings({p.name: p.value for p in self.server_params})
        except UnknownRuleError as exc:
            raise ValueError(f"training.server_params: {exc}") from None
        except ValueError as exc:  # "beta_1: must be in ..."
            raise ValueError(f"training.server_params.{exc}") from None

    def server_settings(self) -> dict[str, float]:
        """Every parameter of the server optimizer: the genesis values, else its defaults."""
        return optimizer_named(self.server_optimizer).settings({p.name: p.value for p in self.server_params})

    def merge_settings(self) -> dict[str, float]:
        """Every parameter of the merge rule: the genesis values, else the rule's defaults."""
        return rule_named(self.merge_method).settings({p.name: p.value for p in self.merge_params})

    def min_contributions(self, threshold: int) -> int:
        """The fewest contributions a round of a key epoch with threshold t starts with and
        keeps: `crypto.secure_merge.min_contributions` (``max(min_peers, t + 1)``) for a
        secure swarm, so t - 1 colluders always face two honest updates in the sum. A
        plaintext swarm hides nothing; it needs ``max(min_peers, t)`` (t matching merged-model
        hashes close a round)."""
        return min_contributions(self.min_peers, threshold) if self.secure else max(self.min_peers, threshold)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Genesis:
    """The founding document of one swarm; ``chain_id`` is the SHA-256 of its bytes."""

    name: str
    members: tuple[FoundingMember, ...]
    training: TrainingParams
    join_policy: JoinPolicy = field(default_factory=JoinPolicy)
    nonce: bytes = b""  # tells apart two swarms with the same members and rules
    version: int = GENESIS_VERSION
    # The agreed table: feature and class names, categories (`models.tables`); None: sites'
    # columns are not compared by name (bundled demo data, in-memory embeddings).
    data: DataSchema | None = None

    def __post_init__(self) -> None:
        _require(self.version == GENESIS_VERSION, "version", f"this node reads version {GENESIS_VERSION}")
        check_name(self.name, "name")
        _require(len(self.nonce) <= MAX_NONCE, "nonce", f"at most {MAX_NONCE} bytes")
        _require(
            1 <= len(self.members) <= MAX_FOUNDING_MEMBERS, "members", "must list 1-256 founding members"
        )
        keys = [m.node_id for m in self.members]
        _require(len(set(keys)) == len(keys), "members", "a public key is listed twice")
        names = [m.name for m in self.members]
        _require(len(set(names)) == len(names), "members", "a member name is listed twice")
        if self.join_policy.mode == "members":
            _require(
                self.join_policy.approvals <= len(self.members),
                "join_policy.approvals",
                f"cannot exceed the {len(self.members)} founding members",
            )
        if self.training.secure:
            t = self.training.threshold.threshold(len(self.members))
            _require(
                len(self.members) >= t + 1,
                "members",
                f"a secure swarm needs at least t+1 = {t + 1} founding members "
                f"(training.threshold {self.training.threshold.numerator}/"
                f"{self.training.threshold.denominator} gives t = {t} of {len(self.members)}): "
                "a round needs t+1 contributions, so that t-1 colluders face two honest updates; "
                "add founders or set training.secure = false",
            )

    # -- bytes, hash and files --------------------------------------------------

    def to_bytes(self) -> bytes:
        return cbor.dumps_dataclass(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Genesis:
        """Decode and validate; raises `GenesisError` naming the offending field."""
        try:
            return cbor.loads_dataclass(cls, data)
        except ProtocolError as exc:
            raise GenesisError(f"invalid genesis: {exc}") from None

    @property
    def chain_id(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the canonical bytes; refuses to overwrite (a chain's genesis never changes)."""
        target = Path(path)
        try:
            with target.open("xb") as f:
                f.write(self.to_bytes())
                f.flush()
                os.fsync(f.fileno())
        except FileExistsError:
            raise GenesisError(f"{target}: refusing to overwrite an existing genesis file") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Genesis:
        source = Path(path)
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise GenesisError(f"{source}: cannot read genesis file ({exc.strerror})") from None
        try:
            return cls.from_bytes(data)
        except GenesisError as exc:
            raise GenesisError(f"{source}: {exc}") from None

    # -- derived rules ----------------------------------------------------------

    @property
    def founders(self) -> tuple[NodeId, ...]:
        return tuple(m.node_id for m in self.members)

    def describe(self) -> str:
        """A human-readable summary (for `swarmnode genesis show` and logs)."""
        t = self.training
        policy = (
            f"admin {self.join_policy.admin}"
            if self.join_policy.mode == "admin"
            else f"{self.join_policy.approvals} member approval(s)"
        )
        lines = [
            f"swarm {self.name!r}  chain id {self.chain_id.hex()}",
            f"join policy: {policy}",
            f"training: merge {t.merge_method}{_settings_text(t.merge_params)} "
            f"server optimizer {t.server_optimizer}{_settings_text(t.server_params)} "
            f"({'secure' if t.secure else 'PLAINTEXT updates'}), "
            f"min_peers {t.min_peers}, sync every {t.sync_every} {t.sync_unit}, "
            f"threshold {t.threshold.numerator}/{t.threshold.denominator}, ckks {t.ckks_params}, "
            f"withhold limit {t.withhold_limit}, class weights {t.class_weights}",
            f"stopping: max {t.stopping.max_rounds} training rounds after {t.stopping.statistics_rounds} "
            f"statistics rounds, patience {t.stopping.patience} "
            f"(min_delta {t.stopping.min_delta}, goal {t.stopping.goal}), keeps the {t.stopping.select} "
            f"model (metric clamped to [{t.stopping.metric_low:g}, {t.stopping.metric_high:g}])",
            f"model spec {t.model_spec_hash.hex()}, structure of {len(t.model_structure)} tensors",
            *_privacy_lines(t.privacy),
            "members:",
        ]
        lines += [f"  {m.name}  {m.node_id.peer_id}  {' '.join(m.addresses)}" for m in self.members]
        if self.data is not None:
            lines += _data_lines(self.data)
        return "\n".join(lines)


def _privacy_lines(privacy: PrivacyParams | None) -> list[str]:
    if privacy is None:
        return []
    budget = "none" if privacy.epsilon_budget is None else f"{privacy.epsilon_budget:g}"
    return [
        f"differential privacy: clip_norm {privacy.clip_norm:g}, noise_multiplier "
        f"{privacy.noise_multiplier:g}, delta {privacy.delta:g}, epsilon budget {budget}"
    ]


def _settings_text(params: tuple[MergeParam, ...]) -> str:
    return "".join(f" {p.name}={p.value:g}" for p in params)


def _data_lines(data: DataSchema) -> list[str]:
    shown = ", ".join(data.feature_names[:10]) + (" ..." if len(data.feature_names) > 10 else "")
    lines = [
        f"data: {len(data.feature_names)} feature columns ({shown}), {data.n_features} model inputs",
        f"classes: {', '.join(data.class_names)}",
    ]
    lines += [f"categorical {c.name}: {', '.join(c.categories)}" for c in data.categorical]
    return lines
