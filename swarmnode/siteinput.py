"""A site's data as its site.toml's [data] section describes it: a table (`models.tables`)
or an image folder (`models.images`), read against the table genesis records.

`build_local_trainer` (`swarmnode.trainer`), the testnet's baselines and the export read
the data through `load_site_data`, so training, baselines and the exported preprocessing
see the same rows.
"""

from __future__ import annotations

from models.data import Dataset, DatasetError
from models.images import ImageAugmenter, load_image_folder
from models.schema import DataSchema
from models.tables import load_aligned

from .config import NodeConfig


def load_site_data(config: NodeConfig, schema: DataSchema | None, source: str) -> Dataset:
    """`source` (the config's ``data.source`` or ``data.test_source``) as the swarm trains on it.

    `schema` is the genesis's table (``Genesis.data``; None if it records none). A table's
    columns and classes are aligned to it by name, categorical columns one-hot encoded with
    its categories and missing values kept if they are imputed (`models.tables.load_aligned`);
    an image folder's classes are numbered by its class names, so a site holding only some
    of them takes part and an unknown class folder is refused.
    """
    section = config.data
    if section.kind == "image_folder":
        try:
            shape = section.image_shape(config.model)
        except ValueError as exc:
            raise DatasetError(f"{config.source or 'site config'}: {exc}") from None
        return load_image_folder(source, shape, class_names=None if schema is None else schema.class_names)
    return load_aligned(
        source,
        schema,
        label_column=section.label_column,
        positive_class=section.positive_class,
        missing="keep" if section.preprocess.impute == "mean" else "refuse",
        select=section.preprocess.genes is not None,
    )


def site_augmenter(config: NodeConfig) -> ImageAugmenter | None:
    """The training-time augmentation ``data.augment`` asks for (None: none)."""
    section = config.data
    if section.kind != "image_folder" or section.augment == "none":
        return None
    return ImageAugmenter(section.image_shape(config.model), section.augment)
