"""The standard experiment: teacher (load | cache | train) -> vanilla baseline -> distil -> fine-tune ->
evaluate, each trained model its own MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from kdexp.training.context import make_context
from kdexp.training.distilled import StageSpec, distillation_pair, train_distilled
from kdexp.training.lifecycle import trial_callbacks
from kdexp.training.results import ReportSpec, lineage_tags, method_label, report_student, student_run
from kdexp.variants import register_variant


@register_variant("standard")
def run(conf: Mapping, run_dir: Path, cell: str = "") -> dict[str, float]:
    ctx = make_context(conf, run_dir, cell=cell)
    p = distillation_pair(ctx)
    name = f"{conf['distill']['name']}:{conf['teacher']['arch']}->{conf['student']['arch']}"
    with student_run(ctx, name, method_label(conf), lineage_tags(p.teacher_meta, p.baseline_meta)) as run_id:
        stage = StageSpec(callbacks=tuple(trial_callbacks(conf)))
        train_metrics = train_distilled(ctx, run_id, p.student, p.teacher, p.method, stage)
        return report_student(ctx, run_id, p.student, train_metrics, ReportSpec(p.teacher_meta, p.baseline_meta))
