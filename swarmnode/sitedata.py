"""A site's data as its site.toml's [data] section describes it: a table (`models.data`)
or an image folder (`models.images`), with the class names genesis records.

`build_local_trainer` (`swarmnode.trainer`), the testnet's baselines and the export read
the data through `load_site_data`, so training, baselines and the exported preprocessing
see the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.data import Dataset, DatasetError, load_dataset
from models.images import ImageAugmenter, load_image_folder

from .config import NodeConfig


def load_site_data(config: NodeConfig, source: str, class_names: Sequence[str] = ()) -> Dataset:
    """`source` (the config's ``data.source`` or ``data.test_source``) read per ``[data]``.

    `class_names` (genesis ``training.class_names``; () if it records none) are the
    classes the model's outputs stand for: an image folder with only some of them takes
    part; a table's classes must be exactly these.
    """
    section = config.data
    if section.kind == "image_folder":
        try:
            shape = section.image_shape(config.model)
        except ValueError as exc:
            raise DatasetError(f"{config.source or 'site config'}: {exc}") from None
        return load_image_folder(source, shape, class_names=tuple(class_names) or None)
    data = load_dataset(source, label_column=section.label_column, positive_class=section.positive_class)
    if class_names and data.class_names != tuple(class_names):
        raise DatasetError(
            f"{data.source}: classes {list(data.class_names)} are not the swarm's {list(class_names)} "
            "(genesis training.class_names)"
        )
    return data


def site_augmenter(config: NodeConfig) -> ImageAugmenter | None:
    """The training-time augmentation ``data.augment`` asks for (None: none)."""
    section = config.data
    if section.kind != "image_folder" or section.augment == "none":
        return None
    return ImageAugmenter(section.image_shape(config.model), section.augment)
