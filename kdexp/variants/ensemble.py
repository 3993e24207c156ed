"""Ensemble teachers: several teachers, each trained and cached like any teacher, distilled as one.

    kdexp-train variant=ensemble teacher.members=[cnn_medium,cnn_small] teacher.combine=mean_probs \
        teacher.weights=[2,1]

A member is an architecture name or {arch, seed, weight, kwargs, ckpt}. Seeds default to `teacher.seed`,
+1 for each earlier member of the same architecture (so [cnn_tiny,cnn_tiny] are two different models).
The ensemble's outputs are logits, so every logit-based method distils from it unchanged:
  mean_logits: sum_i w_i z_i
  mean_probs:  log(sum_i w_i softmax(z_i)), so a softmax of it (KD at T=1) is the averaged distribution;
               at T>1 KD softens that average (it does not average softened members).
Feature-based methods are refused before training: member features have no common meaning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import lightning as L
from torch import nn

from kdexp.caching.fingerprint import fingerprint
from kdexp.caching.models import load_weights
from kdexp.caching.teacher_outputs import weights_digest
from kdexp.config.errors import ConfigError
from kdexp.config.rules import check_number
from kdexp.config.variants import model_node
from kdexp.models.ensemble import EnsembleTeacher
from kdexp.training.alone import train_alone, vanilla_baseline
from kdexp.training.context import build_method, make_context
from kdexp.training.distilled import StageSpec, train_distilled
from kdexp.training.evaluation import evaluate
from kdexp.training.lifecycle import trial_callbacks
from kdexp.training.results import ReportSpec, lineage_tags, method_label, report_student, student_run
from kdexp.variants import register_variant


def parse_members(node: Mapping) -> list[dict]:
    """teacher.{members, seeds, weights} -> [{arch, seed, weight, kwargs, ckpt}]. Each setting is checked by its
    schema (kdexp.config.variants.EnsembleTeacherSchema); this checks how they fit together."""
    raw, seeds, weights = node["members"], node.get("seeds"), node.get("weights")
    if not raw:
        raise ConfigError("teacher.members is empty: list the ensemble's architectures, e.g. "
                          "teacher.members=[cnn_medium,cnn_small]")
    for key, values in (("teacher.seeds", seeds), ("teacher.weights", weights)):
        if values is not None and len(values) != len(raw):
            raise ConfigError(f"{key}={values!r} is invalid: give one value per member ({len(raw)})")
    members, seen = [], {}
    for i, item in enumerate(raw):
        m = {"arch": item} if isinstance(item, str) else dict(item)
        default_seed = int(node["seed"]) + seen.get(m["arch"], 0)
        seen[m["arch"]] = seen.get(m["arch"], 0) + 1
        seed = m.get("seed", seeds[i] if seeds is not None else default_seed)
        weight = m.get("weight", weights[i] if weights is not None else 1.0)
        check_number(f"teacher.members[{i}].weight", weight, ge=0)  # a member's own weight has no schema
        members.append({**model_node(m), "seed": int(seed), "weight": float(weight), "ckpt": m.get("ckpt")})
    if not sum(m["weight"] for m in members) > 0:
        raise ConfigError("teacher.weights are all 0: at least one member must count")
    if node.get("ckpt"):
        raise ConfigError("teacher.ckpt is for one teacher; give an ensemble member its weights with "
                          "teacher.members=[{arch: ..., ckpt: PATH}, ...]")
    return members


def ensemble_label(members: list[dict]) -> str:
    return "ensemble(" + "+".join(m["arch"] for m in members) + ")"


def check_logit_method(conf: dict, what: str) -> None:
    from kdexp.distill import METHODS

    needs = set(METHODS.get(conf["distill"]["name"]).needs) - {"logits", "index"}
    if needs:
        raise ConfigError(f"distill={conf['distill']['name']} needs teacher features ({', '.join(sorted(needs))}), "
                          f"which {what} does not have; choose a logit-based method (kd, dkd, dist, kd_std, ...)")


def resolve_members(ctx, members: list[dict]) -> tuple[list[nn.Module], list[dict]]:
    """Each member as a teacher of its own: trained alone and cached (or loaded from its ckpt)."""
    models, metas = [], []
    for i, m in enumerate(members):
        member_ctx = ctx.with_nodes(teacher={**ctx.conf["teacher"], "arch": m["arch"], "kwargs": m["kwargs"],
                                             "seed": m["seed"]})
        if m["ckpt"]:
            model = load_weights(member_ctx.build("teacher"), m["ckpt"], f"teacher.members[{i}] ({m['arch']})")
            meta = {"run_id": None, "key": f"weights-{weights_digest(model)}", "ckpt": m["ckpt"]}
        else:
            model, meta = train_alone(member_ctx, "teacher", ctx.conf["teacher"]["max_epochs"], m["seed"])
        meta["metrics"] = evaluate(ctx, model, f"member{i}", costs=False)
        models.append(model)
        metas.append(meta)
    return models, metas


@register_variant("ensemble")
def run(conf: Mapping, run_dir: Path, cell: str = "") -> dict[str, float]:
    members = parse_members(conf["teacher"])
    check_logit_method(conf, "an ensemble teacher")
    label = ensemble_label(members)
    ctx = make_context(conf, run_dir, {"kdexp.variant": "ensemble", "teacher": label}, cell=cell)

    L.seed_everything(conf["seed"], verbose=False)
    student = ctx.build("student")
    models, metas = resolve_members(ctx, members)
    method = build_method(ctx, student, models[0])  # logit methods: the teacher's shapes are its logits'
    teacher = EnsembleTeacher(models, [m["weight"] for m in members], conf["teacher"]["combine"])
    teacher_meta = {
        "run_id": None, "cached": all(m.get("cached", False) for m in metas),
        "key": fingerprint({"role": "ensemble", "members": [m["key"] for m in metas],
                            "weights": teacher.member_weights.tolist(), "combine": teacher.combine}),
        "metrics": evaluate(ctx, teacher, "teacher"),
    }
    for i, meta in enumerate(metas):  # per-member rows, as teacher/member{i}/...
        teacher_meta["metrics"].update({f"member{i}/{k}": v for k, v in meta["metrics"].items()})
    log_members(members, metas)
    ctx = ctx.with_tags({"kdexp.member_run_ids": ",".join(m.get("run_id") or "" for m in metas)})
    baseline_meta = vanilla_baseline(ctx)
    name = f"{conf['distill']['name']}:{label}->{conf['student']['arch']}"
    lineage = lineage_tags(teacher_meta, baseline_meta)
    with student_run(ctx, name, method_label(conf, "ensemble"), lineage) as run_id:
        stage = StageSpec(callbacks=tuple(trial_callbacks(conf)))
        train_metrics = train_distilled(ctx, run_id, student, teacher, method, stage)
        report = ReportSpec(teacher_meta, baseline_meta, labels={"teacher": label})
        return report_student(ctx, run_id, student, train_metrics, report)


def log_members(members: list[dict], metas: list[dict]) -> None:
    rows = [f"  member {i}: {m['arch']} seed {m['seed']} weight {m['weight']:g} -> test top-1 "
            f"{100 * meta['metrics']['test_top1']:.2f} ({'cached' if meta.get('cached') else 'trained'})"
            for i, (m, meta) in enumerate(zip(members, metas))]
    print("ensemble teacher:\n" + "\n".join(rows), flush=True)
