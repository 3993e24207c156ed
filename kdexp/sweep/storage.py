"""Optuna storage helpers shared by the sweeper and the jobs: URLs, the study lock, heartbeats."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url

from kdexp.tracking.stores import (  # one parser of SQLite URLs
    StoreError,
    normalize_uri,
    sqlite_file,
    store_lock,
    tolerate_concurrent_creator,
)

log = logging.getLogger(__name__)
# The sweeper hands its jobs the storage URL with the password masked, and the whole URL in this variable
# (inherited by joblib, submitit and SLURM jobs), so no password lands in a job's config, overrides or logs.
STORAGE_ENV = "KDEXP_TRIAL_STORAGE"

# SQLite's default 5 s busy timeout is too short once a few sweepers and jobs write at once.
_SQLITE_TIMEOUT_S = 60


def absolute_sqlite_url(url: str, base: str | os.PathLike | None = None) -> str:
    """Jobs may run in another working directory (chdir, joblib, SLURM): pin relative SQLite paths."""
    path = sqlite_file(url)
    if path is None or path.is_absolute():
        return url
    resolved = (Path(base or os.getcwd()) / path).resolve()
    return make_url(url).set(database=str(resolved)).render_as_string(hide_password=False)


def display_url(url: str) -> str:
    """The URL without its password, for logs and MLflow params."""
    return make_url(url).render_as_string(hide_password=True)


def job_url(url: str) -> str:
    """The URL a job was handed, with its masked password restored from STORAGE_ENV (set by the sweeper)."""
    if make_url(url).password != "***":
        return url
    full = os.environ.get(STORAGE_ENV)
    if full and display_url(full) == url:
        return full
    raise StoreError(f"optuna_trial.storage={url}: the password is masked and {STORAGE_ENV} does not hold this "
                     "URL (a trial job must inherit the sweeper's environment)")


def rdb_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                retry_killed: int = 0):
    """retry_killed > 0: a trial failed for a stale heartbeat (its sweeper was killed) is enqueued again with
    the same params (Optuna's RetryFailedTrialCallback), up to that many times."""
    url = normalize_uri(url)
    engine_kwargs = None
    if sqlite_file(url):
        engine_kwargs = {"connect_args": {"timeout": _SQLITE_TIMEOUT_S}}
    elif make_url(url).get_backend_name() == "postgresql":  # fail fast on an unreachable server
        engine_kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                      grace_period=grace_period, **retry_callback(retry_killed))


def open_storage(url: str):
    """rdb_storage(url), its tables created by one process at a time when the storage is new (study_lock).

    Args:
        url: the study storage's SQLAlchemy URL.
    Returns:
        optuna.storages.RDBStorage."""
    with study_lock(url):
        return tolerate_concurrent_creator(lambda: rdb_storage(url))


def retry_interrupted(study: optuna.Study, trial_id: int, retry_killed: int) -> None:
    """Enqueue a trial stopped by SIGTERM or Ctrl-C again with its params, marked as the retry of it (so
    the budget counts the two as one), exactly as the heartbeat callback does for a kill -9'd trial."""
    if retry_killed > 0:
        _retry(retry_killed)(study, study._storage.get_trial(trial_id))


def _retry(retry_killed: int):
    """Optuna's callback that enqueues a failed trial again: RetryHeartbeatStaleTrialCallback since 4.9
    (RetryFailedTrialCallback, deprecated there, before it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", optuna.storages.RetryFailedTrialCallback)
        return cls(max_retry=retry_killed)


def retry_callback(retry_killed: int) -> dict:
    """The storage argument that re-enqueues a stale trial: `heartbeat_stale_trial_callback` since Optuna
    4.9 (`failed_trial_callback` before it)."""
    if retry_killed <= 0:
        return {}
    callback = _retry(retry_killed)
    if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage.__init__).parameters:
        return {"heartbeat_stale_trial_callback": callback}
    return {"failed_trial_callback": callback}


def counted_trials(study: optuna.Study, states: tuple | None = None) -> int:
    """Trials (in `states`) that count against n_trials: a killed or stopped trial and its retry count once."""
    return len(study.get_trials(deepcopy=False, states=states)) - retries(study, states)


def retries(study: optuna.Study, states: tuple | None = None) -> int:
    """Trials that re-run a killed trial (in `states`): the budget counts a killed one and its retry as one."""
    with warnings.catch_warnings():  # stable since Optuna 2.8, still flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return sum(1 for t in study.get_trials(deepcopy=False, states=states)
                   if optuna.storages.RetryFailedTrialCallback.retried_trial_number(t) is not None)


@contextlib.contextmanager
def study_lock(url: str) -> Iterator[None]:
    """Serialises "count trials, then ask" across sweeper processes on one study.

    Without it two workers could both see one free slot and overshoot n_trials. A file lock next to a
    SQLite database, an advisory lock on PostgreSQL (released if its holder dies); other server databases
    go without it, where concurrent workers may overshoot by at most one batch each.
    """
    with store_lock(url, "optuna-study"):
        yield


class HeartbeatKeeper:
    """Records heartbeats of the trials this sweeper has in flight.

    A trial's job may run in-process, in a joblib worker or on a SLURM node; what matters is
    whether the sweeper that will ``tell`` it is alive. When a sweeper is killed its heartbeats
    stop, and any sweeper of the study fails the trial after the grace period.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, interval_s: float):
        self._storage, self._interval = storage, interval_s
        self._trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="kdexp-optuna-heartbeat", daemon=True)
        self._thread.start()

    def add(self, trial_id: int) -> None:
        self._storage.record_heartbeat(trial_id)  # at once: a trial without heartbeat is never stale
        with self._lock:
            self._trial_ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._trial_ids.discard(trial_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                ids = list(self._trial_ids)
            for trial_id in ids:
                try:
                    self._storage.record_heartbeat(trial_id)
                except Exception as exc:  # noqa: BLE001 - a missed beat is retried next interval
                    log.warning("heartbeat of trial id %s failed: %s", trial_id, exc)
