"""Ask-and-tell loop of the kdexp Optuna sweeper.

The official plugin's semantics (directions, samplers, in-memory study when storage is null, failure rate,
custom search space, results file) with kdexp's extras: a persistent study runs until it holds
``n_trials`` trials in total (any state), so re-running the same command resumes it and concurrent
workers share one budget; heartbeats and retries of killed trials; pruning; an MLflow parent run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from kdexp.config.errors import ConfigError
from kdexp.tracking.redact import redact_text
from kdexp.tracking.stores import check_apart, check_store, normalize_uri, tolerate_concurrent_creator

from . import factories
from .outcomes import job_outcome
from .report import best_summary, summary_text
from .search_space import (
    SearchSpace,
    format_value,
    grid_search_space,
    legacy_search_space,
    param_overrides,
    parse_search_space,
)
from .storage import (
    STORAGE_ENV,
    HeartbeatKeeper,
    absolute_sqlite_url,
    counted_trials,
    display_url,
    rdb_storage,
    retries,
    retry_interrupted,
    study_lock,
)
from .tracking import ParentRun, tracking_target
from .trial import PRUNER_ATTR

log = logging.getLogger(__name__)
SPACE_ATTR, OBJECTIVES_ATTR = "kdexp.search_space", "kdexp.objectives"
DIRECTIONS = ("minimize", "maximize")


class FailureBudgetExceeded(RuntimeError):
    pass


def directions_and_metrics(settings: Mapping[str, Any]) -> tuple[list[str], list[str] | None]:
    """(directions, metric names or None) from ``objectives`` (kdexp) or ``direction`` (official).

    Args:
        settings: the sweeper settings.

    Returns:
        One direction per objective; the metric names when the task returns a dict, else None.
    """
    raw = settings.get("direction", "minimize")
    raw = raw if isinstance(raw, (list, tuple)) else [raw]
    directions = [str(getattr(d, "name", d)).lower() for d in raw]
    metrics = None
    if settings.get("objectives"):
        objectives = list(settings["objectives"])
        named = [str(o.get("direction", "minimize")).lower() for o in objectives]
        if directions != ["minimize"] and directions != named:
            raise ConfigError(f"hydra.sweeper.direction={directions} contradicts hydra.sweeper.objectives "
                              f"{objectives}; give the directions in one of them")
        directions, metrics = named, [str(o["metric"]) for o in objectives]
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise ConfigError(f"hydra.sweeper.direction={bad or directions}: choose {' or '.join(DIRECTIONS)} "
                          "(or a list of them)")
    return directions, metrics


class OptunaSweep:
    def __init__(self, settings: Mapping[str, Any], sweeper: Any, config: DictConfig, config_loader: Any):
        self.s = dict(settings)
        self.sweeper, self.config, self.config_loader = sweeper, config, config_loader
        self.directions, self.metrics = directions_and_metrics(self.s)
        n = len(self.directions)
        self.names = self.metrics or (["value"] if n == 1 else [f"value_{i}" for i in range(n)])
        storage = self.s.get("storage")
        self.url = absolute_sqlite_url(normalize_uri(str(storage))) if storage else None  # None: in memory
        self.n_trials, self.n_jobs = int(self.s.get("n_trials", 20)), max(1, int(self.s.get("n_jobs", 2)))
        self.max_failures = self.s.get("max_failures")
        self.max_failure_rate = float(self.s.get("max_failure_rate", 0.0))
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ConfigError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: choose a value in [0, 1]")
        self.pruner_spec = factories.pruner_spec(self.s.get("pruner") or {"name": "none"}, n)
        self.sampler_spec = factories.sampler_spec(self.s.get("sampler") or {"name": "tpe"})
        self.custom_space = None
        if self.s.get("custom_search_space"):
            from hydra.utils import get_method

            self.custom_space = get_method(self.s["custom_search_space"])
        mlflow = self.s.get("mlflow")
        if mlflow is None:  # on for an app that tracks (kdexp-train), off for any other Hydra app
            mlflow = bool(OmegaConf.select(config, "tracking.uri", default=None)
                          or os.environ.get("MLFLOW_TRACKING_URI"))
        self.mlflow = bool(mlflow)
        self.failures: list[str] = []
        self.in_flight: dict[int, optuna.Trial] = {}

    def lock(self):
        return study_lock(self.url) if self.url else contextlib.nullcontext()

    def run(self, arguments: list[str]) -> list[Any]:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        # We keep heartbeats ourselves (HeartbeatKeeper) in the ask-and-tell loop.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        space = self._search_space(arguments)
        grid = None
        if factories.is_grid(self.sampler_spec):
            grid = grid_search_space(space)
            size = math.prod(len(values) for values in grid.values())
            if size < self.n_trials:
                log.info("grid has %d points: n_trials %d -> %d", size, self.n_trials, size)
                self.n_trials = size
        self._check_stores()  # a bad URL, driver or password fails here, before anything is created
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # Unresolved, as Hydra writes it (hydra.job.* resolve only in a job), passwords masked.
        (sweep_dir / "multirun.yaml").write_text(redact_text(OmegaConf.to_yaml(self.config)))
        self._validate_keys(space)  # a mistyped key fails here, before any trial exists
        if self.url:
            os.environ[STORAGE_ENV] = self.url  # the jobs' way to the password (storage.job_url)

        self.parent = ParentRun(self.config) if self.mlflow else None
        # One worker at a time creates the tables, the study and the parent run.
        with self.lock():
            storage = self._storage()
            study = self._open_study(storage, space)
            offset = len(study.get_trials(deepcopy=False)) if self.url else 0
            study.sampler = factories.build_sampler(self.sampler_spec, offset, grid)
            parent_id = self.parent.open(study, self._run_params(space)) if self.parent else None
        log.info(
            "kdexp_optuna: study %r (%s), %d trials in total; sampler %s; directions %s; search space: %s",
            study.study_name,
            display_url(self.url) if self.url else "in memory",
            self.n_trials,
            factories.describe_sampler(self.sampler_spec),
            self.directions,
            space.describe(),
        )
        self._say_if_complete(study)

        heartbeat = HeartbeatKeeper(storage, float(self.s.get("heartbeat_interval", 30))) if self.url else None
        status, returns = "FAILED", []
        try:
            returns = self._loop(study, space, heartbeat, parent_id)
            self._wait_for_others(study)
            while retries(study, (TrialState.WAITING,)):  # trials of a killed sweeper, asked again
                returns += self._loop(study, space, heartbeat, parent_id)
                self._wait_for_others(study)
            status = "FINISHED"
            return returns
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C; SIGTERM (Lightning raises SystemExit)
            status = "KILLED"
            raise
        finally:
            if heartbeat is not None:
                heartbeat.close()
            self._report(study, sweep_dir, parent_id, status)

    def _search_space(self, arguments: list[str]) -> SearchSpace:
        """params (or the deprecated search_space), then the command line; a later key wins."""
        legacy = legacy_search_space(self.s.get("params"), self.s.get("search_space"))
        space = parse_search_space(param_overrides(self.s.get("params")) + list(arguments), self.config_loader)
        space.distributions = {**{k: v for k, v in legacy.items() if k not in space.fixed}, **space.distributions}
        return space

    def _storage(self) -> Any:
        if not self.url:
            return optuna.storages.InMemoryStorage()
        return tolerate_concurrent_creator(lambda: rdb_storage(  # a new storage: another creator may race us
            self.url, int(self.s.get("heartbeat_interval", 30)), int(self.s.get("grace_period", 120)),
            int(self.s.get("retry_killed", 1))))

    def _say_if_complete(self, study: optuna.Study) -> None:
        """A persistent study that already holds n_trials runs nothing: say so, and how to go on."""
        done = counted_trials(study)
        if self.url and done >= self.n_trials and not retries(study, (TrialState.WAITING,)):
            log.warning(
                "kdexp_optuna: study %r already holds %d of n_trials=%d trials: nothing to run. More: "
                "hydra.sweeper.n_trials=%d (the total); a new study: another hydra.sweeper.study_name",
                study.study_name, done, self.n_trials, done + self.n_trials,
            )

    def _report(self, study: optuna.Study, sweep_dir: Path, parent_id: str | None, status: str) -> None:
        # Runs on the way out of errors too: it must not hide the original exception.
        try:
            for trial in self.in_flight.values():  # interrupted: do not leave them RUNNING
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                if status == "KILLED" and self.url:  # stopped, not failed: asked again, as a kill -9'd trial is
                    retry_interrupted(study, trial._trial_id, int(self.s.get("retry_killed", 1)))
            if self.parent:
                self.parent.finish(study, self.names, status)
            self._write_results(study, sweep_dir)
            where = display_url(self.url) if self.url else "memory"
            log.info("\n%s", summary_text(study, self.names, where, parent_id))
        except Exception as exc:  # noqa: BLE001
            log.warning("kdexp_optuna: could not report the sweep: %s", exc)

    def _check_stores(self) -> None:
        """The study storage and, with MLflow, the tracking store: reachable, and not one database."""
        uri = tracking_target(self.config)[0] if self.mlflow else None
        if self.url:
            check_apart(self.url, uri, "hydra.sweeper.storage", "tracking.uri")
            check_store(self.url, "hydra.sweeper.storage", "optuna")
        if uri:
            check_store(uri, "tracking.uri", "mlflow")

    def _validate_keys(self, space: SearchSpace) -> None:
        probe = {}
        for name, dist in space.distributions.items():
            probe[name] = dist.choices[0] if hasattr(dist, "choices") else dist.low
        overrides = space.fixed_overrides() + space.trial_overrides(probe) + self._context(None, None)
        self.sweeper.validate_batch_is_legal([overrides])

    def _open_study(self, storage: Any, space: SearchSpace) -> optuna.Study:
        study = optuna.create_study(
            storage=storage, study_name=self.s.get("study_name"), directions=self.directions, load_if_exists=True
        )
        objectives = [list(o) for o in zip(self.names, self.directions)]
        stored = study.user_attrs.get(OBJECTIVES_ATTR)
        if stored is not None and [list(o) for o in stored] != objectives:
            raise ConfigError(
                f"hydra.sweeper.study_name={study.study_name}: the study was created for objectives {stored}, "
                f"not {objectives}; choose another study_name"
            )
        if stored is None:
            study.set_user_attr(OBJECTIVES_ATTR, objectives)
            study.set_metric_names(self.names)  # dashboards show them instead of "Objective 0"
        old_space = study.user_attrs.get(SPACE_ATTR)
        if old_space is not None and old_space != space.describe():
            log.warning(
                "study %r continues with another search space:\n  was %s\n  now %s",
                study.study_name,
                old_space,
                space.describe(),
            )
        study.set_user_attr(SPACE_ATTR, space.describe())
        study.set_user_attr(PRUNER_ATTR, self.pruner_spec)
        study.pruner = factories.build_pruner(study.user_attrs[PRUNER_ATTR])
        optuna.storages.fail_stale_trials(study)
        return study

    def _run_params(self, space: SearchSpace) -> dict[str, str]:
        pruner_spec = self.pruner_spec
        params = {
            "study_name": str(self.s.get("study_name")),
            "storage": display_url(self.url) if self.url else "memory",
            "sampler": factories.describe_sampler(self.sampler_spec),
            "pruner": factories.describe(pruner_spec, factories.PRUNER_ARGS.get(pruner_spec["name"], ())),
            "n_trials": str(self.n_trials),
            "n_jobs": str(self.n_jobs),
            "objectives": ", ".join(f"{m}:{d}" for m, d in zip(self.names, self.directions)),
        }
        params.update({f"space.{name}": text for name, text in space.texts.items()})
        return params

    def _loop(self, study: optuna.Study, space: SearchSpace, heartbeat: HeartbeatKeeper | None,
              parent_id: str | None):
        returns = []
        while True:
            with self.lock():  # count + ask atomically across workers
                optuna.storages.fail_stale_trials(study)
                free = self.n_trials - counted_trials(study)
                free = max(free, min(retries(study, (TrialState.WAITING,)), self.n_jobs))  # retries always run
                if free <= 0:
                    return returns
                for _ in range(min(self.n_jobs, free)):
                    trial = study.ask(space.distributions)
                    if heartbeat is not None:
                        heartbeat.add(trial._trial_id)
                    self.in_flight[trial.number] = trial
            trials = list(self.in_flight.values())
            for trial in trials:
                if self.custom_space is not None:
                    self.custom_space(self.config, trial)
            batch = [
                space.fixed_overrides() + space.trial_overrides(t.params) + self._context(t, parent_id)
                for t in trials
            ]
            # The keys were checked at start-up (_validate_keys); a custom_search_space adds keys unknown then.
            # Checking every batch again costs one more compose per trial (40% of a small job's time).
            if self.custom_space is not None:
                self.sweeper.validate_batch_is_legal(batch)
            results = self.sweeper.launcher.launch(batch, initial_job_idx=trials[0].number)
            failed = 0
            for trial, ret in zip(trials, results):
                failed += self._tell(study, trial, ret) == TrialState.FAIL
                if heartbeat is not None:
                    heartbeat.discard(trial._trial_id)
                del self.in_flight[trial.number]
            returns.append(results)
            self._check_failure_rate(failed, results)
            self._check_failure_budget(study)

    def _context(self, trial: optuna.Trial | None, parent_id: str | None) -> list[str]:
        number, trial_id = (trial.number, trial._trial_id) if trial is not None else (0, 0)
        name = trial.study.study_name if trial is not None else str(self.s.get("study_name") or "probe")
        storage = display_url(self.url) if self.url else None  # no password: see job_url
        return [
            f"++optuna_trial.storage={format_value(storage)}",
            f"++optuna_trial.study_name={format_value(name)}",
            f"++optuna_trial.trial_number={number}",
            f"++optuna_trial.trial_id={trial_id}",
            f"++optuna_trial.parent_run_id={format_value(parent_id)}",
        ]

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: Any) -> TrialState:
        outcome = job_outcome(ret, self.metrics, len(self.directions))
        if outcome.state == TrialState.COMPLETE:
            study.tell(trial, outcome.values, skip_if_finished=True)
            log.info(
                "trial %d complete: %s with params %s",
                trial.number,
                dict(zip(self.names, outcome.values)),
                trial.params,
            )
            return outcome.state
        trial.set_user_attr("kdexp.reason", outcome.reason[:2000])  # kept in the storage for later digging
        study.tell(trial, state=outcome.state, skip_if_finished=True)
        if outcome.state == TrialState.PRUNED:
            log.info("trial %d pruned: %s", trial.number, outcome.reason)
            return outcome.state
        self.failures.append(f"trial {trial.number}: {outcome.reason}")
        log.warning(
            "trial %d FAILED (%s) with params %s%s",
            trial.number,
            outcome.reason,
            trial.params,
            f"\n{outcome.details}" if outcome.details else "",
        )
        return outcome.state

    def _check_failure_rate(self, failed: int, results: Sequence[Any]) -> None:
        """The official rule: a batch with a larger share of failed trials than max_failure_rate stops the
        sweep with the first failed job's own error (a trial failed by its value goes on, as there)."""
        if not results or failed / len(results) <= self.max_failure_rate:
            return
        log.error("Failed %d times out of %d with max_failure_rate=%s.", failed, len(results),
                  self.max_failure_rate)
        for ret in results:
            ret.return_value  # noqa: B018 - re-raises a failed job's exception, with its traceback

    def _check_failure_budget(self, study: optuna.Study) -> None:
        if self.max_failures is None or len(self.failures) <= int(self.max_failures):
            return
        raise FailureBudgetExceeded(
            f"kdexp_optuna: {len(self.failures)} trials of this sweep failed, more than "
            f"max_failures={self.max_failures}; stopping study {study.study_name!r} "
            f"({display_url(self.url) if self.url else 'in memory'}). Last failure: {self.failures[-1]}. "
            "Fix it and re-run the same command to resume."
        )

    def _wait_for_others(self, study: optuna.Study) -> None:
        """Trials of other workers, or of a killed sweeper (failed once their heartbeat is stale)."""
        if not self.url:
            return
        poll = max(1.0, min(5.0, float(self.s.get("heartbeat_interval", 30))))
        last_note = 0.0
        while True:
            optuna.storages.fail_stale_trials(study)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return
            if time.monotonic() - last_note > 60:
                log.info(
                    "waiting for %d running trial(s) %s of other workers or of a killed sweeper "
                    "(failed after grace_period=%ss without heartbeat)",
                    len(running),
                    [t.number for t in running],
                    self.s.get("grace_period", 120),
                )
                last_note = time.monotonic()
            time.sleep(poll)

    def _write_results(self, study: optuna.Study, sweep_dir: Path) -> None:
        """The official plugin's file (name: optuna; best_params/best_value, or the Pareto front as
        solutions), plus the study's name and storage and kdexp's per-objective bests."""
        best = best_summary(study, self.names)
        results: dict[str, Any] = {"name": "optuna"}
        if len(self.directions) == 1:
            results.update({k: best[k] for k in ("best_params", "best_value") if k in best})
        elif best:
            results["solutions"] = [{"params": t.params, "values": t.values} for t in study.best_trials]
        results.update({
            "study_name": study.study_name,
            "storage": display_url(self.url) if self.url else None,
            **{k: v for k, v in best.items() if k not in ("best_params", "best_value")},
        })
        OmegaConf.save(OmegaConf.create(_plain(results)), sweep_dir / "optimization_results.yaml")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
