"""Missing values imputed with the swarm's pooled means through `SwarmTrainer`'s statistics
rounds (merged by hand here; a real swarm runs them in test_api_tables.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from consensus.genesis import FoundingMember, Genesis, StoppingRule, TrainingParams
from models.data import Dataset, load_dataset
from models.preprocess import FeatureMoments, PreprocessConfig
from models.spec import logistic_regression
from models.training import LocalTrainer, TrainConfig
from swarmnode.node import MergeResult
from swarmnode.testing import make_identity
from swarmnode.trainer import SwarmTrainer, statistics_rounds_for

pytestmark = pytest.mark.timeout(120)

SPEC = logistic_regression(30, 2)
IMPUTE = PreprocessConfig(standardize="swarm", impute="mean")


def with_holes(data: Dataset, rate: float, seed: int) -> Dataset:
    x = data.features.copy()
    x[np.random.default_rng(seed).random(x.shape) < rate] = np.nan
    return Dataset(
        features=x,
        labels=data.labels,
        feature_names=data.feature_names,
        class_names=data.class_names,
        source=f"site{seed}",
    )


def test_imputed_values_are_the_swarm_means_identical_at_every_site() -> None:
    torch.set_num_threads(1)
    data = load_dataset("breast_cancer")
    parts = [
        with_holes(data.subset(np.arange(0, 150)), 0.1, 1),
        with_holes(data.subset(np.arange(150, 500)), 0.3, 2),
    ]
    config = TrainConfig(validation_fraction=0.0)
    sites = [
        LocalTrainer(SPEC, part, config, generator=torch.Generator().manual_seed(i), preprocess=IMPUTE)
        for i, part in enumerate(parts)
    ]
    k = statistics_rounds_for(SPEC, IMPUTE)
    genesis = Genesis(
        name="impute",
        members=tuple(FoundingMember(name=n, node_id=make_identity(i).node_id) for i, n in enumerate("abc")),
        training=TrainingParams(
            model_spec_hash=SPEC.spec_hash(), stopping=StoppingRule(max_rounds=2, statistics_rounds=k)
        ),
    )
    trainers = [SwarmTrainer.from_local_trainer(s, genesis) for s in sites]
    for round_ in range(1, k + 1):  # the statistics rounds: the weighted mean of the offers
        offers = [t.next_sync() for t in trainers]
        weights = [o.num_samples for o in offers]
        mean = sum(w * o.parameters.astype(np.float64) for w, o in zip(weights, offers, strict=True))
        merged = (mean / sum(weights)).astype(np.float32)
        digest = hashlib.sha256(merged.tobytes()).digest()
        for t in trainers:
            result = MergeResult(
                round=round_,
                parameters=merged,
                params_hash=digest,
                participants=(),
                weight=sum(weights),
                stopped=False,
            )
            t.merged(result)
    means = [s.preprocessor.mean for s in sites]
    np.testing.assert_array_equal(means[0], means[1])  # bit-identical: one merge result
    pooled = FeatureMoments.pool([FeatureMoments.of(p.features) for p in parts])  # the values present
    np.testing.assert_allclose(means[0][0], pooled.mean, rtol=1e-5)
    for site, part in zip(sites, parts, strict=True):
        processed = site.preprocessor.transform(part)
        holes = np.isnan(part.features)
        assert holes.any()
        assert not np.isnan(processed.features).any()
        # A missing cell becomes its feature's pooled mean: 0 after standardising.
        np.testing.assert_array_equal(processed.features[holes], 0.0)
        restored = processed.features * site.preprocessor.scale + site.preprocessor.mean
        rows, columns = np.nonzero(holes)
        np.testing.assert_allclose(restored[rows, columns], means[0][0][columns], rtol=1e-6)
    assert np.isfinite(trainers[0].next_sync().parameters).all()  # training on imputed data
