"""`variant=augmented`: consistent teaching (Beyer et al. 2022, "Knowledge distillation: a good teacher is
patient and consistent").

Every training batch is mixed (mixup / CutMix) or partly erased, and the frozen teacher is queried on
exactly the tensor the student sees: the student matches the teacher's *function* on inputs around the
data, not fixed targets. By default the loss is the KD term alone (the paper's "function matching"):
`variant.ce_weight=0`. With `ce_weight>0` a hard-label term is added, on the mixed targets
(λ·CE(y_a) + (1-λ)·CE(y_b)). The teacher runs online (`teacher_cache.mode` is forced to off): cached
outputs are per sample, and these inputs are new every step.

Methods whose terms use labels or sample indices (DKD, CRD, ...) see those of the un-permuted batch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdexp.config.errors import ConfigError
from kdexp.config.variants import AUGMENT_POLICIES
from kdexp.modules.distill import DistillModule
from kdexp.training.context import make_context
from kdexp.training.distilled import StageSpec, distillation_pair, train_distilled
from kdexp.training.lifecycle import trial_callbacks
from kdexp.training.results import ReportSpec, lineage_tags, method_label, report_student, student_run
from kdexp.variants import register_variant

log = logging.getLogger("kdexp")


@dataclass
class MixedBatch:
    """An augmented batch: x = λ·x_a + (1-λ)·x_b (mixup) or x_a with a box of x_b (CutMix; λ = the part
    of x_a kept), or x_a partly erased (λ = 1). y_a are the batch's labels, y_b those of the partners."""

    x: Tensor
    y_a: Tensor
    y_b: Tensor
    lam: float


class BatchAugmenter:
    """Batched mixup / CutMix / random erasing; all random draws come from generators seeded with `seed`
    (λ and box positions from NumPy's — torch has no seeded Beta sampler — partners and erasing from
    torch's)."""

    def __init__(self, policy: str, alpha: float = 1.0, seed: int = 0, erase_prob: float = 0.5,
                 erase_scale: tuple[float, float] = (0.02, 0.33), erase_ratio: tuple[float, float] = (0.3, 3.3)):
        if policy not in AUGMENT_POLICIES:
            raise ConfigError(f"variant.policy={policy!r} is invalid: choose one of {', '.join(AUGMENT_POLICIES)}")
        if policy != "erasing" and not alpha > 0:
            raise ConfigError(f"variant.alpha={alpha!r} is invalid: the Beta(α, α) parameter must be > 0")
        if not 0 <= erase_prob <= 1 or not 0 < erase_scale[0] <= erase_scale[1] <= 1:
            raise ConfigError(f"variant.erase_prob={erase_prob!r} / erase_scale={list(erase_scale)!r} "
                              "are invalid: a probability, and an area range within (0, 1]")
        self.policy, self.alpha = policy, float(alpha)
        self.erase_prob, self.erase_scale, self.erase_ratio = erase_prob, erase_scale, erase_ratio
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, x: Tensor, y: Tensor) -> MixedBatch:
        if self.policy == "erasing":
            return MixedBatch(self.erase(x), y, y, 1.0)
        perm = torch.randperm(len(x), generator=self.gen).to(x.device)
        lam = float(self.rng.beta(self.alpha, self.alpha))
        if self.policy == "mixup":
            return MixedBatch(lam * x + (1 - lam) * x[perm], y, y[perm], lam)
        top, left, h, w = self.cutmix_box(x.shape[-2], x.shape[-1], lam)
        mixed = x.clone()
        mixed[..., top : top + h, left : left + w] = x[perm][..., top : top + h, left : left + w]
        return MixedBatch(mixed, y, y[perm], 1 - h * w / (x.shape[-2] * x.shape[-1]))

    def cutmix_box(self, height: int, width: int, lam: float) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a box of about (1-λ) of the image, centred uniformly, clipped to the image
        (Yun et al. 2019); the returned box's true area sets the labels' λ."""
        cut = math.sqrt(1 - lam)
        cy, cx = int(self.rng.integers(height)), int(self.rng.integers(width))
        ch, cw = int(height * cut), int(width * cut)
        top, bottom = max(cy - ch // 2, 0), min(cy + ch - ch // 2, height)
        left, right = max(cx - cw // 2, 0), min(cx + cw - cw // 2, width)
        return top, left, bottom - top, right - left

    def erase(self, x: Tensor) -> Tensor:
        """Random erasing (Zhong et al. 2020), per sample with probability erase_prob: a box of area
        fraction in erase_scale and aspect ratio in erase_ratio, filled with N(0, 1) noise (inputs are
        normalized). One mask for the whole batch, built from coordinate comparisons."""
        b, _, height, width = x.shape
        g = self.gen
        area = torch.empty(b).uniform_(*self.erase_scale, generator=g) * height * width
        lo, hi = math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1])
        log_ratio = torch.empty(b).uniform_(lo, hi, generator=g)
        h = (area * log_ratio.exp()).sqrt().round().clamp(1, height).long()
        w = (area / log_ratio.exp()).sqrt().round().clamp(1, width).long()
        top = (torch.rand(b, generator=g) * (height - h + 1)).long()
        left = (torch.rand(b, generator=g) * (width - w + 1)).long()
        chosen = torch.rand(b, generator=g) < self.erase_prob
        rows, cols = torch.arange(height), torch.arange(width)
        inside_r = (rows[None] >= top[:, None]) & (rows[None] < (top + h)[:, None])  # (B, H)
        inside_c = (cols[None] >= left[:, None]) & (cols[None] < (left + w)[:, None])  # (B, W)
        mask = (inside_r[:, :, None] & inside_c[:, None, :] & chosen[:, None, None])[:, None].to(x.device)
        noise = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
        return torch.where(mask, noise, x)


class AugmentedDistillModule(DistillModule):
    """DistillModule whose training batches are augmented once, then given to teacher and student alike."""

    def __init__(self, student, *, augmenter: BatchAugmenter, **kwargs):
        super().__init__(student, **kwargs)
        self.augmenter = augmenter

    def use_teacher_outputs(self, outputs) -> None:
        if outputs is not None:  # cached outputs belong to the clean samples, not to these inputs
            raise RuntimeError("variant=augmented needs the teacher online: cached teacher outputs cannot be used")

    def on_save_checkpoint(self, checkpoint: dict) -> None:  # a resumed run draws the same mixes
        super().on_save_checkpoint(checkpoint)
        checkpoint["kdexp_augmenter"] = {"numpy": self.augmenter.rng.bit_generator.state,
                                         "torch": self.augmenter.gen.get_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("kdexp_augmenter")
        if state is not None:
            self.augmenter.rng.bit_generator.state = state["numpy"]
            self.augmenter.gen.set_state(state["torch"])

    def augment_batch(self, x: Tensor, y: Tensor):
        batch = self.augmenter(x, y)

        def mixed_cross_entropy(logits: Tensor) -> Tensor:  # λ·CE(y_a) + (1-λ)·CE(y_b)
            return batch.lam * F.cross_entropy(logits, batch.y_a) + (1 - batch.lam) * F.cross_entropy(logits, batch.y_b)

        # train/acc stays against the un-mixed labels: a rough signal only (val/acc is the real one)
        return batch.x, mixed_cross_entropy


def augmenter_from(v: dict, seed: int) -> BatchAugmenter:
    return BatchAugmenter(v["policy"], float(v["alpha"]), seed, float(v["erase_prob"]),
                          tuple(v["erase_scale"]), tuple(v["erase_ratio"]))


def loss_weights(conf: Mapping) -> dict[str, float]:
    """distill.weights with `ce` replaced by variant.ce_weight (0 by default: KD only, as the paper)."""
    weights = {**conf["distill"]["weights"], "ce": float(conf["variant"]["ce_weight"])}
    if not any(w > 0 for w in weights.values()):
        raise ConfigError(f"variant=augmented: every loss weight is 0 ({weights}); use distill=kd or set "
                          "variant.ce_weight > 0")
    return weights


def online_teacher(conf: Mapping) -> dict:
    """The run's config with `teacher_cache.mode=off`: cached outputs belong to the clean samples."""
    if conf["teacher_cache"]["mode"] == "on":
        raise ConfigError("variant=augmented queries the teacher on new inputs every step: "
                          "teacher_cache.mode=on cannot apply (use auto or off)")
    return {**conf, "teacher_cache": {**conf["teacher_cache"], "mode": "off"}}


@register_variant("augmented")
def run(conf: Mapping, run_dir: Path, cell: str = "") -> dict[str, float]:
    """Two-stage methods (AB / FT / FSP) run their first stage on augmented batches too: teacher and
    student always see the same inputs."""
    v = conf["variant"]
    weights = loss_weights(conf)
    augmenter = augmenter_from(v, conf["seed"])  # bad settings fail before any training
    label = method_label(conf, v["policy"])
    tags = {"kdexp.variant": "augmented", "kdexp.augment": v["policy"]}
    ctx = make_context(online_teacher(conf), run_dir, tags, cell=cell)
    p = distillation_pair(ctx)
    name = f"{label}:{conf['teacher']['arch']}->{conf['student']['arch']}"
    trained = {"distill": {**conf["distill"], "weights": weights}}
    with student_run(ctx, name, label, lineage_tags(p.teacher_meta, p.baseline_meta), trained) as run_id:
        stage = StageSpec(weights=weights, module=partial(AugmentedDistillModule, augmenter=augmenter),
                          callbacks=tuple(trial_callbacks(conf)))
        train_metrics = train_distilled(ctx, run_id, p.student, p.teacher, p.method, stage)
        report = ReportSpec(p.teacher_meta, p.baseline_meta, labels={"distill": label},
                            shown={"distill": {"weights": weights}})
        return report_student(ctx, run_id, p.student, train_metrics, report)
