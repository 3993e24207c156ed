"""Methods that match statistics or relations rather than raw features: AT, SP, CC, RKD, PKT, NST.

Relations (batch x batch, channel x channel, attention maps) are shape-free, so most of these
need no adapters at all.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.distill import register_method
from kdexp.distill.base import Distiller, IncompatiblePairError
from kdexp.distill.common import L2Embed, align_spatial, in_float32, stage_pairs, teacher_side


def attention_map(f: Tensor, p: float) -> Tensor:
    return F.normalize(f.pow(p).mean(dim=1).flatten(1), dim=1)


@in_float32
def at_loss(s: Tensor, t: Tensor, p: float) -> Tensor:
    return (attention_map(s, p) - attention_map(t, p)).pow(2).mean()


@register_method("at")
class AttentionTransfer(Distiller):
    """Attention Transfer (Zagoruyko & Komodakis, ICLR 2017): match L2-normalised spatial
    attention maps mean_c(|f|^p) of every paired stage; mean squared difference, summed."""

    terms = ("at",)
    needs = frozenset({"stages"})

    def __init__(self, p: float = 2.0):
        super().__init__()
        self.p = p
        self.pairs: list[tuple[int, int]] = []

    def build(self, student, teacher, num_classes, num_samples):
        self.pairs = stage_pairs(len(student.stages), len(teacher.stages), "at")
        for i, j in self.pairs:  # a 1x1 map normalises to the constant 1: the term could never train anything
            pixels = min(student.stages[i][0, 0].numel(), teacher.stages[j][0, 0].numel())
            if pixels <= 1:
                raise IncompatiblePairError(
                    f"at: student stage {i} {tuple(student.stages[i].shape[1:])} vs teacher stage {j} "
                    f"{tuple(teacher.stages[j].shape[1:])} gives a 1x1 attention map, a constant; AT needs "
                    "spatial feature maps in both nets (e.g. a CNN student, not an MLP)")

    def teacher_levels(self):
        return {"stages": teacher_side(self.pairs)}

    def forward(self, student, teacher, target, index, epoch):
        loss = 0.0
        for i, j in self.pairs:
            s, t = align_spatial(student.stages[i], teacher.stages[j].detach())
            loss = loss + at_loss(s, t, self.p)
        return {"at": loss}


def similarity(f: Tensor) -> Tensor:
    f = f.flatten(1)
    return F.normalize(f @ f.T, dim=1)


@in_float32
def sp_loss(s: Tensor, t: Tensor) -> Tensor:
    return (similarity(s) - similarity(t)).pow(2).mean()


@register_method("sp")
class SimilarityPreserving(Distiller):
    """Similarity-Preserving KD (Tung & Mori, ICCV 2019): the row-normalised batch Gram matrix of
    the last stage; ||G_s - G_t||_F^2 / b^2."""

    terms = ("sp",)
    needs = frozenset({"stages"})

    def forward(self, student, teacher, target, index, epoch):
        return {"sp": sp_loss(student.stages[-1], teacher.stages[-1].detach())}


@in_float32
def consecutive_correlation(s: Tensor, t: Tensor) -> Tensor:
    """RepDistiller's Correlation term (the one its CC weight 0.02 was tuned for): with d_i = |s_i - t_i|,
    the mean over consecutive batch rows i of sum_k d_i[k] * d_(i+1)[k]."""
    delta = (s - t).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


class LinearEmbed(nn.Module):
    """Flatten + linear, no normalisation (RepDistiller's LinearEmbed, used by its CC)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


CC_FORMS = ("correlation", "kernel")


@register_method("cc")
class CorrelationCongruence(Distiller):
    """Correlation Congruence (Peng et al., ICCV 2019), in one of two forms (`form`):

    - `correlation` (default): the term of the CRD table (RepDistiller's `Correlation`, from the CC
      authors' code): student and teacher embeddings each pass a trainable linear embed (feat_dim, not
      normalised), then `consecutive_correlation`. The CRD weight 0.02 belongs to this form.
    - `kernel`: the paper's batch correlation matrices k(f_i, f_j), ||K_s - K_t||^2 / b^2, with the
      Gaussian RBF exp(-gamma ||x - y||^2) on unit vectors expanded to `taylor_order` (P=2, gamma=0.4;
      None = exact kernel); only the student is embedded (L2-normalised). Its gradient is ~4,000x
      smaller than the correlation form's at the same weight (batch 64, 256-d embeddings): weight 0.02
      switches it off; retune the weight for it.
    """

    terms = ("cc",)
    needs = frozenset({"embedding"})

    def __init__(self, feat_dim: int = 128, form: str = "correlation", gamma: float = 0.4,
                 taylor_order: int | None = 2):
        super().__init__()
        if form not in CC_FORMS:
            raise ValueError(f"cc: form={form!r} is invalid; choose one of: {', '.join(CC_FORMS)}")
        self.feat_dim, self.form, self.gamma, self.taylor_order = feat_dim, form, gamma, taylor_order
        self.embed: nn.Module | None = None
        self.embed_t: nn.Module | None = None

    def build(self, student, teacher, num_classes, num_samples):
        s_dim, t_dim = student.embedding.flatten(1).shape[1], teacher.embedding.flatten(1).shape[1]
        if self.form == "correlation":
            self.embed, self.embed_t = LinearEmbed(s_dim, self.feat_dim), LinearEmbed(t_dim, self.feat_dim)
        else:
            self.embed = L2Embed(s_dim, self.feat_dim)

    def kernel(self, x: Tensor) -> Tensor:
        # unit vectors: ||x - y||^2 = 2 - 2 cos, so k = exp(-2 gamma) * exp(2 gamma cos)
        scaled = 2 * self.gamma * (x @ x.T)
        if self.taylor_order is None:
            return torch.exp(scaled - 2 * self.gamma)
        series = sum(scaled.pow(p) / math.factorial(p) for p in range(self.taylor_order + 1))
        return math.exp(-2 * self.gamma) * series

    @in_float32
    def congruence(self, s: Tensor, t: Tensor) -> Tensor:
        return (self.kernel(s) - self.kernel(F.normalize(t.flatten(1), dim=1))).pow(2).mean()

    def forward(self, student, teacher, target, index, epoch):
        t = teacher.embedding.detach()
        if self.form == "correlation":
            return {"cc": consecutive_correlation(self.embed(student.embedding), self.embed_t(t))}
        return {"cc": self.congruence(self.embed(student.embedding), t)}


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    sq = e.pow(2).sum(dim=1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.T).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def angles(e: Tensor) -> Tensor:
    """cos of the angle at vertex i of every triple: <unit(e_j - e_i), unit(e_k - e_i)>, flattened."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


@register_method("rkd")
class RelationalKD(Distiller):
    """Relational KD (Park et al., CVPR 2019) on the embeddings: Huber loss between the
    mean-normalised pairwise distances (weight 25) and the triplet angles (weight 50)."""

    terms = ("rkd",)
    needs = frozenset({"embedding"})

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    @in_float32
    def relational(self, s: Tensor, t: Tensor) -> Tensor:
        s, t = s.flatten(1), t.flatten(1)
        d_s, d_t = pairwise_distances(s), pairwise_distances(t)
        d_s = d_s / d_s[d_s > 0].mean()
        d_t = d_t / d_t[d_t > 0].mean()
        loss = self.distance_weight * F.smooth_l1_loss(d_s, d_t)
        return loss + self.angle_weight * F.smooth_l1_loss(angles(s), angles(t))

    def forward(self, student, teacher, target, index, epoch):
        return {"rkd": self.relational(student.embedding, teacher.embedding.detach())}


def cosine_conditional(x: Tensor, eps: float = 1e-7) -> Tensor:
    """PKT's conditional probabilities p(j|i) from the cosine kernel rescaled to [0, 1]."""
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    k = (x @ x.T + 1) / 2
    return k / k.sum(dim=1, keepdim=True)


@register_method("pkt")
class ProbabilisticKT(Distiller):
    """Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018): KL between the teacher's and
    the student's cosine-kernel conditional distributions over the batch (mean over b^2 entries,
    hence the large default weight 30000)."""

    terms = ("pkt",)
    needs = frozenset({"embedding"})

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = eps

    @in_float32
    def divergence(self, s: Tensor, t: Tensor) -> Tensor:
        p_s, p_t = cosine_conditional(s.flatten(1), self.eps), cosine_conditional(t.flatten(1), self.eps)
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()

    def forward(self, student, teacher, target, index, epoch):
        return {"pkt": self.divergence(student.embedding, teacher.embedding.detach())}


def _poly_mean(a: Tensor, b: Tensor) -> Tensor:
    return (a @ b.transpose(1, 2)).pow(2).mean()


@in_float32
def polynomial_mmd(s: Tensor, t: Tensor) -> Tensor:
    """Squared MMD, kernel (a.b)^2, between the L2-normalised channel maps of s and of t."""
    s, t = F.normalize(s.flatten(2), dim=2), F.normalize(t.flatten(2), dim=2)
    return _poly_mean(t, t) + _poly_mean(s, s) - 2 * _poly_mean(s, t)


@register_method("nst")
class NeuronSelectivityTransfer(Distiller):
    """Neuron Selectivity Transfer (Huang & Wang, 2017): squared MMD with the polynomial kernel
    k(a, b) = (a.b)^2 between the sets of L2-normalised per-channel spatial maps of each paired
    stage (channel counts may differ); summed over stages."""

    terms = ("nst",)
    needs = frozenset({"stages"})

    def __init__(self):
        super().__init__()
        self.pairs: list[tuple[int, int]] = []

    def build(self, student, teacher, num_classes, num_samples):
        self.pairs = stage_pairs(len(student.stages), len(teacher.stages), "nst")

    def teacher_levels(self):
        return {"stages": teacher_side(self.pairs)}

    def forward(self, student, teacher, target, index, epoch):
        loss = 0.0
        for i, j in self.pairs:
            s, t = align_spatial(student.stages[i], teacher.stages[j].detach())
            loss = loss + polynomial_mmd(s, t)
        return {"nst": loss}
