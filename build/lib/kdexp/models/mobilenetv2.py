"""MobileNetV2 (Sandler et al. 2018) for CIFAR, the half-width variant (`mobile_half`) used as a
student in CRD/RepDistiller: width multiplier 0.5, expansion 6, stride-2 3x3 stem, ReLU
activations, 1x1 conv to 1280 channels before the pool.

Feature points (as in RepDistiller): stem, then the block groups ending at each resolution
(blocks 0-1, 2, 3-4, 5-6). Bottlenecks end linearly (no ReLU), so their preact == stage output.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.models import register_model
from kdexp.models.layers import LinearStage, ReluOutput, StagedModel, conv_bn

# (expansion, channels, repeats, first stride) per block group; expansion None = `expansion` arg.
BLOCK_SETTINGS = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
                  (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1)]  # fmt: skip
# Which block groups make up each feature stage.
STAGE_GROUPS = [(0, 1), (2,), (3, 4), (5, 6)]
LAST_CHANNELS = 1280


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection; residual when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        self.expand = conv_bn(in_ch, hidden, 1)
        self.depthwise = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = conv_bn(hidden, out_ch, 1)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.expand(x), inplace=True)
        out = self.project(F.relu(self.depthwise(out), inplace=True))
        return x + out if self.use_residual else out


class MobileNetV2(StagedModel):
    def __init__(
        self, width_mult: float = 0.5, expansion: int = 6, num_classes: int = 10, in_channels: int = 3
    ):
        in_ch = int(32 * width_mult)
        stem = ReluOutput(*conv_bn(in_channels, in_ch, 3, stride=2))
        groups = []
        for t, channels, repeats, stride in BLOCK_SETTINGS:
            out_ch = int(channels * width_mult)
            blocks = []
            for i in range(repeats):
                blocks.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, t or expansion))
                in_ch = out_ch
            groups.append(blocks)
        stages = [LinearStage(*[b for g in group_ids for b in groups[g]]) for group_ids in STAGE_GROUPS]
        last = LAST_CHANNELS if width_mult <= 1.0 else int(LAST_CHANNELS * width_mult)
        head = nn.Sequential(*conv_bn(in_ch, last, 1), nn.ReLU(inplace=True))
        super().__init__(stem, stages, last, num_classes, in_channels, head=head)


@register_model()
def mobilenetv2(num_classes: int = 10, in_channels: int = 3, **kwargs) -> MobileNetV2:
    """Half-width MobileNetV2 (RepDistiller's mobile_half); kwargs: width_mult, expansion."""
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, **kwargs)
