"""EpochModule: the skeleton every kdexp LightningModule extends (distillation, augmented, QAT, mutual).

It owns what is the same in all of them: epoch metrics summed on the device and reduced once an epoch
(EpochSums), logged and handed to the metric sink once; the best-validation state of each trained model;
the data order of each epoch; the RNG of a resumed fit; the optimiser a recipe asks for. A subclass gives
its steps (training_step adds to `train_sums`, validation_step to `val_sums`), the models it tracks and
their validation accuracies, and its parameter groups.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdexp.caching.checkpoints import rng_state, set_rng_state
from kdexp.data.loader import follow_trainer_epoch
from kdexp.modules.optim import build_optimizer

MetricSink = Callable[[dict[str, float], int], None]
CHECKPOINT_KEY = "kdexp_distill_module"  # the module's own state in a Lightning checkpoint


@dataclass
class BestEpoch:
    """One trained model's best validation epoch so far (its weights on the CPU), and its last accuracy."""

    best_val_acc: float = -math.inf
    best_epoch: int = -1
    best_state: dict | None = None
    last_val_acc: float = math.nan


class EpochModule(L.LightningModule):
    def __init__(self, *, recipe: dict | None, max_epochs: int, metric_sink: MetricSink | None, track_best: bool,
                 tracked: int = 1):
        """Args:
            recipe: optimiser and schedule (kdexp.modules.optim.build_optimizer); default Adam at 1e-3.
            max_epochs: the schedule's length.
            metric_sink: called once an epoch with the reduced train and val metrics (rank 0 only).
            track_best: keep each tracked model's weights at its best validation epoch.
            tracked: how many models `tracked_models` returns.
        """
        super().__init__()
        self.recipe = dict(recipe or {"optimizer": "adam", "lr": 1e-3})
        self.max_epochs, self.metric_sink, self.track_best = max_epochs, metric_sink, track_best
        self.best = [BestEpoch() for _ in range(tracked)]
        self.train_sums, self.val_sums = EpochSums(), EpochSums()
        self._last_val: dict[str, float] = {}
        self._resume_rng: dict | None = None

    # -- what a subclass gives ----------------------------------------------------------------
    def tracked_models(self) -> list[nn.Module]:
        """The trained models whose best-validation state is kept, in the order of validation_accuracies."""
        raise NotImplementedError

    def validation_accuracies(self, metrics: dict[str, float]) -> list[float]:
        """Each tracked model's accuracy in this epoch's reduced val metrics (which a subclass may extend)."""
        return [metrics["val/acc"]]

    def param_groups(self) -> list:
        """What the optimiser trains: parameters, or param-group dicts (e.g. a learning rate per student)."""
        raise NotImplementedError

    # -- epoch metrics and best state -----------------------------------------------------------
    def on_validation_epoch_end(self):
        metrics = self.val_sums.reduce("val")
        if not metrics or self.trainer.sanity_checking:
            return
        accuracies = self.validation_accuracies(metrics)
        self.log_dict(metrics, prog_bar=True)
        self._last_val = metrics
        for model, best, acc in zip(self.tracked_models(), self.best, accuracies):
            best.last_val_acc = acc
            if self.track_best and acc > best.best_val_acc:
                best.best_val_acc, best.best_epoch = acc, self.current_epoch
                best.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def on_train_epoch_end(self):
        metrics = self.train_sums.reduce("train")
        metrics["lr"] = self.optimizers().param_groups[0]["lr"]
        self.log_dict(metrics)
        metrics.update(self._last_val)
        self._last_val = {}
        if self.metric_sink is not None and self.trainer.is_global_zero:  # metrics are reduced: one writer
            self.metric_sink(metrics, self.current_epoch)

    # -- resume: what a checkpoint must carry beyond weights, optimizer and loops ------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        rows = [asdict(b) for b in self.best]  # one model: the flat form checkpoints have always had
        state = rows[0] if len(rows) == 1 else {k: [r[k] for r in rows] for k in rows[0]}
        checkpoint[CHECKPOINT_KEY] = {**state, "rng": rng_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            return
        names = [f.name for f in fields(BestEpoch)]
        rows = [state] if len(self.best) == 1 else [{k: state[k][i] for k in names} for i in range(len(self.best))]
        self.best = [BestEpoch(**{k: row[k] for k in names}) for row in rows]
        self._resume_rng = state["rng"]

    def on_train_epoch_start(self) -> None:
        follow_trainer_epoch(self.trainer)  # the data order of this epoch, also in a resumed fit and under DDP

    def on_train_start(self) -> None:
        # the RNG as it was when the checkpoint was written; restored this late because building the model
        # and the sanity check (run under isolate_rng) come between loading the checkpoint and training
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None

    def configure_optimizers(self):
        return build_optimizer(self.param_groups(), self.recipe, self.max_epochs)

    def best_copy(self, k: int = 0) -> nn.Module:
        """A copy of tracked model `k` at its best validation epoch (the model itself if none)."""
        model, state = self.tracked_models()[k], self.best[k].best_state
        if state is None:
            return model
        best = copy.deepcopy(model)
        best.load_state_dict(state)
        return best


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
