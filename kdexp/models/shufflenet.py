"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018) for CIFAR, in the configurations of the
KD benchmarks (CRD/RepDistiller's ShuffleV1 with 3 groups, ShuffleV2 at net size 1): a 1x1 stem conv
without max-pool, 3 stages that each halve the resolution, so their published checkpoints load.

Blocks return their output *before* the final ReLU and the stage applies it (see layers.py). For
V2 that is exact because the untouched half of the channels is already non-negative, so
relu(shuffle(cat(x1, b))) == shuffle(cat(x1, relu(b))).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.models import register_model
from kdexp.models.layers import ReluOutput, ResidualStage, StagedModel, conv_bn


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1. Stride 2 concatenates an avg-pooled
    shortcut (so `out_ch` excludes the input channels) instead of adding it."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        mid = out_ch // 4
        self.first_groups = first_groups
        self.reduce = conv_bn(in_ch, mid, 1, groups=first_groups)
        self.depthwise = conv_bn(mid, mid, 3, stride, groups=mid)
        self.expand = conv_bn(mid, out_ch, 1, groups=groups)
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.reduce(x), inplace=True), self.first_groups)
        # ReLU after the depthwise conv follows the benchmark implementation (the paper has none).
        out = self.expand(F.relu(self.depthwise(out), inplace=True))
        if self.downsample is None:
            return out + x
        return torch.cat([out, self.downsample(x)], 1)


class ShuffleNetV1(StagedModel):
    def __init__(
        self,
        stage_channels: tuple[int, ...] = (240, 480, 960),
        stage_blocks: tuple[int, ...] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        stem_ch = 24
        stem = ReluOutput(*conv_bn(in_channels, stem_ch, 1))
        stages, in_ch = [], stem_ch
        for out_ch, num_blocks in zip(stage_channels, stage_blocks):
            # The first unit's input (24 channels) is too thin for grouped convs.
            first_groups = 1 if in_ch == stem_ch else groups
            units = [ShuffleV1Unit(in_ch, out_ch - in_ch, 2, groups, first_groups)]
            units += [ShuffleV1Unit(out_ch, out_ch, 1, groups, groups) for _ in range(num_blocks - 1)]
            stages.append(ResidualStage(*units))
            in_ch = out_ch
        super().__init__(stem, stages, in_ch, num_classes, in_channels)


class ShuffleV2Unit(nn.Module):
    """Split channels in half; transform one half (1x1 - dw 3x3 - 1x1), concat, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            *conv_bn(half, half, 1),
            nn.ReLU(inplace=True),
            *conv_bn(half, half, 3, groups=half),
            *conv_bn(half, half, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        kept, transformed = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([kept, self.branch(transformed)], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: both branches see the whole input, each produces half the output channels."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        half = out_ch // 2
        self.left = nn.Sequential(*conv_bn(in_ch, in_ch, 3, 2, groups=in_ch), *conv_bn(in_ch, half, 1))
        self.right = nn.Sequential(
            *conv_bn(in_ch, half, 1),
            nn.ReLU(inplace=True),
            *conv_bn(half, half, 3, 2, groups=half),
            *conv_bn(half, half, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(StagedModel):
    def __init__(
        self,
        stage_channels: tuple[int, ...] = (116, 232, 464),
        stage_blocks: tuple[int, ...] = (3, 7, 3),
        last_channels: int = 1024,
        num_classes: int = 10,
        in_channels: int = 3,
        stem_kernel: int = 1,
    ):
        stem_ch = 24
        # 1x1 as in the benchmark code (before 2026-12 kdexp used 3x3: stem_kernel=3 loads those weights)
        stem = ReluOutput(*conv_bn(in_channels, stem_ch, stem_kernel))
        stages, in_ch = [], stem_ch
        for out_ch, num_blocks in zip(stage_channels, stage_blocks):
            units = [ShuffleV2Down(in_ch, out_ch)] + [ShuffleV2Unit(out_ch) for _ in range(num_blocks)]
            stages.append(ResidualStage(*units))
            in_ch = out_ch
        head = nn.Sequential(*conv_bn(in_ch, last_channels, 1), nn.ReLU(inplace=True))
        super().__init__(stem, stages, last_channels, num_classes, in_channels, head=head)


@register_model()
def shufflenetv1(num_classes: int = 10, in_channels: int = 3, **kwargs) -> ShuffleNetV1:
    """ShuffleNet V1, 3 groups, stage widths 240-480-960 (RepDistiller's ShuffleV1)."""
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model()
def shufflenetv2(num_classes: int = 10, in_channels: int = 3, **kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 1x: stage widths 116-232-464, 1024-channel head (RepDistiller's ShuffleV2); kwargs:
    stem_kernel (1)."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels, **kwargs)
