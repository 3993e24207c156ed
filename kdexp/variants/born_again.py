"""Born-again networks (Furlanello et al. 2018): generations of one architecture, each distilled from the last.

    kdexp-train variant=born_again variant.generations=3 student=cnn_small

Generation 0 is the student architecture trained on labels alone: the cached vanilla baseline. Generation k
is distilled from generation k-1 with the `distill` method (the paper uses soft targets only:
distill.weights='{ce:0,kd:1}') and cached as a link keyed on generation k-1 (kdexp.training.distilled). The
last generation is the reported student and generation 0 its teacher row; gen{k}/* holds each generation's test
metrics and ensemble/* those of the ensemble of generations 1..N (the paper's BAN ensemble;
`variant.ensemble_combine`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from kdexp.models.ensemble import EnsembleTeacher
from kdexp.training.alone import train_alone
from kdexp.training.context import make_context
from kdexp.training.distilled import distilled_link
from kdexp.training.evaluation import evaluate
from kdexp.training.results import ReportSpec, accuracy_table, lineage_tags, method_label, report_link, student_run
from kdexp.variants import register_variant


@register_variant("born_again")
def run(conf: Mapping, run_dir: Path, cell: str = "") -> dict[str, float]:
    generations, combine = conf["variant"]["generations"], conf["variant"]["ensemble_combine"]
    node = {"arch": conf["student"]["arch"], "kwargs": conf["student"]["kwargs"]}
    label = method_label(conf, "born_again")
    ctx = make_context(conf, run_dir, {"kdexp.variant": "born_again", "teacher": node["arch"],
                                          "kdexp.generations": str(generations)}, cell=cell)

    # every generation is the student architecture (its recipe_for("student")), generation 0 included
    gen0, teacher_meta = train_alone(ctx, "baseline", conf["trainer"]["max_epochs"], conf["seed"])
    ctx.test.pop("baseline", None)  # filled when gen 0 was trained just now; a baseline row only if asked
    teacher_meta["metrics"] = evaluate(ctx, gen0, "teacher")
    baseline_meta = None
    if conf["baseline"]:  # the vanilla student *is* generation 0
        baseline_meta = {**teacher_meta, "metrics": dict(teacher_meta["metrics"])}
        ctx.test["baseline"] = ctx.test["teacher"]

    extra = {f"gen0/{k}": v for k, v in teacher_meta["metrics"].items() if k.startswith("test_")}
    rows = [("generation 0 (labels only)", node["arch"], teacher_meta["metrics"]["test_top1"])]
    prev, prev_meta, students = gen0, teacher_meta, []
    for k in range(1, generations + 1):
        tags = {"kdexp.variant": "born_again", "kdexp.generation": str(k), "teacher": node["arch"],
                "student": node["arch"]}
        model, meta = distilled_link(ctx, prev, prev_meta, node, f"gen{k}", tags)
        test = evaluate(ctx, model, f"gen{k}", costs=False)
        extra.update({f"gen{k}/{key}": v for key, v in test.items()})
        rows.append((f"generation {k}", node["arch"], test["test_top1"]))
        students.append(model)
        if k < generations:
            prev, prev_meta = model, meta
    ensemble = evaluate(ctx, EnsembleTeacher(students, combine=combine), "ensemble")
    extra.update({f"ensemble/{key}": v for key, v in ensemble.items()})
    rows.append((f"ensemble of generations 1..{generations} ({combine})", node["arch"], ensemble["test_top1"]))

    lineage = lineage_tags(prev_meta, baseline_meta, root_meta=teacher_meta, link_meta=meta)
    report = ReportSpec(teacher_meta, baseline_meta, extra,
                        labels={"distill": label, "teacher": f"{node['arch']} (generation 0)"})
    with student_run(ctx, f"{label}:{node['arch']}x{generations}", label, lineage) as run_id:
        return report_link(ctx, run_id, (model, meta), report, lambda metrics: accuracy_table("born-again", rows))
