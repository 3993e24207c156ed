"""One Lightning stage: a Trainer built from `trainer:` for `max_epochs`, fed by the data module (or by
cached teacher outputs), with the student (and an online teacher) optionally compiled."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn

from kdexp.caching.checkpoints import checkpoint_callback, last_checkpoint
from kdexp.caching.teacher_outputs import prepare_cached_teacher
from kdexp.modules.base import EpochModule
from kdexp.modules.distill import DistillModule
from kdexp.runtime.trainer_extras import trainer_extras
from kdexp.tracking.progress import EpochProgress
from kdexp.training.context import Context

# kdexp's own switches in the `trainer:` node; the rest are lightning.Trainer arguments.
TRAINER_EXTRAS = ("compile", "channels_last")


def fit(ctx: Context, module: EpochModule, max_epochs: int, callbacks: list | None = None,
        stage: str = "train", ckpt_dir: Path | None = None) -> L.Trainer:
    """One Lightning stage of `module` on the experiment's data. Callbacks and loggers of `trainer.callbacks`
    / `trainer.logger` are built fresh for every stage.

    Args:
        ctx: the experiment (its `trainer:` node, data, teacher-output cache, run folder).
        module: the LightningModule to train (a DistillModule, or any kdexp.modules.base.EpochModule).
        max_epochs: epochs of this stage.
        callbacks: Lightning callbacks of this stage (e.g. a sweep trial's pruning callback).
        stage: names the progress lines (e.g. "teacher cnn_medium", "student kd", "init", "finetune").
        ckpt_dir: checkpoint every epoch there (weights, optimizer, scheduler, loops, RNG, data order) and
            resume from its last.ckpt when a killed attempt left one; a finished stage's checkpoint restores it.

    Returns:
        The fitted Trainer.
    """
    trainer_kwargs, user_callbacks, loggers = trainer_extras(ctx.conf["trainer"])
    trainer_kwargs["max_epochs"] = max_epochs
    trainer_kwargs.setdefault("enable_checkpointing", False)
    if stage == "init" and trainer_kwargs.get("strategy") == "ddp":  # a first stage leaves the head out of its loss
        trainer_kwargs["strategy"] = "ddp_find_unused_parameters_true"
    extras = {k: trainer_kwargs.pop(k, False) for k in TRAINER_EXTRAS}
    own = [EpochProgress(stage, position=ctx.run.position), *(callbacks or [])]
    if ckpt_dir is not None:
        own.append(checkpoint_callback(ckpt_dir))
        trainer_kwargs["enable_checkpointing"] = True
    trainer = L.Trainer(
        **trainer_kwargs, logger=loggers or False, callbacks=[*own, *user_callbacks],
        default_root_dir=str(ctx.run.folder),
    )
    ctx.dm.use_device(trainer.strategy.root_device, trainer.num_devices)  # data.device / data.pin_memory
    train_loader = use_cached_teacher(ctx, module) or ctx.dm.train_dataloader()
    if extras["channels_last"]:
        module.to(memory_format=torch.channels_last)
    if extras["compile"]:  # nn.Module.compile keeps state_dict keys, so cached/saved weights stay loadable
        for model in compiled_models(module):
            model.compile()
    resume_from = last_checkpoint(ckpt_dir) if ckpt_dir is not None else None
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=ctx.dm.val_dataloader(),
                ckpt_path=str(resume_from) if resume_from else None)
    return trainer


def compiled_models(module) -> list[nn.Module]:
    """What `trainer.compile` compiles: the student(s), and a teacher that runs online."""
    models = list(getattr(module, "students", None) or [module.student])
    if getattr(module, "uses_teacher", False) and module.teacher_store is None:
        models.append(module.teacher)
    return models


def use_cached_teacher(ctx: Context, module: DistillModule):
    """Attach cached teacher outputs to a module that uses its teacher (see kdexp/caching/teacher_outputs.py).

    Returns the train loader to use with them (fixed augmented views), or None for the usual one.
    """
    if not module.uses_teacher:
        return None
    node = dict(ctx.conf["teacher_cache"])
    if ctx.conf["trainer"].get("fast_dev_run") and node["mode"] == "auto":
        return None  # one batch: filling the whole split would cost more than it saves
    cached = prepare_cached_teacher(
        node, ctx.dm, module.teacher, module.method.needs, module.needs_features,
        Path(ctx.conf["paths"]["cache"]) / "teacher_outputs", ctx.memo, module.method.teacher_levels(),
    )
    if cached is None:
        return None
    module.use_teacher_outputs(cached.outputs)
    return cached.train_loader
