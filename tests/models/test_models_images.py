"""Image data (`models.images`) and MONAI's image networks as model kinds
(`models.monai_nets`): folders to rows, refusals naming the file or folder, augmentation
only in training, and resnet18 / densenet121 built, flattened and merged like every spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import Dataset, MissingFileError
from models.flatten import LayoutMismatch, flatten, spec_layout, unflatten
from models.images import (
    ClassFolderError,
    ImageAugmenter,
    ImageFileError,
    load_image_folder,
    pixel_names,
    read_images_for_prediction,
    save_image_folders,
)
from models.merge import weighted_mean
from models.nets import build_model
from models.spec import ModelSpec, SpecError, monai_image_net
from models.training import LocalTrainer, TrainConfig


def _png(path: Path, pixels: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode=mode).save(path)


def _folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (6, 5)) -> Path:
    """`root/<class>/<i>.png`: grey images whose every pixel is 20 * (class index + 1) + i."""
    for k, (name, count) in enumerate(sorted(classes.items())):
        for i in range(count):
            _png(root / name / f"{i}.png", np.full(size, 20 * (k + 1) + i))
    return root


def test_class_names_are_the_sorted_folder_names_and_rows_are_scaled_pixels(tmp_path: Path) -> None:
    root = _folder(tmp_path / "site", {"pneumonia": 2, "normal": 3, "covid": 1})
    data = load_image_folder(root, (1, 6, 5))
    assert data.class_names == ("covid", "normal", "pneumonia")
    assert data.class_counts() == (1, 3, 2)
    assert data.features.shape == (6, 30)
    assert data.feature_names == pixel_names((1, 6, 5))
    assert data.feature_names[:2] == ("c0y0x0", "c0y0x1")
    assert data.features[0, 0] == pytest.approx(20 / 255)  # covid/0.png
    assert data.features.dtype == np.float32


def test_images_are_resized_and_converted_to_the_models_channels(tmp_path: Path) -> None:
    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    _png(tmp_path / "a" / "x.png", rgb, "RGB")
    _png(tmp_path / "b" / "y.jpg", np.full((7, 3), 128))
    grey = load_image_folder(tmp_path, (1, 4, 4))
    assert grey.features.shape == (2, 16)
    colour = load_image_folder(tmp_path, (3, 4, 4))
    assert colour.features.shape == (2, 48)
    # the red image: channel 0 full, channels 1 and 2 empty (channel-major rows)
    assert np.allclose(colour.features[0, :16], 1.0)
    assert np.allclose(colour.features[0, 16:], 0.0)
    # the JPEG grey image, converted to RGB, is the same in all three channels
    assert np.allclose(colour.features[1, :16], colour.features[1, 32:], atol=1 / 255)


def test_a_corrupt_image_and_a_stray_file_are_refused_naming_the_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "site", {"a": 2, "b": 2})
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageFileError, match=r"b/broken\.png: not a readable PNG/JPEG image"):
        load_image_folder(root, (1, 6, 5))
    (root / "b" / "broken.png").unlink()
    truncated = (root / "a" / "0.png").read_bytes()[:40]  # inside the pixel data
    (root / "a" / "0.png").write_bytes(truncated)
    with pytest.raises(ImageFileError, match=r"a/0\.png"):
        load_image_folder(root, (1, 6, 5))
    _png(root / "a" / "0.png", np.zeros((6, 5)))
    (root / "a" / "notes.txt").write_text("scanner settings")
    with pytest.raises(ImageFileError, match=r"a/notes\.txt: not a \.png, \.jpg or \.jpeg file"):
        load_image_folder(root, (1, 6, 5))
    (root / "a" / "notes.txt").unlink()
    (root / "a" / ".DS_Store").write_bytes(b"hidden files are skipped")
    assert load_image_folder(root, (1, 6, 5)).n_samples == 4


def test_a_site_missing_a_class_folder_takes_part_with_the_swarms_class_numbering(tmp_path: Path) -> None:
    swarm_classes = ("covid", "normal", "pneumonia")
    root = _folder(tmp_path / "site", {"covid": 1, "pneumonia": 2})
    data = load_image_folder(root, (1, 6, 5), class_names=swarm_classes)
    assert data.class_names == swarm_classes
    assert data.class_counts() == (1, 0, 2)
    # without the swarm's classes, the same folder would number pneumonia 1, not 2
    assert load_image_folder(root, (1, 6, 5)).class_counts() == (1, 2)

    _folder(root, {"influenza": 1})
    with pytest.raises(ClassFolderError, match=r"class folders \['influenza'\] are not among the swarm's"):
        load_image_folder(root, (1, 6, 5), class_names=swarm_classes)


def test_folders_that_cannot_be_a_dataset_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="no such image folder"):
        load_image_folder(tmp_path / "absent", (1, 4, 4))
    one = _folder(tmp_path / "one", {"only": 2})
    with pytest.raises(ClassFolderError, match=r"at least 2; found \['only'\]"):
        load_image_folder(one, (1, 4, 4))
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    with pytest.raises(ClassFolderError, match="hold no images"):
        load_image_folder(empty, (1, 4, 4))


def test_saved_folders_read_back_as_the_same_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    source = Dataset(
        features=rng.integers(0, 17, size=(12, 64)).astype(np.float32),
        labels=np.arange(12, dtype=np.int64) % 3,
        feature_names=tuple(f"p{i}" for i in range(64)),
        class_names=("0", "1", "2"),
        source="test",
    )
    save_image_folders(source, tmp_path / "imgs", (8, 8), 8, (0.0, 16.0))
    read = load_image_folder(tmp_path / "imgs", (1, 8, 8))
    assert read.class_counts() == (4, 4, 4)
    by_class = [np.sort(source.features[source.labels == k] / 16.0, axis=0) for k in range(3)]
    got = [np.sort(read.features[read.labels == k], axis=0) for k in range(3)]
    for want, have in zip(by_class, got, strict=True):
        assert np.allclose(want, have, atol=0.5 / 255)
    images, labelled = read_images_for_prediction(tmp_path / "imgs", (1, 8, 8), ("0", "1", "2"))
    assert labelled
    assert np.array_equal(images.features, read.features)
    loose, labelled = read_images_for_prediction(tmp_path / "imgs" / "1", (1, 8, 8), ("0", "1", "2"))
    assert not labelled
    assert loose.n_samples == 4


def test_augmentation_moves_images_reproducibly_and_keeps_their_shape() -> None:
    rows = torch.rand(16, 2 * 8 * 8)
    augment = ImageAugmenter((2, 8, 8), "affine_flip")
    first = augment(rows, torch.Generator().manual_seed(3))
    again = augment(rows, torch.Generator().manual_seed(3))
    other = augment(rows, torch.Generator().manual_seed(4))
    assert first.shape == rows.shape
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.allclose(first, rows, atol=1e-3)
    with pytest.raises(ValueError, match="augment must be one of affine, affine_flip"):
        ImageAugmenter((1, 8, 8), "none")


def test_augmentation_applies_to_training_batches_only(tmp_path: Path) -> None:
    data = load_image_folder(_folder(tmp_path / "site", {"a": 6, "b": 6}, (8, 8)), (1, 8, 8))
    seen: list[int] = []

    def counting(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seen.append(int(rows.shape[0]))
        return rows

    spec = monai_image_net("resnet18", (1, 8, 8), 2, (4, 4, 4, 4))
    trainer = LocalTrainer(
        spec,
        data,
        TrainConfig(batch_size=4, validation_fraction=0.25),
        generator=torch.Generator().manual_seed(0),
        preprocess=None,
        augment=counting,
    )
    trainer.validate()
    trainer.evaluate(data)
    assert seen == []
    trainer.train_epochs(1)
    assert sum(seen) == trainer.num_samples == 8  # every training row, once per epoch


# -- MONAI's networks as model kinds ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "parameters"),
    [("resnet18", 11_176_266), ("densenet121", 6_957_834)],
)
def test_monai_kinds_are_monais_networks_with_their_parameter_counts(kind: str, parameters: int) -> None:
    import monai.networks.nets as monai_nets

    spec = monai_image_net(kind, (1, 32, 32), 10)  # type: ignore[arg-type]
    model = build_model(spec, torch.Generator().manual_seed(0))
    assert sum(p.numel() for p in model.parameters()) == parameters
    reference = (
        monai_nets.resnet18(spatial_dims=2, n_input_channels=1, num_classes=10)
        if kind == "resnet18"
        else monai_nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=10)
    )
    ours = [(name.removeprefix("backbone."), t.shape) for name, t in model.state_dict().items()]
    assert ours == [(name, t.shape) for name, t in reference.state_dict().items()]
    assert spec.conv_channels == ((64, 128, 256, 512) if kind == "resnet18" else (64, 32))


@pytest.mark.parametrize(
    ("kind", "widths", "size"), [("resnet18", (4, 8, 8, 16), 16), ("densenet121", (8, 4), 32)]
)
def test_monai_kinds_build_reproducibly_train_and_merge_like_every_spec(
    kind: str, widths: tuple[int, ...], size: int
) -> None:
    spec = monai_image_net(kind, (1, size, size), 3, widths)  # type: ignore[arg-type]
    assert ModelSpec.from_canonical_bytes(spec.canonical_bytes()) == spec
    a = build_model(spec, torch.Generator().manual_seed(1))
    b = build_model(spec, torch.Generator().manual_seed(2))
    assert np.array_equal(flatten(a), flatten(build_model(spec, torch.Generator().manual_seed(1))))
    assert flatten(a).size == spec_layout(spec).size
    x = torch.rand(4, size * size)
    assert a(x).shape == (4, 3)
    merged = weighted_mean([flatten(a), flatten(b)], [1.0, 3.0])
    target = build_model(spec, torch.Generator().manual_seed(3))
    unflatten(target, merged)
    assert np.array_equal(flatten(target), merged)
    assert target.eval()(x).shape == (4, 3)
    wider = monai_image_net(kind, (1, size, size), 3, tuple(2 * w for w in widths))  # type: ignore[arg-type]
    with pytest.raises(LayoutMismatch):
        unflatten(build_model(wider, torch.Generator().manual_seed(0)), merged, spec_layout(spec))


def test_monai_specs_state_their_structure_and_refuse_what_does_not_apply() -> None:
    assert monai_image_net("resnet18", (1, 8, 8), 2) == monai_image_net(
        "resnet18", (1, 8, 8), 2, (64, 128, 256, 512)
    )
    small = monai_image_net("resnet18", (1, 8, 8), 2, (8, 16, 32, 64))
    assert small.spec_hash() != monai_image_net("resnet18", (1, 8, 8), 2).spec_hash()
    with pytest.raises(SpecError, match=r"resnet18: conv_channels holds its 4 widths"):
        monai_image_net("resnet18", (1, 8, 8), 2, (8, 16))
    with pytest.raises(SpecError, match=r"densenet121 needs images of at least 32 x 32 pixels"):
        monai_image_net("densenet121", (1, 16, 16), 2)
    with pytest.raises(SpecError, match="densenet121 always has batch norm"):
        ModelSpec(kind="densenet121", n_features=64, n_classes=2, image_shape=(1, 8, 8))
    with pytest.raises(SpecError, match="densenet121 has no hidden or dropout"):
        ModelSpec(
            kind="densenet121",
            n_features=64,
            n_classes=2,
            image_shape=(1, 8, 8),
            batch_norm=True,
            hidden=(4,),
        )
    with pytest.raises(SpecError, match="resnet18 needs image_shape"):
        ModelSpec(kind="resnet18", n_features=64, n_classes=2, batch_norm=True)
