"""Wide ResNets (Zagoruyko & Komodakis 2016): pre-activation basic blocks, depth = 6n + 4,
stage widths 16k-32k-64k; shape-changing shortcuts are a bare 1x1 conv (as in the paper's code).

Pre-activation blocks end in a sum, not a ReLU: a stage's activation is the BN-ReLU that the *next*
block (or the final BN) applies first. We record that BN output as `preact` and its ReLU as the
stage feature, which is what RepDistiller's `preact=True` exposes for WRN, at no extra cost: the
next block receives the already-activated tensor instead of recomputing it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.models import register_model
from kdexp.models.base import FeatureOutput, ZooModel
from kdexp.models.layers import init_weights


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.dropout = dropout
        self.identity_shortcut = in_ch == out_ch and stride == 1
        # Paper code: the projection reads the activated input, the identity the raw one.
        self.shortcut = None if self.identity_shortcut else nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward_activated(self, x: Tensor, activated: Tensor) -> Tensor:
        """`activated` must be relu(bn1(x)), computed by the caller."""
        out = F.relu(self.bn2(self.conv1(activated)))
        if self.dropout:
            out = F.dropout(out, self.dropout, self.training)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(activated))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_activated(x, F.relu(self.bn1(x)))


class WideResNet(ZooModel):
    def __init__(
        self, depth: int, widen: int, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        self.num_classes, self.in_channels = num_classes, in_channels
        blocks_per_stage = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.stem = conv3x3(in_channels, widths[0])
        self.stages = nn.ModuleList()
        for i in range(3):
            in_ch, out_ch = widths[i], widths[i + 1]
            blocks = [PreActBlock(in_ch, out_ch, 1 if i == 0 else 2, dropout)]
            blocks += [PreActBlock(out_ch, out_ch, 1, dropout) for _ in range(blocks_per_stage - 1)]
            self.stages.append(nn.Sequential(*blocks))
        self.final_bn = nn.BatchNorm2d(widths[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[3], num_classes)
        init_weights(self)
        nn.init.zeros_(self.classifier.bias)

    def forward_intermediates(self, x: Tensor) -> FeatureOutput:
        raw = self.stem(x)
        stages, preact = [], []
        for stage in self.stages:
            first, rest = stage[0], stage[1:]
            pre = first.bn1(raw)
            activated = F.relu(pre)
            stages.append(activated)
            preact.append(pre)
            raw = rest(first.forward_activated(raw, activated))
        pre = self.final_bn(raw)
        x = F.relu(pre)
        stages.append(x)
        preact.append(pre)
        embedding = self.pool(x).flatten(1)
        return FeatureOutput(self.classifier(embedding), stages, preact, embedding)


def wrn(depth: int, widen: int, num_classes: int = 10, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-depth-widen, e.g. wrn(28, 10); kwargs: dropout (default 0)."""
    return WideResNet(depth, widen, num_classes, in_channels, **kwargs)


@register_model()
def wrn_16_1(num_classes: int = 10, in_channels: int = 3, **kwargs) -> WideResNet:
    return wrn(16, 1, num_classes, in_channels, **kwargs)


@register_model()
def wrn_16_2(num_classes: int = 10, in_channels: int = 3, **kwargs) -> WideResNet:
    return wrn(16, 2, num_classes, in_channels, **kwargs)


@register_model()
def wrn_40_1(num_classes: int = 10, in_channels: int = 3, **kwargs) -> WideResNet:
    return wrn(40, 1, num_classes, in_channels, **kwargs)


@register_model()
def wrn_40_2(num_classes: int = 10, in_channels: int = 3, **kwargs) -> WideResNet:
    return wrn(40, 2, num_classes, in_channels, **kwargs)
