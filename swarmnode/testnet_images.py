"""The testnet's image dataset: scikit-learn's bundled 8 x 8 digits as PNG class folders.

``swarmnode testnet --dataset digits-images --model resnet18|densenet121`` gives every
site what a hospital's image archive looks like: ``data/site{i}/<class>/<n>.png`` (its
share per the scenario) and ``data/test/<class>/<n>.png``, the digits upscaled to
``--image-size`` pixels (nothing is downloaded). The sites read them with
`models.images.load_image_folder` (``[data] kind = "image_folder"``), genesis records the
class names, and the model is one of MONAI's (`models.monai_nets`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, cast, final

from .scaffold import SetupError, SiteSettings

if TYPE_CHECKING:
    from models.data import Dataset
    from models.schema import DataSchema
    from models.spec import ModelSpec
    from models.splits import SiteSplit

IMAGE_DATASETS: Final = {"digits-images": "digits"}  # name -> the bundled dataset drawn
IMAGE_MODELS: Final = ("resnet18", "densenet121")
DIGITS_SHAPE: Final = (8, 8)
DIGITS_RANGE: Final = (0.0, 16.0)  # scikit-learn's digits are counts 0-16


def image_spec(model: str, image_size: int, n_classes: int, widths: tuple[int, ...]) -> ModelSpec:
    """The MONAI model `model` for grey `image_size` x `image_size` images."""
    from models.spec import SpecError, monai_image_net

    if model not in IMAGE_MODELS:
        raise SetupError(f"--model {model!r}: image datasets train {' or '.join(IMAGE_MODELS)}")
    if image_size < 8:
        raise SetupError(f"--image-size {image_size}: at least 8 pixels")
    try:
        kind = cast(Literal["resnet18", "densenet121"], model)
        return monai_image_net(kind, (1, image_size, image_size), n_classes, widths)
    except SpecError as exc:
        raise SetupError(f"--model {model} --image-size {image_size} --widths: {exc}") from None


def save_image_sites(data_dir: Path, data: Dataset, split: SiteSplit, nodes: int, image_size: int) -> None:
    """``test/`` and one ``site<i>/`` folder of class folders per site in `data_dir`."""
    from models.images import save_image_folders

    data_dir.mkdir()
    save_image_folders(split.test_data(data), data_dir / "test", DIGITS_SHAPE, image_size, DIGITS_RANGE)
    for i in range(nodes):
        save_image_folders(
            split.site_data(data, i), data_dir / f"site{i}", DIGITS_SHAPE, image_size, DIGITS_RANGE
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ImageSites:
    """How an image testnet's sites read and train on their folders (the testnet options)."""

    image_size: int = 32
    widths: tuple[int, ...] = ()  # () : MONAI's standard widths
    augment: str = "none"
    standardize: str = "none"  # pixels are already in [0, 1]
    epochs: int = 10  # the local-only and central baselines' budget

    def spec(self, model: str, n_classes: int) -> ModelSpec:
        return image_spec(model, self.image_size, n_classes, self.widths)

    def schema(self, spec: ModelSpec, class_names: tuple[str, ...]) -> DataSchema:
        """What genesis records of the image table: its pixel columns and the class folders."""
        from models.images import pixel_names
        from models.schema import DataSchema

        assert spec.image_shape is not None  # `image_spec` gives every image kind one
        return DataSchema(feature_names=pixel_names(spec.image_shape), class_names=class_names)

    def site_settings(self, settings: SiteSettings, index: int) -> SiteSettings:
        """`settings` of site `index` reading its image folder (and the test folder)."""
        return replace(
            settings,
            data=f"../data/site{index}",
            test_source="../data/test",
            data_kind="image_folder",
            augment=self.augment,
            standardize=self.standardize,
        )


def image_sites(dataset: str, image_size: int, widths: str, augment: str, rounds: int) -> ImageSites | None:
    """The testnet options' `ImageSites` for an image dataset (None for a table dataset)."""
    if dataset not in IMAGE_DATASETS:
        return None
    from models.images import IMAGE_AUGMENTS

    if augment not in IMAGE_AUGMENTS:
        raise SetupError(f"--augment {augment!r}: expected one of {', '.join(IMAGE_AUGMENTS)}")
    try:
        parsed = tuple(int(w) for w in widths.split(",")) if widths.strip() else ()
    except ValueError:
        raise SetupError(
            f"--widths {widths!r}: expected comma-separated integers such as 8,16,32,64"
        ) from None
    return ImageSites(image_size=image_size, widths=parsed, augment=augment, epochs=max(rounds, 1))
