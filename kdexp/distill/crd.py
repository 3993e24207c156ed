"""Contrastive Representation Distillation (Tian et al., ICLR 2020)."""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from kdexp.distill import register_method
from kdexp.distill.base import Distiller, IncompatiblePairError
from kdexp.distill.common import L2Embed

log = logging.getLogger(__name__)
# Score against the whole bank when 1 + k >= bank / DENSE_FRACTION: up to 32x the multiply-adds of the
# gathered product, but no (B, 1 + k, feat_dim) gather, which costs more than the arithmetic. Measured on
# one CPU thread, batch 128, 4,097 scores per row, forward + backward: a 54k bank (13x) 87 ms whole-bank vs
# 680 ms gathered; 9k: 30 vs 468 ms (at 4 the full Fashion-MNIST set took the gathered path: 7 min/epoch).
DENSE_FRACTION = 32


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_gather_rows(x: Tensor) -> Tensor:
    """Concatenate `x` from every process along dim 0 (per-process batch sizes may differ)."""
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


@register_method("crd")
class CRD(Distiller):
    """CRD: a contrastive (NCE) objective between student and teacher embeddings.

    Both embeddings go through a linear head to `feat_dim` on the unit sphere. A memory bank per
    side holds one momentum-averaged embedding per training sample (indexed by `index`); each
    sample is contrasted, in both directions, against its own entry in the other side's bank
    (positive) and `num_negatives` random entries (negatives). Scores exp(<v, m>/nce_temperature)
    are divided by a normaliser Z fixed on the first batch, and the NCE loss uses the uniform noise
    distribution 1/num_samples.

    Negatives: drawn uniformly, never the sample itself, and redrawn (up to 3 times) where the
    label recorded for the drawn sample equals the anchor's, approximating RepDistiller's
    other-class sampling (labels are recorded as samples are seen, so the first epoch is uniform).
    If the training set is smaller than num_negatives + 1, the count is clamped to num_samples - 1
    and a warning is logged.

    shared_negatives: one draw of num_negatives entries per step serves every anchor of the batch (as
    MoCo's queue does), those of the anchor's own sample or recorded class masked out of its row, so each
    row has its own count of negatives in the NCE noise term. Each anchor still sees uniform other-class
    noise; the batch's draws are no longer independent. Scoring is a (B, k) product instead of per-sample
    gathers or the whole bank: 54k bank, 4,096 negatives, one CPU thread: ~13x fewer multiply-adds.

    Under DDP the bank update all-gathers indices, labels and embeddings so every process keeps an
    identical bank; Z is averaged over processes.
    """

    terms = ("crd",)
    needs = frozenset({"embedding", "index"})

    def __init__(
        self,
        feat_dim: int = 128,
        num_negatives: int = 16384,
        nce_temperature: float = 0.07,
        momentum: float = 0.5,
        eps: float = 1e-7,
        shared_negatives: bool = False,  # RepDistiller draws per sample; shared is for tight CPU budgets
    ):
        super().__init__()
        if not isinstance(shared_negatives, bool):
            raise ValueError(f"crd: shared_negatives must be true or false, got {shared_negatives!r}")
        self.feat_dim, self.num_negatives, self.shared_negatives = feat_dim, num_negatives, shared_negatives
        self.nce_temperature, self.momentum, self.eps = nce_temperature, momentum, eps
        self.num_samples = 0
        self.embed_student = self.embed_teacher = None
        self.register_buffer("z", torch.full((2,), -1.0))  # <0: not fixed yet
        self._z_fixed = False

    @property
    def k(self) -> int:
        return min(self.num_negatives, self.num_samples - 1)

    def build(self, student, teacher, num_classes, num_samples):
        if num_samples < 2:
            raise IncompatiblePairError(f"crd needs at least 2 training samples, got {num_samples}")
        self.num_samples = num_samples
        if self.k < self.num_negatives:
            log.warning(
                "crd: the training set has only %d samples, so num_negatives is clamped from %d to %d",
                num_samples,
                self.num_negatives,
                self.k,
            )
        self.embed_student = L2Embed(student.embedding.flatten(1).shape[1], self.feat_dim)
        self.embed_teacher = L2Embed(teacher.embedding.flatten(1).shape[1], self.feat_dim)
        bound = 1.0 / math.sqrt(self.feat_dim / 3)
        for name in ("memory_student", "memory_teacher"):
            self.register_buffer(name, torch.rand(num_samples, self.feat_dim) * 2 * bound - bound)
        self.register_buffer("labels", torch.full((num_samples,), -1, dtype=torch.long))

    def forward(self, student, teacher, target, index, epoch):
        if not self.training and int(index.max()) >= self.num_samples:
            raise ValueError("crd: index beyond the training set; call CRD on training batches only")
        with torch.autocast(device_type=index.device.type, enabled=False):
            v_s = self.embed_student(student.embedding.float())
            v_t = self.embed_teacher(teacher.embedding.detach().float())
            if self.shared_negatives:
                neg, valid = self.shared_indices(index, target)
                out_s = self._shared_scores(self.memory_teacher, index, neg, v_s)  # student anchor vs teacher bank
                out_t = self._shared_scores(self.memory_student, index, neg, v_t)
            else:
                idx, valid = self.sample_indices(index, target), None
                out_s = self._scores(self.memory_teacher, idx, v_s)
                out_t = self._scores(self.memory_student, idx, v_t)
            z = self._normalisers(out_s, out_t, valid)
            loss = self._nce(out_s / z[0], valid) + self._nce(out_t / z[1], valid)
        if self.training:
            self._update(index, target, v_s.detach(), v_t.detach())
        return {"crd": loss}

    def sample_indices(self, index: Tensor, target: Tensor) -> Tensor:
        """(B, 1 + k) bank indices; column 0 is the positive. Only the draws that hit the anchor's class are
        redrawn (about 1 in num_classes), not the whole (B, k) block: 3x faster sampling on a CPU, where
        drawing the indices was most of a CRD step (benchmarks/crd_scores.py)."""
        idx = torch.empty((index.shape[0], 1 + self.k), dtype=torch.long, device=index.device)
        idx[:, 0] = index
        neg = idx[:, 1:]
        self._draw(neg, index[:, None])
        rows, cols = (self.labels[neg] == target[:, None]).nonzero(as_tuple=True)
        for _ in range(3):
            fresh = self._draw(torch.empty_like(rows), index[rows])
            neg[rows, cols] = fresh
            clash = self.labels[fresh] == target[rows]
            rows, cols = rows[clash], cols[clash]
        return idx

    def shared_indices(self, index: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(k,) bank indices drawn once for the batch, and the (B, k) mask of those that are negatives of
        each anchor: not its own sample, not its recorded class (unseen samples count as other-class)."""
        neg = torch.randint(0, self.num_samples, (self.k,), device=index.device)
        valid = (neg[None, :] != index[:, None]) & (self.labels[neg][None, :] != target[:, None])
        return neg, valid

    def _shared_scores(self, memory: Tensor, index: Tensor, neg: Tensor, v: Tensor) -> Tensor:
        """exp(<m, v> / τ) as (B, 1 + k): the anchor's own entry, then the shared draws (gathers are copies,
        so the in-place bank update before backward is safe)."""
        pos = (memory[index] * v).sum(1, keepdim=True)
        return torch.exp(torch.cat([pos, v @ memory[neg].T], dim=1) / self.nce_temperature)

    def _draw(self, out: Tensor, anchors: Tensor) -> Tensor:
        """Fills `out` in place with uniform bank indices, never the (broadcast) anchor itself."""
        out.random_(0, self.num_samples - 1)
        return out.add_(out >= anchors)

    def _scores(self, memory: Tensor, idx: Tensor, v: Tensor) -> Tensor:
        """exp(<memory[idx], v> / τ) as (B, 1 + k). When the draws cover a large part of the bank (small
        data sets), one GEMM against the whole bank then a gather is the same numbers without
        materialising memory[idx], a (B, 1 + k, feat_dim) copy (655 MB per side for 10k samples)."""
        if idx.shape[1] * DENSE_FRACTION >= memory.shape[0]:
            dots = (v @ memory.T.clone()).gather(1, idx)  # a copy: the bank is updated in place before backward
        else:
            dots = torch.bmm(memory[idx], v.unsqueeze(2)).squeeze(2)
        return torch.exp(dots / self.nce_temperature)

    def _normalisers(self, out_s: Tensor, out_t: Tensor, valid: Tensor | None = None) -> Tensor:
        # python-side cache avoids a device sync per step once Z is fixed (Z also lives in checkpoints)
        if self._z_fixed or bool((self.z > 0).all()):
            self._z_fixed = True
            return self.z
        z = torch.stack([_mean(out_s, valid), _mean(out_t, valid)]).detach() * self.num_samples
        if _distributed():
            dist.all_reduce(z)
            z = z / dist.get_world_size()
        if self.training:
            self.z.copy_(z)
        return z

    def _nce(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """NCE with uniform noise: positive column 0 vs k noise samples of density 1/num_samples (k per row
        where `valid` masks the negatives)."""
        if valid is None:
            mass = (x.shape[1] - 1) / self.num_samples
        else:
            mass = valid.sum(1, keepdim=True).to(x.dtype) / self.num_samples
        log_pos = torch.log(x[:, :1] / (x[:, :1] + mass + self.eps))
        log_neg = torch.log(mass / (x[:, 1:] + mass + self.eps))
        if valid is not None:
            log_neg = log_neg.masked_fill(~valid, 0.0)
        return -(log_pos.sum() + log_neg.sum()) / x.shape[0]

    @torch.no_grad()
    def _update(self, index: Tensor, target: Tensor, v_s: Tensor, v_t: Tensor) -> None:
        if _distributed():
            index, target, v_s, v_t = (all_gather_rows(x) for x in (index, target, v_s, v_t))
        self.labels[index] = target
        for memory, v in ((self.memory_student, v_s), (self.memory_teacher, v_t)):
            mixed = memory[index] * self.momentum + v * (1 - self.momentum)
            memory.index_copy_(0, index, F.normalize(mixed, dim=1))


def _mean(out: Tensor, valid: Tensor | None) -> Tensor:
    """Mean score over the positives and the valid negatives."""
    if valid is None:
        return out.mean()
    return (out[:, 0].sum() + out[:, 1:][valid].sum()) / (out.shape[0] + valid.sum())
