"""Where runs and studies are stored: URL conventions, an early check with a one-line error, a shared lock.

MLflow's tracking store and Optuna's study storage may be SQLite files, server databases (PostgreSQL through
psycopg 3: ``pip install 'kdexp[postgres]'``) or, for MLflow, a tracking server (``http://host:5000``).
- ``postgresql://`` and ``postgres://`` mean psycopg 3 here (SQLAlchemy would look for psycopg2).
- ``check_store`` connects once, before anything is created, and turns a missing driver, an unreachable
  server or a refused password into a `StoreError` naming the config key, with the password masked.
- MLflow and Optuna each keep their schema version in a table ``alembic_version``: they cannot share one
  database schema, so a store that holds the other's tables is refused with what to do instead.
- ``store_lock`` serialises first-time set-up (tables, experiment, study) across processes: a file lock
  beside a SQLite file, an advisory lock on PostgreSQL, nothing on a tracking server (it serialises).
- ``open_tracking_store`` and ``ensure_experiment`` do that set-up for MLflow: the launching process of a
  multirun calls them before any job starts (kdexp.tracking.prepare_hydra), a job only opens what is there.
  "Already exists" from a creator outside our lock (another tool, a tracking server) counts as success once
  opening the store again finds every table at the current schema version.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from kdexp.tracking.redact import redact_text

ALREADY_EXISTS = ("already exists", "duplicate key", "unique constraint", "uniqueviolation", "duplicatetable")
SETUP_ATTEMPTS = 5  # openings of a store whose creator holds no lock of ours, 1 s apart
SERVER_SCHEMES = ("http", "https", "databricks", "databricks-uc")
CONNECT_TIMEOUT_S = 5
DRIVER_PACKAGES = {"psycopg": "kdexp[postgres]", "psycopg2": "psycopg2-binary", "pymysql": "pymysql",
                   "MySQLdb": "mysqlclient"}
MLFLOW_TABLES = {"experiments", "runs"}
OPTUNA_TABLES = {"studies", "trials"}
APART = ("MLflow and Optuna both keep their schema version in the table alembic_version, so they cannot share "
         "one database schema: give {want} its own database (CREATE DATABASE ...) or schema (CREATE SCHEMA "
         "{schema}; then add ?options=-csearch_path%3D{schema} to the URL)")


def _prefer_psycopg3() -> None:
    """Bare ``postgresql://`` (and Heroku-style ``postgres://``) URLs reach psycopg 3 wherever SQLAlchemy sees them
    in this process -- MLflow and Optuna build their engines from the URL as given -- unless psycopg2 is there."""
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        from sqlalchemy.dialects import registry

        for name in ("postgresql", "postgres"):
            registry.register(name, "sqlalchemy.dialects.postgresql.psycopg", "dialect")


_prefer_psycopg3()


class StoreError(ValueError):
    """A store that cannot be used; the message is one line, names the key and hides the password."""


def scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def is_server_uri(uri: str | None) -> bool:
    """A tracking server (http, https, Databricks): it decides where artifacts go, not the client."""
    return bool(uri) and scheme(str(uri)) in SERVER_SCHEMES


def is_database_uri(uri: str | None) -> bool:
    return bool(uri) and "://" in str(uri) and not is_server_uri(uri) and scheme(str(uri)) != "file"


def normalize_uri(uri: str | None) -> str | None:
    """``postgresql://`` / ``postgres://`` -> ``postgresql+psycopg://``: kdexp's PostgreSQL driver is psycopg 3,
    for MLflow and Optuna alike (SQLAlchemy's bare dialect means psycopg2). Anything else is returned as is."""
    if not uri:
        return uri
    for bare in ("postgresql://", "postgres://"):
        if str(uri).startswith(bare):
            return "postgresql+psycopg://" + str(uri)[len(bare):]
    return str(uri)


def artifact_location(uri: str | None, artifact_root: str | os.PathLike | None) -> str | None:
    """The artifact location of an experiment kdexp creates: `artifact_root` (``tracking.artifact_root``) as a
    file URI for a SQLite or database store; None for a tracking server, whose own artifact store
    (``mlflow server --artifacts-destination``) must receive every artifact."""
    if artifact_root is None or is_server_uri(uri):
        return None
    if "://" in str(artifact_root):  # s3://, gs://, mlflow-artifacts:/ ...: MLflow's own business
        return str(artifact_root)
    return Path(artifact_root).resolve().as_uri()


def sqlite_file(uri: str | None) -> Path | None:
    if not uri or not str(uri).startswith("sqlite:///"):
        return None
    path = str(uri)[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def database_identity(uri: str) -> tuple | None:
    """What makes two URLs the same database schema (driver, password and other options aside)."""
    from sqlalchemy.engine import make_url

    if sqlite_file(uri) is not None:
        return ("sqlite", str(sqlite_file(uri).resolve()))
    if not is_database_uri(uri):
        return None
    url = make_url(normalize_uri(uri))
    options = str(url.query.get("options", ""))
    return (url.get_backend_name(), url.host or "localhost", url.port, url.database, options)


def check_apart(optuna_url: str | None, tracking_uri: str | None, optuna_key: str, tracking_key: str) -> None:
    """Refuse an Optuna storage and an MLflow store in one database schema (they would break each other)."""
    if not optuna_url or not tracking_uri:
        return
    same = database_identity(optuna_url)
    if same is not None and same == database_identity(tracking_uri):
        raise StoreError(f"{optuna_key}={redact_text(optuna_url)} and {tracking_key}={redact_text(tracking_uri)} "
                         "are the same database: " + APART.format(want="the Optuna study", schema="optuna"))


def check_store(uri: str | None, key: str, kind: str = "mlflow") -> str | None:
    """Connect to a store once and return its normalized URI, or raise StoreError with one clean line.

    kind: "mlflow" (a tracking store or server) or "optuna" (a study storage). SQLite files are not touched
    (the store creates them); a tracking server answers /health."""
    if kind not in ("mlflow", "optuna"):
        raise ValueError(f"kind={kind!r}: choose mlflow or optuna")
    shown = f"{key}={redact_text(str(uri))}"  # as the user typed it
    uri = normalize_uri(uri)
    if not uri or sqlite_file(uri) is not None or scheme(uri) in ("", "file", "sqlite", "databricks"):
        return uri
    if is_server_uri(uri):
        _check_server(uri, shown)
        return uri
    tables = _tables(uri, shown)
    other, want = (OPTUNA_TABLES, "MLflow") if kind == "mlflow" else (MLFLOW_TABLES, "the Optuna study")
    if other <= tables:
        owner = "an Optuna study storage" if kind == "mlflow" else "an MLflow tracking store"
        schema = "mlflow" if kind == "mlflow" else "optuna"
        raise StoreError(f"{shown} holds {owner}: " + APART.format(want=want, schema=schema))
    return uri


def _tables(uri: str, shown: str) -> set[str]:
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    from sqlalchemy.pool import NullPool

    try:
        url = make_url(uri)
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.get_backend_name() == "postgresql" else {}
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except ImportError as exc:
        package = getattr(exc, "name", None) or str(exc)
        extra = DRIVER_PACKAGES.get(package, package)
        raise StoreError(f"{shown}: its database driver {package!r} is not installed "
                         f"(pip install '{extra}')") from None
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise StoreError(f"{shown} is not a database URL SQLAlchemy knows: {redact_text(str(exc))}") from None
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    except Exception as exc:  # noqa: BLE001 - every driver has its own errors; they all become one line
        raise StoreError(f"{shown}: {connection_cause(exc)}") from None
    finally:
        engine.dispose()


def connection_cause(exc: BaseException) -> str:
    """The driver's reason for a failed connection, in one line and without secrets."""
    original = getattr(exc, "orig", None) or exc
    text = " ".join(str(original).split())
    lowered = text.lower()
    if "password authentication failed" in lowered or "authentication failed" in lowered:
        cause = "the server refused the user or password"
    elif "does not exist" in lowered and "database" in lowered:
        cause = "no such database on the server"
    elif "connection refused" in lowered:
        cause = "cannot reach the database server (connection refused)"
    elif "timeout" in lowered or "timed out" in lowered:
        cause = "cannot reach the database server (timed out)"
    elif "could not translate host name" in lowered or "name or service not known" in lowered:
        cause = "unknown host"
    else:
        cause = f"cannot connect ({type(original).__name__})"
    detail = text.rsplit("FATAL:", 1)[-1].strip() if "FATAL:" in text else text
    return redact_text(f"{cause}: {detail[:300]}")


def _check_server(uri: str, shown: str) -> None:
    import requests

    try:
        reply = requests.get(uri.rstrip("/") + "/health", timeout=CONNECT_TIMEOUT_S)
    except requests.RequestException as exc:
        raise StoreError(f"{shown}: cannot reach the MLflow tracking server ({type(exc).__name__})") from None
    if reply.status_code in (401, 403):
        raise StoreError(f"{shown}: the MLflow tracking server refused the credentials (HTTP {reply.status_code};"
                         " set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)")
    if reply.status_code >= 400:
        raise StoreError(f"{shown}: not an MLflow tracking server (GET /health: HTTP {reply.status_code})")


def check_stores(conf: dict) -> None:
    """The orchestration's early check of a resolved config: `tracking.uri` normalized in place and reached,
    and kept apart from the Optuna study of a sweep trial. Raises StoreError."""
    tracking = conf["tracking"]  # required by the schema; optuna_trial only in a sweep's trial
    trial = conf.get("optuna_trial") or {}
    if trial.get("storage"):  # before connecting: this needs no server
        check_apart(trial["storage"], tracking["uri"], "optuna_trial.storage", "tracking.uri")
    tracking["uri"] = check_store(tracking["uri"], "tracking.uri", "mlflow")


@contextlib.contextmanager
def store_lock(uri: str | None, purpose: str) -> Iterator[None]:
    """Serialise a first-time set-up (`purpose`, e.g. "mlflow-setup") across processes sharing a store."""
    db = sqlite_file(uri)
    if db is not None:
        from filelock import FileLock

        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db.with_name(db.name + ".lock"))):
            yield
        return
    if uri and scheme(normalize_uri(uri)).startswith("postgresql"):
        with advisory_lock(normalize_uri(uri), purpose):
            yield
        return
    yield


@contextlib.contextmanager
def advisory_lock(uri: str, purpose: str) -> Iterator[None]:
    """A session-level advisory lock: released when the connection closes, so a killed holder frees it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    key = int.from_bytes(hashlib.sha256(f"kdexp:{purpose}".encode()).digest()[:8], "big", signed=True)
    engine = create_engine(uri, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    finally:
        engine.dispose()


def already_exists(exc: BaseException) -> bool:
    """A database's "table/row already exists" (SQLite, PostgreSQL, MySQL, MLflow's RESOURCE_ALREADY_EXISTS)."""
    text = f"{type(exc).__name__} {exc} {getattr(exc, 'orig', '')} {getattr(exc, 'error_code', '')}".lower()
    return any(marker in text for marker in ALREADY_EXISTS)


def tolerate_concurrent_creator(open_store, attempts: int = SETUP_ATTEMPTS):
    """`open_store()`, opened again while it fails with "already exists" or with a schema still being migrated by
    a creator outside our lock; opening again re-checks every table and the schema version.

    Args:
        open_store: creates (if new) and opens a store, raising on a missing or outdated table.
        attempts: how many openings before the last error is raised.
    Returns:
        What `open_store` returned."""
    for attempt in range(1, attempts + 1):
        try:
            return open_store()
        except Exception as exc:  # noqa: BLE001 - each driver raises its own "exists"
            migrating = any(m in str(exc) for m in ("out-of-date database schema", "Online migration expected"))
            if attempt == attempts or not (already_exists(exc) or migrating):
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def open_tracking_store(uri: str):
    """An MlflowClient on `uri`, whose tables are created and migrated first if the store is new, one process
    at a time (store_lock); a tracking server or an existing store is only opened.

    Args:
        uri: a normalized MLflow tracking URI (check_store's result).
    Returns:
        mlflow.MlflowClient on the store."""
    from mlflow.tracking import MlflowClient

    if is_server_uri(uri):  # the server made its own tables
        return MlflowClient(tracking_uri=uri)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial ... tables": ours
    with store_lock(uri, "mlflow-setup"):
        return tolerate_concurrent_creator(lambda: MlflowClient(tracking_uri=uri))


def ensure_experiment(client, uri: str, name: str, location: str | None) -> str:
    """The id of experiment `name`, created if missing: two processes creating it at once end with one.

    Args:
        client: an MlflowClient on `uri` (open_tracking_store).
        uri: the store, for the lock.
        name: the experiment's name.
        location: artifact location of a new experiment (artifact_location), None for MLflow's default.
    Returns:
        The experiment id."""
    with store_lock(uri, "mlflow-setup"):
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:  # created meanwhile by a process outside our lock (a tracking server has none)
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id
