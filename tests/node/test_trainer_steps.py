"""SwarmTrainer without a network: its steps, its setup checks and the blocking driver
against a duck-typed node (a real swarm: test_trainer_real_node.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from consensus.genesis import FoundingMember, Genesis, StoppingRule, TrainingParams
from models.data import load_dataset
from models.preprocess import PreprocessConfig
from models.spec import ModelSpec, logistic_regression, mlp
from models.training import LocalTrainer, TrainConfig
from swarmnode.config import DataSection, NodeConfig, NodeSection
from swarmnode.node import MergeResult, SwarmStopped
from swarmnode.testing import make_identity
from swarmnode.trainer import (
    RoundRecord,
    SwarmCallback,
    SwarmSetupError,
    SwarmTrainer,
    TrainingSummary,
    check_model,
    train_with_swarm,
)

pytestmark = pytest.mark.timeout(120)

SPEC = logistic_regression(30, 2)


def genesis_for(spec: ModelSpec, **training: object) -> Genesis:
    stopping = training.pop("stopping", StoppingRule(max_rounds=3))
    return Genesis(
        name="test-swarm",
        # A secure genesis needs t + 1 founders (t = 2 of 3).
        members=tuple(FoundingMember(name=n, node_id=make_identity(i).node_id) for i, n in enumerate("abc")),
        training=TrainingParams(model_spec_hash=spec.spec_hash(), stopping=stopping, **training),  # type: ignore[arg-type]
    )


def merge_result(round_: int, parameters: np.ndarray, *, stopped: bool = False) -> MergeResult:
    return MergeResult(
        round=round_,
        parameters=parameters,
        params_hash=hashlib.sha256(parameters.tobytes()).digest(),
        participants=(make_identity(0).node_id, make_identity(1).node_id),
        weight=100,
        stopped=stopped,
    )


@pytest.fixture(scope="module")
def cancer_trainer_parts() -> tuple[LocalTrainer, object]:
    torch.set_num_threads(1)
    data = load_dataset("breast_cancer")
    rows = np.random.default_rng(0).permutation(data.n_samples)
    site, test = data.subset(np.sort(rows[:200])), data.subset(np.sort(rows[400:]))
    trainer = LocalTrainer(
        SPEC,
        site,
        TrainConfig(batch_size=32, lr=0.01),
        generator=torch.Generator().manual_seed(0),
        preprocess=PreprocessConfig(standardize="local"),  # swarm standardisation: test_trainer_standardize
    )
    return trainer, test


class Recorder(SwarmCallback):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_round_start(self, round_index: int, trainer: SwarmTrainer) -> None:
        self.events.append(("start", round_index))

    def on_merged(self, result: MergeResult, record: RoundRecord) -> None:
        self.events.append(("merged", result.round))

    def on_stop(self, summary: TrainingSummary) -> None:
        self.events.append(("stop", len(summary.rounds)))


def test_steps_with_a_local_trainer(cancer_trainer_parts: tuple[LocalTrainer, object]) -> None:
    local, test = cancer_trainer_parts
    recorder = Recorder()
    trainer = SwarmTrainer.from_local_trainer(
        local,
        genesis_for(SPEC, sync_every=2),
        test_data=test,
        callbacks=[recorder],  # type: ignore[arg-type]
    )
    assert trainer.metric == "roc_auc"
    assert trainer.merge_method == "mean"
    offer = trainer.next_sync()
    assert offer.num_samples == local.num_samples == 160  # 200 rows minus the 20 % validation split
    assert offer.val_metric is not None
    assert 0.5 < offer.val_metric <= 1.0
    np.testing.assert_array_equal(offer.parameters, local.parameters())

    merged = (offer.parameters * 0.5).astype(np.float32)  # what "the swarm" sends back
    record = trainer.merged(merge_result(1, merged))
    np.testing.assert_array_equal(local.parameters(), merged)  # loaded in place
    assert record.round == 1
    assert record.local_epochs == 2
    assert record.val_metric == offer.val_metric
    assert record.merged is not None
    assert record.local is not None
    assert record.local.roc_auc == offer.val_metric
    with pytest.raises(RuntimeError, match="next_sync"):
        trainer.merged(merge_result(2, merged))

    trainer.next_sync()
    final = np.zeros_like(merged)
    summary = trainer.finish("training stopped: max rounds", merge_result(1, final, stopped=True))
    np.testing.assert_array_equal(summary.parameters, final)
    np.testing.assert_array_equal(local.parameters(), final)
    assert summary.final_hash == hashlib.sha256(final.tobytes()).digest()
    assert summary.test is not None
    assert summary.test.n_samples == 169
    assert summary.to_dict()["rounds"][0]["round"] == 1  # type: ignore[index]
    assert recorder.events == [("start", 1), ("merged", 1), ("start", 2), ("stop", 1)]


def test_merge_method_rules_are_the_genesis_rules(cancer_trainer_parts: tuple[LocalTrainer, object]) -> None:
    local, _ = cancer_trainer_parts
    with pytest.raises(SwarmSetupError, match="secure = true") as refused:
        SwarmTrainer.from_local_trainer(local, genesis_for(SPEC), merge_method="median")
    assert "needs plaintext updates" in str(refused.value)
    plaintext = genesis_for(SPEC, secure=False, merge_method="median")
    assert SwarmTrainer.from_local_trainer(local, plaintext, merge_method="median").merge_method == "median"
    assert SwarmTrainer.from_local_trainer(local, plaintext).merge_method == "median"
    with pytest.raises(SwarmSetupError, match="differs from"):
        SwarmTrainer.from_local_trainer(local, plaintext, merge_method="trimmed_mean")
    with pytest.raises(ValueError, match="only allowed with secure = false"):
        genesis_for(SPEC, merge_method="trimmed_mean")  # genesis itself refuses the combination


def test_metric_must_fit_the_stopping_goal(cancer_trainer_parts: tuple[LocalTrainer, object]) -> None:
    local, _ = cancer_trainer_parts
    by_loss = genesis_for(SPEC, stopping=StoppingRule(max_rounds=3, goal="min"))
    assert SwarmTrainer.from_local_trainer(local, by_loss).metric == "loss"
    with pytest.raises(SwarmSetupError, match="goal 'min'"):
        SwarmTrainer.from_local_trainer(local, by_loss, metric="roc_auc")
    with pytest.raises(SwarmSetupError, match="one of"):
        SwarmTrainer.from_local_trainer(local, genesis_for(SPEC), metric="precision")


def _optimizer_steps(trainer: LocalTrainer) -> int:
    """Adam's step count (the same for every parameter tensor)."""
    states = list(trainer._optimizer.state.values())
    return 0 if not states else int(states[0]["step"])


@pytest.mark.parametrize("rows", [12, 200])
def test_a_step_budget_is_honoured_whatever_the_site_size(rows: int) -> None:
    """genesis sync_unit = "steps": a LocalTrainer takes exactly sync_every optimiser steps per
    round, across epoch boundaries (a 12-row site: 37 epochs' worth of one-batch epochs)."""
    data = load_dataset("breast_cancer")
    site = data.subset(np.sort(np.random.default_rng(1).permutation(data.n_samples)[:rows]))
    local = LocalTrainer(
        SPEC,
        site,
        TrainConfig(batch_size=32, validation_fraction=0.0),
        generator=torch.Generator().manual_seed(0),
        preprocess=PreprocessConfig(standardize="local"),
    )
    trainer = SwarmTrainer.from_local_trainer(local, genesis_for(SPEC, sync_unit="steps", sync_every=37))
    offer = trainer.next_sync()
    assert _optimizer_steps(local) == 37
    trainer.merged(merge_result(1, offer.parameters))
    trainer.next_sync()
    assert _optimizer_steps(local) == 74
    assert local.train_steps(3) > 0
    assert _optimizer_steps(local) == 77


def torch_parts(
    n: int = 40,
) -> tuple[nn.Module, DataLoader[tuple[torch.Tensor, torch.Tensor]], torch.optim.SGD]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=generator)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)
    return model, loader, torch.optim.SGD(model.parameters(), lr=0.1)


def test_torch_learner_counts_steps_and_loads_merges_in_place() -> None:
    model, loader, optimizer = torch_parts()
    steps = []
    optimizer.register_step_post_hook(lambda *args: steps.append(1))
    spec = mlp(4, 2, hidden=(8,))  # only the genesis hash matters to the trainer
    trainer = SwarmTrainer.from_torch(
        model, loader, optimizer, genesis_for(spec, sync_unit="steps", sync_every=7), val_loader=loader
    )
    offer = trainer.next_sync()
    assert len(steps) == 7  # 7 steps = one 5-batch epoch plus 2 batches
    assert offer.num_samples == 40
    assert offer.parameters.shape == (4 * 8 + 8 + 8 * 2 + 2,)
    record = trainer.merged(merge_result(1, np.zeros_like(offer.parameters)))
    assert all(float(p.detach().abs().sum()) == 0.0 for p in model.parameters())
    assert record.merged is not None
    assert math.isclose(record.merged.loss, math.log(2), rel_tol=1e-6)  # all-zero logits


class ScriptedNode:
    """Merges with a fixed partner vector; stops after `rounds` rounds (like SwarmNode.merge)."""

    def __init__(self, genesis: Genesis, rounds: int, *, announce_stop_in_result: bool) -> None:
        self.genesis = genesis
        self.rounds = rounds
        self.announce = announce_stop_in_result
        self.offers: list[tuple[np.ndarray, int, float | None]] = []
        self.final: MergeResult | None = None

    def merge(
        self,
        params: np.ndarray,
        num_samples: int,
        *,
        val_metric: float | None = None,
        timeout: float | None = None,
    ) -> MergeResult:
        if self.final is not None or len(self.offers) == self.rounds:
            raise SwarmStopped("training stopped: max rounds", self.final)
        self.offers.append((params.copy(), num_samples, val_metric))
        merged = ((params + 1.0) / 2).astype(np.float32)
        last = len(self.offers) == self.rounds
        result = merge_result(len(self.offers), merged, stopped=last and self.announce)
        if last:
            self.final = dataclasses.replace(result, stopped=True)
        return result


@pytest.mark.parametrize("announce", [True, False])
def test_train_with_swarm_runs_until_the_swarm_stops(announce: bool) -> None:
    model, loader, optimizer = torch_parts()
    genesis = genesis_for(mlp(4, 2, hidden=(8,)), sync_every=2)
    node = ScriptedNode(genesis, rounds=3, announce_stop_in_result=announce)
    recorder = Recorder()
    summary = train_with_swarm(
        node,  # type: ignore[arg-type]
        model,
        loader,
        optimizer,
        val_loader=loader,
        test_loader=loader,
        callbacks=[recorder],
    )
    assert [r.round for r in summary.rounds] == [1, 2, 3]
    assert [r.local_epochs for r in summary.rounds] == [2, 4, 6]
    assert all(n == 40 for _, n, _ in node.offers)
    assert all(v is not None for _, _, v in node.offers)
    assert node.final is not None
    np.testing.assert_array_equal(summary.parameters, node.final.parameters)
    assert summary.final_hash == node.final.params_hash
    assert summary.test is not None
    expected = [("start", 1), ("merged", 1), ("start", 2), ("merged", 2), ("start", 3), ("merged", 3)]
    if not announce:  # the stop shows up at the next sync point, after one more local stretch
        expected.append(("start", 4))
    assert recorder.events == [*expected, ("stop", 3)]


def test_check_model_names_both_hashes() -> None:
    config = NodeConfig(node=NodeSection(name="a"), data=DataSection(source="breast_cancer"), model=SPEC)
    check_model(genesis_for(SPEC), config)
    with pytest.raises(SwarmSetupError, match="not the model") as refused:
        check_model(genesis_for(mlp(30, 2, hidden=(4,))), config)
    assert SPEC.spec_hash().hex()[:16] in str(refused.value)
