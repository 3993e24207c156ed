"""Tuned matrices: per (pair, method), one Optuna study on the validation split with the same budget for
every method, then every seed of the cell trains at the study's best settings.

The orchestration makes one call per cell, after the matrix keys are applied and before the cell key:

    tags = apply_tuning(conf)    # {} unless conf["tune"]["enabled"]; merges the best settings into conf["distill"]

The study is the existing sweeper engine (kdexp.sweep.engine.OptunaSweep: sampler, pruner, study lock,
heartbeats, resume up to n_trials, MLflow parent run) with an in-process launcher: each trial is the cell
at its sampled settings, trained by the experiment entry point for `tune.epochs` epochs on `tune.seed`,
with the pruner fed by the validation accuracy of every epoch. The objective is a validation metric
(ALLOWED_METRICS); trial runs go to their own MLflow experiment (`<experiment>-tuning`), so no table
ever mixes them in. Every seed of the cell (and a re-run of the matrix) finds the same finished study.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

log = logging.getLogger("kdexp")
SEARCH_DIR = Path(__file__).resolve().parents[1] / "conf" / "search"  # shipped in the package (link in the repo)
ALLOWED_METRICS = ("student/val_acc", "student/best_val_acc")  # validation only: tuning never sees test
DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "n_trials": 12,          # per (pair, method), whatever the size of its search space
    "epochs": 3,             # per trial
    "train_batches": 1.0,    # part of each trial epoch's training batches (a random half at 0.5): the
                             #   settings are ranked on less data, every cell still trains on all of it
    "seed": 0,               # the trials' seed; the cell's seeds then train at the best settings
    "metric": "student/val_acc",
    "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 5},
    "pruner": {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 1},
    "storage": None,         # default sqlite:///${paths.root}/optuna.db
    "experiment_suffix": "-tuning",
}
RECORD_KEYS = ("study", "chosen", "best_value")  # what apply_tuning writes into conf["tune"]


def search_space(method: str) -> dict[str, str]:
    """conf/search/<method>.yaml's params: sweeper-grammar expressions keyed by `distill.` keys."""
    path = SEARCH_DIR / f"{method}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SEARCH_DIR.glob("*.yaml")))
        raise ValueError(f"tune: method {method!r} has no search space ({path}); methods with one: {known}")
    raw = OmegaConf.to_container(OmegaConf.load(path))
    params = ((raw.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    bad = [k for k in params if not str(k).startswith("distill.")]
    if bad:
        raise ValueError(f"{path}: only distill.* keys may be searched, got {bad}")
    return {str(k): str(v) for k, v in params.items()}


def tune_settings(conf: dict) -> dict[str, Any]:
    node = {k: v for k, v in (conf.get("tune") or {}).items() if k not in RECORD_KEYS}
    unknown = sorted(set(node) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"tune: unknown keys {unknown}; allowed: {', '.join(DEFAULTS)}")
    s = {**copy.deepcopy(DEFAULTS), **node}
    if s["metric"] not in ALLOWED_METRICS:
        raise ValueError(f"tune.metric={s['metric']!r} is invalid: tuning optimises a validation metric, one of: "
                         f"{', '.join(ALLOWED_METRICS)}")
    for key in ("n_trials", "epochs"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise ValueError(f"tune.{key}={s[key]!r} is invalid: must be an integer >= 1")
    tb = s["train_batches"]
    if isinstance(tb, bool) or not isinstance(tb, (int, float)) or not 0 < tb <= 1:
        raise ValueError(f"tune.train_batches={tb!r} is invalid: must be a fraction in (0, 1]")
    return s


def trial_base(conf: dict, s: dict) -> dict:
    """The cell as every trial trains it: tuning seed and epochs, its own MLflow experiment, no baseline."""
    base = copy.deepcopy(conf)
    base["seed"], base["trainer"]["max_epochs"] = s["seed"], s["epochs"]
    if s["train_batches"] < 1:  # Lightning's limit: the first part of each shuffled epoch, every stage
        base["trainer"]["limit_train_batches"] = float(s["train_batches"])
    base["tune"] = {"enabled": False}
    base["skip_finished"], base["baseline"] = False, False
    base["tracking"]["experiment"] = conf["tracking"]["experiment"] + s["experiment_suffix"]
    # a trial's student is thrown away: no MLflow Model, no ONNX/.pt2 export (seconds per trial)
    base["tracking"]["log_model"] = base["tracking"]["export_student"] = False
    base.pop("optuna_trial", None)
    base.pop("distill_overrides", None)  # already merged into distill by the matrix keys
    return base


def study_name(conf: dict, s: dict, space: dict[str, str]) -> str:
    """Same cell settings (but the seed), budget and space -> same study, whichever seed asks first."""
    from kdexp.bench.matrix import cell_key
    from kdexp.caching.fingerprint import fingerprint

    budget = {k: s[k] for k in ("n_trials", "epochs", "seed", "metric", "sampler", "pruner")}
    if s["train_batches"] < 1:  # only then: studies run before the option existed keep their names
        budget["train_batches"] = float(s["train_batches"])
    key = fingerprint({"what": "tuning", "cell": cell_key({**trial_base(conf, s), "seed": 0}),
                       "budget": budget, "space": space})
    return f"tune-{conf.get('method') or conf['distill']['name']}-{conf['teacher']['arch']}->" \
           f"{conf['student']['arch']}-{key[:12]}"


@dataclass
class Tuning:
    study: str
    overrides: dict  # nested distill settings, e.g. {"temperature": 2.5, "weights": {"kd": 0.4}}
    best_value: float
    counts: dict[str, int]


def tune_cell(conf: dict, run: Callable[[Any, Path], dict] | None = None) -> Tuning | None:
    """Find or run the study of this cell's (pair, method); None when tuning is off or nothing is searched.
    `run(cfg, run_dir) -> metrics` trains one trial: the experiment entry point, handed down by the
    dispatcher that calls this (kdexp.experiments.run_experiment), so that this module imports no layer
    above it."""
    conf = OmegaConf.to_container(conf, resolve=True) if OmegaConf.is_config(conf) else conf
    s = tune_settings(conf)
    if not s["enabled"]:
        return None
    method = conf.get("method") or conf["distill"]["name"]
    space = search_space(method)
    if not space:
        return None
    from kdexp.sweep.storage import absolute_sqlite_url

    name = study_name(conf, s, space)
    url = absolute_sqlite_url(s["storage"] or f"sqlite:///{conf['paths']['root']}/optuna.db")
    study = _finished_study(url, name, s["n_trials"])
    if study is None:
        log.info("tuning %s: study %r, %d trials of %d epochs", method, name, s["n_trials"], s["epochs"])
        if run is None:
            raise RuntimeError(f"tuning {method}: study {name!r} is not finished and no trial runner was given")
        study = _run_study(conf, s, space, url, name, run)
    return _result(study, name)


def tuned_overrides(conf: dict, run: Callable[[Any, Path], dict] | None = None) -> dict:
    """The best distill settings of this cell's (pair, method) to merge into `distill` ({} when untuned)."""
    result = tune_cell(conf, run)
    return result.overrides if result else {}


def apply_tuning(conf: dict, run: Callable[[Any, Path], dict] | None = None) -> dict[str, str]:
    """The one call of the orchestration: merge the best settings into conf["distill"], record them in
    conf["tune"] (so they are run params: tune.chosen.*, tune.study) and return the student run's tags."""
    result = tune_cell(conf, run)
    if result is None:
        return {}
    from kdexp.config.matrix_keys import merge

    merge(conf["distill"], result.overrides)
    conf["tune"] = {**conf["tune"], "study": result.study, "chosen": result.overrides,
                    "best_value": result.best_value}
    return {"kdexp.tuned": "true", "kdexp.tune.study": result.study,
            "kdexp.tune.trials": ",".join(f"{k}={v}" for k, v in result.counts.items())}


def _finished_study(url: str, name: str, n_trials: int):
    """The study when it already holds n_trials finished trials (skip the engine and its MLflow run)."""
    import optuna
    from optuna.trial import TrialState

    from kdexp.sweep.storage import counted_trials, open_storage
    from kdexp.tracking.stores import sqlite_file

    path = sqlite_file(url)
    if path is not None and not path.is_file():
        return None
    try:  # another cell may be creating this storage's tables right now
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        return None
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):  # a stopped trial, to be asked again
        return None
    done = counted_trials(study, (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return study if done >= n_trials else None


def _run_study(conf: dict, s: dict, space: dict[str, str], url: str, name: str, run: Callable):
    import optuna

    from kdexp.sweep.engine import OptunaSweep
    from kdexp.sweep.storage import rdb_storage

    base = trial_base(conf, s)
    settings = {"storage": url, "study_name": name, "n_trials": s["n_trials"], "n_jobs": 1,
                "sampler": s["sampler"], "pruner": s["pruner"],
                "objectives": [{"metric": s["metric"], "direction": "maximize"}], "params": space,
                "max_failures": 3, "heartbeat_interval": 30, "grace_period": 120, "mlflow": True}
    root = Path(conf["paths"]["root"]) / "tuning" / name.replace(">", "")
    app = OmegaConf.create({"hydra": {"sweep": {"dir": str(root)}},
                            "tracking": {"uri": base["tracking"]["uri"], "experiment": base["tracking"]["experiment"]}})
    OptunaSweep(settings, InProcessSweeper(base, s["metric"], root, run), app, None).run([])
    return optuna.load_study(study_name=name, storage=rdb_storage(url))


def _result(study, name: str) -> Tuning:
    from optuna.trial import TrialState

    counts = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    if not counts["complete"]:
        raise RuntimeError(f"tuning study {name!r} has no completed trial ({counts}); see its trials' errors "
                           "(optuna user attr kdexp.reason) and re-run to resume")
    best = study.best_trial
    nested: dict = {}
    for key, value in best.params.items():
        node = nested
        *parents, leaf = key.split(".")[1:]  # drop the leading "distill"
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return Tuning(name, nested, float(best.value), counts)


class InProcessSweeper:
    """What OptunaSweep needs of a Hydra sweeper (validate_batch_is_legal, launcher.launch), running each
    trial in this process with the experiment entry point. Only the objective metric goes back to the
    engine: the trial's test metrics stay in its MLflow run."""

    def __init__(self, base: dict, metric: str, run_root: Path, run: Callable[[Any, Path], dict]):
        self.base, self.metric, self.run_root, self.run = base, metric, run_root, run
        self.launcher = self

    def validate_batch_is_legal(self, batch: list[list[str]]) -> None:
        for overrides in batch:
            apply_overrides(self.base, overrides)

    def launch(self, batch: list[list[str]], initial_job_idx: int) -> list:
        from hydra.core.utils import JobReturn, JobStatus

        returns = []
        for number, overrides in enumerate(batch, start=initial_job_idx):
            run_dir = self.run_root / str(number)
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                metrics = self.run(OmegaConf.create(apply_overrides(self.base, overrides)), run_dir)
                value = {self.metric: metrics[self.metric]} if self.metric in metrics else {}
                returns.append(JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=value))
            except Exception as exc:  # noqa: BLE001 - the engine records it as FAIL or PRUNED
                returns.append(JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=exc))
        return returns


def apply_overrides(conf: dict, overrides: list[str]) -> dict:
    """A copy of `conf` with Hydra override strings applied ('key=v' must exist; '+'/'++' may add)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.create(copy.deepcopy(conf))
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.key_or_group
        adds = o.is_add() or o.is_force_add()
        if not adds and OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise ValueError(f"tune: search key {key!r} does not exist in the cell's config")
        OmegaConf.update(cfg, key, o.value(), merge=False, force_add=adds)
    return OmegaConf.to_container(cfg, resolve=True)


_MISSING = object()
