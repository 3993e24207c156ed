"""One experiment: teacher (load | cache | train) -> vanilla baseline -> distill -> fine-tune -> evaluate."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from kdexp.cache import ModelCache, load_weights
from kdexp.evaluate import agreement_metrics, ratios
from kdexp.matrix import apply_matrix_keys, cell_key, finished_cell_metrics, settings_key, use_student_lr
from kdexp.module import DistillModule
from kdexp.stages import Context, build_method, evaluate, fit, quiet_lightning, save_weights, trained_alone
from kdexp.summary import summary_table
from kdexp.tracking import Tracker, flatten
from kdexp.validate import validate_config

log = logging.getLogger("kdexp")


def run_experiment(cfg: DictConfig, run_dir: str | Path = ".") -> dict[str, float]:
    conf = OmegaConf.to_container(cfg, resolve=True)
    apply_matrix_keys(conf)  # benchmark matrices: method label, `pair` -> teacher/student arch, overrides
    validate_config(conf)
    cell = cell_key(conf)
    finished = finished_cell_metrics(conf, cell)  # `skip_finished`: a FINISHED run of this cell is reused
    if finished is not None:
        return finished
    if conf.get("variant"):  # variant=<name>: a multi-model experiment (kdexp/variants) takes over from here
        from kdexp.variants import run_variant

        return run_variant(conf, Path(run_dir), cell)
    settings = settings_key(conf)  # before use_student_lr changes recipe.lr
    quiet_lightning()
    ctx = make_context(conf, Path(run_dir))

    # Build every model and the method before training anything: an incompatible pair fails now.
    L.seed_everything(conf["seed"], verbose=False)
    teacher, student = ctx.build("teacher"), ctx.build("student")
    method = build_method(ctx, student, teacher)

    teacher_meta = resolve_teacher(ctx, teacher)
    use_student_lr(conf)  # from here on recipe.lr is the student's (`student_lr`); the teacher kept its own
    baseline_meta = None
    if conf["baseline"]:
        baseline, baseline_meta = trained_alone(ctx, "baseline", conf["trainer"]["max_epochs"], conf["seed"])
        baseline_meta["metrics"] = evaluate(ctx, baseline, "baseline")
    return distill(ctx, teacher, teacher_meta, student, method, baseline_meta, cell, settings)


def make_context(conf: dict, run_dir: Path) -> Context:
    from kdexp.data import create_datamodule

    dm = create_datamodule(**conf["data"], seed=conf["seed"])
    dm.setup()  # bad roots and corrupt files fail here, before any training
    root = Path(conf["paths"]["root"])
    tracker = Tracker(conf["tracking"]["uri"], conf["tracking"]["experiment"], artifact_root=root / "mlartifacts")
    return Context(conf, dm, tracker, ModelCache(Path(conf["paths"]["cache"]) / "models"), run_dir)


def resolve_teacher(ctx: Context, teacher) -> dict:
    node = ctx.conf["teacher"]
    if node.get("ckpt"):
        load_weights(teacher, node["ckpt"], f"teacher.ckpt ({node['arch']}, {ctx.dm.num_classes} classes)")
        meta = {"run_id": None, "ckpt": str(node["ckpt"]), "cached": False}
    else:
        trained, meta = trained_alone(ctx, "teacher", node["max_epochs"], node["seed"])
        teacher.load_state_dict(trained.state_dict())
    meta["metrics"] = evaluate(ctx, teacher, "teacher")
    return meta


def distill(ctx: Context, teacher, teacher_meta: dict, student, method, baseline_meta: dict | None,
            cell: str = "", settings: str = "") -> dict:
    conf, tracker = ctx.conf, ctx.tracker
    tags = {**ctx.tags("student"), "kdexp.teacher_run_id": teacher_meta.get("run_id") or "",
            "kdexp.teacher_fingerprint": teacher_meta.get("key", ""), "kdexp.cell": cell, "kdexp.settings": settings,
            "kdexp.method": conf.get("method") or conf["distill"]["name"]}
    if baseline_meta:
        tags["kdexp.baseline_run_id"] = baseline_meta.get("run_id") or ""
    trial = trial_context(conf)
    if trial is not None:
        from kdexp.sweep.trial import child_run_tags

        tags.update(child_run_tags(conf))
    name = f"{conf['distill']['name']}:{conf['teacher']['arch']}->{conf['student']['arch']}"
    run_id = tracker.start(name, tags, flatten(conf))
    try:
        (ctx.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(conf))
        tracker.log_artifact(run_id, ctx.run_dir / "config.yaml")
        metrics = train_student(ctx, run_id, teacher, student, method, trial)
        metrics.update(teacher_metrics(teacher_meta, baseline_meta))
        metrics.update(agreement(ctx, "student"))
        tracker.log_metrics(run_id, metrics)
        write_results(ctx, run_id, metrics, student)
        tracker.finish(run_id)
    except BaseException as exc:
        if trial is not None and is_pruned_error(exc):
            from kdexp.sweep.trial import end_pruned_run

            end_pruned_run(run_id, tracker.client)
        else:
            tracker.fail(run_id, exc)
        raise
    return metrics


def train_student(ctx: Context, run_id: str, teacher, student, method, trial) -> dict[str, float]:
    conf, tracker = ctx.conf, ctx.tracker
    d = conf["distill"]
    if method.init_epochs > 0:  # AB / FT / FSP: the method's own first stage
        init = DistillModule(student, teacher=teacher, method=method, recipe=conf["recipe"],
                             max_epochs=method.init_epochs, stage="init", metric_sink=tracker.sink(run_id, "init/"))
        fit(ctx, init, method.init_epochs)
    module = DistillModule(
        student, teacher=teacher, method=method, weights=d["weights"], temperature=d.get("temperature", 4.0),
        recipe=conf["recipe"], max_epochs=conf["trainer"]["max_epochs"], metric_sink=tracker.sink(run_id),
    )
    callbacks = [trial_callback(trial)] if trial is not None else []
    fit(ctx, module, conf["trainer"]["max_epochs"], callbacks)
    metrics = {"student/val_acc": module.last_val_acc, "student/best_val_acc": module.best_val_acc,
               "student/best_epoch": module.best_epoch}
    if module.best_state is not None:
        best = evaluate(ctx, module.best_student(), "student_best", costs=False)
        metrics.update({f"student/best_val/{k}": v for k, v in best.items()})
    if conf["finetune"]["epochs"] > 0:
        metrics.update({f"student/pre_finetune/{k}": v for k, v in evaluate(ctx, student, "s", costs=False).items()})
        recipe = {**conf["recipe"], "lr": conf["recipe"]["lr"] * conf["finetune"]["lr_scale"]}
        tune = DistillModule(student, recipe=recipe, max_epochs=conf["finetune"]["epochs"], track_best=False,
                             metric_sink=tracker.sink(run_id, "finetune/"))
        fit(ctx, tune, conf["finetune"]["epochs"])
    final = evaluate(ctx, student, "student")
    metrics.update({f"student/{k}": v for k, v in final.items()})
    metrics["student/adapter_params"] = sum(p.numel() for p in method.parameters())
    return metrics


def teacher_metrics(teacher_meta: dict, baseline_meta: dict | None) -> dict[str, float]:
    out = {f"teacher/{k}": v for k, v in teacher_meta["metrics"].items()}
    if baseline_meta:
        out.update({f"baseline/{k}": v for k, v in baseline_meta["metrics"].items()})
    return out


def agreement(ctx: Context, role: str) -> dict[str, float]:
    out = {f"{role}/{k}": v for k, v in agreement_metrics(ctx.test[role], ctx.test["teacher"]).items()}
    if "baseline" in ctx.test:
        out.update({f"baseline/{k}": v for k, v in agreement_metrics(ctx.test["baseline"], ctx.test["teacher"]).items()})
    return out


def write_results(ctx: Context, run_id: str, metrics: dict, student) -> None:
    conf, tracker = ctx.conf, ctx.tracker
    teacher = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("teacher/")}
    student_m = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.count("/") == 1 and k.startswith("student/")}
    metrics.update({f"student/{k}": v for k, v in ratios(student_m, teacher).items()})
    tracker.log_metrics(run_id, {k: v for k, v in metrics.items() if k.startswith("student/") and k.endswith("_ratio")})
    (ctx.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    table = summary_table(metrics, conf)
    (ctx.run_dir / "summary.md").write_text(table + "\n")
    for name in ("metrics.json", "summary.md"):
        tracker.log_artifact(run_id, ctx.run_dir / name)
    if conf["tracking"].get("log_checkpoints", True):
        tracker.log_artifact(run_id, save_weights(ctx, student, "student.pt"))
    print(table, flush=True)


def trial_context(conf: dict):
    if not (conf.get("optuna_trial") or {}).get("study_name"):
        return None
    from kdexp.sweep.trial import trial_from_cfg

    return trial_from_cfg(conf)


def trial_callback(trial):
    from kdexp.sweep.trial import PruningCallback

    return PruningCallback(trial, monitor="val/acc")


def is_pruned_error(exc: BaseException) -> bool:
    from kdexp.sweep.trial import is_pruned_error as pruned

    return pruned(exc)
