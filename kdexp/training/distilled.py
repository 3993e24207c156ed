"""Distilling a student: the method's own first stage, its loss, the best-validation epoch; fine-tuning on
hard labels; and distilled *links* (a student cached like a teacher, for chains and born-again lines)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import lightning as L
from torch import nn

from kdexp.caching.fingerprint import fingerprint
from kdexp.modules.distill import DistillModule
from kdexp.tracking.runs import flatten
from kdexp.training.alone import model_spec, resolve_teacher, vanilla_baseline
from kdexp.training.context import Context, build_method
from kdexp.training.evaluation import evaluate
from kdexp.training.lifecycle import tracked_run
from kdexp.training.records import record_model
from kdexp.training.run import cached_model, resuming
from kdexp.training.trainer import fit

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
    cached or trained) and the vanilla baseline.

    Args:
        ctx: the experiment.
        check: called with the built method; raises ConfigError to refuse it.

    Returns:
        The DistillationPair.
    """
    L.seed_everything(ctx.conf["seed"], verbose=False)
    teacher, student = ctx.build("teacher"), ctx.build("student")
    method = build_method(ctx, student, teacher)
    if check is not None:
        check(method)
    teacher_meta = resolve_teacher(ctx, teacher)
    if ctx.conf["student"].get("init_from_teacher"):  # DistilBERT: layers of the trained teacher, before distilling
        from kdexp.models.text import init_from_teacher

        log.info("student initialised from teacher layers %s", [j for _, j in init_from_teacher(student, teacher)])
    return DistillationPair(teacher, student, method, teacher_meta, vanilla_baseline(ctx))


@dataclass(frozen=True)
class StageSpec:
    """How a kind's distillation stage differs from the config's; the defaults train as `distill:` says."""

    weights: Mapping | None = None  # loss weights; default: distill.weights
    module: Callable[..., DistillModule] = DistillModule  # the module (a partial carries its own arguments)
    callbacks: tuple = ()  # Lightning callbacks of the distillation stage (a sweep trial's pruning)
    name: str | None = None  # names the progress lines; default "student <method>"
    ckpt_dir: Path | None = None  # where it checkpoints; default: the run's student checkpoints
    best_metrics: Callable[[nn.Module], dict] | None = None  # of the best-val student; default: evaluate


def train_distilled(ctx: Context, run_id: str, student: nn.Module, teacher: nn.Module | None, method,
                    spec: StageSpec = StageSpec()) -> dict[str, float]:
    """Train `student` from `teacher` with `method`: the method's init stage (AB / FT / FSP) first, then
    `trainer.max_epochs` of its loss. Each stage checkpoints (under spec.ckpt_dir) and resumes from it.

    Args:
        ctx: the experiment.
        run_id: the MLflow run the epochs are logged to (the init stage's under init/).
        student: the model trained, in place.
        teacher: the frozen teacher (None: none).
        method: a kdexp.distill.Distiller built for this pair.
        spec: what the kind changes: loss weights, module, callbacks, names, best-epoch metrics.

    Returns:
        val_acc, best_val_acc, best_epoch, adapter_params, the student's optimizer_steps (both stages: the budget
        tuned tables compare rows at) and train_seconds (their wall time) and, for the epoch of best validation
        accuracy, best_val/test_*.
    """
    d, epochs = ctx.conf["distill"], ctx.conf["trainer"]["max_epochs"]
    stage = spec.name or f"student {d['name']}"
    ckpt_dir = spec.ckpt_dir or ctx.run.student_checkpoints
    recipe = ctx.recipe_for("student")  # student_lr of its architecture, if the matrix sets one
    sink = ctx.run.tracker.sink
    started, steps = time.perf_counter(), 0
    if method.init_epochs > 0:
        init = spec.module(student, teacher=teacher, method=method, recipe=recipe, max_epochs=method.init_epochs,
                           stage="init", metric_sink=sink(run_id, "init/"))
        trainer = fit(ctx, init, method.init_epochs, stage="init", ckpt_dir=ckpt_dir and ckpt_dir / "init")
        steps += trainer.global_step if method.init_trains_student else 0  # FT's init steps its paraphraser only
    module = spec.module(student, teacher=teacher, method=method, weights=dict(spec.weights or d["weights"]),
                         temperature=d["temperature"], recipe=recipe, max_epochs=epochs, metric_sink=sink(run_id))
    steps += fit(ctx, module, epochs, list(spec.callbacks), stage=stage,
                 ckpt_dir=ckpt_dir and ckpt_dir / "distill").global_step
    metrics = {"val_acc": module.last_val_acc, "best_val_acc": module.best_val_acc, "best_epoch": module.best_epoch,
               "adapter_params": sum(p.numel() for p in method.parameters()), "optimizer_steps": steps,
               "train_seconds": time.perf_counter() - started}
    if module.best_state is not None:
        best = (spec.best_metrics or (lambda m: evaluate(ctx, m, "student_best", costs=False)))(module.best_student())
        metrics.update({f"best_val/{k}": v for k, v in best.items()})
    return metrics


def finetune(ctx: Context, run_id: str, student: nn.Module, module_cls: type[DistillModule] = DistillModule,
             before: Callable[[nn.Module], nn.Module] = lambda m: m) -> dict[str, float]:
    """`finetune.epochs` on hard labels at `finetune.lr_scale` x the student's lr, logged under finetune/.

    Args:
        ctx: the experiment.
        run_id: the student run (its epochs are logged under finetune/).
        student: the model fine-tuned, in place.
        module_cls: the module it trains in (QAT keeps its observers still in validation).
        before: the form of the student evaluated before fine-tuning (e.g. a QAT model's observed form).

    Returns:
        The student/pre_finetune/* test metrics of before(student), or {} when there are no epochs.
    """
    epochs = ctx.conf["finetune"]["epochs"]
    if epochs <= 0:
        return {}
    pre = evaluate(ctx, before(student), "pre_finetune", costs=False)
    recipe = ctx.recipe_for("student", student_arch(ctx))
    recipe = {**recipe, "lr": recipe["lr"] * ctx.conf["finetune"]["lr_scale"]}
    tune = module_cls(student, recipe=recipe, max_epochs=epochs, track_best=False,
                      metric_sink=ctx.run.tracker.sink(run_id, "finetune/"))
    ckpt_dir = ctx.run.student_checkpoints
    fit(ctx, tune, epochs, stage="finetune", ckpt_dir=ckpt_dir and ckpt_dir / "finetune")
    return {f"student/pre_finetune/{k}": v for k, v in pre.items()}


def student_arch(ctx: Context) -> str:
    return ctx.conf["student"]["arch"]


def link_spec(ctx: Context, teacher_key: str) -> dict:
    """Everything that defines a distilled link (the `student` node of `ctx`): its own definition and recipe,
    its teacher, the method, and the fixed augmented views it may train on (teacher_cache.views).

    Args:
        ctx: the experiment seen with the link as its student (Context.with_nodes).
        teacher_key: the cache key of the link's teacher.

    Returns:
        The spec, a JSON-able dict (its fingerprint is the link's cache key).
    """
    conf = ctx.conf
    spec = model_spec(ctx, conf["student"], ctx.recipe_for("student"), conf["trainer"]["max_epochs"], conf["seed"])
    views = conf["teacher_cache"]
    return {**spec, "role": "distilled", "teacher": teacher_key, "distill": conf["distill"],
            "views": [views["views"], views["seed"]] if conf["data"]["augment"] else None}


def distilled_link(ctx: Context, teacher: nn.Module, teacher_meta: dict, node: Mapping, label: str,
                   tags: dict[str, str]) -> tuple[nn.Module, dict]:
    """The student `node` distilled from `teacher` with its own recipe (student_lr by architecture), from the
    cache if possible: keyed by its own definition plus its teacher's key, so a change upstream retrains
    everything below it. Each link is its own MLflow run (kdexp.role=link).

    Args:
        ctx: the experiment.
        teacher: the link's teacher (the model before it in the line).
        teacher_meta: the teacher's meta: its cache `key` and `run_id`.
        node: the link's {arch, kwargs}.
        label: names the link's run and progress lines, e.g. "link2", "gen3".
        tags: the kind's own tags on the link's run.

    Returns:
        (model, meta): meta has run_id, key, cached, train_metrics and test_metrics.
    """
    link_ctx = ctx.with_nodes(student=node)
    seed = ctx.conf["seed"]
    spec = link_spec(link_ctx, teacher_meta["key"])
    key = fingerprint(spec)

    def train() -> tuple[nn.Module, dict]:
        L.seed_everything(seed, verbose=False)
        model = link_ctx.build("student")
        method = build_method(link_ctx, model, teacher)
        run_tags = {**ctx.alone_tags("link", node["arch"], seed), **tags, "distill": ctx.conf["distill"]["name"],
                    "kdexp.fingerprint": key, "kdexp.teacher_run_id": teacher_meta.get("run_id") or "",
                    "kdexp.teacher_fingerprint": teacher_meta["key"]}
        ckpt = ctx.run.checkpoints(key)
        resume = {"kdexp.fingerprint": key} if resuming(ckpt) else None
        with tracked_run(ctx.run, f"{label}:{node['arch']}", run_tags, flatten(spec), resume=resume) as run_id:
            log.info("training %s %s for %d epochs (cache key %s)", label, node["arch"], spec["max_epochs"], key)
            stage = StageSpec(ckpt_dir=ckpt, name=f"{label} {node['arch']}",
                              best_metrics=lambda m: evaluate(ctx, m, "link_best", costs=False))
            metrics = train_distilled(link_ctx, run_id, model, teacher, method, stage)
            test = evaluate(ctx, model, label, costs=False)
            ctx.run.tracker.log_metrics(run_id, {**metrics, **test})
            record_model(ctx, run_id, model, "link")
        return model, {"run_id": run_id, "spec": spec, "train_metrics": metrics, "test_metrics": test}

    return cached_model(ctx.run, key, train, lambda: link_ctx.build("student"), f"{label} {node['arch']}")
