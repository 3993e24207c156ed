"""DistillModule: a frozen teacher, a trainable student, and a method's named loss terms.

The same module trains a model alone (teacher=None, weights {ce: 1}) — that is how teachers,
vanilla baselines and fine-tuning run — so there is one training loop for every stage. Epoch metrics,
best state, metric sink and resume come from the skeleton (kdexp.modules.base.EpochModule).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.caching.teacher_outputs import TeacherOutputs
from kdexp.distill import Distiller, NoDistillation, kd_loss
from kdexp.models.base import FeatureOutput
from kdexp.modules.base import EpochModule, MetricSink


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: BatchNorm statistics and weights never change."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class DistillModule(EpochModule):
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
        super().__init__(recipe=recipe, max_epochs=max_epochs, metric_sink=metric_sink, track_best=track_best)
        self.student = student
        self.teacher = freeze(teacher) if teacher is not None else None
        self.method = method if method is not None else NoDistillation()
        self.weights = {k: float(v) for k, v in (weights or {"ce": 1.0}).items() if float(v) != 0.0}
        self.temperature = float(temperature)
        self.stage = stage
        self.uses_teacher = self.teacher is not None and (
            "kd" in self.weights or bool(self.method.terms) or stage == "init"
        )
        self.needs_features = bool(self.method.needs - {"logits", "index"})
        self.teacher_store: TeacherOutputs | None = None  # cached teacher outputs, looked up by index

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
        self.train_sums.add(len(y), correct=(logits.argmax(1) == y).sum(), loss=loss, **terms)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        logits = self.student(x)
        self.val_sums.add(len(y), correct=(logits.argmax(1) == y).sum(), loss=F.cross_entropy(logits, y))

    def tracked_models(self) -> list[nn.Module]:
        return [self.student]

    @property
    def best_val_acc(self) -> float:
        return self.best[0].best_val_acc

    @property
    def best_epoch(self) -> int:
        return self.best[0].best_epoch

    @property
    def best_state(self) -> dict | None:
        return self.best[0].best_state

    @property
    def last_val_acc(self) -> float:
        return self.best[0].last_val_acc

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._freeze_student_in_init()  # Lightning does not call .train() when fit starts; it restores modes

    # -- optimisation --------------------------------------------------------------------
    def param_groups(self) -> list[nn.Parameter]:
        params = list(self.student.parameters()) + list(self.method.parameters())
        return [p for p in params if p.requires_grad]

    def best_student(self) -> nn.Module:
        """A copy of the student at its best validation epoch (the student itself if none)."""
        return self.best_copy(0)
