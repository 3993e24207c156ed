"""Transformer-pair methods (kdexp.models.text `hf` models): hidden states, attention maps, self-attention relations.

  hidden    DistilBERT (Sanh et al. 2019): cosine between student and teacher hidden states; `loss=mse` with a
            learned projection when widths differ is TinyBERT's hidden-state loss (Jiao et al. 2020)
  tinybert  TinyBERT's task-specific distillation: first an intermediate-layer stage (`init_epochs`): hidden-state
            MSE through a learned projection W_h (term `hidden`, the embedding outputs included) + MSE of the
            pre-softmax attention scores, averaged over heads (term `attention`), summed over layers; then the
            prediction layer (the built-in `kd` term at T=1) for trainer.max_epochs
  minilm    MiniLM (Wang et al. 2020): KL of the last layer's attention distributions and of its value relations
            softmax(V V^T / sqrt(d_k)), per head, averaged over heads and tokens; a first stage of these alone
            (`init_epochs`), then fine-tuning on hard labels

Which teacher layer teaches which student layer is `layers`: uniform (student layer m <- teacher layer m*N/M, as
TinyBERT) or last (the top M teacher layers). Every loss counts real tokens only (the attention mask): TinyBERT's
scores of padded (query, key) pairs are left out of the mean (its public code sets the masked scores to 0 and
keeps them in). The scores are Q_a K_a^T / sqrt(d_k) of each layer's own query and key projections (caught by
forward hooks, before the mask is added and before softmax and dropout); `build` refuses a model whose attention
probabilities are not their softmax (relative or rotary positions). The teacher-output cache keeps no
query/key projections, so tinybert's teacher runs online (with `attention=probs` it is cached); for hidden and
minilm it keeps the teacher's per-token features padded to data.max_length, and every loss reads the teacher's
leading positions, as many as the student's.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.distill import register_method
from kdexp.distill.base import Distiller, IncompatiblePairError
from kdexp.distill.common import in_float32
from kdexp.models.base import FeatureOutput

LAYER_MAPS = ("uniform", "last")
ATTENTION_FORMS = ("scores", "probs")  # TinyBERT's attention term: pre-softmax scores (the paper's) or probabilities
INTERMEDIATE_EPOCHS = 20  # TinyBERT on GLUE: 20 epochs of intermediate-layer distillation, then 3 of prediction


def layer_map(n_student: int, n_teacher: int, mode: str) -> list[tuple[int, int]]:
    """(student, teacher) transformer layers, 1-based (hidden state i is layer i's output; 0 is the embeddings).

    Args:
        n_student: the student's layer count M.
        n_teacher: the teacher's layer count N >= M.
        mode: uniform (m <- m * N // M) or last (m <- N - M + m).
    Returns:
        M pairs.
    """
    if mode not in LAYER_MAPS:
        raise ValueError(f"distill.layers={mode!r} is invalid: choose one of {', '.join(LAYER_MAPS)}")
    if n_student > n_teacher:
        raise IncompatiblePairError(f"the student has {n_student} layers, the teacher {n_teacher}: a layer map "
                                    "needs a teacher at least as deep")
    if mode == "uniform":
        return [(m, m * n_teacher // n_student) for m in range(1, n_student + 1)]
    return [(m, n_teacher - n_student + m) for m in range(1, n_student + 1)]


def masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Sum of values * weights over the sum of weights (weights broadcast to values)."""
    weights = weights.expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1)


@in_float32
def hidden_loss(student: Tensor, teacher: Tensor, mask: Tensor, kind: str) -> Tensor:
    """MSE per feature, or 1 - cosine per token, averaged over real tokens; (B, L, H) states, (B, L) mask."""
    teacher = teacher[:, : student.shape[1]]
    m = mask[:, : student.shape[1], None].to(student.dtype)
    if kind == "mse":
        return masked_mean((student - teacher) ** 2, m)
    return masked_mean(1 - F.cosine_similarity(student, teacher, dim=-1)[..., None], m)


@in_float32
def attention_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """MSE of (B, heads, L, L) attention maps over real (query, key) pairs, averaged over heads."""
    n = student.shape[-1]
    teacher = teacher[..., :n, :n]
    m = mask[:, :n].to(student.dtype)
    pair = (m[:, :, None] * m[:, None, :])[:, None]  # (B, 1, L, L)
    return masked_mean((student - teacher) ** 2, pair)


@in_float32
def relation_kl(student_probs: Tensor, teacher_probs: Tensor, mask: Tensor) -> Tensor:
    """KL(teacher row || student row) of (B, heads, L, L) distributions, averaged over heads and real queries."""
    n = student_probs.shape[-1]
    t = teacher_probs[..., :n, :n]
    kl = (t * (t.clamp_min(1e-12).log() - student_probs.clamp_min(1e-12).log())).sum(-1)  # (B, heads, L)
    return masked_mean(kl, mask[:, None, :n].to(kl.dtype))


def value_relation(values: Tensor, heads: int, mask: Tensor) -> Tensor:
    """softmax(V_a V_a^T / sqrt(d_k)) per head a over real keys: (B, L, H) values -> (B, heads, L, L)."""
    b, n, h = values.shape
    v = values.float().view(b, n, heads, h // heads).transpose(1, 2)
    scores = v @ v.transpose(-1, -2) / math.sqrt(h // heads)
    return scores.masked_fill(mask[:, None, None, :n] == 0, torch.finfo(scores.dtype).min).softmax(-1)


@in_float32
def attention_scores(queries: Tensor, keys: Tensor, heads: int) -> Tensor:
    """Pre-softmax scores Q_a K_a^T / sqrt(d_k) of each head a: (B, L, H) projections -> (B, heads, L, L)."""
    b, n, h = queries.shape
    q = queries.view(b, n, heads, h // heads).transpose(1, 2)
    k = keys.view(b, keys.shape[1], heads, h // heads).transpose(1, 2)
    return q @ k.transpose(-1, -2) / math.sqrt(h // heads)


def check_scores(features: FeatureOutput, role: str) -> None:
    """Refuse a model whose attention probabilities are not the softmax of attention_scores over real keys (the
    scores would not be the ones it attends with: relative or rotary positions, another scaling). `features` are
    build's examples, from eval mode (no attention dropout)."""
    if not (len(features.queries) == len(features.keys) == len(features.attentions)):
        raise IncompatiblePairError(f"tinybert: the {role}'s query and key projections were not found; "
                                    "distill.attention=probs compares attention probabilities instead")
    heads, keep = features.attentions[0].shape[1], features.mask[:, None, None, :] != 0
    for layer, (q, k, probs) in enumerate(zip(features.queries, features.keys, features.attentions), 1):
        scores = attention_scores(q, k, heads)
        if not torch.allclose(scores.masked_fill(~keep, torch.finfo(scores.dtype).min).softmax(-1), probs.float(),
                              atol=1e-4):
            raise IncompatiblePairError(f"tinybert: the {role}'s attention in layer {layer} is not softmax(QK^T/"
                                        "sqrt(d)) of its projections; distill.attention=probs compares probabilities")


class TransformerMethod(Distiller):
    """Checks that both nets are transformers (hidden states, attentions) and keeps their layer counts."""

    needs: ClassVar[frozenset[str]] = frozenset({"logits", "stages", "attentions", "mask"})
    transformer_only: ClassVar[bool] = True

    def __init__(self, layers: str = "uniform"):
        super().__init__()
        if layers not in LAYER_MAPS:
            raise ValueError(f"distill.layers={layers!r} is invalid: choose one of {', '.join(LAYER_MAPS)}")
        self.layers = layers
        self.pairs: list[tuple[int, int]] = []

    def build(self, student: FeatureOutput, teacher: FeatureOutput, num_classes: int, num_samples: int) -> None:
        name = type(self).__name__
        if not student.attentions or not teacher.attentions:
            raise IncompatiblePairError(f"{name} needs transformer teacher and student (arch=hf...): "
                                        "hidden states and attention maps")
        self.pairs = layer_map(len(student.attentions), len(teacher.attentions), self.layers)

    def teacher_levels(self):
        """The teacher's hidden states (index = layer, 0 = embeddings), attention maps and value projections
        (index = layer - 1) this method reads: the teacher-output cache keeps these only."""
        return {"stages": (), "attentions": (), "values": ()}


@register_method("hidden")
class HiddenStates(TransformerMethod):
    """Hidden states of mapped layers: `loss=cosine` (DistilBERT) or `mse` (TinyBERT), through a learned linear
    projection of the student's states when the widths differ (always with `project=true`)."""

    terms = ("hidden",)
    needs = frozenset({"logits", "stages", "attentions", "mask"})

    def __init__(self, loss: str = "cosine", layers: str = "last", project: bool = False):
        super().__init__(layers)
        if loss not in ("cosine", "mse"):
            raise ValueError(f"distill.loss={loss!r} is invalid: choose cosine or mse")
        self.loss, self.project = loss, project
        self.proj: nn.Module = nn.Identity()

    def build(self, student, teacher, num_classes, num_samples):
        super().build(student, teacher, num_classes, num_samples)
        if self.loss == "cosine" and not self.project:  # DistilBERT: the student's last layer against the teacher's
            self.pairs = self.pairs[-1:]
        ds, dt = student.stages[-1].shape[-1], teacher.stages[-1].shape[-1]
        if ds != dt or self.project:
            self.proj = nn.Linear(ds, dt)

    def teacher_levels(self):
        return {**super().teacher_levels(), "stages": tuple(j for _, j in self.pairs)}

    def forward(self, student, teacher, target, index, epoch):
        losses = [hidden_loss(self.proj(student.stages[i]), teacher.stages[j], student.mask, self.loss)
                  for i, j in self.pairs]
        return {"hidden": sum(losses) / len(losses)}


@register_method("tinybert")
class TinyBERT(TransformerMethod):
    """TinyBERT's task-specific distillation. Intermediate layers (the first stage, `init_epochs`; with 0, terms of
    the one stage): embeddings + mapped layers' hidden states through one learned projection W_h (MSE), and mapped
    layers' attention scores (`attention=scores`, the paper's) or probabilities (`probs`) (MSE averaged over heads;
    equal head counts); each summed over layers, as the paper's L_model. The first stage's loss is hidden +
    attention (TinyBERT's code); the prediction layer is the built-in `kd` term of the main stage."""

    terms = ("hidden", "attention")
    needs = frozenset({"logits", "stages", "attentions", "queries", "keys", "mask"})
    version = 2  # 1: attention probabilities, one stage, layers averaged

    def __init__(self, layers: str = "uniform", attention: str = "scores", init_epochs: int = INTERMEDIATE_EPOCHS):
        super().__init__(layers)
        if attention not in ATTENTION_FORMS:
            raise ValueError(f"distill.attention={attention!r} is invalid: choose one of {', '.join(ATTENTION_FORMS)}")
        self.attention, self.init_epochs = attention, init_epochs
        if attention == "probs":  # the probabilities need no query/key projections: the cache can serve them
            self.needs = type(self).needs - {"queries", "keys"}
        self.proj: nn.Module = nn.Identity()

    def build(self, student, teacher, num_classes, num_samples):
        super().build(student, teacher, num_classes, num_samples)
        hs, ht = student.attentions[0].shape[1], teacher.attentions[0].shape[1]
        if hs != ht:
            raise IncompatiblePairError(f"tinybert: attention maps need equal head counts (student {hs}, teacher {ht})")
        if self.attention == "scores":
            check_scores(student, "student")
            check_scores(teacher, "teacher")
        self.proj = nn.Linear(student.stages[0].shape[-1], teacher.stages[0].shape[-1])

    def teacher_levels(self):
        return {"stages": (0, *(j for _, j in self.pairs)), "attentions": tuple(j - 1 for _, j in self.pairs),
                "values": ()}

    def maps(self, features: FeatureOutput) -> list[Tensor]:
        """Each layer's attention scores or probabilities, (B, heads, L, L)."""
        if self.attention == "probs":
            return features.attentions
        heads = features.attentions[0].shape[1]
        return [attention_scores(q, k, heads) for q, k in zip(features.queries, features.keys)]

    def forward(self, student, teacher, target, index, epoch):
        mask = student.mask
        hidden = [hidden_loss(self.proj(student.stages[i]), teacher.stages[j], mask, "mse")
                  for i, j in [(0, 0), *self.pairs]]
        s_maps, t_maps = self.maps(student), self.maps(teacher)
        attention = [attention_mse(s_maps[i - 1], t_maps[j - 1], mask) for i, j in self.pairs]
        return {"hidden": sum(hidden), "attention": sum(attention)}

    def init_terms(self, student, teacher, target, index):
        return self(student, teacher, target, index, 0)


@register_method("minilm")
class MiniLM(TransformerMethod):
    """MiniLM's deep self-attention distillation of the last layers: attention-distribution KL + value-relation KL
    (per head; equal head counts; any widths). The paper distils task-agnostically, then fine-tunes; here the
    first stage (`init_epochs`) trains this term alone on the task's data and the main stage is by `weights`
    (default: hard labels only, the fine-tuning)."""

    terms = ("minilm",)
    needs = frozenset({"logits", "stages", "attentions", "values", "mask"})
    version = 2  # 1: one stage, the term added to the hard-label loss

    def __init__(self, layers: str = "uniform", init_epochs: int = INTERMEDIATE_EPOCHS):
        super().__init__(layers)
        self.init_epochs = init_epochs

    def build(self, student, teacher, num_classes, num_samples):
        super().build(student, teacher, num_classes, num_samples)
        hs, ht = student.attentions[-1].shape[1], teacher.attentions[-1].shape[1]
        if hs != ht:
            raise IncompatiblePairError(f"minilm: needs equal head counts (student {hs}, teacher {ht})")
        if len(student.values) != len(student.attentions) or len(teacher.values) != len(teacher.attentions):
            raise IncompatiblePairError("minilm: the value projections of these models were not found")
        self.pairs = [(len(student.attentions), len(teacher.attentions))]  # the last layer of each

    def teacher_levels(self):
        (_, j), = self.pairs
        return {"stages": (), "attentions": (j - 1,), "values": (j - 1,)}

    def forward(self, student, teacher, target, index, epoch):
        (i, j), mask = self.pairs[0], student.mask
        heads = student.attentions[-1].shape[1]
        at = relation_kl(student.attentions[i - 1], teacher.attentions[j - 1], mask)
        vr = relation_kl(value_relation(student.values[i - 1], heads, mask),
                         value_relation(teacher.values[j - 1][:, : mask.shape[1]], heads, mask), mask)
        return {"minilm": at + vr}

    def init_terms(self, student, teacher, target, index):
        return self(student, teacher, target, index, 0)
