"""Knowledge Review (Chen et al., CVPR 2021): ABF fusion of student stages + HCL loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.distill import register_method
from kdexp.distill.base import Distiller
from kdexp.distill.common import channels, conv_bn, in_float32, stage_pairs, teacher_side, warmup_factor


class AttentionFusion(nn.Module):
    """ABF: reduce a student map to `mid` channels, fuse it with the (upsampled) output of the
    deeper level through two per-position attention weights, then a 3x3 conv+BN produces the
    teacher-shaped prediction. Returns (prediction, fused map passed to the shallower level)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = conv_bn(in_channels, mid_channels)
        self.attention = (
            nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        )
        self.predict = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        for conv in (self.reduce[0], self.predict[0]):
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, x: Tensor, deeper: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.reduce(x)
        if self.attention is not None:
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            w = self.attention(torch.cat([x, deeper], dim=1))
            x = x * w[:, :1] + deeper * w[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.predict(x), x


@in_float32
def hcl(s: Tensor, t: Tensor) -> Tensor:
    """Hierarchical context loss: MSE at full resolution plus pooled 4x4, 2x2, 1x1 levels (those
    smaller than the map), level weights halving, normalised by their sum."""
    loss, weight, total = F.mse_loss(s, t), 1.0, 1.0
    for level in (4, 2, 1):
        if level >= s.shape[-2]:
            continue
        weight /= 2
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, level), F.adaptive_avg_pool2d(t, level))
        total += weight
    return loss / total


def _as_map(embedding: Tensor) -> Tensor:
    return embedding.flatten(1)[:, :, None, None]


@register_method("reviewkd")
class ReviewKD(Distiller):
    """ReviewKD: each student level (paired stages + the pooled embedding) predicts the teacher's
    pre-ReLU map of the same level from itself fused with all deeper student levels (residual
    top-down path of ABFs); term = warmup(epoch) * sum_levels HCL (mdistiller's CIFAR-100 config:
    weight 5, 20 warm-up epochs, mid channels = min(512, student embedding width)).

    Simplification: spatial shapes come from the actual pair (nearest resizing wherever the
    student level's size differs from the teacher's), so any two families work.
    """

    terms = ("reviewkd",)
    needs = frozenset({"stages", "preact", "embedding"})

    def __init__(self, warmup: int = 20, max_mid_channels: int = 512):
        super().__init__()
        self.warmup, self.max_mid_channels = warmup, max_mid_channels
        self.pairs: list[tuple[int, int]] = []
        self.out_sizes: list[tuple[int, int]] = []
        self.fusions = nn.ModuleList()

    def _levels(self, student, teacher) -> tuple[list[Tensor], list[Tensor]]:
        s = [student.stages[i] for i, _ in self.pairs] + [_as_map(student.embedding)]
        t = [teacher.preact[j] for _, j in self.pairs] + [_as_map(teacher.embedding)]
        return s, t

    def build(self, student, teacher, num_classes, num_samples):
        self.pairs = stage_pairs(len(student.stages), len(teacher.preact), "reviewkd")
        s, t = self._levels(student, teacher)
        mid = min(self.max_mid_channels, channels(s[-1]))
        deepest = len(s) - 1
        self.fusions = nn.ModuleList(
            AttentionFusion(channels(a), mid, channels(b), fuse=k < deepest)
            for k, (a, b) in enumerate(zip(s, t))
        )
        self.out_sizes = [tuple(b.shape[-2:]) for b in t]

    def teacher_levels(self):
        return {"stages": (), "preact": teacher_side(self.pairs)}  # student stages, teacher pre-ReLU maps

    def forward(self, student, teacher, target, index, epoch):
        s, t = self._levels(student, teacher)
        deeper, loss = None, 0.0
        for k in reversed(range(len(s))):
            prediction, deeper = self.fusions[k](s[k], deeper, self.out_sizes[k])
            loss = loss + hcl(prediction, t[k].detach())
        return {"reviewkd": warmup_factor(epoch, self.warmup) * loss}
