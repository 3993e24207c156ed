"""Methods with a first (initialisation) stage: AB, FT, FSP.

The pipeline trains `init_terms` for `init_epochs` before the main stage; the init loss is the
unweighted sum of `init_terms` (as RepDistiller's init loop), and parameters that get no gradient
from it stay untouched. What each init stage trains is stated per class.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.distill import register_method
from kdexp.distill.base import Distiller, IncompatiblePairError
from kdexp.distill.common import align_spatial, channels, conv_bn, in_float32, mse, stage_pairs, teacher_side

INIT_EPOCHS = 30  # RepDistiller's initialisation stage for AB, FT and FSP


@in_float32
def boundary_loss(s: Tensor, t: Tensor, margin: float) -> Tensor:
    """Squared hinge on the wrong side of the teacher's activation boundary, summed."""
    wrong_off = (s + margin) ** 2 * ((s > -margin) & (t <= 0))
    wrong_on = (s - margin) ** 2 * ((s <= margin) & (t > 0))
    return (wrong_off + wrong_on).sum()


@register_method("ab")
class ActivationBoundaries(Distiller):
    """Activation Boundaries (Heo et al., AAAI 2019): make the student's (connector-mapped)
    pre-ReLU responses fall on the same side of zero as the teacher's, with margin mu:
    (s + mu)^2 where s > -mu but t <= 0, (s - mu)^2 where s <= mu but t > 0; summed, stages
    weighted 2^(i-L+1), divided by batch and scaled by 3/1000 (the original code's scale, so that
    weight 1 is the reference setting).

    Init stage trains the student body and the connectors with `ab`. RepDistiller then drops the
    term in the main stage (conf weight ab: 0); set a weight to keep it on.
    """

    terms = ("ab",)
    needs = frozenset({"preact"})

    def __init__(self, margin: float = 1.0, init_epochs: int = INIT_EPOCHS):
        super().__init__()
        self.margin, self.init_epochs = margin, init_epochs
        self.pairs: list[tuple[int, int]] = []
        self.connectors = nn.ModuleList()

    def build(self, student, teacher, num_classes, num_samples):
        self.pairs = stage_pairs(len(student.preact), len(teacher.preact), "ab")
        self.connectors = nn.ModuleList(
            conv_bn(channels(student.preact[i]), channels(teacher.preact[j])) for i, j in self.pairs
        )

    def teacher_levels(self):
        return {"preact": teacher_side(self.pairs)}

    def _loss(self, student, teacher) -> Tensor:
        m, depth = self.margin, len(self.pairs)
        loss = 0.0
        for k, (i, j) in enumerate(self.pairs):
            s, t = align_spatial(self.connectors[k](student.preact[i]), teacher.preact[j].detach())
            loss = loss + 2.0 ** (k - depth + 1) * boundary_loss(s, t, m)
        return loss / student.preact[0].shape[0] * 3 / 1000

    def forward(self, student, teacher, target, index, epoch):
        return {"ab": self._loss(student, teacher)}

    def init_terms(self, student, teacher, target, index):
        return {"ab": self._loss(student, teacher)}


def _conv_stack(widths: list[int], batch_norm: bool = False) -> nn.Sequential:
    """3x3 convs with LeakyReLU(0.1), BatchNorm between them if asked (RepDistiller: translator yes,
    paraphraser no)."""
    layers: list[nn.Module] = []
    for c_in, c_out in itertools.pairwise(widths):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), *([nn.BatchNorm2d(c_out)] if batch_norm else []),
                   nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


def factor(f: Tensor) -> Tensor:
    """FT's factor summary as RepDistiller computes it: the channel mean of F^2, L2-normalised per sample."""
    return F.normalize(f.pow(2).mean(dim=1).flatten(1), dim=1)


@in_float32
def factor_loss(s: Tensor, t: Tensor) -> Tensor:
    """Mean |factor(F_s) - factor(F_t)| (p = 1) over samples and positions."""
    return (factor(s) - factor(t)).abs().mean()


@register_method("ft")
class FactorTransfer(Distiller):
    """Factor Transfer (Kim et al., NeurIPS 2018) on the last stage.

    A paraphraser (3-conv encoder to rate*C_t channels + 3-conv decoder, no BN) learns to reconstruct
    the teacher's last stage; its encoder output is the teacher factor. A translator (3 conv+BN
    blocks) maps the student's last stage to a factor; term = mean |factor(F_s) - factor(F_t)| (p=1),
    factor = normalised channel mean of F^2 (RepDistiller's, for which its weight 200 was tuned).

    Init stage trains only the paraphraser (term `ft_recon`, MSE reconstruction) with the student
    in eval mode (its BatchNorm statistics untouched, as RepDistiller's init loop); in the main
    stage the paraphraser is frozen (computed without grad) and the translator trains with `ft`.
    """

    terms = ("ft",)
    needs = frozenset({"stages"})
    init_trains_student = False

    def __init__(self, rate: float = 0.5, init_epochs: int = INIT_EPOCHS):
        super().__init__()
        self.rate, self.init_epochs = rate, init_epochs
        self.encoder = self.decoder = self.translator = None

    def build(self, student, teacher, num_classes, num_samples):
        c_t, c_s = channels(teacher.stages[-1]), channels(student.stages[-1])
        c_f = max(1, round(c_t * self.rate))
        self.encoder = _conv_stack([c_t, c_t, c_f, c_f])
        self.decoder = _conv_stack([c_f, c_f, c_t, c_t])
        self.translator = _conv_stack([c_s, c_s, c_f, c_f], batch_norm=True)

    def forward(self, student, teacher, target, index, epoch):
        with torch.no_grad():
            factor_t = self.encoder(teacher.stages[-1].detach())
        factor_s, factor_t = align_spatial(self.translator(student.stages[-1]), factor_t)
        return {"ft": factor_loss(factor_s, factor_t)}

    def init_terms(self, student, teacher, target, index):
        t = teacher.stages[-1].detach()
        return {"ft_recon": mse(self.decoder(self.encoder(t)), t)}


@in_float32
def fsp_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Flow between two maps of one net: (C_a x C_b) inner products over positions / (H*W)."""
    a, b = align_spatial(a, b)
    a, b = a.flatten(2), b.flatten(2)
    return a @ b.transpose(1, 2) / a.shape[2]


@register_method("fsp")
class FlowOfSolutionProcedure(Distiller):
    """FSP (Yim et al., CVPR 2017): match the FSP matrices between consecutive stages (stem
    included); mean squared difference, summed. Needs identical channel counts at every point
    (the matrices must have equal shapes) -> IncompatiblePairError otherwise; spatial sizes may
    differ (the larger map of a pair is pooled before the inner products).

    Init stage trains the student body with `fsp`; RepDistiller drops the term in the main stage
    (conf weight fsp: 0).
    """

    terms = ("fsp",)
    needs = frozenset({"stages"})

    def __init__(self, init_epochs: int = INIT_EPOCHS):
        super().__init__()
        self.init_epochs = init_epochs

    def build(self, student, teacher, num_classes, num_samples):
        s_ch = [channels(x) for x in student.stages]
        t_ch = [channels(x) for x in teacher.stages]
        if s_ch != t_ch:
            raise IncompatiblePairError(
                f"fsp needs the same stage channels in student and teacher; got student {s_ch}, "
                f"teacher {t_ch} (use a same-width pair, e.g. resnet8x4/resnet32x4, or another method)"
            )
        if len(s_ch) < 2:
            raise IncompatiblePairError("fsp needs at least two feature points (stem + one stage)")

    def _loss(self, student, teacher) -> Tensor:
        s, t = student.stages, [x.detach() for x in teacher.stages]
        loss = 0.0
        for k in range(len(s) - 1):
            loss = loss + (fsp_matrix(s[k], s[k + 1]) - fsp_matrix(t[k], t[k + 1])).pow(2).mean()
        return loss

    def forward(self, student, teacher, target, index, epoch):
        return {"fsp": self._loss(student, teacher)}

    def init_terms(self, student, teacher, target, index):
        return {"fsp": self._loss(student, teacher)}
