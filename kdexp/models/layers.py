"""Building blocks shared by the zoo families.

Feature points are produced as `(post, pre)` pairs: every stem/stage returns its post-activation
output together with the tensor right before its last ReLU. Keeping the ReLU outside the last
layer (instead of an in-place ReLU inside it) makes `preact` free: no hooks, no recomputation.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.models.base import FeatureOutput, ZooModel


def conv_bn(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Bias-free conv (BN follows, so a bias would be redundant) + BN, no activation."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch))


class ReluOutput(nn.Sequential):
    """Runs its layers, then returns `(relu(out), out)`: one feature point, post- and pre-activation."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = super().forward(x)
        return F.relu(pre), pre


class ResidualStage(nn.Sequential):
    """Blocks that return their pre-activation output; the ReLU between blocks is applied here,
    so the last block's pre-activation is the stage's `preact` at no extra cost."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for block in self:
            pre = block(x)
            x = F.relu(pre)
        return x, pre


class LinearStage(nn.Sequential):
    """A stage ending without a ReLU (MobileNetV2's linear bottlenecks): post == pre."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = super().forward(x)
        return out, out


def init_weights(model: nn.Module) -> None:
    """He et al. init for convs (fan_out, as torchvision/RepDistiller), BN weight 1 bias 0.
    Linear layers keep PyTorch's default, as in the reference CIFAR implementations."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class StagedModel(ZooModel):
    """stem -> stages -> head -> global average pool -> linear classifier.

    `stem` and each stage return `(post, pre)` pairs (see module docstring); `head` is an optional
    plain module between the last stage and the pool (e.g. MobileNetV2's 1x1 conv to 1280 channels).
    Adaptive pooling makes every model accept any input size.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Iterable[nn.Module],
        embedding_dim: int,
        num_classes: int,
        in_channels: int,
        head: nn.Module | None = None,
    ):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head if head is not None else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(embedding_dim, num_classes)
        init_weights(self)

    def forward_intermediates(self, x: Tensor) -> FeatureOutput:
        x, pre = self.stem(x)
        stages, preact = [x], [pre]
        for stage in self.stages:
            x, pre = stage(x)
            stages.append(x)
            preact.append(pre)
        embedding = self.pool(self.head(x)).flatten(1)
        return FeatureOutput(self.classifier(embedding), stages, preact, embedding)
