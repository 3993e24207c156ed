"""Deep mutual learning (DML, Zhang et al. 2018): K students trained together, no pre-trained teacher.

    kdexp-train variant=mutual variant.students=[cnn_tiny,cnn_tiny]

loss = sum_k [ w_ce CE(z_k, y) + w_kl mean_{j!=k} T^2 KL(p_j^T || p_k^T) ]   (peers' p_j detached)
so each student's gradient comes from its own term alone: one optimiser over all students is K optimisers.
(The paper alternates the students' updates; here all of them step on the same batch at once.)

Reporting: there is no teacher row (teacher/* and agreement are absent: the peers are not a fixed teacher).
Each peer is peer{k}/*, the peers' ensemble (mean of probabilities) ensemble/*, and student/* is the peer of
architecture `student` with the best last-epoch validation accuracy (never chosen on test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.config.errors import ConfigError
from kdexp.config.variants import model_node
from kdexp.distill import kd_loss
from kdexp.models.ensemble import EnsembleTeacher
from kdexp.modules.base import EpochModule, MetricSink
from kdexp.training.alone import vanilla_baseline
from kdexp.training.context import make_context
from kdexp.training.evaluation import evaluate
from kdexp.training.lifecycle import trial_callbacks
from kdexp.training.results import ReportSpec, accuracy_table, lineage_tags, report_student, student_run
from kdexp.training.run import log_table, save_weights
from kdexp.training.trainer import fit
from kdexp.variants import register_variant


def mutual_loss(logits: list[Tensor], y: Tensor, weights: dict[str, float], temperature: float
                ) -> tuple[Tensor, dict[str, Tensor]]:
    """(total loss, unweighted terms ce_k and kl_k for each student k)."""
    terms: dict[str, Tensor] = {}
    total = logits[0].new_zeros(())
    for k, z in enumerate(logits):
        peers = [kd_loss(z, other.detach(), temperature) for j, other in enumerate(logits) if j != k]
        terms[f"ce_{k}"] = F.cross_entropy(z, y)
        terms[f"kl_{k}"] = torch.stack(peers).mean()
        total = total + weights.get("ce", 0.0) * terms[f"ce_{k}"] + weights.get("kl", 0.0) * terms[f"kl_{k}"]
    return total, terms


class MutualModule(EpochModule):
    """K peers on one batch: each a tracked model (its best state, its val/acc_k); val/acc is the best peer's."""

    def __init__(self, students: list[nn.Module], *, weights: dict[str, float] | None = None,
                 temperature: float = 1.0, recipe: dict | None = None, lrs: list[float] | None = None,
                 max_epochs: int = 1, metric_sink: MetricSink | None = None, track_best: bool = True):
        if len(students) < 2:
            raise ValueError("mutual learning needs at least two students")
        super().__init__(recipe=recipe, max_epochs=max_epochs, metric_sink=metric_sink, track_best=track_best,
                         tracked=len(students))
        self.students = nn.ModuleList(students)
        self.weights = {k: float(v) for k, v in (weights or {"ce": 1.0, "kl": 1.0}).items()}
        self.temperature = float(temperature)
        self.lrs = lrs  # per student (student_lr by architecture); None: recipe.lr for all
        self.uses_teacher = False  # training.trainer.fit: no teacher outputs to cache

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        logits = [s(x) for s in self.students]
        loss, terms = mutual_loss(logits, y, self.weights, self.temperature)
        correct = {f"correct_{k}": (z.argmax(1) == y).sum() for k, z in enumerate(logits)}
        self.train_sums.add(len(y), loss=loss, **correct, **terms)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        values = {}
        for k, s in enumerate(self.students):
            z = s(x)
            values[f"correct_{k}"], values[f"loss_{k}"] = (z.argmax(1) == y).sum(), F.cross_entropy(z, y)
        self.val_sums.add(len(y), **values)

    def tracked_models(self) -> list[nn.Module]:
        return list(self.students)

    def validation_accuracies(self, metrics: dict[str, float]) -> list[float]:
        accs = [metrics[f"val/acc_{k}"] for k in range(len(self.students))]
        metrics["val/acc"] = max(accs)  # the best peer: what a pruner or early stopping should watch
        return accs

    def param_groups(self) -> list[dict]:
        lrs = self.lrs or [float(self.recipe["lr"])] * len(self.students)
        return [{"params": [p for p in s.parameters() if p.requires_grad], "lr": lr}
                for s, lr in zip(self.students, lrs)]

    @property
    def last_val_acc(self) -> list[float]:
        return [b.last_val_acc for b in self.best]

    @property
    def best_val_acc(self) -> list[float]:
        return [b.best_val_acc for b in self.best]

    @property
    def best_epoch(self) -> list[int]:
        return [b.best_epoch for b in self.best]

    @property
    def best_state(self) -> list[dict | None]:
        return [b.best_state for b in self.best]


def peers(conf: Mapping) -> tuple[list[dict], list[int]]:
    """The students (null: two copies of `student`) and their seeds (null: seed, seed+1, ...). Each setting is
    checked by its schema (kdexp.config.variants.MutualSchema); this checks how they fit together."""
    v, student = conf["variant"], conf["student"]["arch"]
    nodes = [model_node(s) for s in v["students"] or [student] * 2]
    if len(nodes) < 2:
        raise ConfigError(f"variant.students={v['students']!r} is invalid: mutual learning needs two or more students")
    if student not in [n["arch"] for n in nodes]:
        raise ConfigError(f"student={student} is not among variant.students={v['students']!r}: the reported "
                          "student is the best peer of that architecture; set student=<one of them>")
    seeds = v["seeds"] or [conf["seed"] + k for k in range(len(nodes))]
    if len(seeds) != len(nodes):
        raise ConfigError(f"variant.seeds={seeds!r} is invalid: one seed per student ({len(nodes)})")
    if not any(w > 0 for w in v["weights"].values()):
        raise ConfigError(f"variant.weights={v['weights']!r} is invalid: ce and kl must not both be 0")
    return nodes, list(seeds)


@register_variant("mutual")
def run(conf: Mapping, run_dir: Path, cell: str = "") -> dict[str, float]:
    nodes, seeds = peers(conf)
    weights, temperature = dict(conf["variant"]["weights"]), conf["variant"]["temperature"]
    archs = [n["arch"] for n in nodes]
    label = conf["variant"]["label"] or "dml"
    ctx = make_context(conf, run_dir, {"kdexp.variant": "mutual", "teacher": "none", "distill": "dml",
                                       "kdexp.peers": "+".join(archs)}, cell=cell)
    students = []
    for node, seed in zip(nodes, seeds):
        L.seed_everything(seed, verbose=False)
        students.append(ctx.with_nodes(student=node).build("student"))
    lrs = [ctx.recipe_for("student", a)["lr"] for a in archs]
    baseline_meta = vanilla_baseline(ctx)
    with student_run(ctx, f"{label}:{'+'.join(archs)}", label, lineage_tags(None, baseline_meta)) as run_id:
        epochs = conf["trainer"]["max_epochs"]
        module = MutualModule(students, weights=weights, temperature=temperature, recipe=ctx.recipe_for("teacher"),
                              lrs=lrs, max_epochs=epochs, metric_sink=ctx.run.tracker.sink(run_id))
        fit(ctx, module, epochs, trial_callbacks(conf), stage=f"students {label}")
        return report_peers(ctx, run_id, module, archs, conf["student"]["arch"], baseline_meta, label)


def report_peers(ctx, run_id: str, module: MutualModule, archs: list[str], student_arch: str,
                 baseline_meta: dict | None, label: str) -> dict[str, float]:
    students, extra, rows = list(module.students), {}, []
    for k, (s, arch) in enumerate(zip(students, archs)):
        test = evaluate(ctx, s, f"peer{k}", costs=False)
        extra.update({f"peer{k}/{key}": v for key, v in test.items()})
        extra.update({f"peer{k}/val_acc": module.last_val_acc[k], f"peer{k}/best_val_acc": module.best_val_acc[k]})
        rows.append((f"peer {k}", arch, test["test_top1"]))
    ensemble = evaluate(ctx, EnsembleTeacher(students, combine="mean_probs"), "ensemble")
    extra.update({f"ensemble/{key}": v for key, v in ensemble.items()})
    rows.append(("ensemble of peers (mean_probs)", "+".join(archs), ensemble["test_top1"]))
    chosen = max((k for k, a in enumerate(archs) if a == student_arch), key=lambda k: module.last_val_acc[k])
    extra["student/peer_index"] = chosen
    train_metrics = {"val_acc": module.last_val_acc[chosen], "best_val_acc": module.best_val_acc[chosen],
                     "best_epoch": module.best_epoch[chosen], "adapter_params": 0}
    if module.best_state[chosen] is not None:
        best = evaluate(ctx, module.best_copy(chosen), "student_best", costs=False)
        train_metrics.update({f"best_val/{k}": v for k, v in best.items()})
    report = ReportSpec(baseline=baseline_meta, extra=extra,
                        labels={"distill": label, "teacher": "none (mutual learning)"},
                        shown={"distill": {"weights": module.weights, "temperature": module.temperature}},
                        copy_student=True)
    metrics = report_student(ctx, run_id, students[chosen], train_metrics, report)
    if ctx.conf["tracking"].get("log_checkpoints", True):
        for k, s in enumerate(students):
            ctx.run.tracker.log_artifact(run_id, save_weights(ctx.run, s, f"peer{k}.pt"))
    log_table(ctx.run, run_id, accuracy_table("mutual learning", rows))
    return metrics
