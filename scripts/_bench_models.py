"""Model factories for `scripts/bench_round.py`'s image sizes (`model.factory` specs; not a
public module). MONAI's ResNet-18 (2-D, one input channel) on scikit-learn's 8x8 digits:
flat rows of 64 pixels are reshaped to images inside the module.
"""

from __future__ import annotations

from torch import Tensor, nn

# block widths of the ResNet-18 sizes: "11M" is MONAI's resnet18 (11.2M values merged),
# "resnet-smoke" the same network with 1/16 of the widths, for the smoke test
WIDTHS = {"11M": (64, 128, 256, 512), "resnet-smoke": (4, 8, 16, 32)}


class ImageRows(nn.Module):
    """(batch, 64) rows as (batch, 1, 8, 8) images into `net`."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x.reshape(x.shape[0], 1, 8, 8))
        return out


def _resnet18(widths: tuple[int, ...], n_classes: int) -> nn.Module:
    from monai.networks.nets import ResNet

    net = ResNet(
        "basic", [2, 2, 2, 2], list(widths), spatial_dims=2, n_input_channels=1, num_classes=n_classes
    )
    return ImageRows(net)


def resnet18(n_features: int, n_classes: int) -> nn.Module:
    assert n_features == 64, "the bench's ResNet-18 reads 8x8 digits"
    return _resnet18(WIDTHS["11M"], n_classes)


def resnet18_smoke(n_features: int, n_classes: int) -> nn.Module:
    assert n_features == 64, "the bench's ResNet-18 reads 8x8 digits"
    return _resnet18(WIDTHS["resnet-smoke"], n_classes)
