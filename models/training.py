"""Local training and evaluation.

``LocalTrainer`` owns one site's model, data and optimiser. The swarm calls it
between merges::

    trainer = LocalTrainer(spec, site_data, TrainConfig(...), generator=g)
    result = trainer.train_epochs(k, start=merged_parameters)   # float32 vector in, out
    ready_weight = result.num_samples * weightage
    metrics = trainer.evaluate(test_data)

``fit()`` is the stand-alone run (local and central baselines): up to
``config.fit_epochs`` epochs with early stopping on the local validation split,
returning the best parameters.

Everything random (initialisation, validation split, batch order, dropout) is
drawn from the one torch.Generator passed in; no global seed is read or set.
The optimiser state (e.g. Adam moments) survives across ``train_epochs`` calls,
as a framework callback training one long ``fit`` with periodic merges would.

`train_batches` is the one local training loop: `LocalTrainer` and the embedding API's
torch learner (`swarmnode.trainer`) both run it. A merge rule may add a term to its loss
(`LocalObjective`, e.g. FedProx's proximal term, `models.rules.fedprox`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal, cast, final, get_args

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import f1_score, roc_auc_score
from torch import nn

from .data import Dataset, DatasetError
from .device import DeviceName, check_amp, resolve_device
from .flatten import FloatVector, flatten, unflatten
from .nets import bind_generator, build_network, import_callable
from .preprocess import FeatureMoments, PreprocessConfig, Preprocessor
from .spec import ModelSpec

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# A term added to every step's loss, evaluated on the model's current state.
StepPenalty = Callable[[], torch.Tensor]
# Called with the model as a stretch of local training starts (holding the merged model):
# that stretch's StepPenalty.
LocalObjective = Callable[[nn.Module], StepPenalty]
# Training-time augmentation of a batch of preprocessed rows, drawing from the trainer's
# generator (e.g. `models.images.ImageAugmenter`); validation and test rows are never augmented.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
OptimizerName = Literal["sgd", "adam", "adamw"]
DEFAULT_FIT_EPOCHS: Final = 100
# A user's own metrics: (labels, class probabilities n x K, float64) -> {name: value}. They are
# added to the built-in ones in every `Metrics` (validation, test, metrics.json, the report).
MetricsFn = Callable[[npt.NDArray[np.int64], npt.NDArray[np.float64]], Mapping[str, float]]
OPTIMIZERS: Final[tuple[str, ...]] = get_args(OptimizerName)


# Class frequencies pooled through the secure merge carry an absolute error of ~2e-6: a class
# rarer than this is treated as absent (weight 0) rather than given a weight of ~1e5.
MIN_CLASS_FREQUENCY: Final = 1e-5


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """Local training settings (the same for every site unless a site overrides them).

    epochs:              in a swarm, the local epochs per merge round: the genesis's
                         ``training.sync_every``, and a different value is refused
                         (`swarmnode.trainer.check_local_epochs`); None takes the genesis's.
                         For ``fit`` (local-only training): its budget (None: 100).

    patience:            stop ``fit`` after this many epochs without a lower
                         validation loss (0 disables early stopping).
    validation_fraction: stratified share of the local data held out for early
                         stopping and the validation metric (0 disables it).
    balance_classes:     weight the loss by inverse local class frequency.
    device:              where local training runs (`models.device.resolve_device`):
                         "auto" (CUDA, else MPS, else CPU), "cpu", "cuda" or "mps".
    amp:                 mixed precision (float16 autocast and a gradient scaler); CUDA only.
    metrics:             "package.module:function", a `MetricsFn` whose values every
                         evaluation reports beside the built-in metrics.
    """

    epochs: int | None = None
    batch_size: int = 32
    optimizer: OptimizerName = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    validation_fraction: float = 0.2
    patience: int = 10
    balance_classes: bool = False
    device: DeviceName = "auto"
    amp: bool = False
    metrics: str | None = None

    def __post_init__(self) -> None:
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError("lr must be a finite number > 0")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("weight_decay must be >= 0 and momentum in [0, 1)")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError("validation_fraction must be in [0, 1)")
        if self.patience < 0:
            raise ValueError("patience must be >= 0")

    @property
    def fit_epochs(self) -> int:
        """``fit``'s budget: `epochs`, or `DEFAULT_FIT_EPOCHS` when unset."""
        return DEFAULT_FIT_EPOCHS if self.epochs is None else self.epochs


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics:
    """Classification metrics on one dataset.

    f1 is the positive-class F1 for 2 classes and the macro F1 otherwise; roc_auc is
    one-vs-rest macro for more than 2 classes (over classes present in the labels)
    and NaN when only one class is present. balanced_accuracy is the mean recall over
    classes present. `extra` holds a user's metrics (`MetricsFn`) by name, in its order.
    """

    accuracy: float
    balanced_accuracy: float
    f1: float
    roc_auc: float
    loss: float
    n_samples: int
    extra: tuple[tuple[str, float], ...] = ()

    def get(self, name: str) -> float | None:
        """The metric called `name`, built-in or the user's (None if there is none)."""
        if name in BUILTIN_METRICS:
            return float(getattr(self, name))
        return dict(self.extra).get(name)

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-friendly (NaN becomes None): the built-in metrics, then the user's."""
        return {
            "accuracy": _json_float(self.accuracy),
            "balanced_accuracy": _json_float(self.balanced_accuracy),
            "f1": _json_float(self.f1),
            "roc_auc": _json_float(self.roc_auc),
            "loss": _json_float(self.loss),
            "n_samples": self.n_samples,
        } | {name: _json_float(value) for name, value in self.extra}


BUILTIN_METRICS: Final = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "loss", "n_samples")


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


def load_metrics_fn(path: str) -> MetricsFn:
    """The `MetricsFn` that ``training.metrics`` names ("package.module:function")."""
    return cast(MetricsFn, import_callable(path, "training.metrics"))


def user_metrics(
    metrics_fn: MetricsFn, labels: npt.NDArray[np.int64], probabilities: npt.NDArray[np.float64]
) -> tuple[tuple[str, float], ...]:
    """`metrics_fn`'s values, checked: a mapping of new names to real numbers."""
    where = getattr(metrics_fn, "__qualname__", repr(metrics_fn))
    values = metrics_fn(labels, probabilities)
    if not isinstance(values, Mapping):
        raise TypeError(f"metrics function {where} returned {type(values).__name__}, not a dict of metrics")
    extra: list[tuple[str, float]] = []
    for name, value in values.items():
        if not isinstance(name, str) or not name or name in BUILTIN_METRICS:
            raise ValueError(
                f"metrics function {where}: metric name {name!r} must be a non-empty string and not "
                f"one of the built-in metrics ({', '.join(BUILTIN_METRICS)})"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"metrics function {where}: metric {name!r} is {value!r}, not a number")
        extra.append((name, float(value)))
    return tuple(extra)


@final
@dataclass(frozen=True, eq=False)
class TrainResult:
    """Outcome of ``train_epochs`` or ``fit``.

    parameters:  the model's flat float32 vector after training (for ``fit``: at the
                 best validation epoch).
    num_samples: rows actually trained on (the local merge weight before weightage).
    validation:  metrics on the local validation split (None without one).
    """

    parameters: FloatVector
    num_samples: int
    epochs_run: int
    best_epoch: int
    train_loss: float
    validation: Metrics | None
    stopped_early: bool


def init_parameters(spec: ModelSpec, seed: int) -> FloatVector:
    """The initial flat parameters for ``spec`` from ``seed``: every node that knows
    both (e.g. from genesis) starts from the same vector."""
    return flatten(build_network(spec, torch.Generator().manual_seed(seed)), spec)


def stratified_holdout(
    labels: npt.NDArray[np.int64], fraction: float, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(train, holdout) sorted row indices; each class contributes round(fraction * n_c)
    rows to the holdout but always keeps at least one training row."""
    train: list[npt.NDArray[np.int64]] = []
    holdout: list[npt.NDArray[np.int64]] = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls)).astype(np.int64)
        k = min(round(fraction * members.size), members.size - 1)
        holdout.append(members[:k])
        train.append(members[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(holdout))


def train_batches(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    penalty: StepPenalty | None = None,
    max_steps: int | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> list[tuple[float, int]]:
    """One optimiser step per (x, y) batch, at most `max_steps`, minimising
    ``loss_fn(model(x), y) + penalty()``. Returns each step's loss without the penalty (the
    data loss, comparable across rules) and its batch size. With a `scaler` (CUDA mixed
    precision) the forward pass runs under float16 autocast and the scaler steps."""
    model.train()
    steps: list[tuple[float, int]] = []
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=scaler is not None):
            loss = loss_fn(model(x), y)
        objective = loss if penalty is None else loss + penalty()
        if scaler is None:
            objective.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        else:
            scaler.scale(objective).backward()  # type: ignore[no-untyped-call]
            scaler.step(optimizer)
            scaler.update()
        steps.append((float(loss.detach()), int(y.shape[0])))
        if max_steps is not None and len(steps) >= max_steps:
            break
    return steps


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy over n logits; for one logit (a binary head), BCE-with-logits on the
    positive class (label 1), each row weighted by its class's `weight` as cross-entropy does."""
    if logits.ndim == 2 and logits.shape[1] == 1:
        target = labels.to(logits.dtype)
        if weight is None:
            return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target)
        rows = weight.to(logits.device, logits.dtype)[labels]
        losses = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        return (losses * rows).sum() / rows.sum()
    return nn.functional.cross_entropy(logits, labels, weight=weight)


def class_probabilities(logits: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(rows, n_classes) probabilities: softmax over n logits, or [1 - p, p] with p the
    sigmoid of a binary head's one logit. Refuses any other output width."""
    if logits.ndim != 2 or logits.shape[1] not in ((1, 2) if n_classes == 2 else (n_classes,)):
        raise ValueError(
            f"the model returns logits of shape {tuple(logits.shape)}: expected (rows, {n_classes})"
            + (" or (rows, 1) for a binary head" if n_classes == 2 else "")
        )
    if logits.shape[1] == 1:
        positive = torch.sigmoid(logits.double())
        return torch.cat([1.0 - positive, positive], dim=1)
    return torch.softmax(logits.double(), dim=1)


def evaluate_model(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    metrics_fn: MetricsFn | None = None,
) -> Metrics:
    """Metrics of ``model`` on already preprocessed float32 features (eval mode, no grad),
    on the device the model's parameters are on (with the user's `metrics_fn`, if any)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters(), features).device
    try:
        with torch.no_grad():
            logits = model(features.to(device)).float().cpu()
            loss = float(classification_loss(logits, labels)) if labels.numel() else math.nan
            probabilities = class_probabilities(logits, n_classes).numpy()
    finally:
        model.train(was_training)
    return classification_metrics(labels.numpy(), probabilities, n_classes, loss=loss, metrics_fn=metrics_fn)


def classification_metrics(
    labels: npt.NDArray[np.int64],
    probabilities: npt.NDArray[np.float64],
    n_classes: int,
    *,
    loss: float = math.nan,
    metrics_fn: MetricsFn | None = None,
) -> Metrics:
    """Accuracy, balanced accuracy, F1 and ROC AUC from class probabilities, and the user's
    metrics (`metrics_fn`) beside them."""
    n = int(labels.size)
    extra = () if metrics_fn is None else user_metrics(metrics_fn, labels, probabilities)
    if n == 0:
        return Metrics(
            accuracy=math.nan,
            balanced_accuracy=math.nan,
            f1=math.nan,
            roc_auc=math.nan,
            loss=loss,
            n_samples=0,
            extra=extra,
        )
    predicted = probabilities.argmax(axis=1)
    present = [c for c in range(n_classes) if (labels == c).any()]
    recalls = [float((predicted[labels == c] == c).mean()) for c in present]
    if n_classes == 2:
        f1 = float(f1_score(labels, predicted, pos_label=1, average="binary", zero_division=0))
        auc = float(roc_auc_score(labels, probabilities[:, 1])) if len(present) == 2 else math.nan
    else:
        f1 = float(
            f1_score(labels, predicted, labels=list(range(n_classes)), average="macro", zero_division=0)
        )
        aucs = [float(roc_auc_score(labels == c, probabilities[:, c])) for c in present]
        auc = float(np.mean(aucs)) if len(present) >= 2 else math.nan
    return Metrics(
        accuracy=float((predicted == labels).mean()),
        balanced_accuracy=float(np.mean(recalls)),
        f1=f1,
        roc_auc=auc,
        loss=loss,
        n_samples=n,
        extra=extra,
    )


@final
class LocalTrainer:
    """One site's model, preprocessing, data tensors and optimiser."""

    def __init__(
        self,
        spec: ModelSpec,
        data: Dataset,
        config: TrainConfig,
        *,
        generator: torch.Generator,
        preprocess: PreprocessConfig | None = None,
        initial_parameters: FloatVector | None = None,
        augment: Augment | None = None,
        metrics_fn: MetricsFn | None = None,
    ) -> None:
        if data.n_classes != spec.n_classes:
            raise DatasetError(
                f"{data.source}: {data.n_classes} classes, but the spec has {spec.n_classes} (a genesis that "
                "records the class names lets a site with only some of them take part)"
            )
        self.spec: Final = spec
        self.config: Final = config
        self._generator = generator
        self.device: Final = resolve_device(config.device)
        check_amp(config.amp, self.device)
        self._augment = augment
        # The user's metrics: given here (embedding API) or named by ``training.metrics``.
        named = None if config.metrics is None else load_metrics_fn(config.metrics)
        self.metrics_fn: Final = metrics_fn if metrics_fn is not None else named
        self.model: Final[nn.Module] = build_network(spec, generator)
        if initial_parameters is not None:
            unflatten(self.model, initial_parameters, spec)
        self.model.to(self.device)
        self._scaler = torch.amp.GradScaler("cuda") if config.amp else None
        self._batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        split_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        train_rows, val_rows = stratified_holdout(
            data.labels, config.validation_fraction, np.random.default_rng(split_seed)
        )
        self._train_data = data.subset(train_rows)
        self._val_data = data.subset(val_rows) if val_rows.size else None
        # Statistics come from this site's training rows; with standardize = "swarm" the
        # swarm replaces them by the pooled ones (`standardize_with`) before training.
        self._preprocessor = Preprocessor.fit(self._train_data, preprocess)
        if len(self._preprocessor.feature_names) != spec.n_features:
            raise DatasetError(
                f"{data.source}: {len(self._preprocessor.feature_names)} features after preprocessing, "
                f"but the spec expects {spec.n_features}"
            )
        self._x, self._y = self._tensors(self._train_data)
        self._val: tuple[torch.Tensor, torch.Tensor] | None = None
        if self._val_data is not None:
            self._val = self._tensors(self._val_data)
        self._class_weights: torch.Tensor | None = None
        if config.balance_classes:
            self.use_class_frequencies(self.class_counts() / max(self.num_samples, 1))
        self._optimizer = _make_optimizer(self.model, config)

    def _tensors(self, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        processed = self._preprocessor.transform(data)
        return torch.from_numpy(processed.features.copy()), torch.from_numpy(processed.labels.copy())

    @property
    def class_names(self) -> tuple[str, ...]:
        """The names of the classes the model's outputs stand for, in output order."""
        return self._train_data.class_names

    @property
    def preprocessor(self) -> Preprocessor:
        """The preprocessing applied to training, validation and evaluation data."""
        return self._preprocessor

    def feature_moments(self) -> FeatureMoments:
        """Per-feature mean and mean square of this site's training rows after the
        statistics-free steps (genes, log1p): its share of the swarm's pooled statistics."""
        return Preprocessor.moments(self._train_data, self._preprocessor.config)

    def standardize_with(self, pooled: FeatureMoments) -> None:
        """Standardise with ``pooled`` statistics (the swarm's) from now on: training,
        validation and `evaluate` data alike. Model and optimiser state are kept."""
        self._preprocessor = self._preprocessor.with_moments(pooled)
        self._x, self._y = self._tensors(self._train_data)
        if self._val_data is not None:
            self._val = self._tensors(self._val_data)

    @property
    def num_samples(self) -> int:
        """Number of local training rows (the merge weight before weightage)."""
        return int(self._y.shape[0])

    def class_counts(self) -> npt.NDArray[np.float64]:
        """Training rows per class (float64, one entry per model output)."""
        return np.bincount(self._y.numpy(), minlength=self.spec.n_classes).astype(np.float64)

    def use_class_frequencies(self, frequencies: npt.ArrayLike) -> None:
        """Weight the training loss by `balanced_class_weights` of these class frequencies
        (this site's own, or the swarm's pooled ones) from now on."""
        weights = balanced_class_weights(frequencies)
        if weights.shape != (self.spec.n_classes,):
            raise ValueError(f"{weights.size} class frequencies for {self.spec.n_classes} classes")
        self._class_weights = torch.from_numpy(weights).float()

    @property
    def class_weights(self) -> npt.NDArray[np.float64] | None:
        """The loss's per-class weights (None: unweighted)."""
        return None if self._class_weights is None else self._class_weights.double().numpy()

    def parameters(self) -> FloatVector:
        """The model's current flat float32 vector."""
        return flatten(self.model, self.spec)

    def load_parameters(self, parameters: FloatVector) -> None:
        """Replace the model's state by ``parameters`` (e.g. merged ones); optimiser state is kept."""
        unflatten(self.model, parameters, self.spec)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.num_samples
        order = torch.randperm(n, generator=self._generator)
        for start in range(0, n, self.config.batch_size):
            batch = order[start : start + self.config.batch_size]
            if batch.numel() == 1 and self._batch_norm and n > 1:
                continue  # batch norm cannot normalise a single row in training mode
            x = self._x[batch]
            x = x if self._augment is None else self._augment(x, self._generator)
            yield x.to(self.device), self._y[batch].to(self.device)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None if self._class_weights is None else self._class_weights.to(logits.device)
        return classification_loss(logits.float(), labels, weight)

    def _epoch(self, penalty: StepPenalty | None = None) -> float:
        bind_generator(self.model, self._generator)
        steps = train_batches(
            self.model, self._optimizer, self._loss, self._batches(), penalty=penalty, scaler=self._scaler
        )
        total = sum(loss * rows for loss, rows in steps)
        return total / max(sum(rows for _, rows in steps), 1)

    def validate(self) -> Metrics | None:
        """Metrics on the local validation split (None if there is none)."""
        if self._val is None:
            return None
        return evaluate_model(self.model, self._val[0], self._val[1], self.spec.n_classes, self.metrics_fn)

    def train_epochs(
        self, epochs: int, start: FloatVector | None = None, *, objective: LocalObjective | None = None
    ) -> TrainResult:
        """Train ``epochs`` epochs (from ``start`` if given, else from the current state)
        and return the new parameters. No early stopping: the swarm decides when to stop.
        `objective` (the merge rule's) adds its term to every step's loss."""
        if epochs < 1:
            raise ValueError("epochs must be >= 1")
        if start is not None:
            self.load_parameters(start)
        penalty = None if objective is None else objective(self.model)
        loss = math.nan
        for _ in range(epochs):
            loss = self._epoch(penalty)
        return TrainResult(
            parameters=self.parameters(),
            num_samples=self.num_samples,
            epochs_run=epochs,
            best_epoch=epochs,
            train_loss=loss,
            validation=self.validate(),
            stopped_early=False,
        )

    def train_steps(self, steps: int, *, objective: LocalObjective | None = None) -> float:
        """Exactly ``steps`` optimiser steps (across epoch boundaries, each epoch a fresh
        shuffle) from the current state; returns their mean training loss. A budget in steps
        gives a site the same number of updates whatever its size."""
        if steps < 1:
            raise ValueError("steps must be >= 1")
        bind_generator(self.model, self._generator)
        penalty = None if objective is None else objective(self.model)
        done: list[tuple[float, int]] = []
        while len(done) < steps:
            taken = train_batches(
                self.model,
                self._optimizer,
                self._loss,
                self._batches(),
                penalty=penalty,
                max_steps=steps - len(done),
            )
            if not taken:
                raise ValueError(f"{self._train_data.source}: no training batch to step on")
            done += taken
        return sum(loss * rows for loss, rows in done) / max(sum(rows for _, rows in done), 1)

    def fit(self) -> TrainResult:
        """Up to ``config.fit_epochs`` epochs with early stopping on the validation loss;
        the model ends at (and returns) the best epoch's parameters."""
        best_loss, best_epoch, best_params = math.inf, 0, self.parameters()
        loss, epoch, stopped = math.nan, 0, False
        for epoch in range(1, self.config.fit_epochs + 1):
            loss = self._epoch()
            validation = self.validate()
            if validation is None or self.config.patience == 0:
                best_epoch, best_params = epoch, self.parameters()
                continue
            if validation.loss < best_loss:
                best_loss, best_epoch, best_params = validation.loss, epoch, self.parameters()
            elif epoch - best_epoch >= self.config.patience:
                stopped = True
                break
        self.load_parameters(best_params)
        return TrainResult(
            parameters=best_params,
            num_samples=self.num_samples,
            epochs_run=epoch,
            best_epoch=best_epoch,
            train_loss=loss,
            validation=self.validate(),
            stopped_early=stopped,
        )

    def evaluate(self, data: Dataset) -> Metrics:
        """Metrics on ``data`` (e.g. the held-out test set) after this site's preprocessing."""
        x, y = self._tensors(data)
        return evaluate_model(self.model, x, y, self.spec.n_classes, self.metrics_fn)


def balanced_class_weights(frequencies: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Per-class loss weights ``1 / (K f_c)`` for class frequencies f (K classes; the
    frequencies are normalised to sum 1 first): every class then carries the same total
    weight, as in scikit-learn's ``class_weight="balanced"``. A class below
    `MIN_CLASS_FREQUENCY` (absent, or under the secure merge's resolution) gets weight 0."""
    f = np.asarray(frequencies, dtype=np.float64).reshape(-1)
    if f.size < 2 or not np.all(np.isfinite(f)) or float(f.sum()) <= 0:
        raise ValueError(f"class frequencies must be >= 2 finite values with a positive sum, got {f}")
    f = np.clip(f, 0.0, None) / float(np.clip(f, 0.0, None).sum())
    present = f >= MIN_CLASS_FREQUENCY
    return np.where(present, 1.0 / (f.size * np.where(present, f, 1.0)), 0.0)


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
