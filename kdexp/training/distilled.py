"""Distilling a student: the method's own first stage, its loss, the best-validation epoch; fine-tuning on
hard labels; and distilled *links* (a student cached like a teacher, for chains and born-again lines)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import lightning as L
from torch import nn

from kdexp.caching.fingerprint import fingerprint
from kdexp.modules.distill import DistillModule
from kdexp.tracking.runs import flatten
from kdexp.training.alone import cached_model, model_spec, resolve_teacher, vanilla_baseline
from kdexp.training.context import Context, build_method
from kdexp.training.evaluation import evaluate
from kdexp.training.lifecycle import tracked_run
from kdexp.training.records import record_model
from kdexp.training.trainer import fit, resuming

log = logging.getLogger("kdexp")


@dataclass
class DistillationPair:
    teacher: nn.Module
    student: nn.Module
    method: object  # a kdexp.distill.Distiller built for this pair
    teacher_meta: dict
    baseline_meta: dict | None


def distillation_pair(ctx: Context, check: Callable | None = None) -> DistillationPair:
    """The seeded teacher and student, the method built for them — an incompatible pair, or a method that
    `check(method)` refuses, fails here, before anything is trained — then the teacher's weights (loaded,
    cached or trained) and the vanilla baseline."""
    L.seed_everything(ctx.conf["seed"], verbose=False)
    teacher, student = ctx.build("teacher"), ctx.build("student")
    method = build_method(ctx, student, teacher)
    if check is not None:
        check(method)
    return DistillationPair(teacher, student, method, resolve_teacher(ctx, teacher), vanilla_baseline(ctx))


def train_distilled(ctx: Context, run_id: str, student: nn.Module, teacher: nn.Module | None, method, *,
                    recipe: Mapping | None = None, module_cls: type[DistillModule] = DistillModule,
                    module_kwargs: Mapping | None = None, weights: Mapping | None = None,
                    callbacks: list | None = None, stage: str | None = None, ckpt_dir: Path | None = None,
                    best_metrics: Callable[[nn.Module], dict] | None = None) -> dict[str, float]:
    """Train `student` from `teacher` with `method`: the method's init stage (AB / FT / FSP) first, then
    `trainer.max_epochs` of its loss. Returns val_acc, best_val_acc, best_epoch, adapter_params and, for
    the epoch of best validation accuracy, best_val/test_* (by `best_metrics`, default `evaluate`).
    Each stage checkpoints under `ckpt_dir` (default: the run's student folder) and resumes from it."""
    d, epochs = ctx.conf["distill"], ctx.conf["trainer"]["max_epochs"]
    stage = stage or f"student {d['name']}"
    ckpt_dir = ckpt_dir or ctx.student_checkpoints
    recipe = dict(recipe if recipe is not None else ctx.recipe_for("student"))
    extra = dict(module_kwargs or {})
    if method.init_epochs > 0:
        init = module_cls(student, teacher=teacher, method=method, recipe=recipe, max_epochs=method.init_epochs,
                          stage="init", metric_sink=ctx.tracker.sink(run_id, "init/"), **extra)
        fit(ctx, init, method.init_epochs, stage="init", ckpt_dir=ckpt_dir and ckpt_dir / "init")
    module = module_cls(student, teacher=teacher, method=method, weights=dict(weights or d["weights"]),
                        temperature=d["temperature"], recipe=recipe, max_epochs=epochs,
                        metric_sink=ctx.tracker.sink(run_id), **extra)
    fit(ctx, module, epochs, callbacks, stage=stage, ckpt_dir=ckpt_dir and ckpt_dir / "distill")
    metrics = {"val_acc": module.last_val_acc, "best_val_acc": module.best_val_acc, "best_epoch": module.best_epoch,
               "adapter_params": sum(p.numel() for p in method.parameters())}
    if module.best_state is not None:
        best = (best_metrics or (lambda m: evaluate(ctx, m, "student_best", costs=False)))(module.best_student())
        metrics.update({f"best_val/{k}": v for k, v in best.items()})
    return metrics


def finetune(ctx: Context, run_id: str, student: nn.Module, module_cls: type[DistillModule] = DistillModule,
             before: Callable[[nn.Module], nn.Module] = lambda m: m) -> dict[str, float]:
    """`finetune.epochs` on hard labels at `finetune.lr_scale` x the student's lr, logged under finetune/.
    Returns the student/pre_finetune/* test metrics (of before(student)), or {} when there are no epochs."""
    epochs = ctx.conf["finetune"]["epochs"]
    if epochs <= 0:
        return {}
    pre = evaluate(ctx, before(student), "pre_finetune", costs=False)
    recipe = ctx.recipe_for("student", student_arch(ctx))
    recipe = {**recipe, "lr": recipe["lr"] * ctx.conf["finetune"]["lr_scale"]}
    tune = module_cls(student, recipe=recipe, max_epochs=epochs, track_best=False,
                      metric_sink=ctx.tracker.sink(run_id, "finetune/"))
    ckpt_dir = ctx.student_checkpoints
    fit(ctx, tune, epochs, stage="finetune", ckpt_dir=ckpt_dir and ckpt_dir / "finetune")
    return {f"student/pre_finetune/{k}": v for k, v in pre.items()}


def student_arch(ctx: Context) -> str:
    return ctx.conf["student"]["arch"]


def link_spec(ctx: Context, node: Mapping, recipe: Mapping, teacher_key: str) -> dict:
    """Everything that defines a distilled link: the student's own definition, its teacher, the method,
    and the fixed augmented views it may train on (teacher_cache.views)."""
    conf = ctx.conf
    spec = model_spec(ctx, node, recipe, conf["trainer"]["max_epochs"], conf["seed"])
    views = conf["teacher_cache"]
    return {**spec, "role": "distilled", "teacher": teacher_key, "distill": conf["distill"],
            "views": [views["views"], views["seed"]] if conf["data"]["augment"] else None}


def distilled_link(ctx: Context, teacher: nn.Module, teacher_meta: dict, node: Mapping, recipe: Mapping,
                   label: str, tags: dict[str, str]) -> tuple[nn.Module, dict]:
    """The student `node` ({arch, kwargs}) distilled from `teacher`, from the cache if possible: keyed by its
    own definition plus its teacher's key, so a change upstream retrains everything below it. Each link is
    its own MLflow run (kdexp.role=link). Returns (model, meta): run_id, key, cached, train_metrics."""
    link_ctx = ctx.with_nodes(student=node)
    seed = ctx.conf["seed"]
    spec = link_spec(link_ctx, node, recipe, teacher_meta["key"])
    key = fingerprint(spec)

    def train() -> tuple[nn.Module, dict]:
        L.seed_everything(seed, verbose=False)
        model = link_ctx.build("student")
        method = build_method(link_ctx, model, teacher)
        run_tags = {**ctx.alone_tags("link", node["arch"], seed), **tags, "distill": ctx.conf["distill"]["name"],
                    "kdexp.fingerprint": key, "kdexp.teacher_run_id": teacher_meta.get("run_id") or "",
                    "kdexp.teacher_fingerprint": teacher_meta["key"]}
        ckpt = ctx.checkpoints(key)
        resume = {"kdexp.fingerprint": key} if resuming(ckpt) else None
        with tracked_run(ctx.tracker, f"{label}:{node['arch']}", run_tags, flatten(spec), position=ctx.position,
                         resume=resume) as run_id:
            log.info("training %s %s for %d epochs (cache key %s)", label, node["arch"], spec["max_epochs"], key)
            metrics = train_distilled(link_ctx, run_id, model, teacher, method, recipe=recipe, ckpt_dir=ckpt,
                                      stage=f"{label} {node['arch']}",
                                      best_metrics=lambda m: evaluate(ctx, m, "link_best", costs=False))
            test = evaluate(ctx, model, label, costs=False)
            ctx.tracker.log_metrics(run_id, {**metrics, **test})
            record_model(ctx, run_id, model, "link")
        return model, {"run_id": run_id, "spec": spec, "train_metrics": metrics, "test_metrics": test}

    return cached_model(link_ctx, "student", label, key, train)
