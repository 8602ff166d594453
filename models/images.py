"""Image data: a folder per class of PNG / JPEG files, read into a `models.data.Dataset`.

``load_image_folder(root, image_shape)`` reads ``root/<class>/<image>``: the class names
are the folder names, sorted; every image is decoded with Pillow, converted to grey
("L", 1 channel) or RGB (3 channels), resized to the model's height x width (bilinear)
and scaled to [0, 1]. One row per image holds its pixels channel-major
(``pixel_names``: the same names at every site and in an export, so the columns line up
by name as for tables). Given the swarm's ``class_names`` (genesis), a site with only
some of the class folders takes part (its labels are numbered as the swarm's); a folder
that is not one of the swarm's classes is refused, listed.

`ImageAugmenter` is training-time augmentation (`models.training.LocalTrainer` applies it
to training batches only; validation, test and prediction see the images as read): a
random rotation, zoom and shift per image (and a horizontal flip with ``"affine_flip"``),
drawn from the trainer's generator and applied to the whole batch by MONAI's
``AffineTransform``. `save_image_folders` writes a `Dataset` of small images (e.g.
scikit-learn's 8 x 8 digits) as such a folder tree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal, final, get_args

import numpy as np
import torch

from .data import Dataset, DatasetError, FloatMatrix, MissingFileError

ImageAugment = Literal["none", "affine", "affine_flip"]
IMAGE_AUGMENTS: Final[tuple[str, ...]] = get_args(ImageAugment)
IMAGE_SUFFIXES: Final = (".png", ".jpg", ".jpeg")
ImageShape = tuple[int, int, int]  # (channels, height, width)

# Augmentation ranges: small enough that a digit or an X-ray stays what it was.
MAX_ROTATION: Final = math.radians(15.0)
MAX_ZOOM: Final = 0.1  # scale in [0.9, 1.1]
MAX_SHIFT: Final = 0.1  # of the image's width / height


class ImageFileError(DatasetError):
    """An image file cannot be read (corrupt, truncated, not an image)."""


class ClassFolderError(DatasetError):
    """The class folders of an image folder are not usable (too few, unknown, empty)."""


def pixel_names(image_shape: ImageShape) -> tuple[str, ...]:
    """The feature names of an image's flat row: ``c{channel}y{row}x{column}``."""
    channels, height, width = image_shape
    return tuple(f"c{c}y{y}x{x}" for c in range(channels) for y in range(height) for x in range(width))


def _class_folders(root: Path, class_names: Sequence[str] | None) -> tuple[tuple[str, ...], list[Path]]:
    """(the class names, the folders present); refuses unknown folders, listed."""
    if not root.is_dir():
        raise MissingFileError(f"{root}: no such image folder (expected one sub-folder per class)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = [p.name for p in folders]
    if class_names is None:
        if len(found) < 2:
            raise ClassFolderError(
                f"{root}: need one sub-folder per class, at least 2; found {found or 'none'}"
            )
        return tuple(found), folders
    unknown = [name for name in found if name not in class_names]
    if unknown:
        raise ClassFolderError(
            f"{root}: class folders {unknown} are not among the swarm's classes ({', '.join(class_names)})"
        )
    if not folders:
        raise ClassFolderError(f"{root}: no class folders (the swarm's classes: {', '.join(class_names)})")
    return tuple(class_names), folders


def describe_image_folder(root: str | Path) -> tuple[tuple[str, ...], int]:
    """(class names, channels) of an image folder: its class sub-folders, sorted, and 1 if its
    first image is grey (Pillow modes 1, L, LA, I, F), else 3 (RGB)."""
    from PIL import Image, UnidentifiedImageError

    class_names, folders = _class_folders(Path(root), None)
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    with Image.open(path) as image:
                        mode = image.mode
                except (UnidentifiedImageError, OSError) as exc:
                    raise ImageFileError(f"{path}: not a readable PNG/JPEG image ({exc})") from None
                return class_names, 1 if mode.split(";")[0] in ("1", "L", "LA", "I", "F") else 3
    raise ClassFolderError(f"{root}: no .png/.jpg/.jpeg images in its class folders")


def read_image(path: Path, image_shape: ImageShape) -> FloatMatrix:
    """One image as a (channels, height, width) float32 array in [0, 1]."""
    from PIL import Image, UnidentifiedImageError  # Pillow: matplotlib's dependency

    channels, height, width = image_shape
    if channels not in (1, 3):
        raise DatasetError(f"{path}: images have 1 (grey) or 3 (RGB) channels, not {channels}")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            converted = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageFileError(f"{path}: not a readable PNG/JPEG image ({exc})") from None
    if converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(converted, dtype=np.float32) / np.float32(255.0)
    return pixels.reshape(height, width, channels).transpose(2, 0, 1)


def load_image_folder(
    root: str | Path, image_shape: ImageShape, *, class_names: Sequence[str] | None = None
) -> Dataset:
    """``root/<class>/<image>`` as a Dataset of flat pixel rows (see the module docstring).
    Files other than .png / .jpg / .jpeg (hidden ones aside) are refused, named."""
    root = Path(root)
    names, folders = _class_folders(root, class_names)
    rows: list[FloatMatrix] = []
    labels: list[int] = []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ImageFileError(
                    f"{path}: not a .png, .jpg or .jpeg file in class folder {folder.name!r}"
                )
            rows.append(read_image(path, image_shape).reshape(-1))
            labels.append(names.index(folder.name))
    if not rows:
        raise ClassFolderError(f"{root}: the class folders hold no images")
    return Dataset(
        features=np.stack(rows),
        labels=np.asarray(labels, dtype=np.int64),
        feature_names=pixel_names(image_shape),
        class_names=names,
        source=str(root),
    )


def read_images_for_prediction(
    root: Path, image_shape: ImageShape, class_names: Sequence[str]
) -> tuple[Dataset, bool]:
    """(data, labelled): `root` as a folder of class folders (labelled, as in training), or
    a folder of images to predict (unlabelled: every label 0)."""
    if any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        return load_image_folder(root, image_shape, class_names=class_names), True
    paths = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    bad = [p.name for p in paths if p.suffix.lower() not in IMAGE_SUFFIXES]
    if bad or not paths:
        raise ImageFileError(
            f"{root}: expected class folders or .png/.jpg/.jpeg images, found {bad or 'none'}"
        )
    rows = np.stack([read_image(p, image_shape).reshape(-1) for p in paths])
    data = Dataset(
        features=rows,
        labels=np.zeros(len(paths), dtype=np.int64),
        feature_names=pixel_names(image_shape),
        class_names=tuple(class_names),
        source=str(root),
    )
    return data, False


def save_image_folders(
    data: Dataset, root: Path, source_shape: tuple[int, int], size: int, value_range: tuple[float, float]
) -> None:
    """Write `data`'s rows (grey images of `source_shape`, values in `value_range`, mapped to
    0-255) as PNGs of ``size`` x ``size`` pixels into ``root/<class>/<row>.png``; every class
    gets a folder, an empty one where `data` has none of it."""
    from PIL import Image

    low, high = value_range
    for name in data.class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (row, label) in enumerate(zip(data.features, data.labels, strict=True)):
        scaled = (row.reshape(source_shape).astype(np.float64) - low) * (255.0 / (high - low))
        pixels = np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
        image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
        image.save(root / data.class_names[int(label)] / f"{i:05d}.png")


@final
class ImageAugmenter:
    """Random rotation (+-15 degrees), zoom (+-10 %) and shift (+-10 %) per image, and with
    ``"affine_flip"`` a horizontal flip half of the time; bilinear, zeros outside. Called on a
    batch of flat rows with the trainer's generator: same generator state, same batch."""

    def __init__(self, image_shape: ImageShape, kind: ImageAugment) -> None:
        if kind not in IMAGE_AUGMENTS or kind == "none":
            raise ValueError(f"augment must be one of {', '.join(IMAGE_AUGMENTS[1:])}, got {kind!r}")
        from monai.networks.layers.spatial_transforms import (
            AffineTransform,  # imported here: MONAI is slow to import
        )

        self.image_shape = image_shape
        self.kind = kind
        self._transform = AffineTransform(
            normalized=True, mode="bilinear", padding_mode="zeros", align_corners=False
        )

    def _thetas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator) * 2.0 - 1.0

        angle = uniform(n) * MAX_ROTATION
        zoom = 1.0 + uniform(n) * MAX_ZOOM
        shift = uniform(n, 2) * (2.0 * MAX_SHIFT)  # normalised coordinates span 2
        flip = torch.ones(n)
        if self.kind == "affine_flip":
            flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        first = torch.stack([cos * flip, -sin, shift[:, 0]], dim=1)
        second = torch.stack([sin * flip, cos, shift[:, 1]], dim=1)
        return torch.stack([first, second], dim=1)

    def __call__(self, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        images = rows.reshape(rows.shape[0], *self.image_shape)
        moved: torch.Tensor = self._transform(images, self._thetas(rows.shape[0], generator))
        return moved.reshape(rows.shape[0], -1)
