"""`training.epochs` in a swarm: the local epochs per round are the genesis's
(``training.sync_every``). `swarmnode genesis --model-from` takes them from the founding
site's site.toml, and a site (CLI or embedding API) whose config says otherwise is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from consensus.genesis import Genesis
from models.spec import logistic_regression
from models.training import TrainConfig
from swarmnode.api import SwarmNode, create_local_swarm
from swarmnode.cli import main
from swarmnode.trainer import SwarmSetupError, build_local_trainer


def site(tmp_path: Path, epochs: int | None) -> Path:
    argv = ["init", "--name", "a", "--dir", str(tmp_path / "a"), "--port", "7391", "--data", "breast_cancer"]
    assert main(argv) == 0
    config = tmp_path / "a" / "site.toml"
    text = config.read_text()
    assert "# epochs = 1" in text  # init leaves it to the genesis
    if epochs is not None:
        config.write_text(text.replace("# epochs = 1", f"epochs = {epochs}"))
    return config


def genesis(tmp_path: Path, config: Path, *extra: str) -> int:
    member = f"a={tmp_path / 'a' / 'node.key'}@/ip4/127.0.0.1/tcp/7391"
    argv = ["genesis", "--member", member, "--model-from", str(config), "--no-secure", "--min-peers", "2"]
    (config.parent / "genesis.cbor").unlink(missing_ok=True)
    return main([*argv, "--out", str(config.parent / "genesis.cbor"), *extra])


def test_genesis_takes_the_founding_sites_epochs_per_round(tmp_path: Path) -> None:
    config = site(tmp_path, epochs=3)
    assert genesis(tmp_path, config) == 0
    assert Genesis.load(config.parent / "genesis.cbor").training.sync_every == 3
    assert genesis(tmp_path, config, "--sync-every", "2") == 0  # the organiser's flag wins
    assert Genesis.load(config.parent / "genesis.cbor").training.sync_every == 2


def test_genesis_without_epochs_merges_every_epoch(tmp_path: Path) -> None:
    config = site(tmp_path, epochs=None)
    assert genesis(tmp_path, config) == 0
    assert Genesis.load(config.parent / "genesis.cbor").training.sync_every == 1


def test_a_site_whose_epochs_contradict_the_genesis_is_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = site(tmp_path, epochs=5)
    assert genesis(tmp_path, config, "--sync-every", "2") == 0
    capsys.readouterr()
    assert main(["run", "--config", str(config), "--plain"]) == 2
    err = capsys.readouterr().err
    assert f"{config}: training.epochs = 5 local epochs per round" in err, err
    assert "trains 2 (training.sync_every): set training.epochs = 2 or remove it" in err, err
    assert err.count("\n") == 1
    assert main(["run", "--config", str(config), "--plain", "--set", "training.epochs=7"]) == 2
    assert "training.epochs = 7" in capsys.readouterr().err


def test_a_step_budget_refuses_any_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = site(tmp_path, epochs=4)
    assert genesis(tmp_path, config, "--sync-unit", "steps") == 2
    assert "--sync-unit steps counts steps: give --sync-every" in capsys.readouterr().err
    assert genesis(tmp_path, config, "--sync-unit", "steps", "--sync-every", "20") == 0
    from swarmnode.config import NodeConfig

    loaded = NodeConfig.load(config)
    with pytest.raises(SwarmSetupError, match="trains 20 optimiser steps per round"):
        build_local_trainer(loaded, Genesis.load(config.parent / "genesis.cbor"))


def test_the_embedding_api_refuses_a_config_with_other_epochs(tmp_path: Path) -> None:
    spec = logistic_regression(30, 2)
    configs = create_local_swarm(tmp_path, 2, model=spec, sync_every=2, secure=False)
    wrong = dataclasses.replace(configs[0], training=TrainConfig(epochs=10))
    with pytest.raises(SwarmSetupError, match=r"training\.epochs = 10 local epochs per round"):
        SwarmNode(wrong)
    agreeing = dataclasses.replace(configs[0], training=TrainConfig(epochs=2))
    assert agreeing.training.epochs == Genesis.load(configs[0].ledger.genesis).training.sync_every
