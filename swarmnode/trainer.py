"""The PyTorch helper: local training with a swarm merge every k epochs.

In the spirit of other frameworks' training callbacks: you bring the local
training (a `models.LocalTrainer`, or your own torch module, DataLoader and
optimiser), the swarm's genesis brings the rules, and `SwarmTrainer` runs the
loop every site runs::

    train k epochs -> report (params, num_samples, val metric) -> block until merged
    -> load the merged params -> evaluate -> ... until the swarm stops

- k (``sync_every``) and the unit (epochs or optimiser steps) come from
  ``genesis.training``: a site config's ``training.epochs`` that says otherwise is
  refused (`check_local_epochs`; a `models.LocalTrainer`'s own ``TrainConfig.epochs``
  is its ``fit`` budget, and the ``sync_every=`` option is an experiment's override);
  weightage comes from the node's config (the node multiplies ``num_samples`` by it).
- The validation metric reported with Ready is computed on the local
  validation data; which one (``roc_auc``, ``loss``, ...) defaults from the
  stopping rule's goal (``max`` -> ROC AUC, ``min`` -> loss). It is the locally
  trained model's, or, under genesis ``stopping.select = "best"``, that of the merged
  model the round starts from (None before the first one): the ledger pools these into
  the swarm's metric per merged model and ends with the best (`consensus.selection`),
  which `finish` loads (`TrainingSummary.selected_round`).
- Genesis ``class_weights = "balanced"``: the site's class counts ride in the
  statistics rounds below (`models.preprocess.PooledMoments`), and every site weights
  its loss by the pooled frequencies (`models.training.balanced_class_weights`).
- ``sync_unit = "steps"``: a `models.LocalTrainer` takes exactly ``sync_every``
  optimiser steps per round (`models.LocalTrainer.train_steps`).
- The merge method is the genesis's; asking for another one, or for a robust
  plaintext merge in a ``secure = true`` swarm, is a `SwarmSetupError` saying why.
- Hooks: subclass `SwarmCallback` (``on_round_start``, ``on_trained``, ``on_merged``,
  ``on_stop``).
- Swarm-agreed standardisation (``[data.preprocess] standardize = "swarm"``, the
  default for a `models.LocalTrainer`): before any training, the first
  ``k = statistics_rounds(n_features, n_params)`` merged rounds of the ledger
  carry each site's per-feature mean and mean square (after genes / log1p) through
  the normal secure weighted mean (weight = the site's rows x weightage), packed
  into model-sized vectors (`models.preprocess.PooledMoments`: first a per-feature
  power-of-two scale, then the scaled moments); every site then standardises
  with the pooled mean and std. Nobody sees another site's statistics, only
  the pooled ones. These rounds report no validation metric
  (so patience ignores them) and do not count towards genesis ``max_rounds``: the
  genesis records k (``training.stopping.statistics_rounds``, from
  `statistics_rounds_for` when it is written) and a swarm with ``max_rounds = R``
  trains R merged rounds after them; a site whose k differs is refused. Their
  `RoundRecord` has ``kind = "statistics"``.
  `SwarmTrainer.from_torch` leaves normalisation to the user (use
  `models.preprocess.FeatureMoments` / `PooledMoments` with `SwarmNode.merge` to do
  the same by hand).

`SwarmTrainer` itself does no I/O: `next_sync()` trains and returns what to
offer, `merged(result)` takes the round's merge, `finish(...)` ends. Two small
drivers use it: `run(SwarmNode)` (blocking) and `arun(Node)` (trio); `arun` reads the
ledger through `swarmnode.ledgerview.LiveLedger`. `swarmnode.siterun.run_site(config)` is
the whole ``swarmnode run`` for one site (async).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final, TypeVar, final

import numpy as np
import torch
import trio
from torch import nn

from consensus.genesis import Genesis
from models.data import Dataset
from models.flatten import FloatVector, spec_layout
from models.preprocess import FeatureMoments, PooledMoments, PreprocessConfig, Preprocessor, statistics_rounds
from models.rules import SECURE_RULE_NAMES, rule_named
from models.spec import ModelSpec
from models.structure import StructureMismatch
from models.training import (
    LocalObjective,
    LocalTrainer,
    LossFn,
    Metrics,
    MetricsFn,
    classification_loss,
    init_parameters,
)

from .config import NodeConfig
from .learners import LocalLearner, SpecLearner, SwarmSetupError, TorchLearner
from .ledgerview import live_ledger
from .model_identity import check_module
from .node import MergeResult, Node, SwarmStopped
from .siteinput import load_site_data, site_augmenter

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from .api import SwarmNode

__all__ = [
    "LocalLearner",
    "RoundRecord",
    "SwarmCallback",
    "SwarmSetupError",
    "SwarmTrainer",
    "SyncPoint",
    "TrainingSummary",
    "build_local_trainer",
    "check_local_epochs",
    "check_merge_method",
    "check_model",
    "default_metric",
    "initial_parameters",
    "statistics_rounds_for",
    "swarm_statistics_rounds",
    "train_with_swarm",
    "training_rounds",
]

T = TypeVar("T")
METRICS: Final = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "loss")
LARGER_IS_BETTER: Final = frozenset({"accuracy", "balanced_accuracy", "f1", "roc_auc"})
TRAINING: Final = "training"
STATISTICS: Final = "statistics"  # a merge of the swarm's standardisation statistics


# -- values ----------------------------------------------------------------------------------


@final
@dataclass(frozen=True, eq=False, kw_only=True)
class SyncPoint:
    """What this site offers at a sync point.

    kind: ``"training"`` (model parameters) or ``"statistics"`` (the `index`-th vector of
    this site's packed feature moments; merged as the ledger's merged round index + 1).
    """

    parameters: FloatVector
    num_samples: int
    val_metric: float | None
    kind: str = TRAINING
    index: int = 0


@final
@dataclass(frozen=True, kw_only=True)
class RoundRecord:
    """One merged round as this site saw it.

    local:  validation metrics of the locally trained model (what was reported).
    merged: validation metrics of the merged model on the same local data.
    kind:   ``"training"``, or ``"statistics"`` for a standardisation-statistics merge
            (no training, no metrics; see the module docstring).
    """

    round: int
    local_epochs: int  # local epochs (or steps) trained so far
    num_samples: int
    train_loss: float
    val_metric: float | None
    local: Metrics | None
    merged: Metrics | None
    participants: int
    weight: int
    params_hash: str
    kind: str = TRAINING

    def to_dict(self) -> dict[str, object]:
        return {
            "round": self.round,
            "kind": self.kind,
            "local_epochs": self.local_epochs,
            "num_samples": self.num_samples,
            "train_loss": _json_float(self.train_loss),
            "val_metric": self.val_metric,
            "local": None if self.local is None else self.local.to_dict(),
            "merged": None if self.merged is None else self.merged.to_dict(),
            "participants": self.participants,
            "weight": self.weight,
            "params_hash": self.params_hash,
        }


@final
@dataclass(frozen=True, eq=False, kw_only=True)
class TrainingSummary:
    """How training ended. `parameters` is the final model: the swarm's final model if it
    stopped with one (the ledger's stop record: the best merged model by the pooled
    validation metric under genesis ``stopping.select = "best"``, else the last merged one;
    `selected_round` is the ledger round that merged it), else this site's last merged or
    local parameters.

    model:        the trained torch module holding `parameters` (the learner's own: a
                  `models.LocalTrainer`'s network or the module given to `from_torch`).
    preprocessor: what that model's inputs need first (a `models.LocalTrainer`'s, with the
                  swarm's pooled statistics under swarm standardisation); None for a
                  `from_torch` model, whose data the caller prepares.
    `swarmnode.export.write_export` writes both (and the spec) to a directory."""

    parameters: FloatVector
    rounds: tuple[RoundRecord, ...]
    stop_reason: str
    final_hash: bytes | None
    metric: str
    test: Metrics | None
    model: nn.Module | None = None
    preprocessor: Preprocessor | None = None
    selected_round: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "stop_reason": self.stop_reason,
            "final_hash": None if self.final_hash is None else self.final_hash.hex(),
            "selected_round": self.selected_round,
            "rounds": [r.to_dict() for r in self.rounds],
            "test": None if self.test is None else self.test.to_dict(),
        }


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


class SwarmCallback:
    """Per-round hooks; override what you need (all do nothing by default)."""

    def on_round_start(self, round_index: int, trainer: SwarmTrainer) -> None:
        """Before local training towards the `round_index`-th sync point (1-based)."""

    def on_trained(self, round_index: int, train_loss: float) -> None:
        """Right after that local training, before validation and the merge."""

    def on_merged(self, result: MergeResult, record: RoundRecord) -> None:
        """After the merged parameters were loaded and evaluated."""

    def on_stop(self, summary: TrainingSummary) -> None:
        """Once, when the swarm stopped training."""


# -- the trainer -------------------------------------------------------------------------------


def check_merge_method(genesis: Genesis, requested: str | None) -> str:
    """The swarm's merge method; a `SwarmSetupError` if `requested` is not what genesis fixed."""
    rules = genesis.training
    if requested is None or requested == rules.merge_method:
        return rules.merge_method
    if rules.secure and requested not in SECURE_RULE_NAMES:
        raise SwarmSetupError(
            f"merge method {requested!r} needs plaintext updates, but swarm {genesis.name!r} has "
            f"secure = true in its genesis: only {', '.join(SECURE_RULE_NAMES)} can be computed on "
            "encrypted updates. Robust merges need a swarm founded with secure = false."
        )
    raise SwarmSetupError(
        f"merge method {requested!r} differs from swarm {genesis.name!r}'s genesis "
        f"({rules.merge_method!r}); every member merges by the genesis rule"
    )


def rule_objective(genesis: Genesis) -> LocalObjective | None:
    """The genesis merge rule's term for local training's loss, with the genesis settings
    (None for a rule without one)."""
    objective = rule_named(genesis.training.merge_method).load_math().local_objective
    if objective is None:
        return None
    settings = genesis.training.merge_settings()
    return lambda model: objective(model, settings)


def check_local_epochs(genesis: Genesis, epochs: int | None, where: str) -> None:
    """Refuse local epochs per round (`epochs`, a site's ``training.epochs``; None: unset) that
    contradict the genesis: every site trains ``training.sync_every`` epochs (or steps) per
    round, so a site training more would pull every merge towards its own data."""
    rules = genesis.training
    if epochs is None or (rules.sync_unit == "epochs" and epochs == rules.sync_every):
        return
    if rules.sync_unit != "epochs":
        raise SwarmSetupError(
            f"{where}: training.epochs = {epochs}, but swarm {genesis.name!r} trains {rules.sync_every} "
            f"optimiser steps per round (genesis training.sync_unit = {rules.sync_unit!r}): remove "
            "training.epochs"
        )
    raise SwarmSetupError(
        f"{where}: training.epochs = {epochs} local epochs per round, but swarm {genesis.name!r}'s genesis "
        f"trains {rules.sync_every} (training.sync_every): set training.epochs = {rules.sync_every} or "
        "remove it"
    )


def default_metric(genesis: Genesis) -> str:
    return "roc_auc" if genesis.training.stopping.goal == "max" else "loss"


def statistics_rounds_for(spec: ModelSpec, preprocess: PreprocessConfig, class_weights: str = "none") -> int:
    """The statistics rounds a genesis records for sites that train `spec` with `preprocess`
    (``training.stopping.statistics_rounds``): swarm standardisation's pooled feature moments
    and, with ``class_weights = "balanced"``, the pooled class frequencies (0 if neither)."""
    return _statistics_rounds(
        class_weights,
        spec.n_features,
        spec_layout(spec).size,
        spec.n_classes,
        swarm_standardize=preprocess.mode == "swarm",
    )


def swarm_statistics_rounds(
    genesis: Genesis, n_features: int, n_params: int, n_classes: int, *, swarm_standardize: bool
) -> int:
    """Merged rounds a site of `genesis` spends on the swarm's statistics before training
    (`statistics_rounds_for` with the genesis's class weights; 0 if none)."""
    return _statistics_rounds(
        genesis.training.class_weights, n_features, n_params, n_classes, swarm_standardize=swarm_standardize
    )


def _statistics_rounds(
    class_weights: str, n_features: int, n_params: int, n_classes: int, *, swarm_standardize: bool
) -> int:
    features = n_features if swarm_standardize else 0
    classes = n_classes if class_weights == "balanced" else 0
    return statistics_rounds(features, n_params, classes) if features or classes else 0


def training_rounds(genesis: Genesis) -> int:
    """Merged training rounds a swarm runs: genesis ``max_rounds`` (the statistics rounds
    before them are ``training.stopping.statistics_rounds``)."""
    return genesis.training.stopping.max_rounds


def check_statistics_rounds(genesis: Genesis, own: int) -> None:
    """Refuse a site whose statistics rounds (`own`: swarm standardisation's and pooled class
    frequencies', or 0) are not the ones genesis records: it would offer a model where the
    others offer statistics."""
    recorded = genesis.training.stopping.statistics_rounds
    if own == recorded:
        return
    fix = (
        'set [data.preprocess] standardize = "swarm": the swarm standardises with pooled statistics'
        if recorded
        else 'set [data.preprocess] standardize = "local" or "none": this swarm has no statistics rounds'
    )
    raise SwarmSetupError(
        f"swarm {genesis.name!r} records {recorded} statistics round(s) before training (genesis "
        f"training.stopping.statistics_rounds), but this site's preprocessing takes {own}: {fix}"
    )


@final
class SwarmTrainer:
    """Local training between swarm merges (see the module docstring)."""

    def __init__(
        self,
        learner: LocalLearner,
        genesis: Genesis,
        *,
        metric: str | None = None,
        merge_method: str | None = None,
        sync_every: int | None = None,
        callbacks: Sequence[SwarmCallback] = (),
    ) -> None:
        model = getattr(learner, "model", None)
        if model is not None:
            try:
                check_module(genesis, model, "this site's model")
            except StructureMismatch as exc:
                raise SwarmSetupError(str(exc)) from None
        self.learner: Final = learner
        self.genesis: Final = genesis
        self.merge_method: Final = check_merge_method(genesis, merge_method)
        self.local_objective: Final = rule_objective(genesis)
        self.metric: Final = metric if metric is not None else default_metric(genesis)
        goal = genesis.training.stopping.goal
        if self.metric not in METRICS:
            # A user's metric (the learner's metrics function names it; `_metric_of` checks):
            # which way is better is the genesis's goal, nothing here knows better.
            if getattr(learner, "metrics_fn", None) is None:
                raise SwarmSetupError(
                    f"metric must be one of {', '.join(METRICS)} or one your metrics function returns "
                    f"(training.metrics, metrics_fn=), got {self.metric!r}"
                )
        elif (self.metric in LARGER_IS_BETTER) != (goal == "max"):
            raise SwarmSetupError(
                f"metric {self.metric!r} does not fit the stopping rule's goal {goal!r} "
                f"({'larger' if goal == 'max' else 'smaller'} is better)"
            )
        self.sync_every: Final = sync_every if sync_every is not None else genesis.training.sync_every
        if self.sync_every < 1:
            raise SwarmSetupError("sync_every must be >= 1")
        self.sync_unit: Final = genesis.training.sync_unit
        self.callbacks: Final = tuple(callbacks)
        self.rounds: list[RoundRecord] = []
        self._trained = 0
        self._pending: tuple[float, Metrics | None, float | None] | None = None
        self._last: MergeResult | None = None
        # Model selection: with select = "best" a Ready reports the metric of the merged model
        # this site starts the round from (`consensus.selection`), None before the first one.
        self.select_best: Final = genesis.training.stopping.select == "best"
        self._start_metric: float | None = None
        # The swarm's statistics (pooled moments for swarm standardisation, pooled class
        # frequencies for balanced class weights): the agreement and its merges' hashes.
        self._agreement: PooledMoments | None = None
        self._pool_moments = False
        self._statistics_hashes: set[bytes] = set()
        self._pending_statistics: int | None = None
        self._setup_statistics(learner, genesis)

    def _setup_statistics(self, learner: LocalLearner, genesis: Genesis) -> None:
        moments_of = getattr(learner, "swarm_moments", None)
        moments = moments_of() if callable(moments_of) else None
        self._pool_moments = isinstance(moments, FeatureMoments)
        counts = None
        if genesis.training.class_weights == "balanced":
            counts_of = getattr(learner, "class_counts", None)
            if not callable(counts_of) or not callable(getattr(learner, "use_class_frequencies", None)):
                raise SwarmSetupError(
                    f"swarm {genesis.name!r} weights classes by the pooled class frequencies "
                    '(class_weights = "balanced" in its genesis), but this learner cannot count or '
                    "weight its classes: use a models.LocalTrainer (SwarmTrainer.from_local_trainer)"
                )
            counts = counts_of()
        if isinstance(moments, FeatureMoments) or counts is not None:
            if genesis.training.privacy is not None:
                raise SwarmSetupError(
                    f"swarm {genesis.name!r} merges under differential privacy (training.privacy), "
                    "which clips every contribution as a model update: the swarm's statistics (feature "
                    'moments, class frequencies) are not one. Set [data.preprocess] standardize = "local" '
                    'and class_weights = "none".'
                )
            n_params = int(learner.parameters().size)
            if not isinstance(moments, FeatureMoments):
                moments = FeatureMoments(count=0, mean=np.zeros(0), mean_sq=np.zeros(0))
            self._agreement = PooledMoments(moments, n_params, source=genesis.name, class_counts=counts)
        check_statistics_rounds(genesis, self.statistics_rounds)

    @property
    def statistics_rounds(self) -> int:
        """Merged rounds this site spends on swarm standardisation (0 if not "swarm")."""
        return 0 if self._agreement is None else self._agreement.rounds

    @property
    def standardizing(self) -> bool:
        """True until the swarm's pooled statistics are in use (if swarm standardisation is on)."""
        return self._agreement is not None and not self._agreement.done

    @classmethod
    def from_local_trainer(
        cls, trainer: LocalTrainer, genesis: Genesis, *, test_data: Dataset | None = None, **options: object
    ) -> SwarmTrainer:
        """Wrap a `models.LocalTrainer` (validation on its local split)."""
        return cls(SpecLearner(trainer, test_data), genesis, **options)  # type: ignore[arg-type]

    @classmethod
    def from_torch(
        cls,
        model: nn.Module,
        train_loader: DataLoader[tuple[torch.Tensor, torch.Tensor]],
        optimizer: torch.optim.Optimizer,
        genesis: Genesis,
        *,
        loss_fn: LossFn = classification_loss,
        val_loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None = None,
        test_loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None = None,
        num_samples: int | None = None,
        metrics_fn: MetricsFn | None = None,
        **options: object,
    ) -> SwarmTrainer:
        """Wrap a classifier returning logits, trained in place on (x, y) batches; `metrics_fn`
        adds the user's metrics to every evaluation (`models.training.MetricsFn`)."""
        learner = TorchLearner(
            model, train_loader, optimizer, loss_fn, val_loader, test_loader, num_samples, metrics_fn
        )
        return cls(learner, genesis, **options)  # type: ignore[arg-type]

    # -- the steps (no I/O) ----------------------------------------------------------------

    def next_sync(self) -> SyncPoint:
        """Train up to the next sync point and return what to offer to the merge (first,
        with swarm standardisation, the packed statistics: no training before them)."""
        if self._agreement is not None and not self._agreement.done:
            index = self._agreement.index
            self._pending_statistics = index
            return SyncPoint(
                parameters=self._agreement.next_vector(),
                num_samples=self.learner.num_samples,
                val_metric=None,
                kind=STATISTICS,
                index=index,
            )
        for callback in self.callbacks:
            callback.on_round_start(len(self.rounds) + 1, self)
        loss = (  # a learner written before rules had objectives still trains plain rules
            self.learner.train(self.sync_every, self.sync_unit)
            if self.local_objective is None
            else self.learner.train(self.sync_every, self.sync_unit, self.local_objective)
        )
        for callback in self.callbacks:
            callback.on_trained(len(self.rounds) + 1, loss)
        self._trained += self.sync_every
        local = self.learner.validate()
        val_metric = self._start_metric if self.select_best else self._metric_of(local)
        self._pending = (loss, local, val_metric)
        return SyncPoint(
            parameters=self.learner.parameters(), num_samples=self.learner.num_samples, val_metric=val_metric
        )

    def _metric_of(self, metrics: Metrics | None) -> float | None:
        if metrics is None:
            return None
        value = metrics.get(self.metric)
        if value is None:
            raise SwarmSetupError(
                f"metric {self.metric!r}: the metrics function returned no such metric "
                f"(it returned {', '.join(name for name, _ in metrics.extra) or 'none'})"
            )
        return value if math.isfinite(value) else None

    def merged(self, result: MergeResult) -> RoundRecord:
        """Load the round's merged parameters (or, for a statistics merge, keep the pooled
        statistics and start using them once all are in) and record the round."""
        if self._pending_statistics is not None:
            return self._merged_statistics(result, self._pending_statistics)
        if self._pending is None:
            raise RuntimeError("merged() without a preceding next_sync()")
        loss, local, val_metric = self._pending
        self._pending = None
        self.learner.load(result.parameters)
        self._last = result
        record = RoundRecord(
            round=result.round,
            local_epochs=self._trained,
            num_samples=self.learner.num_samples,
            train_loss=loss,
            val_metric=val_metric,
            local=local,
            merged=self.learner.validate(),
            participants=len(result.participants),
            weight=result.weight,
            params_hash=result.params_hash.hex(),
        )
        self._start_metric = self._metric_of(record.merged)
        self.rounds.append(record)
        for callback in self.callbacks:
            callback.on_merged(result, record)
        return record

    def _merged_statistics(self, result: MergeResult, index: int) -> RoundRecord:
        self._pending_statistics = None
        assert self._agreement is not None
        assert self._agreement.index == index
        self._take_statistics(result.parameters, result.params_hash)
        record = RoundRecord(
            round=result.round,
            local_epochs=self._trained,
            num_samples=self.learner.num_samples,
            train_loss=math.nan,
            val_metric=None,
            local=None,
            merged=None,
            participants=len(result.participants),
            weight=result.weight,
            params_hash=result.params_hash.hex(),
            kind=STATISTICS,
        )
        self.rounds.append(record)
        for callback in self.callbacks:
            callback.on_merged(result, record)
        return record

    def check_ledger(self, offer: SyncPoint, merged_rounds: int) -> None:
        """Refuse to offer statistics unless the ledger is exactly where they belong
        (``merged_rounds`` = merged rounds so far): a site that joined late, or whose
        standardize setting differs from the others', would otherwise mix statistics and
        model parameters in one merge."""
        if offer.kind == STATISTICS and merged_rounds != offer.index:
            raise SwarmSetupError(
                f"swarm standardisation needs this site's statistics in merged round {offer.index + 1}, "
                f"but the ledger already has {merged_rounds} merged round(s): this site joined after the "
                'statistics rounds (set standardize = "local" or "none" for it, or start it with the swarm)'
            )
        if offer.kind == TRAINING and merged_rounds < self.statistics_rounds:
            raise SwarmSetupError(
                f"the ledger has {merged_rounds} merged round(s), fewer than this site's "
                f"{self.statistics_rounds} statistics rounds"
            )

    def finish(self, reason: str, final: MergeResult | None = None) -> TrainingSummary:
        """End training: load the swarm's final model (if any), test, call on_stop."""
        final = (
            final
            if final is not None
            else (self._last if self._last is not None and self._last.stopped else None)
        )
        if final is not None and final.params_hash in self._statistics_hashes:
            final = None  # stopped during the statistics rounds: there is no merged model
        self._pending_statistics = None
        if final is not None:
            self.learner.load(final.parameters)
        summary = TrainingSummary(
            parameters=self.learner.parameters(),
            rounds=tuple(self.rounds),
            stop_reason=reason,
            final_hash=None if final is None else final.params_hash,
            metric=self.metric,
            test=self.learner.test(),
            model=getattr(self.learner, "model", None),
            preprocessor=getattr(self.learner, "preprocessor", None),
            selected_round=None if final is None else final.round,
        )
        for callback in self.callbacks:
            callback.on_stop(summary)
        return summary

    # -- drivers -----------------------------------------------------------------------------

    def run(self, node: SwarmNode, *, timeout: float | None = None) -> TrainingSummary:
        """Train with `node` (blocking) until the swarm stops; returns the summary."""
        while True:
            offer = self.next_sync()
            try:
                result = node.merge(
                    offer.parameters, offer.num_samples, val_metric=offer.val_metric, timeout=timeout
                )
            except SwarmStopped as stop:
                self._pending = None
                return self.finish(str(stop), stop.final)
            self.merged(result)
            if result.stopped:
                return self.finish("training stopped with this round", result)

    async def _recover_statistics(self, node: Node) -> None:
        """After a restart (or a late join) the statistics rounds may already be merged: their
        results are merged models on the ledger, public to members, so take them from there
        instead of offering statistics into a round that now merges models."""
        agreement = self._agreement
        if agreement is None or agreement.done:
            return
        for digest in live_ledger(node).merged_hashes()[agreement.index : agreement.rounds]:
            self._take_statistics(await node.merged_parameters(digest), digest)

    def _take_statistics(self, vector: FloatVector, params_hash: bytes) -> None:
        """One merged statistics vector; with the last one the pooled statistics take effect."""
        assert self._agreement is not None
        self._agreement.merged(vector)
        self._statistics_hashes.add(params_hash)
        if not self._agreement.done:
            return
        if self._pool_moments:
            self.learner.use_pooled_moments(self._agreement.result())  # type: ignore[attr-defined]
        frequencies = self._agreement.class_frequencies()
        if frequencies is not None:
            self.learner.use_class_frequencies(frequencies)  # type: ignore[attr-defined]

    async def arun(
        self, node: Node, *, inline_compute: bool = False, timeout: float | None = None
    ) -> TrainingSummary:
        """Train with a trio `Node`; local training runs in a worker thread unless
        `inline_compute` (virtual-time tests)."""

        async def compute(fn: Callable[[], T]) -> T:
            return fn() if inline_compute else await trio.to_thread.run_sync(fn)

        # A joiner starts at height 0 and reaches its admission only after the rounds merged
        # before it: recovering (and checking) earlier would offer its own statistics into
        # whatever round the swarm is in by then, a training round, as if they were a model.
        await node.wait_for(lambda contract: contract.is_member(node.node_id))
        ledger = live_ledger(node)
        while True:
            await self._recover_statistics(node)
            offer = await compute(self.next_sync)
            if not ledger.stopped:
                self.check_ledger(offer, ledger.merged_rounds)
            try:
                result = await node.merge(
                    offer.parameters, offer.num_samples, val_metric=offer.val_metric, timeout=timeout
                )
            except SwarmStopped as stop:
                self._pending = None
                final = stop.final
                return await compute(partial(self.finish, str(stop), final))
            await compute(partial(self.merged, result))
            if result.stopped:
                return await compute(partial(self.finish, "training stopped with this round", result))


def train_with_swarm(
    node: SwarmNode,
    model: nn.Module,
    train_loader: DataLoader[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    loss_fn: LossFn = classification_loss,
    val_loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None = None,
    test_loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None = None,
    metric: str | None = None,
    metrics_fn: MetricsFn | None = None,
    merge_method: str | None = None,
    callbacks: Iterable[SwarmCallback] = (),
    timeout: float | None = None,
) -> TrainingSummary:
    """Train `model` in place with a merge every ``genesis.training.sync_every`` epochs
    (or steps) until the swarm stops; the model ends at the swarm's final model.
    `metrics_fn(labels, probabilities) -> {name: value}` adds the user's metrics to every
    evaluation; `metric` may name one of them for the stopping rule."""
    trainer = SwarmTrainer.from_torch(
        model,
        train_loader,
        optimizer,
        node.genesis,
        loss_fn=loss_fn,
        val_loader=val_loader,
        test_loader=test_loader,
        metric=metric,
        metrics_fn=metrics_fn,
        merge_method=merge_method,
        callbacks=tuple(callbacks),
    )
    return trainer.run(node, timeout=timeout)


# -- one site's local trainer, as `swarmnode run` builds it (`swarmnode.siterun`) ----------------


def initial_parameters(genesis: Genesis, config: NodeConfig) -> FloatVector:
    """Every site starts from the same model: initialised from a seed derived from the chain id."""
    return init_parameters(config.model, seed=int.from_bytes(genesis.chain_id[:8], "big") >> 1)


def check_model(genesis: Genesis, config: NodeConfig) -> None:
    if config.model.spec_hash() != genesis.training.model_spec_hash:
        raise SwarmSetupError(
            f"{config.source or 'site config'}: the [model] section ({config.model}) is not the model "
            f"swarm {genesis.name!r} trains: its spec hash {config.model.spec_hash().hex()[:16]} differs "
            f"from the genesis's {genesis.training.model_spec_hash.hex()[:16]} (copy the [model] section "
            "from the invitation or a member's site.toml)"
        )


def build_local_trainer(config: NodeConfig, genesis: Genesis) -> tuple[LocalTrainer, Dataset | None]:
    """Load this site's data (and test data) per config and build its LocalTrainer."""
    check_model(genesis, config)
    check_local_epochs(genesis, config.training.epochs, str(config.source or "site config"))
    if config.data.source is None:
        raise SwarmSetupError(
            f"{config.source or 'site config'}: [data] has no source: this site was set up to bring its "
            "own data and training loop (e.g. create_local_swarm without data)"
        )
    data = load_site_data(config, genesis.data, config.data.source)
    test_source = config.data.test_source
    test = None if test_source is None else load_site_data(config, genesis.data, test_source)
    trainer = LocalTrainer(
        config.model,
        data,
        config.training,
        generator=torch.Generator().manual_seed(config.swarm.seed),
        preprocess=config.data.preprocess,  # fitted on this site's training rows only
        initial_parameters=initial_parameters(genesis, config),
        augment=site_augmenter(config),
    )
    return trainer, test
