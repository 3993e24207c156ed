"""Lightning callback that reports a validation metric to Optuna and prunes the trial."""

from __future__ import annotations

import logging

import lightning as L
import optuna

log = logging.getLogger(__name__)


class PruningCallback(L.Callback):
    """Reports ``trainer.callback_metrics[monitor]`` once per validation epoch (step = epoch).

    When the study's pruner says so it raises ``optuna.TrialPruned``: Lightning tears the
    trainer down and re-raises it out of ``trainer.fit`` (checked in the tests), so the job ends
    at once and the sweeper records the trial as PRUNED. ``self.pruned`` tells callers that
    catch exceptions broadly.
    """

    def __init__(self, trial: optuna.Trial, monitor: str):
        self.trial, self.monitor, self.pruned = trial, monitor, False
        # Optuna cannot report/prune multi-objective trials.
        self._enabled = len(trial.study.directions) == 1
        self._warned = False

    # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before the
    # module's, so metrics a module logs in its own on_validation_epoch_end are only visible here.
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._enabled:
            return
        epoch = trainer.current_epoch
        should_prune = False
        if trainer.is_global_zero:  # one report per epoch, not one per rank
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                self.trial.report(float(value), step=epoch)
                should_prune = self.trial.should_prune()
            elif not self._warned:
                log.warning("PruningCallback: metric %r is not logged; nothing reported", self.monitor)
                self._warned = True
        # All ranks must stop together.
        if trainer.strategy.broadcast(should_prune, src=0):
            self.pruned = True
            raise optuna.TrialPruned(f"trial {self.trial.number} pruned at epoch {epoch}")
