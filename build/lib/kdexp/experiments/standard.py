"""The standard experiment: teacher (load | cache | train) -> vanilla baseline -> distil -> fine-tune ->
evaluate, each trained model its own MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import lightning as L

from kdexp.training.alone import resolve_teacher, vanilla_baseline
from kdexp.training.context import build_method, make_context
from kdexp.training.distilled import train_distilled
from kdexp.training.lifecycle import trial_callbacks
from kdexp.training.results import lineage_tags, method_label, report_student, student_run


def run(conf: Mapping, run_dir: Path, cell: str = "") -> dict[str, float]:
    ctx = make_context(conf, run_dir, cell=cell)
    # Build every model and the method before training anything: an incompatible pair fails now.
    L.seed_everything(conf["seed"], verbose=False)
    teacher, student = ctx.build("teacher"), ctx.build("student")
    method = build_method(ctx, student, teacher)
    teacher_meta = resolve_teacher(ctx, teacher)
    baseline_meta = vanilla_baseline(ctx)
    name = f"{conf['distill']['name']}:{conf['teacher']['arch']}->{conf['student']['arch']}"
    with student_run(ctx, name, cell, method_label(conf), lineage_tags(teacher_meta, baseline_meta)) as run_id:
        train_metrics = train_distilled(ctx, run_id, student, teacher, method, callbacks=trial_callbacks(conf))
        return report_student(ctx, run_id, student, train_metrics, teacher_meta, baseline_meta)
