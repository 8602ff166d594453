"""Local learners: what `swarmnode.trainer.SwarmTrainer` trains between merges.

`SpecLearner` wraps a `models.LocalTrainer` (a model from a spec, with its own validation
split); `TorchLearner` a user's torch module, DataLoaders and optimiser. Both run the one
local training loop, `models.training.train_batches`, with the merge rule's term added to
the loss when the swarm's rule has one (e.g. FedProx).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol, final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.flatten import FloatVector, flatten, layout_of, unflatten
from models.preprocess import FeatureMoments, Preprocessor
from models.training import (
    LocalObjective,
    LocalTrainer,
    LossFn,
    Metrics,
    MetricsFn,
    StepPenalty,
    class_probabilities,
    classification_metrics,
    train_batches,
)

from .node import SwarmError

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from models.data import Dataset


class SwarmSetupError(SwarmError):
    """Local training does not fit the swarm's rules (model, merge method, metric, sync unit)."""


class LocalLearner(Protocol):
    """What SwarmTrainer needs from local training."""

    @property
    def num_samples(self) -> int: ...

    def train(self, amount: int, unit: str, objective: LocalObjective | None = None) -> float:
        """Train `amount` epochs or steps; return the mean training loss. `objective` is the
        swarm's merge rule's term for every step's loss (e.g. FedProx's), if it has one."""
        ...

    def parameters(self) -> FloatVector: ...

    def load(self, parameters: FloatVector) -> None: ...

    def validate(self) -> Metrics | None: ...

    def test(self) -> Metrics | None: ...


@final
class SpecLearner:
    """A `models.LocalTrainer` (its own validation split; optional test data)."""

    def __init__(self, trainer: LocalTrainer, test_data: Dataset | None) -> None:
        self.trainer = trainer
        self.test_data = test_data

    @property
    def num_samples(self) -> int:
        return self.trainer.num_samples

    @property
    def model(self) -> nn.Module:
        return self.trainer.model

    @property
    def preprocessor(self) -> Preprocessor:
        return self.trainer.preprocessor

    @property
    def metrics_fn(self) -> MetricsFn | None:
        return self.trainer.metrics_fn

    def train(self, amount: int, unit: str, objective: LocalObjective | None = None) -> float:
        if unit == "steps":
            return self.trainer.train_steps(amount, objective=objective)
        return self.trainer.train_epochs(amount, objective=objective).train_loss

    def parameters(self) -> FloatVector:
        return self.trainer.parameters()

    def load(self, parameters: FloatVector) -> None:
        self.trainer.load_parameters(parameters)

    def validate(self) -> Metrics | None:
        return self.trainer.validate()

    def test(self) -> Metrics | None:
        return None if self.test_data is None else self.trainer.evaluate(self.test_data)

    def swarm_moments(self) -> FeatureMoments | None:
        """This site's share of the swarm's statistics, or None unless standardize = "swarm"."""
        if self.trainer.preprocessor.config.mode != "swarm":
            return None
        return self.trainer.feature_moments()

    def use_pooled_moments(self, pooled: FeatureMoments) -> None:
        self.trainer.standardize_with(pooled)

    def class_counts(self) -> npt.NDArray[np.float64]:
        """This site's training rows per class: its share of the pooled class frequencies."""
        return self.trainer.class_counts()

    def use_class_frequencies(self, frequencies: npt.NDArray[np.float64]) -> None:
        self.trainer.use_class_frequencies(frequencies)


@final
class TorchLearner:
    """A user's classifier: module (logits out), DataLoader of (x, y) batches, optimiser."""

    def __init__(
        self,
        model: nn.Module,
        train_loader: DataLoader[tuple[torch.Tensor, torch.Tensor]],
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        val_loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None,
        test_loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None,
        num_samples: int | None,
        metrics_fn: MetricsFn | None = None,
    ) -> None:
        self.model = model
        self.metrics_fn = metrics_fn
        self.layout = layout_of(model)
        self.train_loader = train_loader
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.val_loader = val_loader
        self.test_loader = test_loader
        if num_samples is None:
            try:
                num_samples = len(train_loader.dataset)  # type: ignore[arg-type]
            except TypeError:
                raise SwarmSetupError(
                    "the training DataLoader's dataset has no len(): pass num_samples"
                ) from None
        if num_samples < 1:
            raise SwarmSetupError("the training data is empty")
        self._num_samples = num_samples

    @property
    def num_samples(self) -> int:
        return self._num_samples

    def _pass(self, penalty: StepPenalty | None, max_steps: int | None = None) -> list[float]:
        steps = train_batches(
            self.model, self.optimizer, self.loss_fn, self.train_loader, penalty=penalty, max_steps=max_steps
        )
        return [loss for loss, _ in steps]

    def train(self, amount: int, unit: str, objective: LocalObjective | None = None) -> float:
        penalty = None if objective is None else objective(self.model)
        losses: list[float] = []
        if unit == "epochs":
            for _ in range(amount):
                losses.extend(self._pass(penalty))
        else:
            while len(losses) < amount:
                steps = self._pass(penalty, max_steps=amount - len(losses))
                if not steps:
                    raise SwarmSetupError("the training DataLoader yielded no batches")
                losses.extend(steps)
        return float(np.mean(losses)) if losses else math.nan

    def parameters(self) -> FloatVector:
        return flatten(self.model, self.layout)

    def load(self, parameters: FloatVector) -> None:
        unflatten(self.model, parameters, self.layout)

    def _evaluate(self, loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None) -> Metrics | None:
        if loader is None:
            return None
        was_training = self.model.training
        self.model.eval()
        logits: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        try:
            with torch.no_grad():
                for x, y in loader:
                    logits.append(self.model(x))
                    labels.append(y)
        finally:
            self.model.train(was_training)
        if not logits:
            return None
        all_logits, all_labels = torch.cat(logits), torch.cat(labels)
        loss = float(self.loss_fn(all_logits, all_labels))
        n_classes = 2 if all_logits.shape[1] == 1 else all_logits.shape[1]  # a binary head: 1 logit
        probabilities = class_probabilities(all_logits, n_classes).numpy()
        truth = all_labels.numpy().astype(np.int64)
        return classification_metrics(truth, probabilities, n_classes, loss=loss, metrics_fn=self.metrics_fn)

    def validate(self) -> Metrics | None:
        return self._evaluate(self.val_loader)

    def test(self) -> Metrics | None:
        return self._evaluate(self.test_loader)
