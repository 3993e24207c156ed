"""Toy Hydra app for tests/test_sweeper_*.py.

python tests/sweep_app/app.py -m hydra/sweeper=kdexp_optuna 'x=interval(0,1)' ...
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import hydra
import optuna
from omegaconf import DictConfig

from kdexp.sweep.trial import (
    child_run_tags,
    end_pruned_run,
    is_pruned_error,
    link_run,
    trial_from_cfg,
    trial_run_name,
)

METRIC = "student/val_acc"


def accuracy(cfg: DictConfig, trial_number: int, epoch: int) -> float:
    quality = 0.9 - cfg.decay * trial_number - (float(cfg.x) - 0.3) ** 2
    return quality * (1 - 0.5 ** (epoch + 1))


def train_loop(cfg: DictConfig, trial: optuna.Trial | None, number: int) -> float:
    acc = 0.0
    for epoch in range(cfg.epochs):
        time.sleep(cfg.sleep_s)
        acc = accuracy(cfg, number, epoch)
        if trial is not None and len(trial.study.directions) == 1:  # Optuna prunes single objectives only
            trial.report(acc, step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")
    return acc


def train_lightning(cfg: DictConfig, trial: optuna.Trial | None, number: int) -> float:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from kdexp.sweep.trial import PruningCallback

    class Toy(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def validation_step(self, batch, batch_idx):
            # A sanity-check value that would show up in the study if the callback reported it.
            self.log(
                METRIC, 99.0 if self.trainer.sanity_checking else accuracy(cfg, number, self.current_epoch)
            )

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = DataLoader(TensorDataset(torch.randn(4, 2), torch.randn(4, 1)), batch_size=4)
    callbacks = [PruningCallback(trial, METRIC)] if trial is not None else []
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=1,
    )
    try:
        trainer.fit(Toy(), data, data)
    except optuna.TrialPruned:
        assert callbacks[0].pruned  # the flag for callers that catch broadly
        raise
    return float(trainer.callback_metrics[METRIC])


_PASSED_BARRIER = False


def wait_for_other_workers(barrier_dir: str, parties: int) -> None:
    """Hold the first trial of each sweeper process until all sweepers run one (overlap for sure)."""
    global _PASSED_BARRIER
    if _PASSED_BARRIER:
        return
    os.makedirs(barrier_dir, exist_ok=True)
    open(os.path.join(barrier_dir, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 120
    while len(os.listdir(barrier_dir)) < parties and time.monotonic() < deadline:
        time.sleep(0.05)
    _PASSED_BARRIER = True


@contextlib.contextmanager
def child_run(cfg: DictConfig, number: int):
    """The trial's MLflow run, nested under the sweep's parent run; none when tracking.uri is null."""
    if not cfg.tracking.uri:
        yield None
        return
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking.uri)
    mlflow.set_experiment(cfg.tracking.experiment)
    with mlflow.start_run(run_name=trial_run_name(cfg, "toy"), tags=child_run_tags(cfg)) as run:
        link_run(cfg, run.info.run_id)
        mlflow.log_params({"x": cfg.x, "y": cfg.y})
        yield mlflow


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg: DictConfig) -> dict[str, float]:
    trial = trial_from_cfg(cfg)
    number = trial.number if trial is not None else -1
    if cfg.kill_at_trial == number and not os.path.exists(cfg.kill_marker):
        open(cfg.kill_marker, "w").close()
        if cfg.kill_signal == "TERM":  # a scheduler's preemption: Lightning raises SystemExit on SIGTERM
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
            os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGKILL)  # the sweeper dies with its RUNNING trial
    if cfg.barrier_dir:
        wait_for_other_workers(cfg.barrier_dir, cfg.barrier_parties)
    with child_run(cfg, number) as mlflow:
        try:
            if cfg.fail_when in ("always", cfg.y):
                raise RuntimeError(f"toy failure for y={cfg.y}")
            acc = (train_lightning if cfg.mode == "lightning" else train_loop)(cfg, trial, number)
        except Exception as exc:
            if mlflow and is_pruned_error(exc):
                end_pruned_run()
            raise
        if cfg.nan_when == cfg.y:
            acc = float("nan")
        if mlflow:
            mlflow.log_metric(METRIC, acc)
            mlflow.set_tag("kdexp.trial_state", "COMPLETE")
    return {METRIC: acc, "student/val_loss": 1.0 - acc}


if __name__ == "__main__":
    main()
