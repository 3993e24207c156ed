"""Tuned matrices: per (pair, method), `tune.repeats` independent Optuna studies on the validation split with
the same budget for every method (the vanilla student included: it searches its own recipe), then every seed of
the cell trains at each study's best settings.

The orchestration makes one call per cell and repeat, after the matrix keys are applied and before the cell key:

    for r in range(repeats(conf)):
        tags = apply_tuning(conf_copy, run, repeat=r)  # merges study r's best settings into the copy

The study is the existing sweeper engine (kdexp.sweep.engine.OptunaSweep: sampler, pruner, study lock,
heartbeats, resume up to n_trials, MLflow parent run) with an in-process launcher: each trial is the cell
at its sampled settings, trained by the experiment entry point for `tune.epochs` epochs on the repeat's tuning
seed, with the pruner fed by the validation accuracy of every epoch. The objective is a validation metric
(ALLOWED_METRICS); trial runs go to their own MLflow experiment (`<experiment>-tuning`), so no table
ever mixes them in. Every seed of the cell (and a re-run of the matrix) finds the same finished studies.

The protocol (a reviewer's checklist): trial seeds never equal an evaluation seed of the matrix (ConfigError
unless `allow_seed_overlap`); repeat r has its own trial seed (`seed + r`) and sampler seed (`sampler.seed + r`),
so the table can show tuning variance beside seed variance; with `match_budget` every row gets the same
student optimizer steps: an init stage that trains the student takes its epochs from the budget.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from kdexp.config.errors import ConfigError, MatrixError
from kdexp.config.schema import TUNE_METRICS, TuneSchema

log = logging.getLogger("kdexp")
SEARCH_DIR = Path(__file__).resolve().parents[1] / "conf" / "search"  # shipped in the package (link in the repo)
ALLOWED_METRICS = TUNE_METRICS  # validation only: tuning never sees test
# What a search space may set: a method's own settings, or the student's recipe (never `recipe`, which is the
# teacher's too: searching it would give every trial its own teacher, whose cache key holds its recipe)
SEARCHABLE = ("distill.", "student_recipe.")
# The settings and their defaults: kdexp.config.schema.TuneSchema (new keys go there, with their rules).
RECORD_KEYS = ("study", "chosen", "best_value", "repeat", "tags", "budget_epochs")
# The keys of `tune.sampler` that name a study, per sampler (its other keys fill in defaults of no effect)
SAMPLER_ARGS = {"tpe": ("seed", "n_startup_trials"), "motpe": ("seed", "n_startup_trials"),
                "cmaes": ("seed", "n_startup_trials")}  # what the orchestration writes into conf["tune"]


def search_params(method: str) -> dict[str, str]:
    """conf/search/<method>.yaml's params as written: override keys ('++student_recipe.lr', which Hydra needs
    to add a key the config lacks) -> sweeper-grammar expressions."""
    path = SEARCH_DIR / f"{method}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SEARCH_DIR.glob("*.yaml")))
        raise ValueError(f"tune: method {method!r} has no search space ({path}); methods with one: {known}")
    raw = OmegaConf.to_container(OmegaConf.load(path))
    params = ((raw.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    bad = [k for k in params if not str(k).lstrip("+").startswith(SEARCHABLE)]
    if bad:
        raise ValueError(f"{path}: only {', '.join(p + '*' for p in SEARCHABLE)} keys may be searched, got {bad}")
    return {str(k): str(v) for k, v in params.items()}


def search_space(method: str) -> dict[str, str]:
    """The searched config keys (as run params: `distill.temperature`, `student_recipe.lr`) -> grammar."""
    return {k.lstrip("+"): v for k, v in search_params(method).items()}


def tune_settings(conf: dict) -> dict[str, Any]:
    """conf["tune"] over TuneSchema's defaults, checked (a plain dict was not typed by Hydra)."""
    from dataclasses import asdict

    from kdexp.config.rules import check_fields

    node = {k: v for k, v in (conf.get("tune") or {}).items() if k not in RECORD_KEYS}
    check_fields(node, TuneSchema, "tune", strict=True)
    defaults = asdict(TuneSchema())
    s = {**defaults, **node}
    for key in ("sampler", "pruner"):  # given keys over the defaults, as a composed config has them
        s[key] = {**defaults[key], **(node.get(key) or {})}
    return s


def repeats(conf: dict) -> int:
    """How many studies (and so cells per seed) a tuned cell has; 1 when tuning is off."""
    s = tune_settings(conf)
    return s["repeats"] if s["enabled"] else 1


def repeat_settings(s: dict, repeat: int) -> dict:
    """Study `repeat`'s settings: trial seed `seed + repeat`, sampler seed `sampler.seed + repeat` (repeat 0 is
    the study a single-study matrix runs, under the same name)."""
    if not 0 <= repeat < s["repeats"]:
        raise ConfigError(f"tune repeat {repeat} is invalid: tune.repeats={s['repeats']} gives 0..{s['repeats'] - 1}")
    sampler = {**s["sampler"], "seed": int(s["sampler"].get("seed") or 0) + repeat}
    return {**s, "seed": s["seed"] + repeat, "sampler": sampler}


def trial_seeds(s: dict) -> list[int]:
    return [s["seed"] + r for r in range(s["repeats"])]


def check_seeds(conf: dict, s: dict) -> None:
    """Trials must not train at an evaluation seed (the cell's, and every seed of the matrix's `seed` axis when
    run by a matrix): the chosen settings would then be fitted to the very seeds the table reports."""
    if s["allow_seed_overlap"]:
        return
    evaluation = {int(conf["seed"]), *matrix_seeds()}
    overlap = sorted(evaluation.intersection(trial_seeds(s)))
    if overlap:
        raise MatrixError(
            f"tune.seed={s['seed']} (trial seeds {trial_seeds(s)}, tune.repeats={s['repeats']}) overlaps the "
            f"matrix's seeds {sorted(evaluation)} at {overlap}: set tune.seed outside them (e.g. 1000), or "
            "tune.allow_seed_overlap=true")


def matrix_seeds() -> list[int]:
    """The `seed` axis of the running multirun's sweeper params ([] outside a Hydra multirun)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    params = (HydraConfig.get().sweeper.get("params") or {}) if "sweeper" in HydraConfig.get() else {}
    if "seed" not in params:
        return []
    from kdexp.bench.matrix import axis_values

    return [int(v) for v in axis_values("seed", params["seed"])]


def student_init_epochs(conf: dict) -> int:
    """Epochs of the method's init stage that train the student (AB, FSP); 0 for none, or for an init stage
    that trains only the method's own modules (FT's paraphraser: no student optimizer step)."""
    import inspect

    from kdexp.distill import METHODS

    cls = METHODS.get(conf["distill"]["name"])
    default = inspect.signature(cls.__init__).parameters.get("init_epochs")
    epochs = conf["distill"].get("init_epochs", 0 if default is None else default.default)
    return int(epochs or 0) if cls.init_trains_student else 0


def main_epochs(conf: dict, s: dict, epochs: int, key: str) -> int:
    """The main stage's epochs within a budget of `epochs` student epochs (`key` names it in errors): with
    `match_budget` (null: in tuned matrices), less the init stage's, so that every row takes the same student
    optimizer steps."""
    init = student_init_epochs(conf)
    if s["match_budget"] is False or not init:
        return epochs
    if init >= epochs:
        raise MatrixError(
            f"distill.init_epochs={init} leaves no main-stage epoch of {key}={epochs} ({conf['distill']['name']} "
            "in a matrix with matched budgets: an init stage takes its epochs from the student's budget): lower "
            f"distill.init_epochs, raise {key}, or set tune.match_budget=false")
    return epochs - init


def match_budget(conf: dict, s: dict) -> None:
    """Shorten the cell's main stage (trainer.max_epochs) by a student init stage's epochs (`match_budget`), and
    record the budget as tune.budget_epochs: the table's settings key compares budgets, not main stages.

    Args:
        conf: the cell's mutable config; changed in place.
        s: its tuning settings (tune_settings).
    """
    budget = conf["trainer"]["max_epochs"]
    epochs = main_epochs(conf, s, budget, "trainer.max_epochs")
    if epochs == budget:
        return
    if conf.get("baseline"):
        raise ConfigError(f"baseline=true with distill.init_epochs={student_init_epochs(conf)} in a matrix with "
                          "matched budgets: the baseline would train the shortened main stage; set baseline=false "
                          "(the table compares against its `none` row)")
    conf["trainer"]["max_epochs"] = epochs
    conf["tune"] = {**(conf.get("tune") or {}), "budget_epochs": budget}


def trial_base(conf: dict, s: dict) -> dict:
    """The cell as every trial of study `s` (a repeat's settings) trains it: its tuning seed and epochs (less a
    student init stage's, as the cell's), its own MLflow experiment, no baseline."""
    base = copy.deepcopy(conf)
    base["seed"] = s["seed"]
    base["trainer"]["max_epochs"] = main_epochs(conf, s, s["epochs"], "tune.epochs")
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


def sampler_settings(spec: dict) -> dict:
    """`tune.sampler` as the sweeper takes it: the keys its sampler's constructor accepts (TuneSchema fills in
    tpe's n_startup_trials beside any name, which e.g. RandomSampler refuses)."""
    import inspect

    from kdexp.sweep.factories import SAMPLERS, sampler_class

    name = str(spec.get("name", "tpe")).lower()
    if name not in SAMPLERS:
        return dict(spec)  # the sweeper names the error and the choices
    accepted = inspect.signature(sampler_class(SAMPLERS[name]["_target_"]).__init__).parameters
    return {k: v for k, v in spec.items() if k == "name" or k in accepted}


def study_name(conf: dict, s: dict, space: dict[str, str]) -> str:
    """Same cell settings (but the seed), budget and space -> same study, whichever seed asks first."""
    from kdexp.bench.matrix import cell_key
    from kdexp.caching.fingerprint import fingerprint
    from kdexp.sweep.factories import PRUNER_ARGS

    budget = {k: s[k] for k in ("n_trials", "epochs", "seed", "metric")}
    # the keys the chosen sampler / pruner reads: a pruner `none` names its study as before TuneSchema filled
    # in median's settings beside it
    for key, used in (("sampler", SAMPLER_ARGS), ("pruner", PRUNER_ARGS)):
        spec = s[key]
        keys = used.get(spec["name"], ("seed",) if key == "sampler" else ())
        budget[key] = {k: v for k, v in spec.items() if k == "name" or (k in keys and v is not None)}
    if s["train_batches"] < 1:  # only then: studies run before the option existed keep their names
        budget["train_batches"] = float(s["train_batches"])
    key = fingerprint({"what": "tuning", "cell": cell_key({**trial_base(conf, s), "seed": 0}),
                       "budget": budget, "space": space})
    return f"tune-{conf.get('method') or conf['distill']['name']}-{conf['teacher']['arch']}->" \
           f"{conf['student']['arch']}-{key[:12]}"


@dataclass
class Tuning:
    study: str
    overrides: dict  # the best settings by config node, e.g. {"distill": {"temperature": 2.5}, "student_recipe": ...}
    best_value: float
    counts: dict[str, int]


def tune_cell(conf: dict, run: Callable[[Any, Path], dict] | None = None, repeat: int = 0) -> Tuning | None:
    """Find or run study `repeat` of this cell's (pair, method); None when tuning is off or nothing is searched.
    `run(cfg, run_dir) -> metrics` trains one trial: the experiment entry point, handed down by the
    dispatcher that calls this (kdexp.variants.run_experiment), so that this module imports no layer
    above it."""
    conf = OmegaConf.to_container(conf, resolve=True) if OmegaConf.is_config(conf) else conf
    s = tune_settings(conf)
    if not s["enabled"]:
        return None
    check_seeds(conf, s)
    method = conf.get("method") or conf["distill"]["name"]
    space = search_space(method)
    if not space:
        return None
    from kdexp.sweep.storage import absolute_sqlite_url

    main_epochs(conf, s, conf["trainer"]["max_epochs"], "trainer.max_epochs")  # the cell's budget, before trials
    s = repeat_settings(s, repeat)
    name = study_name(conf, s, space)
    url = absolute_sqlite_url(s["storage"] or f"sqlite:///{conf['paths']['root']}/optuna.db")
    study = _finished_study(url, name, s["n_trials"])
    if study is None:
        log.info("tuning %s: study %r (repeat %d), %d trials of %d epochs", method, name, repeat, s["n_trials"],
                 s["epochs"])
        if run is None:
            raise RuntimeError(f"tuning {method}: study {name!r} is not finished and no trial runner was given")
        study = _run_study(conf, s, search_params(method), url, name, run)
    return _result(study, name)


def tuned_overrides(conf: dict, run: Callable[[Any, Path], dict] | None = None, repeat: int = 0) -> dict:
    """The best settings of study `repeat` of this cell's (pair, method), by config node ({} when untuned)."""
    result = tune_cell(conf, run, repeat)
    return result.overrides if result else {}


def apply_tuning(conf: dict, run: Callable[[Any, Path], dict] | None = None, repeat: int = 0) -> dict[str, str]:
    """The one call of the orchestration per repeat: merge study `repeat`'s best settings into `conf`, take a
    student init stage's epochs from trainer.max_epochs (`match_budget`), record the choice in conf["tune"]
    (so it is run params: tune.chosen.*, tune.study) and return the student run's tags."""
    result = tune_cell(conf, run, repeat)
    if result is None:
        return {}
    from kdexp.config.matrix_keys import merge

    s = tune_settings(conf)
    match_budget(conf, s)
    merge(conf, result.overrides)
    conf["tune"] = {**conf["tune"], "study": result.study, "chosen": result.overrides,
                    "best_value": result.best_value}
    if s["repeats"] > 1:  # only then in the cell key (kdexp.bench.matrix.cell_key)
        conf["tune"]["repeat"] = repeat
    return {"kdexp.tuned": "true", "kdexp.tune.study": result.study, "kdexp.tune_repeat": str(repeat),
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


def _run_study(conf: dict, s: dict, params: dict[str, str], url: str, name: str, run: Callable):
    import optuna

    from kdexp.sweep.engine import OptunaSweep
    from kdexp.sweep.storage import rdb_storage

    base = trial_base(conf, s)
    settings = {"storage": url, "study_name": name, "n_trials": s["n_trials"], "n_jobs": 1,
                "sampler": sampler_settings(s["sampler"]), "pruner": s["pruner"],
                "objectives": [{"metric": s["metric"], "direction": "maximize"}], "params": params,
                "max_failure_rate": 1.0, "max_failures": 3, "heartbeat_interval": 30, "grace_period": 120,
                "mlflow": True}
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
        *parents, leaf = key.lstrip("+").split(".")  # the sweeper names a param by its override key
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
