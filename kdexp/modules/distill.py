"""DistillModule: a frozen teacher, a trainable student, and a method's named loss terms.

The same module trains a model alone (teacher=None, weights {ce: 1}) — that is how teachers,
vanilla baselines and fine-tuning run — so there is one training loop for every stage.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.caching.checkpoints import rng_state, set_rng_state
from kdexp.caching.teacher_outputs import TeacherOutputs
from kdexp.data.loader import follow_trainer_epoch
from kdexp.distill import Distiller, NoDistillation, kd_loss
from kdexp.models.base import FeatureOutput

MetricSink = Callable[[dict[str, float], int], None]
CHECKPOINT_KEY = "kdexp_distill_module"  # DistillModule's own state in a Lightning checkpoint


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: BatchNorm statistics and weights never change."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class DistillModule(L.LightningModule):
    def __init__(
        self,
        student: nn.Module,
        *,
        teacher: nn.Module | None = None,
        method: Distiller | None = None,
        weights: dict[str, float] | None = None,
        temperature: float = 4.0,
        recipe: dict | None = None,
        max_epochs: int = 1,
        stage: str = "distill",  # distill | init (a method's first stage)
        metric_sink: MetricSink | None = None,
        track_best: bool = True,
    ):
        super().__init__()
        self.student = student
        self.teacher = freeze(teacher) if teacher is not None else None
        self.method = method if method is not None else NoDistillation()
        self.weights = {k: float(v) for k, v in (weights or {"ce": 1.0}).items() if float(v) != 0.0}
        self.temperature = float(temperature)
        self.recipe = dict(recipe or {"optimizer": "adam", "lr": 1e-3})
        self.max_epochs = max_epochs
        self.stage = stage
        self.metric_sink = metric_sink
        self.track_best = track_best
        self.uses_teacher = self.teacher is not None and (
            "kd" in self.weights or bool(self.method.terms) or stage == "init"
        )
        self.needs_features = bool(self.method.needs - {"logits", "index"})
        self.teacher_store: TeacherOutputs | None = None  # cached teacher outputs, looked up by index
        self.best_val_acc, self.best_epoch, self.best_state = -math.inf, -1, None
        self.last_val_acc = math.nan
        self._train_sums, self._val_sums = EpochSums(), EpochSums()
        self._resume_rng: dict | None = None

    # -- frozen teacher -------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # Lightning calls .train() on the whole module each epoch
        if mode:
            self._freeze_student_in_init()
        return self

    def _freeze_student_in_init(self) -> None:
        if self.stage == "init" and not self.method.init_trains_student:
            self.student.eval()  # an init stage that does not train the student leaves its BN statistics alone

    def _outputs(self, model: nn.Module, x: Tensor) -> FeatureOutput:
        if self.needs_features:
            return model.forward_intermediates(x)
        return FeatureOutput(model(x), [], [], None)

    def use_teacher_outputs(self, outputs: TeacherOutputs | None) -> None:
        """Look teacher outputs up by the batch's index (rows of `outputs`) instead of running the teacher."""
        self.teacher_store = outputs

    def teacher_outputs(self, x: Tensor, index: Tensor) -> FeatureOutput:
        store = self.teacher_store
        if store is not None:
            if store.logits.device != index.device:  # once: follow the batches to the accelerator
                store = self.teacher_store = store.to(index.device)
            return store.lookup(index)
        with torch.no_grad():
            return self._outputs(self.teacher, x)

    # -- the loss ------------------------------------------------------------------------
    def augment_batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """The inputs both nets see this step, and the hard-label loss on them (variant=augmented mixes)."""
        smoothing = float(self.recipe.get("label_smoothing", 0.0))  # student_recipe.label_smoothing; absent: 0
        return x, lambda logits: F.cross_entropy(logits, y, label_smoothing=smoothing)

    def loss_terms(self, x: Tensor, y: Tensor, index: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        x, hard_label_loss = self.augment_batch(x, y)
        s = self._outputs(self.student, x)
        t = self.teacher_outputs(x, index) if self.uses_teacher else None
        if self.teacher_store is not None:
            index = self.teacher_store.sample_index(index)  # rows of cached views -> sample positions
        if self.stage == "init":
            return self.method.init_terms(s, t, y, index), s.logits
        terms: dict[str, Tensor] = {}
        if "ce" in self.weights:
            terms["ce"] = hard_label_loss(s.logits)
        if "kd" in self.weights:
            terms["kd"] = kd_loss(s.logits, t.logits, self.temperature)
        if self.method.terms:
            terms.update(self.method(s, t, y, index, self.current_epoch))
        return terms, s.logits

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        terms, logits = self.loss_terms(x, y, index)
        if self.stage == "init":  # a method's first stage: the plain sum of its own terms
            loss = sum(terms.values())
        else:  # a term whose weight is 0 (dropped from self.weights) is logged but not trained on
            loss = sum(self.weights.get(k, 0.0) * v for k, v in terms.items())
        self._train_sums.add(len(y), correct=(logits.argmax(1) == y).sum(), loss=loss, **terms)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        logits = self.student(x)
        self._val_sums.add(len(y), correct=(logits.argmax(1) == y).sum(), loss=F.cross_entropy(logits, y))

    def on_validation_epoch_end(self):
        metrics = self._val_sums.reduce("val")
        if not metrics or self.trainer.sanity_checking:
            return
        self.log_dict(metrics, prog_bar=True)
        self._last_val = metrics
        self.last_val_acc = metrics["val/acc"]
        if self.track_best and metrics["val/acc"] > self.best_val_acc:
            self.best_val_acc, self.best_epoch = metrics["val/acc"], self.current_epoch
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.student.state_dict().items()}

    def on_train_epoch_end(self):
        metrics = self._train_sums.reduce("train")
        metrics["lr"] = self.optimizers().param_groups[0]["lr"]
        self.log_dict(metrics)
        metrics.update(getattr(self, "_last_val", {}))
        self._last_val = {}
        if self.metric_sink is not None and self.trainer.is_global_zero:  # metrics are reduced: one writer
            self.metric_sink(metrics, self.current_epoch)

    # -- resume: what a checkpoint must carry beyond weights, optimizer and loops ------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch, "best_state": self.best_state,
            "last_val_acc": self.last_val_acc, "rng": rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is not None:
            self.best_val_acc, self.best_epoch = state["best_val_acc"], state["best_epoch"]
            self.best_state, self.last_val_acc = state["best_state"], state["last_val_acc"]
            self._resume_rng = state["rng"]

    def on_train_epoch_start(self) -> None:
        follow_trainer_epoch(self.trainer)  # the data order of this epoch, also in a resumed fit
        self._freeze_student_in_init()  # Lightning does not call .train() when fit starts; it restores modes

    def on_train_start(self) -> None:
        # the RNG as it was when the checkpoint was written; restored this late because building the model
        # and the sanity check (run under isolate_rng) come between loading the checkpoint and training
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None

    # -- optimisation --------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        params = list(self.student.parameters()) + list(self.method.parameters())
        return [p for p in params if p.requires_grad]

    def configure_optimizers(self):
        return build_optimizer(self.trainable_parameters(), self.recipe, self.max_epochs)

    def best_student(self) -> nn.Module:
        """A copy of the student at its best validation epoch (the student itself if none)."""
        if self.best_state is None:
            return self.student
        model = copy.deepcopy(self.student)
        model.load_state_dict(self.best_state)
        return model


class EpochSums:
    """Per-step values kept on the device, one stacked tensor per step (no sync); reduced once per epoch over
    every DDP rank's samples. Keys starting with "correct" are counts, reported as accuracies ("acc...");
    the others are batch means, averaged weighted by batch size. Every module's epoch metrics go through it."""

    def __init__(self):
        self.keys: tuple[str, ...] = ()
        self.n: list[int] = []
        self.rows: list[Tensor] = []

    def add(self, n: int, **values: Tensor) -> None:
        self.keys = tuple(values)
        self.n.append(n)
        self.rows.append(torch.stack([v.detach().float() for v in values.values()]))

    def reduce(self, prefix: str) -> dict[str, float]:
        if not self.n:
            return {}
        rows = torch.stack(self.rows)  # (steps, keys)
        n = torch.tensor(self.n, dtype=rows.dtype, device=rows.device)
        counts = torch.tensor([k.startswith("correct") for k in self.keys], device=rows.device)
        totals = torch.cat([n.sum()[None], torch.where(counts, rows.sum(0), (rows * n[:, None]).sum(0))])
        if dist.is_available() and dist.is_initialized():  # every rank reaches here once per epoch
            dist.all_reduce(totals)
        values = (totals[1:] / totals[0]).tolist()  # the epoch's one sync
        self.n, self.rows = [], []
        return {f"{prefix}/{k.replace('correct', 'acc')}": v for k, v in zip(self.keys, values)}


def fused_kernels(params: list) -> bool:
    """Whether torch's fused optimizer kernels apply: one kernel over all tensors instead of a Python loop of
    small ops, 2.4-3.6x faster steps on CPU (benchmarks/optimizer_step.py). Parameters or param-group dicts."""
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    return bool(tensors) and all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)


def build_optimizer(params: list, recipe: dict, max_epochs: int, fused: bool | None = None):
    """fused: None uses torch's fused kernels where they apply (same update rule, within float rounding);
    False forces the per-tensor loop (benchmarks and tests compare the two)."""
    name, lr, wd = recipe.get("optimizer", "sgd"), float(recipe["lr"]), float(recipe.get("weight_decay", 0))
    fused = {"fused": True} if fused is not False and fused_kernels(params) else {}
    if name == "sgd":
        opt = torch.optim.SGD(
            params, lr=lr, momentum=recipe.get("momentum", 0.9), weight_decay=wd,
            nesterov=bool(recipe.get("nesterov", False)), **fused,
        )
    elif name == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=wd, **fused)
    elif name == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd, **fused)
    else:
        raise ValueError(f"recipe.optimizer={name!r} is not one of: sgd, adam, adamw")
    schedule = recipe.get("schedule", "constant")
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, max_epochs))
    elif schedule == "multistep":
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=list(recipe.get("milestones", [])), gamma=float(recipe.get("gamma", 0.1))
        )
    elif schedule == "constant":
        return opt
    else:
        raise ValueError(f"recipe.schedule={schedule!r} is not one of: cosine, multistep, constant")
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
