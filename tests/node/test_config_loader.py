from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from swarmnode.config import ConfigError, load_config


@dataclass(frozen=True)
class Training:
    lr: float = 0.01
    epochs: int = 1
    optimizer: Literal["sgd", "adam"] = "adam"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class Site:
    name: str
    key_file: Path
    bootstrap: tuple[str, ...] = ()
    label: str | None = None
    training: Training = field(default_factory=Training)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_loads_nested_tables_defaults_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "a"\nkey_file = "k"\nbootstrap = ["x"]\n[training]\nlr = 1\n')
    site = load_config(Site, path, overrides=["training.epochs=3", "training.optimizer=sgd"])
    assert site == Site("a", Path("k"), ("x",), None, Training(lr=1.0, epochs=3, optimizer="sgd"))
    assert isinstance(site.training.lr, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "a"\n', r"missing key key_file \(a path"),
        ('name = "a"\nkey_file = "k"\nnmae = 1\n', "unknown key nmae; expected one of"),
        ('name = "a"\nkey_file = "k"\n[training]\nlr = "fast"\n', r"training.lr = 'fast': expected a number"),
        (
            'name = "a"\nkey_file = "k"\n[training]\nepochs = 1.5\n',
            "training.epochs = 1.5: expected an integer",
        ),
        ('name = "a"\nkey_file = "k"\n[training]\noptimizer = "rmsprop"\n', "one of 'sgd', 'adam'"),
        ('name = "a"\nkey_file = "k"\n[training]\nlr = -1\n', "training: lr must be > 0"),
        ('name = "a"\nkey_file = "k"\nbootstrap = [1]\n', r"bootstrap\[0\] = 1: expected a string"),
        ('name = "a"\nkey_file = "k"\nlabel = 3\n', "label = 3: expected a string or nothing"),
        ('name = "a"\nkey_file = "k"\ntraining = 3\n', "training = 3: expected a table"),
        ("name = \n", "not valid TOML"),
    ],
)
def test_errors_name_file_key_value_and_expectation(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(Site, path)
    assert str(path) in str(info.value)


def test_missing_file_and_bad_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Site, tmp_path / "none.toml")
    path = write(tmp_path, 'name = "a"\nkey_file = "k"\n')
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(Site, path, overrides=["training.lr"])
    with pytest.raises(ConfigError, match="name is not a table"):
        load_config(Site, path, overrides=["name.x=1"])


SITE_TOML = """
[node]
name = "site-a"
key_file = "keys/a.key"

[network]
port = 7001
bootstrap = ["/ip4/127.0.0.1/tcp/7000/p2p/12D3KooWabc"]

[data]
source = "site-a.npz"
test_source = "breast_cancer"

[data.preprocess]
log1p = true

[model]
kind = "mlp"
n_features = 30
n_classes = 2
hidden = [16, 8]
dropout = 0.1

[training]
lr = 0.005
batch_size = 16

[swarm]
weightage = 50
"""


def test_site_toml_resolves_paths_and_builds_library_types(tmp_path: Path) -> None:
    from models.spec import ModelSpec
    from swarmnode.config import NodeConfig

    path = tmp_path / "site.toml"
    path.write_text(SITE_TOML)
    config = NodeConfig.load(path)

    assert config.node.key_file == tmp_path / "keys/a.key"
    assert config.node.storage_dir == tmp_path / "state"
    assert config.ledger.genesis == tmp_path / "genesis.cbor"
    assert config.data.source == str(tmp_path / "site-a.npz")
    assert config.data.test_source == "breast_cancer"
    assert config.data.preprocess.log1p
    assert config.model == ModelSpec(kind="mlp", n_features=30, n_classes=2, hidden=(16, 8), dropout=0.1)
    assert config.training.lr == 0.005
    assert config.swarm.weightage == 50


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("swarm.weightage=101", "swarm: weightage must be in 1-100"),
        ("model.kind=transformer", r"model.kind = 'transformer': expected one of 'logreg', 'mlp', 'cnn'"),
        ("model.hidden=[]", "model: mlp needs at least one hidden layer"),
        ("network.port=70000", "network: port must be in 0-65535"),
        ("training.optimizer=rmsprop", "training.optimizer = .rmsprop.: expected one of .sgd."),
        ("model.image_shape=[1, 8]", r"model.image_shape = \[1, 8\]: expected a list of 3 items"),
    ],
)
def test_site_toml_value_errors(tmp_path: Path, override: str, message: str) -> None:
    from swarmnode.config import NodeConfig

    path = tmp_path / "site.toml"
    path.write_text(SITE_TOML)
    with pytest.raises(ConfigError, match=message):
        NodeConfig.load(path, overrides=[override])
