"""Structured config of the kdexp Optuna sweeper, registered as ``hydra/sweeper=kdexp_optuna``.

A drop-in for Hydra's official Optuna sweeper (hydra-optuna-sweeper 1.3): the same keys, defaults and
``hydra/sweeper/sampler`` group, so a config written for ``hydra/sweeper=optuna`` runs with only the name
changed. kdexp's extras (objectives by metric name, pruner, failure budget, heartbeats, retry of killed
trials, MLflow parent run) come after them.

No ``from __future__ import annotations`` here: Hydra's plugin scanner runs this module before
it is in sys.modules, where dataclasses would look string annotations up. The typing forms
(Optional, List, Dict) are what OmegaConf 2.3's structured configs understand.
"""
# ruff: noqa: UP006, UP035, UP045

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from kdexp.sweep.samplers import SAMPLERS  # a plain table: keeps the plugin scan light


class Direction(Enum):
    """The official plugin's enum; ``direction`` takes these names as plain strings too."""

    minimize = 1
    maximize = 2


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
    metric: str = MISSING
    # maximize | minimize
    direction: str = "minimize"


@dataclass
class KdexpOptunaSweeperConf:
    _target_: str = "hydra_plugins.kdexp_optuna_sweeper.optuna_sweeper.KdexpOptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    # The sweeper builds the sampler itself (validated arguments, a per-run seed): Hydra must not.
    _recursive_: bool = False

    # ---- the official plugin's keys, with its defaults ----
    # hydra/sweeper/sampler=tpe|random|cmaes|nsgaii|motpe|grid|qmc, or sampler._target_ with any arguments.
    sampler: Any = MISSING
    # minimize | maximize, or a list of them (one per value of a returned tuple/list).
    direction: Any = "minimize"
    # null: a fresh in-memory study (no resume, no pruning in the job). Any SQLAlchemy URL keeps it: SQLite
    # needs no server; a relative path is taken from the launch directory and handed to the jobs absolute.
    storage: Optional[Any] = None
    # null: a generated name. Same name + same storage = same study: re-running a command resumes it.
    study_name: Optional[str] = None
    # Trials in the study in TOTAL: a persistent study resumes up to it (the same as the official plugin
    # for a fresh study).
    n_trials: int = 20
    # Trials per launcher batch (asked at once; run in parallel with a parallel launcher).
    n_jobs: int = 2
    # A batch whose share of failed trials exceeds this stops the sweep with the failing job's error.
    max_failure_rate: float = 0.0
    # Deprecated in Hydra 1.2 for params: {name: {type: int|float|categorical, low, high, step, log, choices}}.
    search_space: Optional[Dict[str, Any]] = None
    # Search space, same grammar as command-line sweeps: interval(), int(interval()), tag(log, ...),
    # range(), choice(); plain values are fixed for every trial.
    params: Optional[Dict[str, Any]] = None
    # Dotpath of a callable (cfg, trial) -> None that suggests more params after those of `params`.
    custom_search_space: Optional[str] = None

    # ---- kdexp's extras ----
    # Objectives by name, for a task function that returns a dict (kdexp-train does): e.g.
    # [{metric: student/val_acc, direction: maximize}]. Given, they set the directions (`direction` then
    # must agree with them or stay at its default). null: the task returns a number or a tuple/list.
    objectives: Optional[List[ObjectiveConf]] = None
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # Stop once more than this many trials of this invocation FAILED (beside max_failure_rate). null: never.
    max_failures: Optional[int] = None
    # Seconds between heartbeats of the sweeper's running trials (persistent storage). Stale trials (killed
    # sweeper) are failed after grace_period; 30/120 tolerate a busy SQLite file without false alarms.
    heartbeat_interval: int = 30
    grace_period: int = 120
    # A trial failed that way (its sweeper was killed) is asked again with the same params, up to this many
    # times; its job resumes the killed one's training from its checkpoint. 0: a killed trial stays failed.
    retry_killed: int = 1
    # Parent MLflow run for the sweep (URI/experiment from the app's tracking node). null: on when the app
    # has a `tracking.uri` (kdexp-train) or MLFLOW_TRACKING_URI is set, else off (no stray ./mlflow.db).
    mlflow: Optional[bool] = None


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="kdexp_optuna",
    node=KdexpOptunaSweeperConf,
    provider="kdexp",
)
for _name, _node in SAMPLERS.items():
    ConfigStore.instance().store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="kdexp")
