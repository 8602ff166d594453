"""Local training, early stopping, evaluation metrics, and the swarm's call path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.data import load_sklearn
from models.flatten import flatten
from models.merge import weighted_mean
from models.spec import logistic_regression, mlp, small_cnn
from models.splits import preset_scenario, split_sites
from models.training import (
    LocalTrainer,
    TrainConfig,
    classification_metrics,
    init_parameters,
    stratified_holdout,
)

CANCER = load_sklearn("breast_cancer", positive_class="malignant")
CENTRAL = TrainConfig(epochs=200, lr=1e-2, batch_size=32, patience=20)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_central_logistic_regression_on_breast_cancer_reaches_auc_098(seed: int) -> None:
    split = split_sites(CANCER.labels, preset_scenario("even", 1, test_fraction=0.3), seed=seed)
    trainer = LocalTrainer(
        logistic_regression(CANCER.n_features),
        split.union_data(CANCER),
        CENTRAL,
        generator=torch.Generator().manual_seed(seed),
    )
    result = trainer.fit()
    metrics = trainer.evaluate(split.test_data(CANCER))
    assert metrics.n_samples == split.test.size
    assert metrics.roc_auc >= 0.98, metrics
    assert metrics.balanced_accuracy >= 0.93, metrics
    assert 1 <= result.best_epoch <= result.epochs_run <= CENTRAL.epochs
    # fit leaves the model at the returned (best) parameters.
    assert np.array_equal(trainer.parameters(), result.parameters)


def test_training_is_deterministic_from_the_generator_and_leaves_global_rng_alone() -> None:
    spec = mlp(CANCER.n_features, 2, hidden=(16,), dropout=0.3, batch_norm=True)
    config = TrainConfig(epochs=3, lr=1e-2, batch_size=16)
    site = CANCER.subset(np.arange(200))
    before = torch.random.get_rng_state()
    runs = [
        LocalTrainer(spec, site, config, generator=torch.Generator().manual_seed(s))
        .train_epochs(3)
        .parameters
        for s in (5, 5, 6)
    ]
    assert torch.equal(before, torch.random.get_rng_state())
    assert runs[0].tobytes() == runs[1].tobytes()
    assert runs[0].tobytes() != runs[2].tobytes()


def test_swarm_path_train_k_epochs_from_merged_parameters() -> None:
    spec = logistic_regression(CANCER.n_features)
    split = split_sites(CANCER.labels, preset_scenario("uneven_class", 3), seed=0)
    start = init_parameters(spec, seed=42)
    assert np.array_equal(start, init_parameters(spec, seed=42))
    config = TrainConfig(lr=1e-2, batch_size=32)
    trainers = [
        LocalTrainer(
            spec,
            split.site_data(CANCER, i),
            config,
            generator=torch.Generator().manual_seed(i),
            initial_parameters=start,
        )
        for i in range(3)
    ]
    assert all(np.array_equal(t.parameters(), start) for t in trainers)
    merged = start
    for _ in range(3):
        results = [t.train_epochs(2, start=merged) for t in trainers]
        for result in results:
            assert result.epochs_run == 2
            assert result.parameters.dtype == np.float32
            assert result.validation is not None
            assert not np.array_equal(result.parameters, merged)
        merged = weighted_mean([r.parameters for r in results], [r.num_samples for r in results])
    test = split.test_data(CANCER)
    for t in trainers:
        t.load_parameters(merged)
        assert np.array_equal(t.parameters(), merged)
        assert t.evaluate(test).roc_auc > 0.9
    assert sum(t.num_samples for t in trainers) < sum(s.size for s in split.sites)  # validation rows held out


def test_early_stopping_stops_and_restores_the_best_epoch() -> None:
    spec = mlp(CANCER.n_features, 2, hidden=(64, 64))
    # A tiny training set and a large lr overfit quickly, so validation loss turns up.
    site = CANCER.subset(np.arange(60))
    trainer = LocalTrainer(
        spec,
        site,
        TrainConfig(epochs=300, lr=5e-2, patience=5, validation_fraction=0.3),
        generator=torch.Generator().manual_seed(0),
    )
    result = trainer.fit()
    assert result.stopped_early
    assert result.epochs_run == result.best_epoch + 5
    assert result.validation is not None
    assert np.array_equal(flatten(trainer.model), result.parameters)


def test_cnn_on_digits_trains_and_reports_multiclass_metrics() -> None:
    digits = load_sklearn("digits")
    split = split_sites(digits.labels, preset_scenario("even", 2), seed=0)
    trainer = LocalTrainer(
        small_cnn((1, 8, 8), 10, conv_channels=(8, 16), hidden=(32,), dropout=0.1),
        split.site_data(digits, 0),
        TrainConfig(lr=3e-3, batch_size=64),
        generator=torch.Generator().manual_seed(0),
    )
    trainer.train_epochs(4)
    metrics = trainer.evaluate(split.test_data(digits))
    assert metrics.accuracy > 0.85, metrics
    assert metrics.roc_auc > 0.97, metrics
    assert 0.0 <= metrics.f1 <= 1.0


def test_trainer_refuses_mismatched_spec_and_bad_config() -> None:
    with pytest.raises(ValueError, match="3 classes"):
        LocalTrainer(
            logistic_regression(13, 2), load_sklearn("wine"), TrainConfig(), generator=torch.Generator()
        )
    with pytest.raises(ValueError, match="spec expects 12"):
        LocalTrainer(
            logistic_regression(12, 3), load_sklearn("wine"), TrainConfig(), generator=torch.Generator()
        )
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0.0)


def test_metrics_definitions() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    m = classification_metrics(labels, probs, 2)
    assert m.accuracy == pytest.approx(3 / 5)
    assert m.balanced_accuracy == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m.f1 == pytest.approx(2 * 0.5 * 0.5 / (0.5 + 0.5))
    assert m.roc_auc == pytest.approx(5 / 6)
    single = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]), 2)
    assert math.isnan(single.roc_auc)
    assert single.to_dict()["roc_auc"] is None
    three = classification_metrics(np.array([0, 1, 2]), np.eye(3), 3)
    assert (three.accuracy, three.f1, three.roc_auc) == (1.0, 1.0, 1.0)


def test_balanced_class_weights_raise_minority_recall() -> None:
    split = split_sites(CANCER.labels, preset_scenario("uneven_class", 3), seed=0)
    site = split.site_data(CANCER, 2)  # three positives among ~90 samples
    test = split.test_data(CANCER)
    recalls = []
    for balance in (False, True):
        trainer = LocalTrainer(
            logistic_regression(CANCER.n_features),
            site,
            TrainConfig(epochs=50, lr=1e-2, balance_classes=balance, validation_fraction=0.0),
            generator=torch.Generator().manual_seed(0),
        )
        trainer.fit()
        recalls.append(trainer.evaluate(test).balanced_accuracy)
    assert recalls[1] > recalls[0]


def test_stratified_holdout_keeps_a_training_row_per_class() -> None:
    labels = np.array([0] * 10 + [1])
    train, holdout = stratified_holdout(labels, 0.5, np.random.default_rng(0))
    assert holdout.size == 5
    assert 10 in train
    assert np.intersect1d(train, holdout).size == 0
