"""The building blocks of a pipeline: build models, fit a stage, evaluate, reuse cached models."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from kdexp.cache import ModelCache, fingerprint, load_weights, remember
from kdexp.distill import method_from_config
from kdexp.evaluate import accuracy_metrics, cost_metrics, predict_logits
from kdexp.models import create_model
from kdexp.module import DistillModule
from kdexp.teacher_outputs import (
    TeacherCacheSettings, TeacherOutputCache, TeacherOutputs, prepare_cached_teacher, weights_digest,
)
from kdexp.tracking import Tracker, flatten

log = logging.getLogger("kdexp")


@dataclass
class Context:
    """What every stage of one experiment shares."""

    conf: dict  # the resolved config, as plain containers
    dm: Any  # a kdexp TensorDataModule, set up
    tracker: Tracker
    cache: ModelCache
    run_dir: Path
    test: dict = field(default_factory=dict)  # role -> test logits, for agreement
    memo: dict = field(default_factory=dict)  # teacher outputs / views already loaded in this experiment

    def __post_init__(self):
        augment = bool((self.conf.get("data") or {}).get("augment"))
        TeacherCacheSettings.from_conf(self.conf.get("teacher_cache"), augment)  # fails before any training

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.dm.input_shape)

    def build(self, role: str) -> nn.Module:
        node = self.conf[role]
        return create_model(
            node["arch"], num_classes=self.dm.num_classes, in_channels=self.dm.in_channels, **(node.get("kwargs") or {})
        )

    def tags(self, role: str) -> dict[str, str]:
        """Config choices as tags, so that a benchmark is an MLflow query."""
        c = self.conf
        return {
            "kdexp.role": role, "data": c["data"]["name"], "teacher": c["teacher"]["arch"],
            "student": c["student"]["arch"], "distill": c["distill"]["name"], "seed": str(c["seed"]),
        }

    def alone_tags(self, label: str, arch: str, seed: int) -> dict[str, str]:
        """Tags of a model trained alone: shared by every experiment that reuses it."""
        return {"kdexp.role": label, "data": self.conf["data"]["name"], "arch": arch, "seed": str(seed)}


def quiet_lightning() -> None:
    """Keep Lightning's start-up banners out of the summary; warnings still show."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # the frozen teacher, on purpose
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")


# kdexp's own switches in the `trainer:` node; the rest are lightning.Trainer arguments.
TRAINER_EXTRAS = ("compile", "channels_last")


def fit(ctx: Context, module: DistillModule, max_epochs: int, callbacks: list | None = None) -> L.Trainer:
    trainer_kwargs = {**ctx.conf["trainer"], "max_epochs": max_epochs}
    extras = {k: trainer_kwargs.pop(k, False) for k in TRAINER_EXTRAS}
    trainer = L.Trainer(
        **trainer_kwargs, logger=False, enable_checkpointing=False, callbacks=callbacks or [],
        default_root_dir=str(ctx.run_dir),
    )
    ctx.dm.use_device(trainer.strategy.root_device, trainer.num_devices)  # data.device / data.pin_memory
    train_loader = use_cached_teacher(ctx, module) or ctx.dm.train_dataloader()
    if extras["channels_last"]:
        module.to(memory_format=torch.channels_last)
    if extras["compile"]:  # nn.Module.compile keeps state_dict keys, so cached/saved weights stay loadable
        module.student.compile()
        if module.uses_teacher and module.teacher_store is None:
            module.teacher.compile()
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=ctx.dm.val_dataloader())
    return trainer


def use_cached_teacher(ctx: Context, module: DistillModule):
    """Attach cached teacher outputs to a module that uses its teacher (see kdexp/teacher_outputs.py).

    Returns the train loader to use with them (fixed augmented views), or None for the usual one.
    """
    if not module.uses_teacher:
        return None
    node = dict(ctx.conf.get("teacher_cache") or {})
    if ctx.conf["trainer"].get("fast_dev_run") and node.get("mode", "auto") == "auto":
        return None  # one batch: filling the whole split would cost more than it saves
    cached = prepare_cached_teacher(
        node, ctx.dm, module.teacher, module.method.needs, module.needs_features,
        Path(ctx.conf["paths"]["cache"]) / "teacher_outputs", ctx.memo,
    )
    if cached is None:
        return None
    module.use_teacher_outputs(cached.outputs)
    return cached.train_loader


# In-process memo of evaluations: every trial of an in-process sweep re-evaluates the same cached teacher
# and baseline (test logits, latency); keyed by the weights, so a changed model is always re-evaluated.
_EVALUATIONS: dict[str, tuple[torch.Tensor, dict]] = {}
_EVALUATIONS_KEPT = 8
CACHED_ROLES = ("teacher", "baseline")  # models that come from the model cache: their test logits are cached too


def evaluate(ctx: Context, model: nn.Module, role: str, costs: bool = True) -> dict[str, float]:
    """Test-set accuracy/calibration (+ deployment costs) of one model; keeps its logits for agreement."""
    model.eval()
    digest = weights_digest(model)
    key = fingerprint({"arch": type(model).__name__, "weights": digest, "data": ctx.dm.fingerprint(),
                       "eval": ctx.conf["eval"], "costs": costs})
    if key in _EVALUATIONS:
        ctx.test[role], out = _EVALUATIONS[key]
        return dict(out)
    x, y = ctx.dm.split_tensors("test")
    batch = ctx.conf["data"].get("eval_batch_size", 1024)
    mode = (ctx.conf.get("teacher_cache") or {}).get("mode", "auto")
    if role in CACHED_ROLES and mode != "off":
        logits = cached_test_logits(ctx, model, digest, batch)
    else:
        logits = predict_logits(model, x, batch)
    ctx.test[role] = logits
    out = {f"test_{k}": v for k, v in accuracy_metrics(logits, y, ctx.conf["eval"]["ece_bins"]).items()}
    if costs:
        ev = ctx.conf["eval"]
        out.update(cost_metrics(model, ctx.input_shape, ev["latency_batch"], ev["latency_repeats"]))
    remember(_EVALUATIONS, key, (logits, dict(out)), _EVALUATIONS_KEPT)
    return out


def cached_test_logits(ctx: Context, model: nn.Module, digest: str, batch_size: int) -> torch.Tensor:
    """predict_logits on the test split, stored beside the teacher outputs: a cached model's are computed once."""
    spec = {"kind": "split-logits", "arch": type(model).__name__, "weights": digest, "data": ctx.dm.fingerprint(),
            "split": "test", "batch_size": batch_size}

    def compute() -> TeacherOutputs:
        x, _ = ctx.dm.split_tensors("test")
        return TeacherOutputs(predict_logits(model, x, batch_size), [], [], None, len(x))

    cache = TeacherOutputCache(Path(ctx.conf["paths"]["cache"]) / "teacher_outputs")
    return cache.get_or_compute(fingerprint(spec), compute, spec)[0].logits


def build_method(ctx: Context, student: nn.Module, teacher: nn.Module):
    """The configured method, built for this (student, teacher) pair: adapters depend on both."""
    method = method_from_config(ctx.conf["distill"])
    method.build(student.feature_shapes(ctx.input_shape), teacher.feature_shapes(ctx.input_shape),
                 ctx.dm.num_classes, ctx.dm.num_train)
    return method


def save_weights(ctx: Context, model: nn.Module, name: str) -> Path:
    path = ctx.run_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def model_spec(ctx: Context, role: str, max_epochs: int, seed: int) -> dict:
    """Everything that defines a model trained alone on hard labels: its cache key."""
    c = ctx.conf
    return {
        "role": "trained-alone", "arch": c[role]["arch"], "kwargs": c[role].get("kwargs") or {},
        "num_classes": ctx.dm.num_classes, "in_channels": ctx.dm.in_channels, "data": ctx.dm.fingerprint(),
        "batch_size": c["data"]["batch_size"], "recipe": c["recipe"], "max_epochs": max_epochs, "seed": seed,
        "precision": c["trainer"].get("precision"), "fast_dev_run": c["trainer"].get("fast_dev_run", False),
    }


def trained_alone(ctx: Context, label: str, max_epochs: int, seed: int) -> tuple[nn.Module, dict]:
    """A model trained on hard labels only — the teacher, or the vanilla `baseline` of the student
    architecture — from the cache if possible.

    Returns (model, meta) where meta has the MLflow run id that trained it and `cached`.
    """
    role = "teacher" if label == "teacher" else "student"  # the config node naming the architecture
    spec = model_spec(ctx, role, max_epochs, seed)
    key = fingerprint(spec)

    def train() -> tuple[nn.Module, dict]:
        L.seed_everything(seed, verbose=False)
        model = ctx.build(role)
        ctx.dm.seed = seed  # the loader's shuffle order is part of what the cache key promises
        run_id = ctx.tracker.start(
            f"{label}:{spec['arch']}", {**ctx.alone_tags(label, spec["arch"], seed), "kdexp.fingerprint": key}, flatten(spec)
        )
        try:
            module = DistillModule(
                model, recipe=ctx.conf["recipe"], max_epochs=max_epochs, metric_sink=ctx.tracker.sink(run_id),
                track_best=False,
            )
            log.info("training %s %s for %d epochs (cache key %s)", label, spec["arch"], max_epochs, key)
            try:
                fit(ctx, module, max_epochs)
            finally:
                ctx.dm.seed = ctx.conf["seed"]
            metrics = evaluate(ctx, model, label, costs=False)
            ctx.tracker.log_metrics(run_id, metrics)
            if ctx.conf["tracking"].get("log_checkpoints", True):
                ctx.tracker.log_artifact(run_id, save_weights(ctx, model, f"{label}.pt"))
            ctx.tracker.finish(run_id)
        except BaseException as exc:
            ctx.tracker.fail(run_id, exc)
            raise
        return model, {"run_id": run_id, "spec": spec, "test_metrics": metrics}

    entry, fresh = ctx.cache.get_or_create(key, train)
    if fresh is not None:
        return fresh, {**entry.meta, "key": key, "cached": False}
    log.info("reusing cached %s %s (cache key %s, run %s)", label, spec["arch"], key, entry.meta.get("run_id"))
    model = load_weights(ctx.build(role), entry.weights, f"cached {label} {key}")
    return model, {**entry.meta, "key": key, "cached": True}
