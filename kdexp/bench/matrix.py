"""Benchmark matrices: a `pair` axis, method labels and settings, per-student lr, idempotent re-runs.

A matrix is a Hydra config in sweeps/matrix/ (the `matrix` group, through the conf/matrix symlink) whose
basic-sweeper params sweep `pair`, `distill` and `seed`. kdexp.config.parse.parse_config calls `apply_matrix_keys`
before validation; the experiment dispatcher holds the cell's `cell_lease` and calls `finished_cell_metrics`
before any work; `student_lr` is applied per role by kdexp.config.parse.recipe_for.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from kdexp.caching.fingerprint import fingerprint
from kdexp.config.matrix_keys import parse_pair, student_lr

log = logging.getLogger("kdexp")
MATRIX_DIR = Path(__file__).resolve().parents[1] / "sweeps" / "matrix"  # shipped in the package (link in the repo)
# Keys that do not change what a cell trains: where things go, how it is measured or logged, how fast.
# `tune`: how settings were chosen; the chosen ones are merged into `distill`, which the key includes.
# `imports`: where code comes from; what it trains is in the other keys (a plug-in model's name, ...).
CELL_IGNORED_KEYS = ("paths", "tracking", "eval", "skip_finished", "baseline", "pair", "tune", "imports", "tags")
CELL_IGNORED_SUBKEYS = {
    "data": ("root", "eval_batch_size", "device", "pin_memory", "cache_dir"),
    "trainer": ("enable_progress_bar", "enable_model_summary", "log_every_n_steps", "compile", "channels_last",
                "logger"),
    "teacher_cache": ("mode", "max_gb"),  # cached or online teacher outputs: the same numbers
}
# Keys added after cells existed, left out at their defaults so that older cells keep their keys.
LATER_DEFAULTS = {"teacher": {"augment": False, "label_smoothing": 0.0}}
FINAL_PREFIXES = ("student/", "teacher/", "baseline/")  # what run_experiment returns, not per-epoch curves


def cell_key(conf: dict) -> str:
    """Fingerprint of what one cell trains (after `apply_matrix_keys`): paths, tracking and eval-only keys
    left out, `student_lr` reduced to this student's entry, so that a re-run of the same cell finds it.
    A tuned matrix with several study repeats adds the repeat (two repeats may choose the same settings)."""
    view = _view(conf, CELL_IGNORED_KEYS, CELL_IGNORED_SUBKEYS)
    view["student_lr"] = student_lr(conf, conf["student"]["arch"])
    version = method_version(conf["distill"]["name"])
    if version != 1:  # only then: the keys of cells run before versions existed stay valid
        view["method_version"] = version
    repeat = (conf.get("tune") or {}).get("repeat")
    if repeat is not None:  # set only with tune.repeats > 1: a single study's cells keep their keys
        view["tune_repeat"] = repeat
    return fingerprint({"what": "cell", **view})


def method_version(name: str | None) -> int:
    from kdexp.distill import METHODS

    return METHODS.get(name).version if name in METHODS.names() else 1


# What may differ between the cells of one table: the pair, the method (and its distill settings, or a tuned
# vanilla student's recipe), the seed.
SETTINGS_IGNORED_KEYS = (*CELL_IGNORED_KEYS, "seed", "method", "distill", "optuna_trial", "student_recipe")
SETTINGS_IGNORED_SUBKEYS = {**CELL_IGNORED_SUBKEYS, "teacher": ("arch", "kwargs"), "student": ("arch", "kwargs")}


def _view(conf: dict, keys: tuple[str, ...], subkeys: dict[str, tuple[str, ...]]) -> dict:
    """conf without `keys`, and without `subkeys[node]` inside each node."""
    view = {k: v for k, v in conf.items() if k not in keys}
    for node, drop in subkeys.items():
        if isinstance(view.get(node), dict):
            view[node] = {k: v for k, v in view[node].items() if k not in drop}
    for node, defaults in LATER_DEFAULTS.items():
        if isinstance(view.get(node), dict):
            view[node] = {k: v for k, v in view[node].items() if k not in defaults or v != defaults[k]}
    return view


def settings_key(conf: dict) -> str:
    """Fingerprint of what every cell of a benchmark table must share (data, recipe, trainer, how the teacher
    is trained, ...), after `apply_matrix_keys`; `recipe` is the teacher's. Tagged `kdexp.settings` on
    student runs, so that kdexp-report can tell when a table mixes runs of different settings."""
    view = _view(conf, SETTINGS_IGNORED_KEYS, SETTINGS_IGNORED_SUBKEYS)
    budget = (conf.get("tune") or {}).get("budget_epochs")
    if budget is not None:  # a main stage shortened by an init stage (tune.match_budget): the row's budget counts
        view["trainer"] = {**view["trainer"], "max_epochs": budget}
    return fingerprint({"what": "matrix-settings", **view})


def finished_cell_metrics(conf: dict, cell: str) -> dict[str, float] | None:
    """With `skip_finished`, the final metrics of a FINISHED student run of this cell, else None.
    FAILED or killed (still RUNNING) runs do not count: their cells are trained again."""
    if not conf.get("skip_finished"):
        return None
    run = find_finished_run(conf["tracking"]["uri"], conf["tracking"]["experiment"], cell)
    if run is None:
        return None
    log.info("skipping finished cell %s (%s, seed %s): run %s", cell, run.info.run_name,
             run.data.tags.get("seed"), run.info.run_id)
    return {k: v for k, v in run.data.metrics.items() if k.startswith(FINAL_PREFIXES)}


@contextlib.contextmanager
def cell_lease(conf: dict, cell: str) -> Iterator[None]:
    """With `skip_finished`, one process at a time trains a cell: two matrix processes given overlapping cells
    would otherwise both train it (the second continuing the first's RUNNING run). The other waits, then
    finds the cell finished. A file lock beside a SQLite store or under paths.root, a PostgreSQL advisory
    lock for a server store shared by machines; both are released if the holder dies. Only rank 0 of a
    DDP run takes it (the other ranks follow rank 0 into the same cell)."""
    from kdexp.runtime import distributed
    from kdexp.tracking.stores import advisory_lock, normalize_uri, scheme, sqlite_file

    uri = conf["tracking"]["uri"]
    if not conf.get("skip_finished") or not distributed.is_rank_zero():
        yield
        return
    if scheme(normalize_uri(uri)).startswith("postgresql"):
        with advisory_lock(normalize_uri(uri), f"cell:{cell}"):
            yield
        return
    from filelock import FileLock, Timeout

    db = sqlite_file(uri)
    folder = (db.parent if db is not None else Path(conf["paths"]["root"])) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f"cell-{cell}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("cell %s is being trained by another process; waiting for it to finish", cell)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def find_finished_run(uri: str, experiment: str, cell: str):
    from kdexp.tracking.stores import open_tracking_store, sqlite_file

    db = sqlite_file(uri)
    if db is not None and not db.is_file():  # nothing tracked yet: do not create an empty store here
        return None
    client = open_tracking_store(uri)  # a new database's tables: one process at a time
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id], max_results=1, order_by=["attributes.end_time DESC"],
        filter_string=f"tags.`kdexp.cell` = '{cell}' AND tags.`kdexp.role` = 'student' "
                      "AND attributes.status = 'FINISHED'",
    )
    return runs[0] if runs else None


@dataclass
class MatrixSpec:
    """What a matrix file declares, for the report: axes in their declared order and its MLflow experiment."""

    name: str
    pairs: list[str]
    methods: list[str]
    seeds: list[int]
    experiment: str | None


def matrix_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = MATRIX_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in MATRIX_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"matrix {name_or_path!r}: no such file {path} (matrices: {known})")
    return path


def load_matrix(name_or_path: str) -> MatrixSpec:
    """Read a matrix file's sweeper params (Hydra's override grammar: 'a->b','c->d' / kd,dkd / range(0,3))."""
    from omegaconf import OmegaConf

    path = matrix_path(name_or_path)
    raw = OmegaConf.to_container(OmegaConf.load(path))
    params = ((raw.get("hydra") or {}).get("sweeper") or {}).get("params") or {}

    def axis(key: str) -> list[str]:
        if key not in params:
            raise ValueError(f"{path}: hydra.sweeper.params has no {key!r} axis")
        return axis_values(key, params[key])

    for pair in axis("pair"):
        parse_pair(pair)
    return MatrixSpec(
        name=path.stem, pairs=axis("pair"), methods=axis("distill"), seeds=[int(s) for s in axis("seed")],
        experiment=(raw.get("tracking") or {}).get("experiment"),
    )


def axis_values(key: str, text) -> list[str]:
    """The values of one sweeper param in Hydra's override grammar ('a->b','c->d' / kd,dkd / range(0,3))."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_overrides([f"{key}={text}"])[0]
    values = override.sweep_string_iterator() if override.is_sweep_override() else [str(override.value())]
    return [str(v).strip("'\"") for v in values]
