"""The reported student run: its tags and lifecycle, its final metrics, summary table, files and weights.

Every experiment kind ends in one run with kdexp.role=student and the same metric names (student/*,
teacher/*, baseline/*), so reports, sweeps and `skip_finished` treat every kind alike (its row label:
tag kdexp.method)."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Mapping

from torch import nn

from kdexp.measure.metrics import ratios
from kdexp.runtime import distributed
from kdexp.tracking.runs import flatten
from kdexp.tracking.summary import summary_table
from kdexp.training.context import Context
from kdexp.training.distilled import finetune
from kdexp.training.evaluation import agreement, evaluate, latency, latency_flags, latency_tags
from kdexp.training.lifecycle import tracked_run
from kdexp.training.records import record_model, student_exports
from kdexp.training.run import drop_checkpoints, log_config, log_table, resuming, write_summary


@dataclass(frozen=True)
class ReportSpec:
    """What a kind's student run reports beside its own training: the runs it compares with, its own
    metrics, and how its summary names things."""

    teacher: dict | None = None  # the teacher's meta with its test metrics; None: no teacher row, no agreement
    baseline: dict | None = None  # the vanilla baseline's meta with its test metrics, when one was trained
    extra: Mapping[str, float] = field(default_factory=dict)  # the kind's own metrics (gen{k}/*, peer{k}/*)
    labels: Mapping[str, str] = field(default_factory=dict)  # summary rows renamed: {"distill": .., "teacher": ..}
    shown: Mapping[str, Mapping] = field(default_factory=dict)  # config nodes shown as trained (e.g. weights)
    copy_student: bool = False  # report a copy: a cached link or a peer stays as trained
    exported: bool = True  # the float student is the run's MLflow Model and exports (not an int8 one)


@contextmanager
def student_run(ctx: Context, name: str, label: str, tags: Mapping[str, str],
                trained: Mapping | None = None) -> Iterator[str]:
    """The reported student run of the experiment's cell, with config.yaml as its first artifact.

    Args:
        ctx: the experiment (its standard tags, the kind's tags, cell and resume keys).
        name: the run's name.
        label: its row label in reports (tag kdexp.method; see method_label).
        tags: more tags (e.g. lineage_tags).
        trained: config nodes the kind trains with instead of the config's (e.g. augmented's loss weights):
            its params are the config with these and the student's recipe (`student_lr` applied).

    Yields:
        The run id; its checkpoints are dropped once the run is FINISHED.
    """
    run = ctx.run
    all_tags = {**ctx.tags("student"), "kdexp.cell": run.cell, "kdexp.method": label, "kdexp.settings": ctx.settings,
                "kdexp.resume_key": run.resume_key, **tags}
    resume = ({"kdexp.resume_key": run.resume_key, "kdexp.role": "student"}
              if resuming(run.student_checkpoints) else None)
    params = flatten({**ctx.conf, "recipe": ctx.recipe_for("student"), **(trained or {})})  # as it trains
    with tracked_run(run, name, all_tags, params, resume=resume, trial=True) as run_id:
        log_config(run, run_id, ctx.conf)
        yield run_id
    drop_checkpoints(run.student_checkpoints)  # FINISHED: the run holds the result


def method_label(conf: Mapping, suffix: str | None = None) -> str:
    """Row label in reports (tag kdexp.method).

    Args:
        conf: the run's config.
        suffix: the experiment kind's suffix (e.g. "chain"); None for the standard kind.

    Returns:
        The distill config chosen (`method`); for a kind `variant.label`, else e.g. `kd+chain`.
    """
    base = conf.get("method") or conf["distill"]["name"]
    if suffix is None:
        return base
    return (conf.get("variant") or {}).get("label") or f"{base}+{suffix}"


def lineage_tags(teacher_meta: dict | None, baseline_meta: dict | None, root_meta: dict | None = None,
                 link_meta: dict | None = None) -> dict[str, str]:
    """Which runs a student run relates to, as tags.

    Args:
        teacher_meta: its teacher's meta (run_id, key); None: no teacher.
        baseline_meta: the vanilla baseline's meta, if trained.
        root_meta: a line's first teacher (chain, born-again).
        link_meta: the student's own cached link (run_id, key).

    Returns:
        kdexp.teacher_run_id / teacher_fingerprint / root_teacher_run_id / link_run_id / fingerprint /
        baseline_run_id, those that apply.
    """
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
    """The teacher's and the baseline's test metrics as teacher/* and baseline/* rows of the student run.

    Args:
        teacher_meta: meta with `metrics` (None: no teacher rows).
        baseline_meta: meta with `metrics` (None: no baseline rows).

    Returns:
        teacher/* and baseline/* metrics.
    """
    out = {f"teacher/{k}": v for k, v in (teacher_meta or {}).get("metrics", {}).items()}
    if baseline_meta:
        out.update({f"baseline/{k}": v for k, v in baseline_meta["metrics"].items()})
    return out


def report_student(ctx: Context, run_id: str, student: nn.Module, train_metrics: Mapping[str, float],
                   spec: ReportSpec = ReportSpec()) -> dict:
    """Fine-tune the student, evaluate it, log train_metrics + final student/* + teacher/baseline rows +
    agreement + the kind's metrics, and write metrics.json / summary.md / weights.

    Args:
        ctx: the experiment.
        run_id: the student run.
        student: the trained student (fine-tuned in place unless spec.copy_student).
        train_metrics: what train_distilled returned, logged as student/*.
        spec: the runs it compares with, the kind's metrics, the summary's names.

    Returns:
        Every metric logged on the run.
    """
    if spec.copy_student:
        student = copy.deepcopy(student)
        for p in student.parameters():  # a model that served as a frozen teacher must train again
            p.requires_grad_(True)
    metrics = {f"student/{k}": v for k, v in train_metrics.items()}
    metrics.update(finetune(ctx, run_id, student))
    metrics.update({f"student/{k}": v for k, v in evaluate(ctx, student, "student").items()})
    metrics.update(teacher_metrics(spec.teacher, spec.baseline))
    if spec.teacher is not None:
        metrics.update(agreement(ctx, "student"))
    metrics.update(spec.extra)
    metrics.update(latency(ctx))  # the student with the teacher (and baseline) in the same blocks
    ctx.run.tracker.log_metrics(run_id, metrics)
    write_results(ctx, run_id, metrics, student, spec)
    return metrics


def report_link(ctx: Context, run_id: str, link: tuple[nn.Module, dict], spec: ReportSpec,
                table: Callable[[dict], str]) -> dict:
    """The last link of a line (a chain's student, born-again's last generation) as the reported student: a
    copy of it is fine-tuned and reported (the cached link stays as trained), then the line's table.

    Args:
        ctx: the experiment.
        run_id: the student run.
        link: (model, meta) of the last link, as distilled_link returned them.
        spec: as for report_student (copy_student is implied).
        table: the kind's table of the line, made from the final metrics; printed and logged as variant.md.

    Returns:
        Every metric logged on the run.
    """
    model, meta = link
    metrics = report_student(ctx, run_id, model, meta["train_metrics"], replace(spec, copy_student=True))
    log_table(ctx.run, run_id, table(metrics))
    return metrics


def summary_conf(conf: Mapping, spec: ReportSpec) -> dict:
    """The config as the summary shows it: spec.shown nodes applied, spec.labels as names."""
    shown = {node: dict(values) for node, values in spec.shown.items()}
    for node, key in (("distill", "name"), ("teacher", "arch")):
        if node in spec.labels:
            shown.setdefault(node, {})[key] = spec.labels[node]
    return {**conf, **{node: {**conf[node], **values} for node, values in shown.items()}}


def write_results(ctx: Context, run_id: str, metrics: dict, student: nn.Module, spec: ReportSpec) -> None:
    """student/*_ratio metrics and latency flags (added to `metrics`; flags also as tags), the student's MLflow
    Model and exports (spec.exported: a
    kind that ships another form records it itself), metrics.json, summary.md (printed) and the weights, as
    artifacts (rank 0).

    Args:
        ctx: the experiment.
        run_id: the student run.
        metrics: the run's metrics so far; ratios and export metrics are added to it.
        student: the reported model (its weights are student.pt).
        spec: the summary's names (labels, shown) and whether the float student is exported.
    """
    teacher = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("teacher/")}
    student_m = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.count("/") == 1 and k.startswith("student/")}
    derived = {f"student/{k}": v for k, v in ratios(student_m, teacher).items()}
    metrics.update(derived)
    derived.update(latency_flags(metrics))
    metrics.update(derived)
    if not distributed.is_rank_zero():
        return
    ctx.run.tracker.log_metrics(run_id, derived)
    ctx.run.tracker.set_tags(run_id, latency_tags(metrics))
    if spec.exported:
        record_model(ctx, run_id, student, "student")
        exports = student_exports(ctx, run_id, student)
        metrics.update(exports)
        ctx.run.tracker.log_metrics(run_id, exports)
    write_summary(ctx.run, run_id, metrics, summary_table(metrics, summary_conf(ctx.conf, spec)), student)


def accuracy_table(title: str, rows: list[tuple[str, str, float | None]]) -> str:
    """A markdown table of the models of a kind (links, generations, peers).

    Args:
        title: the first column's heading.
        rows: (name, architecture, test top-1 or None).

    Returns:
        The table, in markdown.
    """
    lines = [f"| {title} | arch | test top-1 |", "|---|---|---|"]
    lines += [f"| {name} | {arch} | {'–' if acc is None else f'{100 * acc:.2f}'} |" for name, arch, acc in rows]
    return "\n".join(lines)
