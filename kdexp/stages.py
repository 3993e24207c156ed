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

from kdexp.cache import ModelCache, fingerprint, load_weights
from kdexp.evaluate import accuracy_metrics, cost_metrics, predict_logits
from kdexp.models import create_model
from kdexp.module import DistillModule
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


def fit(ctx: Context, module: DistillModule, max_epochs: int, callbacks: list | None = None) -> L.Trainer:
    trainer_kwargs = {**ctx.conf["trainer"], "max_epochs": max_epochs}
    trainer = L.Trainer(
        **trainer_kwargs, logger=False, enable_checkpointing=False, callbacks=callbacks or [],
        default_root_dir=str(ctx.run_dir),
    )
    trainer.fit(module, train_dataloaders=ctx.dm.train_dataloader(), val_dataloaders=ctx.dm.val_dataloader())
    return trainer


def evaluate(ctx: Context, model: nn.Module, role: str, costs: bool = True) -> dict[str, float]:
    """Test-set accuracy/calibration (+ deployment costs) of one model; keeps its logits for agreement."""
    x, y = ctx.dm.split_tensors("test")
    logits = predict_logits(model, x, ctx.conf["data"].get("eval_batch_size", 1024))
    ctx.test[role] = logits
    out = {f"test_{k}": v for k, v in accuracy_metrics(logits, y, ctx.conf["eval"]["ece_bins"]).items()}
    if costs:
        ev = ctx.conf["eval"]
        out.update(cost_metrics(model, ctx.input_shape, ev["latency_batch"], ev["latency_repeats"]))
    return out


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
