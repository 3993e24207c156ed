"""Shared by the multi-model variants: cached distilled links, and the reported student run.

A *link* is a student distilled from a given teacher with the experiment's `distill` method. It is cached
like a teacher, keyed by its own definition plus its teacher's key, so a chain (T -> A1 -> ... -> S) or a
line of born-again generations is trained once, and any change upstream retrains everything below it.
Every link is its own MLflow run (kdexp.role=link) whose kdexp.teacher_run_id is the previous link's run.
The variant's result is one run with kdexp.role=student and the pipeline's metric names, so reports,
sweeps and `skip_finished` treat it like any other method (its label: tag kdexp.method).
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Iterator

import lightning as L
from omegaconf import OmegaConf
from torch import nn

from kdexp.cache import fingerprint, load_weights
from kdexp.matrix import settings_key
from kdexp.module import DistillModule
from kdexp.pipeline import agreement, make_context, teacher_metrics, write_results
from kdexp.stages import Context, build_method, evaluate, fit, model_spec, quiet_lightning, trained_alone
from kdexp.teacher_outputs import weights_digest
from kdexp.tracking import flatten

log = logging.getLogger("kdexp")


@dataclass
class VariantContext(Context):
    """A Context whose run tags name the variant (and, where it is not one model, the teacher)."""

    variant_tags: dict = field(default_factory=dict)
    settings: str = ""  # kdexp.settings of the student run, taken before use_student_lr changes recipe.lr

    def tags(self, role: str) -> dict[str, str]:
        return {**super().tags(role), **self.variant_tags}


def variant_context(conf: dict, run_dir: Path, tags: dict[str, str]) -> VariantContext:
    quiet_lightning()
    ctx = make_context(conf, run_dir)
    return VariantContext(**{f.name: getattr(ctx, f.name) for f in fields(Context)}, variant_tags=tags,
                          settings=settings_key(conf))


def method_label(conf: dict, suffix: str) -> str:
    """Row label of the variant in reports (tag kdexp.method): `variant.label`, else e.g. `kd+chain`."""
    return conf["variant"].get("label") or f"{conf.get('method') or conf['distill']['name']}+{suffix}"


def arch_recipe(conf: dict, recipe: dict, arch: str) -> dict:
    """The recipe a student of `arch` trains with: `student_lr` (benchmark matrices) applies per architecture."""
    lr = (conf.get("student_lr") or {}).get(arch)
    return dict(recipe) if lr is None else {**recipe, "lr": float(lr)}


def teacher_key(meta: dict, teacher: nn.Module) -> str:
    """A cached teacher's fingerprint; a checkpoint teacher is keyed by its weights."""
    return meta.get("key") or f"weights-{weights_digest(teacher)}"


def link_spec(student_spec: dict, teacher_fingerprint: str, conf: dict) -> dict:
    """Everything that defines a distilled link: the student's own definition, its teacher, the method,
    and the fixed augmented views it may train on (teacher_cache.views)."""
    views = conf.get("teacher_cache") or {}
    return {**student_spec, "role": "distilled", "teacher": teacher_fingerprint, "distill": conf["distill"],
            "views": [views.get("views", 0), views.get("seed", 0)] if conf["data"].get("augment") else None}


def distilled_link(ctx: Context, teacher: nn.Module, teacher_meta: dict, node: dict, recipe: dict,
                   label: str, tags: dict[str, str]) -> tuple[nn.Module, dict]:
    """The student `node` ({arch, kwargs}) distilled from `teacher`, from the cache if possible.

    Returns (model, meta): meta has run_id (the run that trained it), key, cached, and train_metrics
    (val_acc, best_val_acc, best_epoch, best_val/test_*, adapter_params).
    """
    conf = ctx.conf
    link_ctx = replace(ctx, conf={**conf, "student": node, "recipe": recipe})
    epochs, seed = conf["trainer"]["max_epochs"], conf["seed"]
    spec = link_spec(model_spec(link_ctx, "student", epochs, seed), teacher_meta["key"], conf)
    key = fingerprint(spec)

    def train() -> tuple[nn.Module, dict]:
        L.seed_everything(seed, verbose=False)
        model = link_ctx.build("student")
        method = build_method(link_ctx, model, teacher)
        run_tags = {**ctx.alone_tags("link", node["arch"], seed), **tags, "distill": conf["distill"]["name"],
                    "kdexp.fingerprint": key, "kdexp.teacher_run_id": teacher_meta.get("run_id") or "",
                    "kdexp.teacher_fingerprint": teacher_meta["key"]}
        run_id = ctx.tracker.start(f"{label}:{node['arch']}", run_tags, flatten(spec))
        try:
            log.info("training %s %s for %d epochs (cache key %s)", label, node["arch"], epochs, key)
            metrics = train_link(link_ctx, run_id, model, teacher, method, epochs)
            test = evaluate(ctx, model, label, costs=False)
            ctx.tracker.log_metrics(run_id, {**metrics, **test})
            ctx.tracker.finish(run_id)
        except BaseException as exc:
            ctx.tracker.fail(run_id, exc)
            raise
        return model, {"run_id": run_id, "spec": spec, "train_metrics": metrics, "test_metrics": test}

    entry, fresh = ctx.cache.get_or_create(key, train)
    if fresh is not None:
        return fresh, {**entry.meta, "key": key, "cached": False}
    log.info("reusing cached %s %s (cache key %s, run %s)", label, node["arch"], key, entry.meta.get("run_id"))
    model = load_weights(link_ctx.build("student"), entry.weights, f"cached {label} {key}")
    return model, {**entry.meta, "key": key, "cached": True}


def train_link(ctx: Context, run_id: str, student: nn.Module, teacher: nn.Module, method, epochs: int) -> dict:
    """Distil as the pipeline does (the method's init stage, then its loss); best-val test metrics kept."""
    d, tracker, recipe = ctx.conf["distill"], ctx.tracker, ctx.conf["recipe"]
    if method.init_epochs > 0:
        init = DistillModule(student, teacher=teacher, method=method, recipe=recipe, max_epochs=method.init_epochs,
                             stage="init", metric_sink=tracker.sink(run_id, "init/"))
        fit(ctx, init, method.init_epochs)
    module = DistillModule(student, teacher=teacher, method=method, weights=d["weights"],
                           temperature=d.get("temperature", 4.0), recipe=recipe, max_epochs=epochs,
                           metric_sink=tracker.sink(run_id))
    fit(ctx, module, epochs)
    metrics = {"val_acc": module.last_val_acc, "best_val_acc": module.best_val_acc, "best_epoch": module.best_epoch,
               "adapter_params": sum(p.numel() for p in method.parameters())}
    if module.best_state is not None:
        best = evaluate(ctx, module.best_student(), "link_best", costs=False)
        metrics.update({f"best_val/{k}": v for k, v in best.items()})
    return metrics


# -- the reported student run --------------------------------------------------------------------------------

@contextmanager
def student_run(ctx: VariantContext, name: str, cell: str, label: str, tags: dict[str, str]) -> Iterator[str]:
    """A run with kdexp.role=student (the standard tags + the variant's), FINISHED or FAILED on exit."""
    conf = ctx.conf
    all_tags = {**ctx.tags("student"), "kdexp.cell": cell, "kdexp.method": label,
                "kdexp.settings": ctx.settings, **tags}
    in_sweep = bool((conf.get("optuna_trial") or {}).get("study_name"))
    if in_sweep:  # nested under the sweep's parent run
        from kdexp.sweep.trial import child_run_tags

        all_tags.update(child_run_tags(conf))
    run_id = ctx.tracker.start(name, all_tags, flatten(conf))
    try:
        (ctx.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(conf))
        ctx.tracker.log_artifact(run_id, ctx.run_dir / "config.yaml")
        yield run_id
        ctx.tracker.finish(run_id)
    except BaseException as exc:
        from kdexp.sweep.trial import end_pruned_run, is_pruned_error

        if in_sweep and is_pruned_error(exc):
            end_pruned_run(run_id, ctx.tracker.client)
        else:
            ctx.tracker.fail(run_id, exc)
        raise


def finetune_and_evaluate(ctx: Context, run_id: str, student: nn.Module) -> dict[str, float]:
    """`finetune.epochs` on hard labels (as pipeline.train_student does), then the final student/* metrics."""
    conf, metrics = ctx.conf, {}
    epochs = conf["finetune"]["epochs"]
    if epochs > 0:
        metrics.update({f"student/pre_finetune/{k}": v for k, v in evaluate(ctx, student, "s", costs=False).items()})
        recipe = {**conf["recipe"], "lr": conf["recipe"]["lr"] * conf["finetune"]["lr_scale"]}
        tune = DistillModule(student, recipe=recipe, max_epochs=epochs, track_best=False,
                             metric_sink=ctx.tracker.sink(run_id, "finetune/"))
        fit(ctx, tune, epochs)
    metrics.update({f"student/{k}": v for k, v in evaluate(ctx, student, "student").items()})
    return metrics


def report_student(ctx: Context, run_id: str, student: nn.Module, train_metrics: dict, teacher_meta: dict | None,
                   baseline_meta: dict | None, extra: dict[str, float], labels: dict[str, str],
                   shown: dict[str, dict] | None = None) -> dict:
    """Fine-tune a copy of `student`, evaluate it, log the pipeline's metrics + the variant's `extra`, write
    metrics.json / summary.md. In the summary only, `labels` rename rows ({"distill": name, "teacher": arch})
    and `shown` overrides config nodes (e.g. {"distill": {"weights": ...}})."""
    student = copy.deepcopy(student)  # the cached link (or a peer) stays as trained
    for p in student.parameters():  # a model that served as a frozen teacher must train again
        p.requires_grad_(True)
    metrics = {f"student/{k}": v for k, v in train_metrics.items()}
    metrics.update(finetune_and_evaluate(ctx, run_id, student))
    if teacher_meta is not None:
        metrics.update(teacher_metrics(teacher_meta, baseline_meta))
        metrics.update(agreement(ctx, "student"))
    elif baseline_meta:
        metrics.update({f"baseline/{k}": v for k, v in baseline_meta["metrics"].items()})
    metrics.update(extra)
    ctx.tracker.log_metrics(run_id, metrics)
    conf = ctx.conf
    shown = {node: dict(values) for node, values in (shown or {}).items()}
    for node, key in (("distill", "name"), ("teacher", "arch")):
        if node in labels:
            shown.setdefault(node, {})[key] = labels[node]
    summary_conf = {**conf, **{node: {**conf[node], **values} for node, values in shown.items()}}
    write_results(replace(ctx, conf=summary_conf), run_id, metrics, student)
    return metrics


def log_table(ctx: Context, run_id: str, table: str) -> None:
    """The variant's own table (per link / generation / peer): printed and logged as variant.md."""
    (ctx.run_dir / "variant.md").write_text(table + "\n")
    ctx.tracker.log_artifact(run_id, ctx.run_dir / "variant.md")
    print(table, flush=True)


def accuracy_table(title: str, rows: list[tuple[str, str, float | None]]) -> str:
    """A markdown table of (name, architecture, test top-1) rows."""
    lines = [f"| {title} | arch | test top-1 |", "|---|---|---|"]
    lines += [f"| {name} | {arch} | {'–' if acc is None else f'{100 * acc:.2f}'} |" for name, arch, acc in rows]
    return "\n".join(lines)


def vanilla_baseline(ctx: Context) -> dict | None:
    """The pipeline's `baseline=true`: the student architecture trained alone (cached)."""
    if not ctx.conf["baseline"]:
        return None
    baseline, meta = trained_alone(ctx, "baseline", ctx.conf["trainer"]["max_epochs"], ctx.conf["seed"])
    meta["metrics"] = evaluate(ctx, baseline, "baseline")
    return meta


def lineage_tags(teacher_meta: dict, baseline_meta: dict | None, root_meta: dict | None = None,
                 link_meta: dict | None = None) -> dict[str, str]:
    """The pipeline's lineage tags of a student run: which teacher (and vanilla baseline) runs it relates to;
    for a chain of links also the root teacher and the student's own cached link run."""
    tags = {"kdexp.teacher_run_id": teacher_meta.get("run_id") or "",
            "kdexp.teacher_fingerprint": teacher_meta.get("key", "")}
    if root_meta is not None:
        tags["kdexp.root_teacher_run_id"] = root_meta.get("run_id") or ""
    if link_meta is not None:
        tags.update({"kdexp.link_run_id": link_meta["run_id"], "kdexp.fingerprint": link_meta["key"]})
    if baseline_meta:
        tags["kdexp.baseline_run_id"] = baseline_meta.get("run_id") or ""
    return tags
