"""Structured config of the kdexp Optuna sweeper, registered as ``hydra/sweeper=kdexp_optuna``.

No ``from __future__ import annotations`` here: Hydra's plugin scanner runs this module before
it is in sys.modules, where dataclasses would look string annotations up. The typing forms
(Optional, List, Dict) are what OmegaConf 2.3's structured configs understand.
"""
# ruff: noqa: UP006, UP035, UP045

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class SamplerConf:
    # tpe | random | grid | cmaes | nsgaii | motpe. TPE: good default for mixed spaces of a few params.
    name: str = "tpe"
    # Seeded so a sweep is reproducible; each invocation adds the study's trial count to it,
    # so a resumed sweep or a second worker does not replay the same random draws. null: unseeded.
    seed: Optional[int] = 42
    # Random trials before TPE/CMA-ES model the space (Optuna's default for TPE).
    n_startup_trials: int = 10


@dataclass
class PrunerConf:
    # median | sha (successive halving) | hyperband | none. Median: simple and robust for
    # epoch curves; it does nothing unless the job reports (PruningCallback).
    name: str = "median"
    # median: prune nothing until this many trials completed (Optuna's default).
    n_startup_trials: int = 5
    # median: KD curves cross in the first epochs, so judge a trial only from epoch 2 on.
    n_warmup_steps: int = 2
    # median: check every epoch.
    interval_steps: int = 1
    # sha/hyperband: epochs every trial gets before the first rung.
    min_resource: int = 1
    # hyperband: max epochs; "auto" takes it from the first completed trial.
    max_resource: Any = "auto"
    # sha/hyperband: keep 1/3 of the trials per rung (Hyperband's usual default).
    reduction_factor: int = 3


@dataclass
class ObjectiveConf:
    # A key of the dict the task function returns.
    metric: str = "student/val_acc"
    # maximize | minimize
    direction: str = "maximize"


@dataclass
class KdexpOptunaSweeperConf:
    _target_: str = "hydra_plugins.kdexp_optuna_sweeper.optuna_sweeper.KdexpOptunaSweeper"
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # Any SQLAlchemy URL. SQLite needs no server and survives the sweeper (resume); a relative
    # path is taken from the launch directory and handed to the jobs as an absolute one.
    storage: str = "sqlite:///outputs/optuna.db"
    # Same name + same storage = same study: re-running a command resumes it.
    study_name: str = "kdexp"
    # TOTAL trials in the study (resume stops there). 20: TPE's 10 random trials + 10 guided ones.
    n_trials: int = 20
    # Trials per launcher batch. 1: every result informs the next ask; raise with a parallel launcher.
    n_jobs: int = 1
    # Single-objective by default: the student's validation accuracy.
    objectives: List[ObjectiveConf] = field(default_factory=lambda: [ObjectiveConf()])
    # Search space, same grammar as command-line sweeps: interval(), int(interval()), tag(log, ...),
    # range(), choice(); plain values are fixed for every trial.
    params: Optional[Dict[str, Any]] = None
    # Stop once more than this many trials of this invocation FAILED: a broken pipeline fails every
    # trial, so a small budget stops it within a batch or two. null: never stop.
    max_failures: Optional[int] = 3
    # Seconds between heartbeats of the sweeper's running trials. Stale trials (killed sweeper)
    # are failed after grace_period; 30/120 tolerate a busy SQLite file without false alarms.
    heartbeat_interval: int = 30
    grace_period: int = 120
    # A trial failed that way (its sweeper was killed) is asked again with the same params, up to this many
    # times; its job resumes the killed one's training from its checkpoint. 0: a killed trial stays failed.
    retry_killed: int = 1
    # Parent MLflow run for the sweep (URI/experiment from the app's tracking node).
    mlflow: bool = True


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="kdexp_optuna",
    node=KdexpOptunaSweeperConf,
    provider="kdexp",
)
