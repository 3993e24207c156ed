"""Shared pieces of the method zoo: shape adapters, spatial alignment, stage pairing, warm-up."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.distill.base import IncompatiblePairError


def pool_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)


def align_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool whichever map is larger so both share the smaller spatial size (per axis).

    Pooling (rather than upsampling) never invents detail, and works for any pair of resolutions
    (e.g. a 32x32-stem resnet against a shufflenet that downsamples early).
    """
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return pool_to(a, size), pool_to(b, size)


_HALF = (torch.float16, torch.bfloat16)


def in_float32(fn):
    """Evaluate a loss in float32 even under autocast: Gram matrices, sums of squares and small KL
    values lose too much in bf16/fp16. Tensor arguments are upcast; adapters stay in autocast."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        args = tuple(a.float() if isinstance(a, Tensor) and a.dtype in _HALF else a for a in args)
        with torch.autocast(device_type=device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


mse = in_float32(F.mse_loss)


def conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """The usual channel adapter: 1x1 conv + BN."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False), nn.BatchNorm2d(out_channels)
    )


class L2Embed(nn.Module):
    """Linear projection onto the unit sphere (CRD / CC embedding heads)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def stage_pairs(n_student: int, n_teacher: int, method: str, skip_stem: bool = True) -> list[tuple[int, int]]:
    """Pair the deepest k stages of both nets (k = the smaller stage count).

    Architectures differ in their number of stages (vgg: 5, resnet: 3); pairing from the end keeps
    the semantically closest (deepest) stages together, as mdistiller's list alignment does.
    """
    first = 1 if skip_stem else 0
    k = min(n_student, n_teacher) - first
    if k <= 0:
        raise IncompatiblePairError(f"{method}: no stage to pair (student {n_student}, teacher {n_teacher})")
    return [(n_student - k + i, n_teacher - k + i) for i in range(k)]


def teacher_side(pairs: list[tuple[int, int]]) -> tuple[int, ...]:
    """The teacher levels of (student, teacher) stage pairs: what Distiller.teacher_levels reports."""
    return tuple(sorted({j for _, j in pairs}))


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """Linear warm-up; `epoch` is 0-based, so the first epoch already gets 1/warmup (as mdistiller's
    1-based min(epoch / warmup, 1))."""
    return 1.0 if warmup_epochs <= 0 else min((epoch + 1) / warmup_epochs, 1.0)


def channels(x: Tensor) -> int:
    return x.shape[1]
