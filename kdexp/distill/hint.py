"""Feature-regression methods with per-stage adapters: FitNet, VID, OFD."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.distill import register_method
from kdexp.distill.base import Distiller, IncompatiblePairError
from kdexp.distill.common import align_spatial, channels, conv_bn, in_float32, mse, stage_pairs, teacher_side


@register_method("fitnet")
class FitNet(Distiller):
    """FitNets (Romero et al., ICLR 2015): a conv regressor maps the student's guided stage onto
    the teacher's hint stage; MSE. `hint_layer` indexes `stages` (0 = stem), 2 as in RepDistiller.
    """

    terms = ("fitnet",)
    needs = frozenset({"stages"})

    def __init__(self, hint_layer: int = 2):
        super().__init__()
        self.hint_layer = hint_layer
        self.regressor: nn.Module | None = None

    def build(self, student, teacher, num_classes, num_samples):
        n = min(len(student.stages), len(teacher.stages))
        if not 0 <= self.hint_layer < n:
            raise IncompatiblePairError(f"fitnet: hint_layer {self.hint_layer} not in [0, {n})")
        s, t = student.stages[self.hint_layer], teacher.stages[self.hint_layer]
        # ReLU: the hint is a post-ReLU map
        self.regressor = nn.Sequential(conv_bn(channels(s), channels(t)), nn.ReLU())

    def teacher_levels(self):
        return {"stages": (self.hint_layer,)}

    def forward(self, student, teacher, target, index, epoch):
        s = self.regressor(student.stages[self.hint_layer])
        s, t = align_spatial(s, teacher.stages[self.hint_layer].detach())
        return {"fitnet": mse(s, t)}


class _GaussianRegressor(nn.Module):
    """VID's variational q(t|s): mean from a 3-layer 1x1 conv net, learned per-channel variance."""

    def __init__(self, in_channels: int, out_channels: int, init_var: float, eps: float):
        super().__init__()
        mid = out_channels
        self.mean = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid, out_channels, 1, bias=False),
        )
        # softplus(raw_var) + eps == init_var at start
        self.raw_var = nn.Parameter(torch.full((out_channels,), math.log(math.expm1(init_var - eps))))
        self.eps = eps

    def variance(self) -> Tensor:
        return F.softplus(self.raw_var).view(1, -1, 1, 1) + self.eps


@in_float32
def gaussian_nll(mean: Tensor, var: Tensor, t: Tensor) -> Tensor:
    """-log N(t; mean, var) up to the constant, averaged."""
    return (0.5 * ((t - mean) ** 2 / var + var.log())).mean()


@in_float32
def partial_l2(s: Tensor, t: Tensor, margin: Tensor) -> Tensor:
    """OFD's distance to the margin-ReLU target, skipping s <= target <= 0; per-sample sum."""
    goal = torch.max(t, margin.view(1, -1, 1, 1))
    mask = (s > goal) | (goal > 0)
    return ((s - goal) ** 2 * mask).sum() / s.shape[0]


@register_method("vid")
class VID(Distiller):
    """Variational Information Distillation (Ahn et al., CVPR 2019): maximise a variational lower
    bound of I(teacher; student) per stage = minimise the Gaussian negative log-likelihood
    0.5 * ((t - mu(s))^2 / var + log var), averaged; summed over paired stages."""

    terms = ("vid",)
    needs = frozenset({"stages"})

    def __init__(self, init_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.init_var, self.eps = init_var, eps
        self.pairs: list[tuple[int, int]] = []
        self.regressors = nn.ModuleList()

    def build(self, student, teacher, num_classes, num_samples):
        self.pairs = stage_pairs(len(student.stages), len(teacher.stages), "vid")
        self.regressors = nn.ModuleList(
            _GaussianRegressor(
                channels(student.stages[i]), channels(teacher.stages[j]), self.init_var, self.eps
            )
            for i, j in self.pairs
        )

    def teacher_levels(self):
        return {"stages": teacher_side(self.pairs)}

    def forward(self, student, teacher, target, index, epoch):
        loss = 0.0
        for (i, j), q in zip(self.pairs, self.regressors):
            s, t = align_spatial(student.stages[i], teacher.stages[j].detach())
            loss = loss + gaussian_nll(q.mean(s), q.variance(), t)
        return {"vid": loss}


@register_method("ofd")
class OFD(Distiller):
    """A Comprehensive Overhaul of Feature Distillation (Heo et al., ICCV 2019).

    Distils pre-ReLU stage outputs through 1x1 conv+BN connectors with a partial L2: the teacher
    target is max(t, m) with a per-channel margin m = E[t | t < 0], and no loss where both the
    student and the target are negative with s <= target (ReLU would hide the difference).
    Per-sample sum over C,H,W, stages weighted 1/2^(depth from the last).

    The paper derives m from the teacher's BN before the ReLU (Gaussian assumption). Methods only
    see features, not modules, so m is estimated directly from the teacher's preact statistics
    (EMA over training batches of the per-channel mean of negative responses; -3 std where a channel
    is almost never negative, the paper's fallback). This also holds for teachers without BN there
    and for residual sums, where the BN-based value is only approximate.
    """

    terms = ("ofd",)
    needs = frozenset({"preact"})

    def __init__(self, margin_momentum: float = 0.1):
        super().__init__()
        self.margin_momentum = margin_momentum
        self.pairs: list[tuple[int, int]] = []
        self.connectors = nn.ModuleList()
        self.register_buffer("margin_ready", torch.zeros((), dtype=torch.bool))

    def build(self, student, teacher, num_classes, num_samples):
        self.pairs = stage_pairs(len(student.preact), len(teacher.preact), "ofd")
        self.connectors = nn.ModuleList(
            conv_bn(channels(student.preact[i]), channels(teacher.preact[j])) for i, j in self.pairs
        )
        for k, (_, j) in enumerate(self.pairs):
            self.register_buffer(f"margin{k}", torch.zeros(channels(teacher.preact[j])))

    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin{k}") for k in range(len(self.pairs))]

    @torch.no_grad()
    def _update_margins(self, teacher_maps: list[Tensor]) -> None:
        for margin, t in zip(self.margins(), teacher_maps):
            x = t.transpose(0, 1).flatten(1).float()  # C x (N*H*W)
            negative = x < 0
            count = negative.sum(dim=1)
            mean_negative = (x * negative).sum(dim=1) / count.clamp(min=1)
            batch = torch.where(count > 1e-3 * x.shape[1], mean_negative, -3 * x.std(dim=1, unbiased=False))
            margin.copy_(margin.lerp(batch, self.margin_momentum) if self.margin_ready else batch)
        self.margin_ready.fill_(True)

    def teacher_levels(self):
        return {"preact": teacher_side(self.pairs)}

    def forward(self, student, teacher, target, index, epoch):
        teacher_maps = [teacher.preact[j].detach() for _, j in self.pairs]
        if self.training:
            self._update_margins(teacher_maps)
        depth = len(self.pairs)
        loss = 0.0
        for k, ((i, _), t) in enumerate(zip(self.pairs, teacher_maps)):
            s, t = align_spatial(self.connectors[k](student.preact[i]), t)
            loss = loss + partial_l2(s, t, self.margins()[k]) / 2 ** (depth - 1 - k)
        return {"ofd": loss}
