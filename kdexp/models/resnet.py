"""CIFAR ResNets (He et al. 2016, sec. 4.2): 3 stages of basic blocks, depth = 6n + 2.

Widths follow the KD literature (CRD/RepDistiller): 16-16-32-64, and 32-64-128-256 for the "x4"
variants. Shortcuts that change shape are 1x1 conv + BN (option B, as in RepDistiller); the
paper's parameter-free option A differs by <1.1% in parameter count.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdexp.models import register_model
from kdexp.models.layers import ReluOutput, ResidualStage, StagedModel, conv_bn

BASE_WIDTHS = (16, 16, 32, 64)
X4_WIDTHS = (32, 64, 128, 256)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus shortcut; returns the sum before the final ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(in_ch, out_ch, 3, stride)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv_bn(out_ch, out_ch, 3)
        reshapes = stride != 1 or in_ch != out_ch
        self.shortcut = conv_bn(in_ch, out_ch, 1, stride) if reshapes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu(self.conv1(x))) + self.shortcut(x)


def residual_stage(block: type[nn.Module], in_ch: int, out_ch: int, num_blocks: int, stride: int):
    """`num_blocks` blocks, the first one carrying the stride and the width change."""
    blocks = [block(in_ch, out_ch, stride)] + [block(out_ch, out_ch) for _ in range(num_blocks - 1)]
    return ResidualStage(*blocks)


class CifarResNet(StagedModel):
    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int] = BASE_WIDTHS,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        stem = ReluOutput(*conv_bn(in_channels, widths[0], 3))
        stages = [
            residual_stage(BasicBlock, widths[i], widths[i + 1], blocks_per_stage, 1 if i == 0 else 2)
            for i in range(3)
        ]
        super().__init__(stem, stages, widths[3], num_classes, in_channels)


def _resnet(depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int) -> CifarResNet:
    return CifarResNet(depth, widths, num_classes, in_channels)


# One decorated constructor per variant (as timm does): the names are also readable from the source alone,
# which config validation does without importing torch (kdexp.config.registry.declared_names).
@register_model()
def resnet8(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return _resnet(8, BASE_WIDTHS, num_classes, in_channels)


@register_model()
def resnet14(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return _resnet(14, BASE_WIDTHS, num_classes, in_channels)


@register_model()
def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return _resnet(20, BASE_WIDTHS, num_classes, in_channels)


@register_model()
def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return _resnet(32, BASE_WIDTHS, num_classes, in_channels)


@register_model()
def resnet44(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return _resnet(44, BASE_WIDTHS, num_classes, in_channels)


@register_model()
def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return _resnet(56, BASE_WIDTHS, num_classes, in_channels)


@register_model()
def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return _resnet(110, BASE_WIDTHS, num_classes, in_channels)


@register_model()
def resnet8x4(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return _resnet(8, X4_WIDTHS, num_classes, in_channels)


@register_model()
def resnet32x4(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return _resnet(32, X4_WIDTHS, num_classes, in_channels)
