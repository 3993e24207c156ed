"""The runs the benchmarks time: kdexp's fit (DistillModule + Lightning, as the pipeline runs it) and a
hand-written PyTorch loop doing the same work (same models, data, batch, loss, optimizer, validation,
epoch metrics), with the teacher absent ("none"), run every step ("online") or looked up ("cached")."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from benchmarks.common import FASHION_ROOT, REPO
from kdexp.caching.teacher_outputs import TeacherOutputs, prepare_cached_teacher
from kdexp.data import create_datamodule
from kdexp.distill import kd_loss
from kdexp.models import create_model
from kdexp.modules.distill import DistillModule
from kdexp.modules.optim import build_optimizer
from kdexp.training.context import Context, quiet_lightning
from kdexp.training.run import RunIdentity
from kdexp.training.trainer import fit

MODES = ("none", "online", "cached")
RECIPE = OmegaConf.to_container(OmegaConf.load(REPO / "conf/recipe/adam.yaml"))
KD = OmegaConf.to_container(OmegaConf.load(REPO / "conf/distill/kd.yaml"))
TRAINER = OmegaConf.to_container(OmegaConf.load(REPO / "conf/trainer/default.yaml"))


def fashion(limit: int | None, augment: bool = False, batch_size: int = 128, root: str = FASHION_ROOT):
    dm = create_datamodule("fashion_mnist", root=root, limit=limit, batch_size=batch_size, eval_batch_size=2048,
                           augment=augment, seed=0, download=False)
    dm.setup()
    return dm


def build(arch: str, seed: int = 0, in_channels: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(arch, num_classes=10, in_channels=in_channels)


def frozen_teacher(arch: str = "cnn_medium", in_channels: int = 1) -> torch.nn.Module:
    """Random weights are as fast as trained ones; frozen as DistillModule freezes a teacher."""
    teacher = build(arch, seed=123, in_channels=in_channels).eval()
    teacher.arch_name = arch
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def context(dm, epochs: int, mode: str, cache_root: str | Path, **trainer) -> Context:
    conf = {"trainer": {**TRAINER, "max_epochs": epochs, "accelerator": "cpu", **trainer},
            "teacher_cache": {"mode": "on" if mode == "cached" else "off"}, "paths": {"cache": str(cache_root)}}
    return Context(RunIdentity(conf, None, None, Path(tempfile.gettempdir())), dm)


def cached_logits(dm, teacher, cache_root) -> TeacherOutputs:
    """Fill (or load) the teacher-output cache the way a kdexp run does."""
    cached = prepare_cached_teacher({"mode": "on"}, dm, teacher, frozenset({"logits"}), False,
                                    Path(cache_root) / "teacher_outputs")
    return cached.outputs


def kdexp_run(dm, teacher, mode: str, epochs: int, cache_root, seed: int = 0, temperature: float | None = None,
              module_cls=DistillModule, **trainer) -> float:
    """One student training through kdexp.training.trainer.fit; returns the last validation accuracy."""
    quiet_lightning()
    student = build("cnn_tiny", seed)
    kw = {} if mode == "none" else {"teacher": teacher, "weights": KD["weights"]}
    module = module_cls(student, temperature=temperature or KD["temperature"], recipe=RECIPE, max_epochs=epochs,
                        metric_sink=lambda metrics, epoch: None, **kw)
    fit(context(dm, epochs, mode, cache_root, **trainer), module, epochs)
    return module.last_val_acc


def plain_run(dm, teacher, mode: str, epochs: int, logits: TeacherOutputs | None = None, seed: int = 0,
              temperature: float | None = None) -> float:
    """The same training written by hand: no framework, one sync per epoch, best-epoch weights kept."""
    student = build("cnn_tiny", seed)
    weights = {"ce": 1.0} if mode == "none" else KD["weights"]
    T = temperature or KD["temperature"]
    opt = build_optimizer(list(student.parameters()), RECIPE, epochs)
    opt, sched = (opt["optimizer"], opt["lr_scheduler"]["scheduler"]) if isinstance(opt, dict) else (opt, None)
    train, val = dm.loader("train", shuffle=True), dm.loader("val")
    best, best_state, val_acc = -1.0, None, float("nan")
    for _ in range(epochs):
        student.train()
        rows, n = [], 0
        for x, y, index in train:
            s = student(x)
            loss = weights["ce"] * F.cross_entropy(s, y)
            if mode != "none":
                if mode == "online":
                    with torch.no_grad():
                        t = teacher(x)
                else:
                    t = logits.logits.index_select(0, index)
                loss = loss + weights["kd"] * kd_loss(s, t, T)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rows.append(torch.stack([loss.detach() * len(y), (s.argmax(1) == y).sum().float()]))
            n += len(y)
        student.eval()
        vrows, vn = [], 0
        with torch.inference_mode():
            for x, y, _ in val:
                s = student(x)
                vrows.append(torch.stack([F.cross_entropy(s, y) * len(y), (s.argmax(1) == y).sum().float()]))
                vn += len(y)
        train_loss, _ = (torch.stack(rows).sum(0) / n).tolist()  # the epoch's syncs
        _, val_acc = (torch.stack(vrows).sum(0) / vn).tolist()
        if val_acc > best:
            best = val_acc
            best_state = copy.deepcopy(student.state_dict())  # noqa: F841  (what kdexp pays to keep the best epoch)
        if sched is not None:
            sched.step()
    return val_acc


class ManualOptimization(DistillModule):
    """DistillModule with Lightning's manual optimization: does automatic optimization cost anything?"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()

    def on_train_epoch_end(self):
        super().on_train_epoch_end()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
