"""Test-split evaluation of one model (accuracy, calibration, deployment costs), memoised by weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdexp.caching.fingerprint import fingerprint, remember
from kdexp.caching.teacher_outputs import TeacherOutputCache, TeacherOutputs, weights_digest
from kdexp.measure.metrics import accuracy_metrics, agreement_metrics, cost_metrics, predict_logits
from kdexp.training.context import Context

# In-process memo of evaluations: every trial of an in-process sweep re-evaluates the same cached teacher
# and baseline (test logits, latency); keyed by the weights, so a changed model is always re-evaluated.
_EVALUATIONS: dict[str, tuple[torch.Tensor, dict]] = {}
_EVALUATIONS_KEPT = 8
CACHED_ROLES = ("teacher", "baseline")  # models that come from the model cache: their test logits are cached too


def evaluate(ctx: Context, model: nn.Module, role: str, costs: bool = True) -> dict[str, float]:
    """Test-set accuracy/calibration (+ deployment costs) of one model; keeps its logits for agreement."""
    model.eval()
    digest = weights_digest(model)
    key = fingerprint({"arch": type(model).__name__, "weights": digest, "data": ctx.dm.fingerprint(),
                       "eval": ctx.conf["eval"], "costs": costs})
    if key in _EVALUATIONS:
        ctx.test[role], out = _EVALUATIONS[key]
        return dict(out)
    x, y = ctx.dm.split_tensors("test")
    batch = ctx.conf["data"].get("eval_batch_size", 1024)
    mode = ctx.conf["teacher_cache"]["mode"]
    if role in CACHED_ROLES and mode != "off":
        logits = cached_test_logits(ctx, model, digest, batch)
    else:
        logits = predict_logits(model, x, batch)
    ctx.test[role] = logits
    out = {f"test_{k}": v for k, v in accuracy_metrics(logits, y, ctx.conf["eval"]["ece_bins"]).items()}
    if costs:
        ev = ctx.conf["eval"]
        out.update(cost_metrics(model, ctx.input_shape, ev["latency_batch"], ev["latency_repeats"]))
    remember(_EVALUATIONS, key, (logits, dict(out)), _EVALUATIONS_KEPT)
    return out


def cached_test_logits(ctx: Context, model: nn.Module, digest: str, batch_size: int) -> torch.Tensor:
    """predict_logits on the test split, stored beside the teacher outputs: a cached model's are computed once."""
    spec = {"kind": "split-logits", "arch": type(model).__name__, "weights": digest, "data": ctx.dm.fingerprint(),
            "split": "test", "batch_size": batch_size}

    def compute() -> TeacherOutputs:
        x, _ = ctx.dm.split_tensors("test")
        return TeacherOutputs(predict_logits(model, x, batch_size), [], [], None, len(x))

    cache = TeacherOutputCache(Path(ctx.conf["paths"]["cache"]) / "teacher_outputs")
    return cache.get_or_compute(fingerprint(spec), compute, spec)[0].logits


def agreement(ctx: Context, role: str = "student") -> dict[str, float]:
    """Top-1 agreement and KL of `role` (and of the vanilla baseline, if evaluated) with the teacher."""
    out = {f"{role}/{k}": v for k, v in agreement_metrics(ctx.test[role], ctx.test["teacher"]).items()}
    if "baseline" in ctx.test:
        baseline = agreement_metrics(ctx.test["baseline"], ctx.test["teacher"])
        out.update({f"baseline/{k}": v for k, v in baseline.items()})
    return out
