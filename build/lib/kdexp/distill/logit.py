"""Logit-based methods: DKD, DIST, logit-standardised KD. Each returns one term replacing `kd`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdexp.distill import register_method
from kdexp.distill.base import Distiller, kd_loss
from kdexp.distill.common import in_float32, warmup_factor

# `distill.temperature` is passed to these methods (kdexp.distill.method_from_config): one temperature key
# for every logit method, so a sweep over distill.temperature means the same thing for KD, DKD and DIST.


def _kl(log_p_student: Tensor, log_p_teacher: Tensor) -> Tensor:
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


@register_method("dkd")
class DKD(Distiller):
    """Decoupled KD (Zhao et al., CVPR 2022).

    KD splits into TCKD (binary target-vs-rest distribution) and NCKD (distribution among the
    non-target classes); DKD weights them freely: warmup(epoch) * (alpha*TCKD + beta*NCKD) * T^2.
    """

    terms = ("dkd",)
    needs = frozenset({"logits"})

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: int = 20):
        super().__init__()
        self.alpha, self.beta, self.temperature, self.warmup = alpha, beta, temperature, warmup

    def forward(self, student, teacher, target, index, epoch):
        loss = self.decoupled(student.logits, teacher.logits.detach(), target)
        return {"dkd": warmup_factor(epoch, self.warmup) * loss}

    @in_float32
    def decoupled(self, s: Tensor, t: Tensor, target: Tensor) -> Tensor:
        s, t = s / self.temperature, t / self.temperature
        is_target = F.one_hot(target, s.shape[1]).bool()
        # log-space binary probabilities: stable even when p(target) saturates at 1
        tckd = _kl(self._binary_log_probs(s, is_target), self._binary_log_probs(t, is_target))
        rest = s.shape[1] - 1
        nckd = _kl(
            F.log_softmax(s[~is_target].view(-1, rest), dim=1),
            F.log_softmax(t[~is_target].view(-1, rest), dim=1),
        )
        return (self.alpha * tckd + self.beta * nckd) * self.temperature**2

    @staticmethod
    def _binary_log_probs(z: Tensor, is_target: Tensor) -> Tensor:
        total = z.logsumexp(dim=1)
        log_target = z[is_target] - total
        log_rest = z.masked_fill(is_target, float("-inf")).logsumexp(dim=1) - total
        return torch.stack([log_target, log_rest], dim=1)


def _pearson_distance(a: Tensor, b: Tensor) -> Tensor:
    """1 - Pearson correlation of each row of a with the same row of b, averaged over rows."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (1 - F.cosine_similarity(a, b, dim=1, eps=1e-8)).mean()


@register_method("dist")
class DIST(Distiller):
    """DIST (Huang et al., NeurIPS 2022): match relations instead of exact probabilities.

    inter-class: Pearson distance between each sample's class distribution (rows);
    intra-class: Pearson distance between each class's scores over the batch (columns).
    term = T^2 * (beta*inter + gamma*intra). Defaults: the paper's ImageNet setting (beta=gamma=1,
    T=1); conf/distill/dist.yaml holds the CIFAR-100 setting (see there).
    """

    terms = ("dist",)
    needs = frozenset({"logits"})

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0):
        super().__init__()
        self.beta, self.gamma, self.temperature = beta, gamma, temperature

    def forward(self, student, teacher, target, index, epoch):
        return {"dist": self.relations(student.logits, teacher.logits.detach())}

    @in_float32
    def relations(self, s: Tensor, t: Tensor) -> Tensor:
        p_s, p_t = F.softmax(s / self.temperature, dim=1), F.softmax(t / self.temperature, dim=1)
        inter = _pearson_distance(p_s, p_t)
        intra = _pearson_distance(p_s.T, p_t.T)
        return self.temperature**2 * (self.beta * inter + self.gamma * intra)


def standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample z-score of the logits (unbiased std, as the authors' code)."""
    return (logits - logits.mean(dim=1, keepdim=True)) / (logits.std(dim=1, keepdim=True) + eps)


@register_method("kd_std")
class LogitStandardKD(Distiller):
    """KD with logit standardisation (Sun et al., CVPR 2024).

    Z-scoring both logit vectors before the tempered softmax removes the need for the student to
    match the teacher's logit range; then Hinton KD (with T^2) at the base `temperature`. Use it
    instead of `kd` (weights: ce 0.1, kd 0, kd_std 9 with base temperature 2 on CIFAR-100).
    """

    terms = ("kd_std",)
    needs = frozenset({"logits"})

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, student, teacher, target, index, epoch):
        return {"kd_std": self.standardized_kd(student.logits, teacher.logits.detach())}

    @in_float32
    def standardized_kd(self, s: Tensor, t: Tensor) -> Tensor:
        return kd_loss(standardize(s), standardize(t), self.temperature)
