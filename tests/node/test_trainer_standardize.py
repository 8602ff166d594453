"""SwarmTrainer's swarm-agreed standardisation without a network (a real swarm runs it in
test_trainer_real_node.py and test_swarm_sim.py), and the site.toml switch for it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from consensus.contract import MERGED, Round
from consensus.genesis import FoundingMember, Genesis, StoppingRule, TrainingParams
from models.data import load_dataset
from models.preprocess import FeatureMoments, PreprocessConfig, statistics_rounds
from models.spec import ModelSpec, mlp
from models.training import LocalTrainer, TrainConfig
from swarmnode.config import ConfigError, NodeConfig
from swarmnode.node import MergeResult, SwarmStopped
from swarmnode.testing import make_identity
from swarmnode.trainer import STATISTICS, TRAINING, SwarmSetupError, SwarmTrainer

pytestmark = pytest.mark.timeout(120)

# 30 features, 35 parameters: the 60 scaled moments need two vectors, the 30 scales one.
SPEC = mlp(30, 2, hidden=(1,))


K = statistics_rounds(30, 35)  # what the genesis of a swarm standardising SPEC's inputs records


def genesis_for(spec: ModelSpec, max_rounds: int, statistics: int = K) -> Genesis:
    return Genesis(
        name="std-swarm",
        # A secure genesis needs t + 1 founders (t = 2 of 3).
        members=tuple(FoundingMember(name=n, node_id=make_identity(i).node_id) for i, n in enumerate("abc")),
        training=TrainingParams(
            model_spec_hash=spec.spec_hash(),
            stopping=StoppingRule(max_rounds=max_rounds, statistics_rounds=statistics),
        ),
    )


def result(round_: int, parameters: np.ndarray, weight: int) -> MergeResult:
    return MergeResult(
        round=round_,
        parameters=parameters,
        params_hash=hashlib.sha256(parameters.tobytes()).digest(),
        participants=(make_identity(0).node_id, make_identity(1).node_id),
        weight=weight,
        stopped=False,
    )


def merge_rounds(trainers: list[SwarmTrainer], rounds: int) -> list[np.ndarray]:
    """Rounds 1..`rounds` merged by hand (the weighted mean of every trainer's offer), each
    handed back to every trainer; the merged vectors in round order."""
    merged_vectors = []
    for r in range(1, rounds + 1):
        offers = [t.next_sync() for t in trainers]
        weights = [o.num_samples for o in offers]
        weighted = sum(w * o.parameters.astype(np.float64) for w, o in zip(weights, offers, strict=True))
        merged_vectors.append((weighted / sum(weights)).astype(np.float32))
        for t in trainers:
            t.merged(result(r, merged_vectors[-1], sum(weights)))
    return merged_vectors


def two_sites(standardize: str = "swarm") -> list[LocalTrainer]:
    torch.set_num_threads(1)
    data = load_dataset("breast_cancer")
    rows = np.random.default_rng(0).permutation(data.n_samples)
    parts = [data.subset(np.sort(rows[:60])), data.subset(np.sort(rows[60:400]))]  # uneven sizes
    return [
        LocalTrainer(
            SPEC,
            part,
            TrainConfig(lr=0.01),
            generator=torch.Generator().manual_seed(i),
            preprocess=PreprocessConfig(standardize=standardize),  # type: ignore[arg-type]
        )
        for i, part in enumerate(parts)
    ]


def test_statistics_rounds_come_first_and_give_every_site_the_pooled_statistics() -> None:
    sites = two_sites()
    k = statistics_rounds(30, 35)
    assert k == 3
    genesis = genesis_for(SPEC, max_rounds=k + 2)
    trainers = [SwarmTrainer.from_local_trainer(s, genesis) for s in sites]
    own_scale = sites[0].preprocessor.scale.copy()
    start = [s.parameters() for s in sites]
    expected = FeatureMoments.pool([s.feature_moments() for s in sites])  # training rows of both sites
    for r in range(1, k + 1):
        assert all(t.standardizing for t in trainers)
        offers = [t.next_sync() for t in trainers]
        for t, offer in zip(trainers, offers, strict=True):
            assert (offer.kind, offer.index, offer.val_metric) == (STATISTICS, r - 1, None)
            assert offer.parameters.shape == (35,)
            t.check_ledger(offer, merged_rounds=r - 1)  # where the ledger must be
        weights = [o.num_samples for o in offers]
        weighted = sum(w * o.parameters.astype(np.float64) for w, o in zip(weights, offers, strict=True))
        merged = (weighted / sum(weights)).astype(np.float32)
        records = [t.merged(result(r, merged, sum(weights))) for t in trainers]
        assert all(rec.kind == STATISTICS and rec.merged is None for rec in records)
    assert not any(t.standardizing for t in trainers)
    for s, before in zip(sites, start, strict=True):
        np.testing.assert_array_equal(s.parameters(), before)  # statistics never touch the model
    mean, scale = expected.standardization()
    for s in sites:
        np.testing.assert_allclose(s.preprocessor.mean, mean, rtol=1e-5)
        np.testing.assert_allclose(s.preprocessor.scale, scale, rtol=1e-4)
    assert not np.allclose(own_scale, scale, rtol=1e-2)  # the pooled statistics differ from site 0's own

    offer = trainers[0].next_sync()  # now training, with a validation metric again
    assert offer.kind == TRAINING
    assert offer.val_metric is not None
    trainers[0].check_ledger(offer, merged_rounds=k)
    record = trainers[0].merged(result(k + 1, offer.parameters, 100))
    assert record.to_dict()["kind"] == TRAINING
    assert [r.kind for r in trainers[0].rounds] == [STATISTICS] * k + [TRAINING]


class _LedgerWithMergedRounds:
    """What `SwarmTrainer._recover_statistics` reads of a node: the closed rounds and the
    merged models by hash."""

    def __init__(self, merged: list[np.ndarray]) -> None:
        self.models = {hashlib.sha256(v.tobytes()).digest(): v for v in merged}
        rounds = [Round(number=i + 1, outcome=MERGED, merged_hash=d) for i, d in enumerate(self.models)]
        aborted = Round(number=len(rounds) + 1, outcome="aborted")
        self.contract = SimpleNamespace(history=lambda: (rounds[0], aborted, *rounds[1:]))

    async def merged_parameters(self, params_hash: bytes) -> np.ndarray:
        return self.models[params_hash]


async def test_a_restarted_site_takes_the_pooled_statistics_from_the_ledger() -> None:
    sites = two_sites()
    k = statistics_rounds(30, 35)
    genesis = genesis_for(SPEC, max_rounds=k + 2)
    trainers = [SwarmTrainer.from_local_trainer(s, genesis) for s in sites]
    merged_vectors = merge_rounds(trainers, k)
    # Site 0 restarts: a fresh trainer over the same data, the ledger past the statistics rounds.
    site = two_sites()[0]
    restarted = SwarmTrainer.from_local_trainer(site, genesis)
    ledger = _LedgerWithMergedRounds(merged_vectors)
    with pytest.raises(SwarmSetupError):
        restarted.check_ledger(restarted.next_sync(), merged_rounds=k)  # without recovery: refused
    restarted = SwarmTrainer.from_local_trainer(site, genesis)
    await restarted._recover_statistics(ledger)  # type: ignore[arg-type]
    assert not restarted.standardizing
    np.testing.assert_array_equal(site.preprocessor.mean, sites[0].preprocessor.mean)
    np.testing.assert_array_equal(site.preprocessor.scale, sites[0].preprocessor.scale)
    offer = restarted.next_sync()
    assert offer.kind == TRAINING
    restarted.check_ledger(offer, merged_rounds=k)


def test_a_site_out_of_step_with_the_ledger_does_not_offer_statistics() -> None:
    site = two_sites()[0]
    trainer = SwarmTrainer.from_local_trainer(site, genesis_for(SPEC, max_rounds=10))
    offer = trainer.next_sync()
    with pytest.raises(SwarmSetupError, match=r"merged round 1, but the ledger already has 4 merged round"):
        trainer.check_ledger(offer, merged_rounds=4)  # it joined after the statistics rounds


def test_a_site_whose_statistics_rounds_are_not_the_genesis_ones_is_refused() -> None:
    site = two_sites()[0]
    with pytest.raises(SwarmSetupError, match=r"records 0 statistics round\(s\).* takes 3: .*\"local\""):
        SwarmTrainer.from_local_trainer(site, genesis_for(SPEC, max_rounds=3, statistics=0))
    local = two_sites("local")[0]
    with pytest.raises(SwarmSetupError, match=r"records 3 statistics round\(s\).* takes 0: .*\"swarm\""):
        SwarmTrainer.from_local_trainer(local, genesis_for(SPEC, max_rounds=3))
    trainer = SwarmTrainer.from_local_trainer(local, genesis_for(SPEC, max_rounds=3, statistics=0))
    assert trainer.statistics_rounds == 0
    # max_rounds counts training rounds: the 3 statistics rounds come on top of it.
    assert genesis_for(SPEC, max_rounds=3).training.stopping.merged_rounds == 3 + 3


def test_stopping_during_the_statistics_rounds_keeps_the_model() -> None:
    site = two_sites()[0]
    before = site.parameters()
    trainer = SwarmTrainer.from_local_trainer(site, genesis_for(SPEC, max_rounds=10))
    offer = trainer.next_sync()
    merged = trainer.merged(result(1, offer.parameters, 60))
    assert merged.kind == STATISTICS
    stats = result(1, offer.parameters, 60)
    summary = trainer.finish("stopped by vote", stats)
    assert summary.final_hash is None  # the last merge was statistics, not a model
    np.testing.assert_array_equal(summary.parameters, before)


def test_the_torch_helper_leaves_normalisation_to_the_user() -> None:
    model = nn.Linear(30, 2)
    spec_free = TensorDataset(torch.zeros(8, 30), torch.zeros(8, dtype=torch.int64))
    trainer = SwarmTrainer.from_torch(
        model,
        DataLoader(spec_free, batch_size=4),
        torch.optim.SGD(model.parameters(), lr=0.1),
        genesis_for(SPEC, max_rounds=2, statistics=0),
    )
    assert trainer.statistics_rounds == 0
    assert trainer.next_sync().kind == TRAINING


SITE = """
[node]
name = "a"

[data]
source = "breast_cancer"

[data.preprocess]
{line}

[model]
kind = "mlp"
n_features = 30
n_classes = 2
hidden = [1]
"""


@pytest.mark.parametrize(
    ("line", "mode"),
    [
        ("", "swarm"),
        ('standardize = "swarm"', "swarm"),
        ('standardize = "local"', "local"),
        ('standardize = "none"', "none"),
        ("standardize = true", "local"),
        ("standardize = false", "none"),
    ],
)
def test_site_toml_standardize_switch(tmp_path: Path, line: str, mode: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(line=line))
    assert NodeConfig.load(path).data.preprocess.mode == mode


@pytest.mark.parametrize("value", ['"global"', "1", '"Swarm"'])
def test_site_toml_standardize_errors_name_file_key_and_value(tmp_path: Path, value: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(line=f"standardize = {value}"))
    with pytest.raises(ConfigError) as error:
        NodeConfig.load(path)
    message = str(error.value)
    assert str(path) in message
    assert "data.preprocess.standardize" in message
    assert value.strip('"') in message
    assert "'swarm', 'local', 'none'" in message
    with pytest.raises(ConfigError, match=r"data.preprocess.standardize = 'loc'"):
        NodeConfig.load(path, overrides=["data.preprocess.standardize=loc"])


def test_training_summary_exports_the_final_model_with_its_pooled_preprocessing(tmp_path: Path) -> None:
    """The embedding API's route to `swarmnode predict`: a summary's model and preprocessing
    written with `write_export` predict a CSV (with and without labels) exactly as the
    trainer tested."""
    import csv

    from swarmnode.export import FinalModel, load_export, predict_file, write_export

    sites = two_sites()
    data = load_dataset("breast_cancer")
    test = data.subset(np.arange(400, data.n_samples))
    k = statistics_rounds(30, 35)
    genesis = genesis_for(SPEC, max_rounds=k + 2)
    trainers = [SwarmTrainer.from_local_trainer(s, genesis, test_data=test) for s in sites]
    for round_ in range(1, k + 3):
        offers = [t.next_sync() for t in trainers]
        weights = np.array([o.num_samples for o in offers], dtype=np.float64)
        mean = sum(w * o.parameters.astype(np.float64) for w, o in zip(weights, offers, strict=True))
        merged = (mean / weights.sum()).astype(np.float32)
        for t in trainers:
            t.merged(result(round_, merged, int(weights.sum())))
    summary = trainers[0].finish("max_rounds")
    assert summary.test is not None
    assert summary.model is sites[0].model
    assert summary.preprocessor is sites[0].preprocessor
    assert summary.preprocessor.config.mode == "swarm"

    final = FinalModel.from_summary(summary, SPEC, test.class_names, label_column="diagnosis")
    write_export(tmp_path / "export", final)
    assert load_export(tmp_path / "export").preprocessor.mean.tolist() == summary.preprocessor.mean.tolist()
    for labelled in (True, False):
        path = tmp_path / f"test-{labelled}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*test.feature_names, *(["diagnosis"] if labelled else [])])
            for x, y in zip(test.features, test.labels, strict=True):
                label = [test.class_names[int(y)]] if labelled else []
                writer.writerow([*(repr(float(v)) for v in x), *label])
        rows, metrics = predict_file(tmp_path / "export", str(path), tmp_path / f"pred-{labelled}.csv")
        assert rows == test.n_samples
        assert (metrics == summary.test) if labelled else metrics is None
        with (tmp_path / f"pred-{labelled}.csv").open() as handle:
            predicted = [r["predicted"] for r in csv.DictReader(handle)]
        assert len(predicted) == test.n_samples
        assert set(predicted) <= set(test.class_names)


class _JoinerCatchingUp:
    """A joining site's node as `SwarmTrainer.arun` sees it: its ledger starts empty and,
    once it waits, has caught up to its admission, after the statistics rounds merged."""

    def __init__(self, merged: list[np.ndarray]) -> None:
        self.node_id = make_identity(9, "joiner").node_id
        self.ledger = _LedgerWithMergedRounds(merged)
        self.contract = SimpleNamespace(
            history=tuple, state=SimpleNamespace(merged_rounds=0), stopped=None, is_member=lambda n: False
        )
        self.offers: list[np.ndarray] = []

    async def wait_for(self, predicate: object) -> None:
        history = self.ledger.contract.history()
        self.contract = SimpleNamespace(
            history=lambda: history,
            state=SimpleNamespace(merged_rounds=len(self.ledger.models)),
            stopped=None,
            is_member=lambda n: n == self.node_id,
        )
        assert predicate(self.contract)  # type: ignore[operator]

    async def merged_parameters(self, params_hash: bytes) -> np.ndarray:
        return await self.ledger.merged_parameters(params_hash)

    async def merge(self, parameters: np.ndarray, num_samples: int, **_: object) -> MergeResult:
        self.offers.append(np.asarray(parameters))
        raise SwarmStopped("enough for this test")


async def test_a_late_joiner_offers_a_model_not_its_statistics_into_a_training_round() -> None:
    """Seen with real processes (issue 22): a site joining after the statistics rounds
    offered its own statistics, since its ledger was still empty when it started, and they
    were merged into a training round as if they were a model (merged ROC AUC 0.98 -> 0.54)."""
    sites = two_sites()
    k = statistics_rounds(30, 35)
    genesis = genesis_for(SPEC, max_rounds=k + 2)
    trainers = [SwarmTrainer.from_local_trainer(s, genesis) for s in sites]
    merged_vectors = merge_rounds(trainers, k)
    expected = trainers[0].next_sync()
    joiner_site = two_sites()[0]
    joiner = SwarmTrainer.from_local_trainer(joiner_site, genesis)
    node = _JoinerCatchingUp(merged_vectors)
    await joiner.arun(node, inline_compute=True)  # type: ignore[arg-type]
    assert len(node.offers) == 1
    assert not joiner.standardizing
    # the model, standardised with the swarm's pooled statistics
    np.testing.assert_array_equal(node.offers[0], expected.parameters)
