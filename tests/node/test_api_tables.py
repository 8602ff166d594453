"""Per-site data in `create_local_swarm` and the README's in-memory route to swarm-agreed
standardisation (`SwarmTrainer.from_local_trainer(...).run(node)`), with real nodes over a
MemoryNetwork: `max_rounds` counts training rounds, the statistics rounds come first."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from consensus.genesis import Genesis
from models.data import Dataset, load_dataset
from models.preprocess import PreprocessConfig
from models.spec import logistic_regression
from models.tables import align
from models.training import LocalTrainer, TrainConfig
from swarmnode.api import SwarmNode, create_local_swarm, local_swarm
from swarmnode.simswarm import SIM_TIMEOUTS
from swarmnode.trainer import (
    STATISTICS,
    TRAINING,
    SwarmSetupError,
    SwarmTrainer,
    TrainingSummary,
    build_local_trainer,
    initial_parameters,
    statistics_rounds_for,
)

pytestmark = pytest.mark.timeout(180)

SPEC = logistic_regression(13, 3)  # wine: 13 features, 3 classes; 42 parameters


def wine_sites() -> list[Dataset]:
    data = load_dataset("wine")
    rows = np.random.default_rng(0).permutation(data.n_samples)
    parts = [data.subset(np.sort(rows[i::3])) for i in range(3)]
    # The third site never saw class_2: its table lists only the two classes it holds.
    third = parts[2].subset(np.flatnonzero(parts[2].labels < 2))
    parts[2] = Dataset(
        features=third.features,
        labels=third.labels,
        feature_names=third.feature_names,
        class_names=third.class_names[:2],
        source="ward-2",
    )
    return parts


def test_in_memory_sites_agree_on_standardisation_then_train_max_rounds(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    sites = wine_sites()
    configs = create_local_swarm(
        tmp_path, 3, model=SPEC, data=sites, max_rounds=2, timeouts=SIM_TIMEOUTS, secure=False
    )
    genesis = Genesis.load(configs[0].ledger.genesis)
    k = statistics_rounds_for(SPEC, PreprocessConfig())
    assert k == 2
    assert genesis.training.stopping.statistics_rounds == k
    assert genesis.training.stopping.max_rounds == 2
    assert genesis.data is not None
    assert genesis.data.class_names == ("class_0", "class_1", "class_2")
    assert genesis.data.feature_names == sites[0].feature_names
    assert [c.data.source for c in configs] == [str(tmp_path / f"site-{i}" / "data.npz") for i in range(3)]

    def train(node: SwarmNode, data: Dataset) -> TrainingSummary:
        local = LocalTrainer(
            SPEC,
            align(data, genesis.data),  # type: ignore[arg-type]
            TrainConfig(lr=0.05),
            generator=torch.Generator().manual_seed(0),
            preprocess=PreprocessConfig(standardize="swarm"),
            initial_parameters=initial_parameters(genesis, node.config),
        )
        return SwarmTrainer.from_local_trainer(local, genesis).run(node, timeout=120)

    with local_swarm(configs) as nodes, ThreadPoolExecutor(3) as pool:
        summaries = list(pool.map(train, nodes, sites))
    for summary in summaries:  # 2 statistics rounds, then max_rounds = 2 training rounds
        assert [r.kind for r in summary.rounds] == [STATISTICS] * k + [TRAINING] * 2
        assert summary.preprocessor is not None
        np.testing.assert_array_equal(summary.preprocessor.mean, summaries[0].preprocessor.mean)  # type: ignore[union-attr]
        np.testing.assert_array_equal(summary.parameters, summaries[0].parameters)
    # The same site data through its config: aligned to the genesis's table (3 classes).
    trainer, _ = build_local_trainer(configs[2], genesis)
    assert trainer.class_names == genesis.data.class_names


def test_per_site_data_as_files_datasets_or_arrays(tmp_path: Path) -> None:
    wine = load_dataset("wine")
    csv = tmp_path / "ward.csv"
    header = ",".join([*wine.feature_names, "y"])
    rows = [
        ",".join([*(repr(float(v)) for v in x), wine.class_names[y]])
        for x, y in zip(wine.features[:60], wine.labels[:60], strict=True)
    ]
    csv.write_text("\n".join([header, *rows]) + "\n")
    rows_ = np.random.default_rng(1).permutation(wine.n_samples)
    arrays = (wine.features[rows_[:89]], wine.labels[rows_[:89]])
    with pytest.raises(ValueError, match="one entry per site \\(3\\), got 2"):
        create_local_swarm(tmp_path / "bad", 3, model=SPEC, data=[str(csv), arrays], label_column="y")
    configs = create_local_swarm(
        tmp_path / "ok",
        2,
        model=SPEC,
        data=[str(csv), wine.subset(np.arange(120, 178))],
        label_column="y",
        secure=False,
    )
    assert configs[0].data.source == str(csv.resolve())
    assert configs[1].data.source == str(tmp_path / "ok" / "site-1" / "data.npz")
    genesis = Genesis.load(configs[0].ledger.genesis)
    assert genesis.data is not None
    assert genesis.data.class_names == wine.class_names
    trainers = [build_local_trainer(c, genesis)[0] for c in configs]
    assert [t.class_names for t in trainers] == [wine.class_names] * 2
    # (x, y) arrays: features named by column, classes by label value.
    configs = create_local_swarm(
        tmp_path / "arrays",
        2,
        model=SPEC,
        data=[arrays, (wine.features[rows_[89:]], wine.labels[rows_[89:]])],
        secure=False,
    )
    genesis = Genesis.load(configs[0].ledger.genesis)
    assert genesis.data is not None
    assert genesis.data.class_names == ("0", "1", "2")
    assert build_local_trainer(configs[1], genesis)[0].num_samples > 0
    # Without data the sites bring their own loop: no table, no statistics rounds, no source.
    own = create_local_swarm(tmp_path / "own", 2, model=SPEC, secure=False)
    bare = Genesis.load(own[0].ledger.genesis)
    assert (bare.data, bare.training.stopping.statistics_rounds, own[0].data.source) == (None, 0, None)
    with pytest.raises(SwarmSetupError, match=r"\[data\] has no source"):
        build_local_trainer(own[0], bare)
