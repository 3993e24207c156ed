"""ImageNet-style bottleneck ResNets adapted to 32x32 input, as used for CIFAR-100 teachers in CRD:
a 3x3 stride-1 stem without max-pool replaces the 7x7/2 conv + 3x3/2 pool, so a 32x32 image ends
at 4x4 after the four stages (widths 64-128-256-512, expansion 4). `stem="imagenet"` builds torchvision's
7x7/2 conv and 3x3/2 max-pool instead, so that torchvision's ResNet-50 weights load (teacher.ckpt).
"""

from __future__ import annotations

from torch import Tensor, nn

from kdexp.models import register_model
from kdexp.models.layers import ReluOutput, ResidualStage, StagedModel, conv_bn
from kdexp.models.resnet import residual_stage

EXPANSION = 4
STEMS = {"cifar": (3, 1), "imagenet": (7, 2)}  # stem conv (kernel, stride)


class Bottleneck(nn.Module):
    """1x1 reduce - 3x3 (carries the stride) - 1x1 expand, plus shortcut; returns the pre-ReLU sum."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        mid = out_ch // EXPANSION
        self.body = nn.Sequential(
            *conv_bn(in_ch, mid, 1), nn.ReLU(inplace=True),
            *conv_bn(mid, mid, 3, stride), nn.ReLU(inplace=True),
            *conv_bn(mid, out_ch, 1),
        )  # fmt: skip
        reshapes = stride != 1 or in_ch != out_ch
        self.shortcut = conv_bn(in_ch, out_ch, 1, stride) if reshapes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)


class BottleneckResNet(StagedModel):
    def __init__(
        self, stage_blocks: tuple[int, ...], num_classes: int = 10, in_channels: int = 3, stem: str = "cifar"
    ):
        if stem not in STEMS:
            raise ValueError(f"stem={stem!r} is invalid: choose one of {', '.join(STEMS)}")
        stem_ch = 64
        stem_module = ReluOutput(*conv_bn(in_channels, stem_ch, STEMS[stem][0], STEMS[stem][1]))
        stages, in_ch = [], stem_ch
        for i, num_blocks in enumerate(stage_blocks):
            out_ch = 64 * 2**i * EXPANSION
            stages.append(residual_stage(Bottleneck, in_ch, out_ch, num_blocks, 1 if i == 0 else 2))
            in_ch = out_ch
        if stem == "imagenet":  # the pool opens stage 1: its input is post-ReLU, so the stage's ReLU is a no-op
            stages[0] = ResidualStage(nn.MaxPool2d(3, 2, padding=1), *stages[0])
        super().__init__(stem_module, stages, in_ch, num_classes, in_channels)


@register_model()
def resnet50(num_classes: int = 10, in_channels: int = 3, stem: str = "cifar") -> BottleneckResNet:
    """ResNet-50 (3-4-6-3 bottlenecks) with a CIFAR stem, or torchvision's with stem="imagenet"."""
    return BottleneckResNet((3, 4, 6, 3), num_classes, in_channels, stem)
