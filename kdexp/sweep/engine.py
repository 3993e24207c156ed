"""Ask-and-tell loop of the kdexp Optuna sweeper.

Each invocation runs until the study holds ``n_trials`` trials in total (any state), so
re-running the same command resumes a study and concurrent workers share one budget.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from kdexp.tracking.redact import redact_text
from kdexp.tracking.stores import check_apart, check_store, normalize_uri, tolerate_concurrent_creator

from . import factories
from .outcomes import job_outcome
from .report import best_summary, summary_text
from .search_space import SearchSpace, format_value, grid_search_space, param_overrides, parse_search_space
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


class FailureBudgetExceeded(RuntimeError):
    pass


class OptunaSweep:
    def __init__(self, settings: Mapping[str, Any], sweeper: Any, config: DictConfig, config_loader: Any):
        self.s = dict(settings)
        self.sweeper, self.config, self.config_loader = sweeper, config, config_loader
        self.objectives = [(o["metric"], str(o["direction"]).lower()) for o in self.s["objectives"]]
        if not self.objectives or any(d not in ("maximize", "minimize") for _, d in self.objectives):
            raise ValueError(
                f"objectives need a metric and direction maximize|minimize, got {self.s['objectives']}"
            )
        self.metrics = [m for m, _ in self.objectives]
        if not self.s.get("storage"):
            raise ValueError("kdexp_optuna needs a storage URL (jobs reach the study through it)")
        self.url = absolute_sqlite_url(normalize_uri(self.s["storage"]))
        self.n_trials, self.n_jobs = int(self.s["n_trials"]), max(1, int(self.s["n_jobs"]))
        self.max_failures = self.s.get("max_failures")
        self.pruner_spec = factories.pruner_spec(self.s["pruner"], len(self.objectives))
        self.sampler_spec = dict(self.s["sampler"], name=str(self.s["sampler"]["name"]).lower())
        if self.sampler_spec["name"] not in factories.SAMPLERS:
            raise ValueError(
                f"unknown sampler {self.sampler_spec['name']!r}; choose one of: {factories.SAMPLERS}"
            )
        self.failures: list[str] = []
        self.in_flight: dict[int, optuna.Trial] = {}

    def run(self, arguments: list[str]) -> list[Any]:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        # We keep heartbeats ourselves (HeartbeatKeeper) in the ask-and-tell loop.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        space = parse_search_space(
            param_overrides(self.s.get("params")) + list(arguments), self.config_loader
        )
        if not space.distributions:
            raise ValueError(
                "kdexp_optuna: no search space; give e.g. 'x=interval(0,1)' or hydra.sweeper.params"
            )
        sampler_spec = self.sampler_spec
        grid = grid_search_space(space) if sampler_spec["name"] == "grid" else None
        if grid is not None:
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
        os.environ[STORAGE_ENV] = self.url  # the jobs' way to the password (storage.job_url)

        self.parent = ParentRun(self.config) if self.s.get("mlflow", True) else None
        # One worker at a time creates the tables, the study and the parent run.
        with study_lock(self.url):
            storage = tolerate_concurrent_creator(lambda: rdb_storage(
                self.url, int(self.s["heartbeat_interval"]), int(self.s["grace_period"]),
                int(self.s.get("retry_killed", 1))))
            study = self._open_study(storage, space)
            seed = sampler_spec.get("seed")
            study.sampler = factories.build_sampler(
                sampler_spec,
                None if seed is None else int(seed) + len(study.get_trials(deepcopy=False)),
                grid,
            )
            parent_id = (
                self.parent.open(study, self._run_params(space, sampler_spec)) if self.parent else None
            )
        log.info(
            "kdexp_optuna: study %r (%s), %d trials in total; search space: %s",
            study.study_name,
            display_url(self.url),
            self.n_trials,
            space.describe(),
        )

        heartbeat = HeartbeatKeeper(storage, float(self.s["heartbeat_interval"]))
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
            heartbeat.close()
            self._report(study, sweep_dir, parent_id, status)

    def _report(self, study: optuna.Study, sweep_dir: Path, parent_id: str | None, status: str) -> None:
        # Runs on the way out of errors too: it must not hide the original exception.
        try:
            for trial in self.in_flight.values():  # interrupted: do not leave them RUNNING
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                if status == "KILLED":  # stopped, not failed: asked again, as a kill -9'd trial is
                    retry_interrupted(study, trial._trial_id, int(self.s.get("retry_killed", 1)))
            if self.parent:
                self.parent.finish(study, self.metrics, status)
            self._write_results(study, sweep_dir)
            log.info("\n%s", summary_text(study, self.metrics, display_url(self.url), parent_id))
        except Exception as exc:  # noqa: BLE001
            log.warning("kdexp_optuna: could not report the sweep: %s", exc)

    def _check_stores(self) -> None:
        """The study storage and, with MLflow, the tracking store: reachable, and not one database."""
        uri = tracking_target(self.config)[0] if self.s.get("mlflow", True) else None
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
        directions = [d for _, d in self.objectives]
        study = optuna.create_study(
            storage=storage, study_name=self.s["study_name"], directions=directions, load_if_exists=True
        )
        stored = study.user_attrs.get(OBJECTIVES_ATTR)
        if stored is not None and [list(o) for o in stored] != [list(o) for o in self.objectives]:
            raise ValueError(
                f"study {study.study_name!r} was created for objectives {stored}, not "
                f"{self.objectives}; choose another hydra.sweeper.study_name"
            )
        if stored is None:
            study.set_user_attr(OBJECTIVES_ATTR, [list(o) for o in self.objectives])
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

    def _run_params(self, space: SearchSpace, sampler_spec: dict) -> dict[str, str]:
        pruner_spec = self.pruner_spec
        params = {
            "study_name": str(self.s["study_name"]),
            "storage": display_url(self.url),
            "sampler": factories.describe(
                sampler_spec, factories.SAMPLER_ARGS.get(sampler_spec["name"], ("seed",))
            ),
            "pruner": factories.describe(pruner_spec, factories.PRUNER_ARGS.get(pruner_spec["name"], ())),
            "n_trials": str(self.n_trials),
            "n_jobs": str(self.n_jobs),
            "objectives": ", ".join(f"{m}:{d}" for m, d in self.objectives),
        }
        params.update({f"space.{name}": text for name, text in space.texts.items()})
        return params

    def _loop(
        self, study: optuna.Study, space: SearchSpace, heartbeat: HeartbeatKeeper, parent_id: str | None
    ):
        returns = []
        while True:
            with study_lock(self.url):  # count + ask atomically across workers
                optuna.storages.fail_stale_trials(study)
                free = self.n_trials - counted_trials(study)
                free = max(free, min(retries(study, (TrialState.WAITING,)), self.n_jobs))  # retries always run
                if free <= 0:
                    return returns
                for _ in range(min(self.n_jobs, free)):
                    trial = study.ask(space.distributions)
                    heartbeat.add(trial._trial_id)
                    self.in_flight[trial.number] = trial
            trials = list(self.in_flight.values())
            batch = [
                space.fixed_overrides() + space.trial_overrides(t.params) + self._context(t, parent_id)
                for t in trials
            ]
            self.sweeper.validate_batch_is_legal(batch)
            results = self.sweeper.launcher.launch(batch, initial_job_idx=trials[0].number)
            for trial, ret in zip(trials, results):
                self._tell(study, trial, ret)
                heartbeat.discard(trial._trial_id)
                del self.in_flight[trial.number]
            returns.append(results)
            self._check_failure_budget(study)

    def _context(self, trial: optuna.Trial | None, parent_id: str | None) -> list[str]:
        number, trial_id = (trial.number, trial._trial_id) if trial is not None else (0, 0)
        return [
            f"++optuna_trial.storage={format_value(display_url(self.url))}",  # no password: see job_url
            f"++optuna_trial.study_name={format_value(str(self.s['study_name']))}",
            f"++optuna_trial.trial_number={number}",
            f"++optuna_trial.trial_id={trial_id}",
            f"++optuna_trial.parent_run_id={format_value(parent_id)}",
        ]

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: Any) -> None:
        outcome = job_outcome(ret, self.metrics)
        if outcome.state == TrialState.COMPLETE:
            study.tell(trial, outcome.values, skip_if_finished=True)
            log.info(
                "trial %d complete: %s with params %s",
                trial.number,
                dict(zip(self.metrics, outcome.values)),
                trial.params,
            )
            return
        trial.set_user_attr("kdexp.reason", outcome.reason[:2000])  # kept in the storage for later digging
        study.tell(trial, state=outcome.state, skip_if_finished=True)
        if outcome.state == TrialState.PRUNED:
            log.info("trial %d pruned: %s", trial.number, outcome.reason)
            return
        self.failures.append(f"trial {trial.number}: {outcome.reason}")
        log.warning(
            "trial %d FAILED (%s) with params %s%s",
            trial.number,
            outcome.reason,
            trial.params,
            f"\n{outcome.details}" if outcome.details else "",
        )

    def _check_failure_budget(self, study: optuna.Study) -> None:
        if self.max_failures is None or len(self.failures) <= int(self.max_failures):
            return
        raise FailureBudgetExceeded(
            f"kdexp_optuna: {len(self.failures)} trials of this sweep failed, more than "
            f"max_failures={self.max_failures}; stopping study {study.study_name!r} "
            f"({display_url(self.url)}). Last failure: {self.failures[-1]}. "
            "Fix it and re-run the same command to resume."
        )

    def _wait_for_others(self, study: optuna.Study) -> None:
        """Trials of other workers, or of a killed sweeper (failed once their heartbeat is stale)."""
        poll = max(1.0, min(5.0, float(self.s["heartbeat_interval"])))
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
                    self.s["grace_period"],
                )
                last_note = time.monotonic()
            time.sleep(poll)

    def _write_results(self, study: optuna.Study, sweep_dir: Path) -> None:
        best = best_summary(study, self.metrics)
        results = {
            "name": "kdexp_optuna",
            "study_name": study.study_name,
            "storage": display_url(self.url),
            **best,
        }
        OmegaConf.save(OmegaConf.create(_plain(results)), sweep_dir / "optimization_results.yaml")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
