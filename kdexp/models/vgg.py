"""CIFAR VGGs with BatchNorm, as used in the KD literature (CRD/RepDistiller).

Five blocks of 3x3 conv-BN-ReLU separated by 2x2 max pools; like RepDistiller the pool between
the 4th and 5th block is dropped (32x32 input ends at 4x4, not 2x2), and one linear classifier
replaces the ImageNet MLP head. `ceil_mode` pooling keeps 1x1 maps at 1x1, so even 8x8 inputs work.
"""

from __future__ import annotations

from torch import nn

from kdexp.models import register_model
from kdexp.models.layers import ReluOutput, StagedModel

# Channels of the convs in each of the five blocks.
CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}
POOL_BEFORE_BLOCK = (False, True, True, True, False)


def vgg_block(in_ch: int, channels: list[int], pool: bool) -> ReluOutput:
    """[maxpool] + conv-BN-ReLU ... conv-BN; the last ReLU is left to ReluOutput (for preact)."""
    layers: list[nn.Module] = [nn.MaxPool2d(2, ceil_mode=True)] if pool else []
    for out_ch in channels:
        # Convs keep their bias, as in the reference CIFAR VGG (it adds ~3k params).
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        in_ch = out_ch
    return ReluOutput(*layers[:-1])


class VGG(StagedModel):
    def __init__(self, config: list[list[int]], num_classes: int = 10, in_channels: int = 3):
        blocks, in_ch = [], in_channels
        for channels, pool in zip(config, POOL_BEFORE_BLOCK):
            blocks.append(vgg_block(in_ch, channels, pool))
            in_ch = channels[-1]
        super().__init__(blocks[0], blocks[1:], in_ch, num_classes, in_channels)


# One decorated constructor per variant: names readable from the source (kdexp.config.registry.declared_names).
@register_model()
def vgg8(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg8"], num_classes, in_channels)


@register_model()
def vgg11(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg11"], num_classes, in_channels)


@register_model()
def vgg13(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg13"], num_classes, in_channels)


@register_model()
def vgg16(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg16"], num_classes, in_channels)


@register_model()
def vgg19(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg19"], num_classes, in_channels)
