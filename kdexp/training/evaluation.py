"""Test-split evaluation of one model (accuracy, calibration, deployment costs), memoised by weights, and the
latency of an experiment's models, timed together and never memoised."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from kdexp.caching.fingerprint import fingerprint, remember
from kdexp.caching.teacher_outputs import TeacherOutputCache, TeacherOutputs, weights_digest
from kdexp.measure.latency import NOISE_LIMIT, time_models
from kdexp.measure.metrics import accuracy_metrics, agreement_metrics, cost_metrics, predict_logits
from kdexp.tracking.summary import noisy_roles
from kdexp.training.context import Context

log = logging.getLogger("kdexp")

# In-process memo of evaluations: every trial of an in-process sweep re-evaluates the same cached teacher
# and baseline (test logits, params, FLOPs); keyed by the weights, so a changed model is always re-evaluated.
_EVALUATIONS: dict[str, tuple[torch.Tensor, dict]] = {}
_EVALUATIONS_KEPT = 8
CACHED_ROLES = ("teacher", "baseline")  # models that come from the model cache: their test logits are cached too


def evaluate(ctx: Context, model: nn.Module, role: str, costs: bool = True) -> dict[str, float]:
    """Test-set accuracy/calibration (+ parameters, FLOPs, size) of one model; keeps its logits for agreement
    and, with `costs`, the model itself for `latency` (timed beside the student when it is reported).

    Args:
        ctx: the experiment (its test split and `eval:` settings).
        model: the model, put in eval mode.
        role: the name its test logits are kept under in ctx.test ("teacher", "student", "gen2", ...).
        costs: also measure params, FLOPs and size (and time the model with the others in `latency`).

    Returns:
        test_* metrics (and the cost metrics), memoised by the model's weights.
    """
    model.eval()
    if costs:
        ctx.timed[role] = model
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
        logits = cached_test_logits(ctx, model, digest, batch, "teacher" if role == "teacher" else "student")
    else:
        logits = predict_logits(model, x, batch)
    ctx.test[role] = logits
    out = {f"test_{k}": v for k, v in accuracy_metrics(logits, y, ctx.conf["eval"]["ece_bins"]).items()}
    if costs:
        out.update(cost_metrics(model, ctx.input_shape))
    remember(_EVALUATIONS, key, (logits, dict(out)), _EVALUATIONS_KEPT)
    return out


def cached_test_logits(ctx: Context, model: nn.Module, digest: str, batch_size: int,
                       view: str = "student") -> torch.Tensor:
    """predict_logits on the test split, stored beside the teacher outputs: a cached model's are computed once.
    `view`: whose data fingerprint keys them (kdexp.data.base.TensorDataModule.fingerprint's role)."""
    spec = {"kind": "split-logits", "arch": type(model).__name__, "weights": digest,
            "data": ctx.dm.fingerprint(view),
            "split": "test", "batch_size": batch_size}

    def compute() -> TeacherOutputs:
        x, _ = ctx.dm.split_tensors("test")
        return TeacherOutputs(predict_logits(model, x, batch_size), [], [], None, len(x))

    cache = TeacherOutputCache(Path(ctx.conf["paths"]["cache"]) / "teacher_outputs")
    return cache.get_or_compute(fingerprint(spec), compute, spec)[0].logits


def agreement(ctx: Context, role: str = "student") -> dict[str, float]:
    """Top-1 agreement and KL of `role` (and of the vanilla baseline, if evaluated) with the teacher.

    Args:
        ctx: the experiment, whose ctx.test holds the logits evaluate() kept.
        role: the model compared with the teacher.

    Returns:
        <role>/agreement, <role>/kl_teacher (and baseline/* when a baseline was evaluated).
    """
    out = {f"{role}/{k}": v for k, v in agreement_metrics(ctx.test[role], ctx.test["teacher"]).items()}
    if "baseline" in ctx.test:
        baseline = agreement_metrics(ctx.test["baseline"], ctx.test["teacher"])
        out.update({f"baseline/{k}": v for k, v in baseline.items()})
    return out


def latency(ctx: Context, models: Mapping[str, torch.nn.Module] | None = None) -> dict[str, float]:
    """CPU latency at batch 1 and eval.latency_batch of `models` and of every model evaluate()d with costs in
    this experiment (teacher, baseline, student, ...), all timed in the same interleaved blocks
    (kdexp.measure.latency, eval.latency_repeats blocks).

    Args:
        ctx: the experiment (its timed models, input shape and eval config).
        models: role -> model, added to (or replacing) ctx.timed's (e.g. an int8 student).

    Returns:
        <role>/latency_b<b>_ms (median), _b<b>_iqr_ms, <role>/latency_noisy; against the teacher
        <role>/latency_b<b>_ms_ratio (median of per-block ratios) and _b<b>_ratio_iqr; latency/threads and
        latency/blocks.
    """
    ev, timed = ctx.conf["eval"], {**ctx.timed, **(models or {})}
    result = time_models(timed, ctx.input_shape, (1, ev["latency_batch"]), ev["latency_repeats"], "teacher")
    out = {"latency/threads": float(result.threads), "latency/blocks": float(result.blocks)}
    for role in timed:
        out.update(result.metrics(role, f"{role}/"))
    return out


def latency_flags(metrics: dict[str, float]) -> dict[str, float]:
    """student/latency_slower_than_teacher: 1 when a student with fewer parameters and FLOPs than its teacher
    measured slower than it at some batch size (a measurement to distrust, or a real cost such as per-layer
    overhead), else 0; warns about it and about noisy latencies. {} without teacher and student latencies."""
    ratios = {k: v for k, v in metrics.items() if k.startswith("student/latency_b") and k.endswith("_ms_ratio")}
    if not ratios:
        return {}
    noisy = noisy_roles(metrics)
    if noisy:
        log.warning("latency of %s stayed noisy (IQR/median > %.2f after retakes): compare with care",
                    ", ".join(noisy), NOISE_LIMIT)
    smaller = all(metrics.get(f"student/{k}", 0) < metrics.get(f"teacher/{k}", 0) for k in ("params", "flops"))
    slower = sorted(k.removeprefix("student/latency_").removesuffix("_ms_ratio") for k, v in ratios.items() if v > 1)
    flag = smaller and bool(slower)
    if flag:
        log.warning("the student (fewer parameters and FLOPs) measured slower than its teacher at %s",
                    ", ".join(slower))
    return {"student/latency_slower_than_teacher": float(flag)}


def latency_tags(metrics: dict[str, float]) -> dict[str, str]:
    """kdexp.latency_threads, kdexp.latency_clock (kdexp.measure.latency.default_clock) and kdexp.latency_flags
    ("noisy:<role> ...", "slower_than_teacher", or "none"), so that flagged runs are an MLflow query; {} when
    nothing was timed."""
    if "latency/threads" not in metrics:
        return {}
    flags = [f"noisy:{role}" for role in noisy_roles(metrics)]
    if metrics.get("student/latency_slower_than_teacher"):
        flags.append("slower_than_teacher")
    threads = int(metrics["latency/threads"])
    return {"kdexp.latency_threads": str(threads), "kdexp.latency_clock": "thread_cpu" if threads == 1 else "wall",
            "kdexp.latency_flags": " ".join(flags) or "none"}
