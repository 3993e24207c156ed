"""The reported student run: its tags and lifecycle, its final metrics, summary table, files and weights.

Every experiment kind ends in one run with kdexp.role=student and the same metric names (student/*,
teacher/*, baseline/*), so reports, sweeps and `skip_finished` treat every kind alike (its row label:
tag kdexp.method)."""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from typing import Iterator, Mapping

from omegaconf import OmegaConf
from torch import nn

from kdexp.config.parse import thaw
from kdexp.measure.metrics import ratios
from kdexp.runtime import distributed
from kdexp.tracking.redact import redact_config
from kdexp.tracking.runs import flatten
from kdexp.tracking.summary import summary_table
from kdexp.training.context import Context
from kdexp.training.distilled import finetune
from kdexp.training.evaluation import agreement, evaluate, latency, latency_flags, latency_tags
from kdexp.training.lifecycle import tracked_run
from kdexp.training.records import record_model, student_exports
from kdexp.training.trainer import drop_checkpoints, resuming, save_weights


@contextmanager
def student_run(ctx: Context, name: str, cell: str, label: str, tags: Mapping[str, str],
                trained: Mapping | None = None) -> Iterator[str]:
    """The student run (standard tags + the kind's + `tags`), with config.yaml as its first artifact. Its
    params are the config with the student's recipe (`student_lr` applied: recipe.lr is what it trained with)
    and the nodes a kind trains with instead of the config's (`trained`, e.g. augmented's loss weights)."""
    all_tags = {**ctx.tags("student"), "kdexp.cell": cell, "kdexp.method": label, "kdexp.settings": ctx.settings,
                "kdexp.resume_key": ctx.resume_key, **tags}
    resume = ({"kdexp.resume_key": ctx.resume_key, "kdexp.role": "student"}
              if resuming(ctx.student_checkpoints) else None)
    params = flatten({**ctx.conf, "recipe": ctx.recipe_for("student"), **(trained or {})})  # as it trains
    with tracked_run(ctx.tracker, name, all_tags, params, trial_conf=ctx.conf, position=ctx.position,
                     resume=resume) as run_id:
        if distributed.is_rank_zero():
            ctx.run_dir.mkdir(parents=True, exist_ok=True)
            (ctx.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(thaw(redact_config(thaw(ctx.conf)))))
            ctx.tracker.log_artifact(run_id, ctx.run_dir / "config.yaml")
        yield run_id
    drop_checkpoints(ctx.student_checkpoints)  # FINISHED: the run holds the result


def method_label(conf: Mapping, suffix: str | None = None) -> str:
    """Row label in reports (tag kdexp.method): the distill config chosen (`method`), or for an experiment
    kind `variant.label`, else e.g. `kd+chain`."""
    base = conf.get("method") or conf["distill"]["name"]
    if suffix is None:
        return base
    return (conf.get("variant") or {}).get("label") or f"{base}+{suffix}"


def lineage_tags(teacher_meta: dict | None, baseline_meta: dict | None, root_meta: dict | None = None,
                 link_meta: dict | None = None) -> dict[str, str]:
    """Which teacher (and vanilla baseline) runs a student run relates to; for a chain of links also the
    root teacher and the student's own cached link run."""
    tags = {}
    if teacher_meta is not None:
        tags = {"kdexp.teacher_run_id": teacher_meta.get("run_id") or "",
                "kdexp.teacher_fingerprint": teacher_meta.get("key", "")}
    if root_meta is not None:
        tags["kdexp.root_teacher_run_id"] = root_meta.get("run_id") or ""
    if link_meta is not None:
        tags.update({"kdexp.link_run_id": link_meta["run_id"], "kdexp.fingerprint": link_meta["key"]})
    if baseline_meta:
        tags["kdexp.baseline_run_id"] = baseline_meta.get("run_id") or ""
    return tags


def teacher_metrics(teacher_meta: dict | None, baseline_meta: dict | None) -> dict[str, float]:
    out = {f"teacher/{k}": v for k, v in (teacher_meta or {}).get("metrics", {}).items()}
    if baseline_meta:
        out.update({f"baseline/{k}": v for k, v in baseline_meta["metrics"].items()})
    return out


def report_student(ctx: Context, run_id: str, student: nn.Module, train_metrics: dict, teacher_meta: dict | None,
                   baseline_meta: dict | None, extra: dict[str, float] | None = None,
                   labels: dict[str, str] | None = None, shown: dict[str, dict] | None = None,
                   copy_student: bool = False) -> dict:
    """Fine-tune `student` (a copy with `copy_student`: a cached link or a peer stays as trained), evaluate
    it, log train_metrics + final student/* + teacher/baseline rows + agreement + `extra`, and write
    metrics.json / summary.md / weights. In the summary only, `labels` rename rows ({"distill": name,
    "teacher": arch}) and `shown` overrides config nodes (e.g. {"distill": {"weights": ...}})."""
    if copy_student:
        student = copy.deepcopy(student)
        for p in student.parameters():  # a model that served as a frozen teacher must train again
            p.requires_grad_(True)
    metrics = {f"student/{k}": v for k, v in train_metrics.items()}
    metrics.update(finetune(ctx, run_id, student))
    metrics.update({f"student/{k}": v for k, v in evaluate(ctx, student, "student").items()})
    metrics.update(teacher_metrics(teacher_meta, baseline_meta))
    if teacher_meta is not None:
        metrics.update(agreement(ctx, "student"))
    metrics.update(extra or {})
    metrics.update(latency(ctx))  # the student with the teacher (and baseline) in the same blocks
    ctx.tracker.log_metrics(run_id, metrics)
    write_results(ctx, run_id, metrics, student, labels, shown)
    return metrics


def summary_conf(conf: Mapping, labels: dict[str, str] | None, shown: dict[str, dict] | None) -> dict:
    shown = {node: dict(values) for node, values in (shown or {}).items()}
    for node, key in (("distill", "name"), ("teacher", "arch")):
        if node in (labels or {}):
            shown.setdefault(node, {})[key] = labels[node]
    return {**conf, **{node: {**conf[node], **values} for node, values in shown.items()}}


def write_results(ctx: Context, run_id: str, metrics: dict, student: nn.Module,
                  labels: dict[str, str] | None = None, shown: dict[str, dict] | None = None,
                  exported: bool = True) -> None:
    """student/*_ratio metrics and latency flags (+ tags), the student's MLflow Model and exports (`exported`:
    the float student; a kind that ships another form records it itself), metrics.json, summary.md (printed)
    and the weights, as artifacts (rank 0)."""
    teacher = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("teacher/")}
    student_m = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.count("/") == 1 and k.startswith("student/")}
    derived = {f"student/{k}": v for k, v in ratios(student_m, teacher).items()}
    metrics.update(derived)
    derived.update(latency_flags(metrics))
    metrics.update(derived)
    if not distributed.is_rank_zero():
        return
    ctx.tracker.log_metrics(run_id, derived)
    ctx.tracker.set_tags(run_id, latency_tags(metrics))
    if exported:
        record_model(ctx, run_id, student, "student")
        exports = student_exports(ctx, run_id, student)
        metrics.update(exports)
        ctx.tracker.log_metrics(run_id, exports)
    (ctx.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    table = summary_table(metrics, summary_conf(ctx.conf, labels, shown))
    (ctx.run_dir / "summary.md").write_text(table + "\n")
    for name in ("metrics.json", "summary.md"):
        ctx.tracker.log_artifact(run_id, ctx.run_dir / name)
    if ctx.conf["tracking"].get("log_checkpoints", True):
        ctx.tracker.log_artifact(run_id, save_weights(ctx, student, "student.pt"))
    print(table, flush=True)


def log_table(ctx: Context, run_id: str, table: str) -> None:
    """An experiment kind's own table (per link / generation / peer): printed and logged as variant.md."""
    if not distributed.is_rank_zero():
        return
    (ctx.run_dir / "variant.md").write_text(table + "\n")
    ctx.tracker.log_artifact(run_id, ctx.run_dir / "variant.md")
    print(table, flush=True)


def accuracy_table(title: str, rows: list[tuple[str, str, float | None]]) -> str:
    """A markdown table of (name, architecture, test top-1) rows."""
    lines = [f"| {title} | arch | test top-1 |", "|---|---|---|"]
    lines += [f"| {name} | {arch} | {'–' if acc is None else f'{100 * acc:.2f}'} |" for name, arch, acc in rows]
    return "\n".join(lines)
