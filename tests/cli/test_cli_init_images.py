"""`swarmnode init --data FOLDER` on an image folder: the site trains a MONAI model sized from
the folder (classes from the class folders' names, channels from the images), resnet18 unless
--model names densenet121; a table model kind for a folder is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swarmnode.cli import main
from swarmnode.config import NodeConfig
from swarmnode.siteinput import load_site_data


def image_folder(root: Path, classes: tuple[str, ...], mode: str) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(3):
            shape = (12, 12) if mode == "L" else (12, 12, 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / name / f"{i}.png")
    return root


def init(tmp_path: Path, data: Path, *extra: str) -> int:
    argv = ["init", "--name", "x", "--dir", str(tmp_path / "site"), "--port", "7381", "--data", str(data)]
    return main([*argv, *extra])


def test_init_on_an_image_folder_writes_a_resnet18_site_with_the_folders_classes(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "xrays", ("normal", "pneumonia", "tuberculosis"), "L")
    assert init(tmp_path, folder, "--image-size", "16", "--widths", "4,8,8,8") == 0
    config = NodeConfig.load(tmp_path / "site" / "site.toml")
    assert config.model.kind == "resnet18"
    assert config.model.image_shape == (1, 16, 16)
    assert config.model.n_classes == 3
    assert config.model.conv_channels == (4, 8, 8, 8)
    assert config.data.kind == "image_folder"
    assert config.data.preprocess.mode == "none"
    data = load_site_data(config, None, str(config.data.source))
    assert data.class_names == ("normal", "pneumonia", "tuberculosis")
    assert data.n_features == config.model.n_features


def test_init_takes_densenet121_and_rgb_images(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "skin", ("benign", "malignant"), "RGB")
    assert init(tmp_path, folder, "--model", "densenet121", "--widths", "8,4") == 0
    model = NodeConfig.load(tmp_path / "site" / "site.toml").model
    assert (model.kind, model.image_shape, model.n_classes) == ("densenet121", (3, 32, 32), 2)


def test_init_refuses_a_table_model_for_an_image_folder_and_a_folder_of_one_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = image_folder(tmp_path / "xrays", ("normal", "pneumonia"), "L")
    assert init(tmp_path, folder, "--model", "mlp") == 2
    assert "is an image folder, which trains resnet18 or densenet121" in capsys.readouterr().err
    single = image_folder(tmp_path / "one", ("normal",), "L")
    assert init(tmp_path, single) == 2
    assert "need one sub-folder per class, at least 2" in capsys.readouterr().err
