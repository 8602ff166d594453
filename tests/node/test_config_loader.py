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
