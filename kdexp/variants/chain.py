"""Progressive distillation through teacher assistants (TAKD, Mirzadeh et al. 2020): T -> A1 -> ... -> S.

    kdexp-train variant=chain teacher=cnn_medium variant.assistants=[cnn_small] student=cnn_tiny

The teacher is resolved as in the pipeline (teacher.ckpt, or trained alone and cached). Each assistant,
then the student, is distilled from the model before it with the `distill` method and cached as a link
keyed on its teacher's key (kdexp.training.distilled), so a re-run trains nothing and a change upstream retrains
every link below it. The student run reports T as the teacher row, the assistants as assistant{k}/*.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import lightning as L
from torch import nn

from kdexp.caching.teacher_outputs import weights_digest
from kdexp.config.variants import model_node
from kdexp.training.alone import resolve_teacher, vanilla_baseline
from kdexp.training.context import make_context
from kdexp.training.distilled import distilled_link
from kdexp.training.evaluation import evaluate
from kdexp.training.results import ReportSpec, accuracy_table, lineage_tags, method_label, report_link, student_run
from kdexp.variants import register_variant


def teacher_key(meta: dict, teacher: nn.Module) -> str:
    """A cached teacher's fingerprint; a checkpoint teacher is keyed by its weights."""
    return meta.get("key") or f"weights-{weights_digest(teacher)}"


@register_variant("chain")
def run(conf: Mapping, run_dir: Path, cell: str = "") -> dict[str, float]:
    assistants = [model_node(a) for a in conf["variant"]["assistants"]]  # checked: kdexp.config.variants
    student_node = {"arch": conf["student"]["arch"], "kwargs": conf["student"]["kwargs"]}
    path = [conf["teacher"]["arch"], *(a["arch"] for a in assistants), student_node["arch"]]
    label = method_label(conf, "chain")
    ctx = make_context(conf, run_dir, {"kdexp.variant": "chain", "kdexp.chain": "->".join(path)}, cell=cell)

    L.seed_everything(conf["seed"], verbose=False)
    teacher = ctx.build("teacher")
    teacher_meta = resolve_teacher(ctx, teacher)
    teacher_meta["key"] = teacher_key(teacher_meta, teacher)
    baseline_meta = vanilla_baseline(ctx)

    nodes = [*assistants, student_node]
    prev, prev_meta, extra = teacher, teacher_meta, {}
    rows = [("teacher", path[0], teacher_meta["metrics"]["test_top1"])]
    for i, node in enumerate(nodes, 1):
        tags = {"kdexp.variant": "chain", "kdexp.link": f"{i}/{len(nodes)}", "teacher": path[i - 1],
                "student": node["arch"]}
        model, meta = distilled_link(ctx, prev, prev_meta, node, f"link{i}", tags)
        if i < len(nodes):
            test = evaluate(ctx, model, f"assistant{i}", costs=False)
            extra.update({f"assistant{i}/{k}": v for k, v in test.items()})
            rows.append((f"assistant {i}", node["arch"], test["test_top1"]))
            prev, prev_meta = model, meta

    lineage = lineage_tags(prev_meta, baseline_meta, root_meta=teacher_meta, link_meta=meta)
    report = ReportSpec(teacher_meta, baseline_meta, extra, labels={"distill": label})
    with student_run(ctx, f"{label}:{'->'.join(path)}", label, lineage) as run_id:
        return report_link(ctx, run_id, (model, meta), report, lambda metrics: accuracy_table(
            "chain", [*rows, ("student", student_node["arch"], metrics["student/test_top1"])]))
