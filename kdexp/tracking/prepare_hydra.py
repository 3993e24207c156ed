"""A Hydra callback that creates every store a multirun needs before its launcher starts a job (conf/train.yaml).

Jobs that start together (joblib, submitit, a SLURM array) on a new store would each create its tables, and
MLflow's table creation and migrations are not safe to run concurrently on SQLite or PostgreSQL (issue 26). So
the launching process checks the stores once -- a bad URL or password is one line and exit 2 here, not N
failed jobs -- then creates the MLflow store and experiment, the Optuna storages and the cache folders; jobs
only open them. A job that is first anyway (started by hand) goes through the same serialised set-up.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdexp.tracking.redact import redact_text
from kdexp.tracking.stores import (
    StoreError,
    artifact_location,
    check_apart,
    check_store,
    ensure_experiment,
    normalize_uri,
    open_tracking_store,
)

log = logging.getLogger("kdexp")
OPTUNA_SWEEPER = "hydra_plugins.kdexp_optuna_sweeper"


@dataclass
class Stores:
    """What the jobs of one multirun will open."""

    tracking_uri: str | None
    experiments: list[str]
    artifact_root: str | None
    optuna: dict[str, str] = field(default_factory=dict)  # config key -> storage URL
    folders: list[Path] = field(default_factory=list)


def stores_of(config: DictConfig) -> Stores:
    """The stores named by a composed multirun config (its sweep overrides not applied).

    Args:
        config: the config Hydra hands on_multirun_start.
    Returns:
        Stores: the tracking store, its experiments, Optuna storages (a kdexp_optuna sweep's, a tuned matrix's)
        and the cache folders."""
    from kdexp.bench.tuning import tune_settings

    def select(key: str) -> Any:
        return OmegaConf.select(config, key, default=None, throw_on_missing=False)

    def plain(key: str) -> dict:
        node = select(key)
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})

    tracking = plain("tracking")
    stores = Stores(tracking.get("uri"), [tracking.get("experiment") or "kdexp"], tracking.get("artifact_root"))
    sweeper = select("hydra.sweeper") or {}
    if str(sweeper.get("_target_", "")).startswith(OPTUNA_SWEEPER) and sweeper.get("storage"):
        stores.optuna["hydra.sweeper.storage"] = str(sweeper.storage)  # a relative SQLite path: the jobs' cwd too
    tune = tune_settings({"tune": plain("tune")})
    root = select("paths.root")
    if tune["enabled"]:
        stores.optuna["tune.storage"] = tune["storage"] or f"sqlite:///{root}/optuna.db"
        stores.experiments.append(stores.experiments[0] + tune["experiment_suffix"])
    cache = select("paths.cache")
    if cache:
        stores.folders += [Path(cache) / "models", Path(cache) / "teacher_outputs"]
    return stores


def check(stores: Stores) -> str | None:
    """Reach every store once (StoreError, one line, on a bad one); the normalized tracking URI."""
    for key, url in stores.optuna.items():
        check_apart(url, stores.tracking_uri, key, "tracking.uri")
        check_store(url, key, "optuna")
    return check_store(stores.tracking_uri, "tracking.uri", "mlflow") if stores.tracking_uri else None


def create(stores: Stores, uri: str | None) -> None:
    """Create (or only open, when they exist) the MLflow store and experiments, the Optuna storages and folders."""
    for folder in stores.folders:
        folder.mkdir(parents=True, exist_ok=True)
    if uri:
        client = open_tracking_store(uri)
        for name in stores.experiments:
            ensure_experiment(client, uri, name, artifact_location(uri, stores.artifact_root))
    if stores.optuna:
        from kdexp.sweep.storage import open_storage

        for url in stores.optuna.values():
            open_storage(normalize_uri(url))


def misspelled_keys(config: DictConfig) -> None:
    """A misspelled key (`-m student.foo=1 seed=0,1`) is one line and exit 2 here, before any store exists."""
    from kdexp.config.errors import ConfigError
    from kdexp.config.keys import check_multirun_keys

    try:
        conf = OmegaConf.to_container(config, resolve=False)
        conf.pop("hydra", None)
        check_multirun_keys(conf)
    except ConfigError as exc:
        print(f"kdexp-train: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception:  # noqa: BLE001 - not decidable before the sweep: every job validates its own config
        return


class PrepareStores(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        misspelled_keys(config)
        try:
            stores = stores_of(config)
        except (OmegaConfBaseException, ValueError) as exc:  # e.g. a key only a job can resolve: jobs serialise
            log.warning("stores not created before the jobs (%s): each job creates what it needs", exc)
            return
        try:
            create(stores, check(stores))
        except StoreError as exc:  # bad input: once here, before any job is submitted
            print(f"kdexp-train: error: {exc}", file=sys.stderr)
            sys.exit(2)
        names = ", ".join(filter(None, [stores.tracking_uri, *stores.optuna.values()]))
        log.info("stores ready in %.2f s (%.2f s CPU) before the jobs start: %s", time.perf_counter() - start,
                 time.process_time() - cpu, redact_text(names))
