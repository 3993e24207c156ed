"""Models trained on hard labels only — teachers and vanilla baselines — reused from the model cache."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Mapping

import lightning as L
from torch import nn

from kdexp.caching.fingerprint import fingerprint
from kdexp.caching.models import load_weights
from kdexp.modules.distill import DistillModule
from kdexp.runtime import distributed
from kdexp.tracking.runs import flatten
from kdexp.training.context import Context, planned_processes
from kdexp.training.evaluation import evaluate
from kdexp.training.lifecycle import tracked_run
from kdexp.training.records import record_model
from kdexp.training.run import cached_model, resuming, save_weights
from kdexp.training.trainer import fit

log = logging.getLogger("kdexp")


def model_spec(ctx: Context, node: Mapping, recipe: Mapping, max_epochs: int, seed: int,
               role: str = "student") -> dict:
    """Everything that defines a model trained with `recipe`: what its cache key is made of (a distilled
    link adds its teacher and method to it).

    Args:
        ctx: the experiment (data, batch size, trainer settings).
        node: the model's config node ({arch, kwargs}).
        recipe: what it trains with (optimiser, lr, schedule).
        max_epochs: epochs it trains for.
        seed: its seed.
        role: "teacher" or "student": whose view of the data (a text teacher's key ignores a student tokenizer).

    Returns:
        The spec, a JSON-able dict.
    """
    c = ctx.conf
    return {
        "role": "trained-alone", "arch": node["arch"], "kwargs": node["kwargs"],
        **({"hf_config": dict(node["hf_config"])} if node.get("hf_config") else {}),  # absent: keys unchanged
        "num_classes": ctx.dm.num_classes, "in_channels": ctx.dm.in_channels,
        "data": ctx.dm.fingerprint(role),
        "batch_size": c["data"]["batch_size"], "recipe": recipe, "max_epochs": max_epochs, "seed": seed,
        "precision": c["trainer"].get("precision"), "fast_dev_run": c["trainer"].get("fast_dev_run", False),
        # callbacks from config (early stopping) and several DDP processes (a larger global batch) change
        # what is trained; absent, keys stay as they were
        **({"callbacks": c["trainer"]["callbacks"]} if c["trainer"].get("callbacks") else {}),
        **({"processes": processes} if (processes := planned_processes(c["trainer"])) > 1 else {}),
    }


def train_alone(ctx: Context, label: str, max_epochs: int, seed: int) -> tuple[nn.Module, dict]:
    """The teacher or the vanilla baseline of the student architecture, trained on hard labels with its
    role's recipe, from the model cache if possible (its own MLflow run when trained).

    Args:
        ctx: the experiment (its `teacher` / `student` node names the architecture).
        label: "teacher", or "baseline" for the student architecture.
        max_epochs: epochs to train.
        seed: the seed of its initialisation and data order (part of the cache key).

    Returns:
        (model, meta): meta has the MLflow run id that trained it, its cache key and `cached`.
    """
    role = "teacher" if label == "teacher" else "student"  # the config node naming the architecture
    augment = label == "teacher" and bool(ctx.conf["teacher"].get("augment"))  # teacher.augment: its batches only
    with augmented(ctx.dm, augment):
        spec = model_spec(ctx, ctx.conf[role], ctx.recipe_for(role), max_epochs, seed, role)
    key = fingerprint(spec)

    def train() -> tuple[nn.Module, dict]:
        L.seed_everything(seed, verbose=False)
        model = ctx.build(role)
        tags = {**ctx.alone_tags(label, spec["arch"], seed), "kdexp.fingerprint": key}
        ckpt = ctx.run.checkpoints(key)
        resume = {"kdexp.fingerprint": key} if resuming(ckpt) else None
        with tracked_run(ctx.run, f"{label}:{spec['arch']}", tags, flatten(spec), resume=resume) as run_id:
            module = DistillModule(model, recipe=spec["recipe"], max_epochs=max_epochs,
                                   metric_sink=ctx.run.tracker.sink(run_id), track_best=False)
            log.info("training %s %s for %d epochs (cache key %s)", label, spec["arch"], max_epochs, key)
            ctx.dm.seed = seed  # the loader's shuffle order is part of what the cache key promises
            try:
                with augmented(ctx.dm, augment):
                    fit(ctx, module, max_epochs, stage=f"{label} {spec['arch']}", ckpt_dir=ckpt)
            finally:
                ctx.dm.seed = ctx.conf["seed"]
            metrics = evaluate(ctx, model, label, costs=False)
            ctx.run.tracker.log_metrics(run_id, metrics)
            record_model(ctx, run_id, model, label)
            if ctx.conf["tracking"].get("log_checkpoints", True) and distributed.is_rank_zero():
                ctx.run.tracker.log_artifact(run_id, save_weights(ctx.run, model, f"{label}.pt"))
        return model, {"run_id": run_id, "spec": spec, "test_metrics": metrics}

    return cached_model(ctx.run, key, train, lambda: ctx.build(role), f"{label} {spec['arch']}")


@contextmanager
def augmented(dm, on: bool) -> Iterator[None]:
    """`teacher.augment`: the data module augments training batches (and says so in its fingerprint) inside."""
    before = dm.augment
    dm.augment = before or on
    try:
        yield
    finally:
        dm.augment = before


def resolve_teacher(ctx: Context, teacher: nn.Module) -> dict:
    """Fill `teacher` with its weights (teacher.ckpt, the cache, or a training run) and evaluate it.

    Args:
        ctx: the experiment.
        teacher: an untrained model of the `teacher` node, filled in place.

    Returns:
        The teacher's meta (run_id, key, cached) and its test `metrics`.
    """
    node = ctx.conf["teacher"]
    if node.get("ckpt"):
        load_weights(teacher, node["ckpt"], f"teacher.ckpt ({node['arch']}, {ctx.dm.num_classes} classes)")
        meta = {"run_id": None, "ckpt": str(node["ckpt"]), "cached": False}
    else:
        trained, meta = train_alone(ctx, "teacher", node["max_epochs"], node["seed"])
        teacher.load_state_dict(trained.state_dict())
    meta["metrics"] = evaluate(ctx, teacher, "teacher")
    return meta


def vanilla_baseline(ctx: Context) -> dict | None:
    """`baseline=true`: the student architecture trained alone (cached), evaluated.

    Args:
        ctx: the experiment.

    Returns:
        The baseline's meta with its test `metrics`, or None when `baseline` is false.
    """
    if not ctx.conf["baseline"]:
        return None
    baseline, meta = train_alone(ctx, "baseline", ctx.conf["trainer"]["max_epochs"], ctx.conf["seed"])
    meta["metrics"] = evaluate(ctx, baseline, "baseline")
    return meta
