"""MONAI's 2-D image networks as built-in model kinds: ``resnet18`` and ``densenet121``.

MONAI (https://monai.io) is the medical-imaging library built on PyTorch; its
``DenseNet121`` is the network of chest X-ray work, its ``resnet18`` the 11.2M-parameter
residual network. `models.nets.SpecNet` holds the network built here as its backbone and
initialises it like every other spec (on the meta device, then from the caller's
generator), so every site builds the same network from the genesis spec.

The spec's ``conv_channels`` are the widths (`models.spec.MONAI_WIDTHS`): MONAI's
standard ones give exactly ``monai.networks.nets.resnet18(spatial_dims=2, ...)`` and
``DenseNet121(spatial_dims=2, ...)``; smaller ones give the same structure at a size a
CPU trains in seconds (the testnet's ``--widths``).
"""

from __future__ import annotations

from torch import nn

from .spec import ModelSpec


def monai_network(spec: ModelSpec) -> nn.Module:
    """The MONAI network of ``spec`` (kind "resnet18" or "densenet121"), uninitialised
    beyond MONAI's own constructor (call under ``torch.device("meta")``)."""
    # Imported here: MONAI takes seconds to import and only image models need it.
    from monai.networks.nets.densenet import DenseNet
    from monai.networks.nets.resnet import ResNet

    assert spec.image_shape is not None
    channels = spec.image_shape[0]
    if spec.kind == "resnet18":
        # monai.networks.nets.resnet18 is exactly this with the standard widths.
        return ResNet(
            block="basic",
            layers=[2, 2, 2, 2],
            block_inplanes=list(spec.conv_channels),
            spatial_dims=2,
            n_input_channels=channels,
            num_classes=spec.n_classes,
        )
    if spec.kind == "densenet121":
        init_features, growth_rate = spec.conv_channels
        # monai.networks.nets.DenseNet121 is DenseNet with block_config (6, 12, 24, 16).
        return DenseNet(
            spatial_dims=2,
            in_channels=channels,
            out_channels=spec.n_classes,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=(6, 12, 24, 16),
        )
    raise ValueError(f"{spec.kind!r} is not a MONAI model kind")
