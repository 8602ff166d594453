"""The merge-rule registry (`models.rules`) and FedProx's math: the proximal term, and local
training that the term keeps near the merged model it started from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.data import Dataset, load_sklearn
from models.merge import merge, weighted_mean
from models.rules import RULE_NAMES, RULES, SECURE_RULE_NAMES, RuleMath, UnknownRuleError, rule_named
from models.rules.fedprox import FEDPROX, proximal_objective, proximal_term
from models.spec import logistic_regression
from models.training import LocalTrainer, TrainConfig

SPEC_HASH = bytes(32)


def test_registry_lists_each_rule_once_with_its_properties() -> None:
    assert RULE_NAMES == ("mean", "median", "trimmed_mean", "fedprox")
    assert SECURE_RULE_NAMES == ("mean", "fedprox")  # their merge is the weighted mean
    fedprox = rule_named("fedprox")
    assert [p.name for p in fedprox.params] == ["mu"]
    assert fedprox.settings({}) == {"mu": 0.01}
    assert fedprox.settings({"mu": 2}) == {"mu": 2.0}
    assert rule_named("mean").load_math().local_objective is None
    assert fedprox.load_math() is FEDPROX
    with pytest.raises(UnknownRuleError, match="registered rules: mean, median, trimmed_mean, fedprox"):
        rule_named("krum")
    with pytest.raises(UnknownRuleError, match="no parameter nu"):
        fedprox.settings({"nu": 1.0})
    with pytest.raises(ValueError, match="mu: must be in"):
        fedprox.settings({"mu": -0.5})
    with pytest.raises(ValueError, match="mu: must be a finite number"):
        fedprox.settings({"mu": float("nan")})


def test_every_registered_rule_loads_its_math_and_merges() -> None:
    vectors = [np.array([1.0, 5.0], dtype=np.float32), np.array([3.0, -1.0], dtype=np.float32)]
    for rule in RULES:
        assert isinstance(rule.load_math(), RuleMath), rule.name
        merged = merge(rule.name, vectors, [1.0, 1.0])
        assert merged.dtype == np.float32
        assert merged.shape == (2,)


def test_fedprox_merges_by_the_weighted_mean() -> None:
    vectors = [np.array([1.0, 2.0], dtype=np.float32), np.array([3.0, -2.0], dtype=np.float32)]
    merged = merge("fedprox", vectors, [1.0, 3.0], params={"mu": 5.0})
    assert merged.tobytes() == weighted_mean(vectors, [1.0, 3.0]).tobytes()


def test_proximal_term_is_half_mu_times_the_squared_distance_and_pulls_back() -> None:
    w = [torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([[3.0]], requires_grad=True)]
    anchor = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    term = proximal_term(w, anchor, mu=0.5)
    assert float(term.detach()) == pytest.approx(0.25 * (1 + 4 + 4))
    term.backward()  # type: ignore[no-untyped-call]
    assert w[0].grad is not None
    assert w[1].grad is not None
    assert torch.equal(w[0].grad, torch.tensor([0.5, 1.0]))  # mu * (w - anchor)
    assert torch.equal(w[1].grad, torch.tensor([[1.0]]))


def test_proximal_objective_anchors_at_the_model_when_the_stretch_starts() -> None:
    model = torch.nn.Linear(2, 1)
    penalty = proximal_objective(model, {"mu": 1.0})
    assert float(penalty().detach()) == 0.0
    with torch.no_grad():
        model.bias += 2.0
    assert float(penalty().detach()) == pytest.approx(0.5 * 4.0)


@pytest.fixture(scope="module")
def cancer() -> Dataset:
    return load_sklearn("breast_cancer")


def _trainer(data: Dataset) -> LocalTrainer:
    config = TrainConfig(optimizer="sgd", lr=0.5, momentum=0.0, validation_fraction=0.0, batch_size=32)
    return LocalTrainer(logistic_regression(30, 2), data, config, generator=torch.Generator().manual_seed(3))


def _drift(trainer: LocalTrainer, mu: float | None) -> tuple[float, np.ndarray]:
    start = trainer.parameters()
    objective = None if mu is None else (lambda model: proximal_objective(model, {"mu": mu}))
    after = trainer.train_epochs(5, objective=objective).parameters
    return float(np.linalg.norm(after - start)), after


def test_local_training_with_fedprox_stays_near_the_start(cancer: Dataset) -> None:
    plain, plain_params = _drift(_trainer(cancer), None)
    _, zero_params = _drift(_trainer(cancer), 0.0)
    strong, _ = _drift(_trainer(cancer), 1.0)  # lr * mu = 0.5: a contraction towards the start
    assert zero_params.tobytes() == plain_params.tobytes()  # mu = 0 is plain local training
    assert strong < 0.5 * plain, (strong, plain)
