"""kdexp.tracking.stores: a store is checked once, before anything is created, and a bad one is one clean line
(the key, the cause, the password masked); MLflow and Optuna are kept out of each other's database."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from kdexp.tracking.stores import (
    StoreError,
    artifact_location,
    check_apart,
    check_store,
    check_stores,
    normalize_uri,
    store_lock,
)

APP = Path(__file__).resolve().parents[1] / "sweep_app" / "app.py"
PW = "Check-Secret-31"


def one_line_error(call, *args) -> str:
    with pytest.raises(StoreError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message and PW not in message
    return message


def test_uri_conventions(tmp_path):
    assert normalize_uri("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_uri("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_uri("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"  # a chosen driver stays
    assert normalize_uri("http://h:5000") == "http://h:5000" and normalize_uri(None) is None
    # One rule for the artifact location of a new experiment: local for a database, the server's for http.
    assert artifact_location("sqlite:///x/mlflow.db", tmp_path / "art") == (tmp_path / "art").as_uri()
    assert artifact_location("postgresql+psycopg://u@h/db", tmp_path / "art") == (tmp_path / "art").as_uri()
    assert artifact_location("http://127.0.0.1:5000", tmp_path / "art") is None
    assert artifact_location("https://mlflow.lab", "s3://bucket/x") is None
    assert artifact_location("sqlite:///x/mlflow.db", "s3://bucket/x") == "s3://bucket/x"


def test_unreachable_server_and_missing_driver(monkeypatch):
    message = one_line_error(check_store, f"postgresql://kd:{PW}@127.0.0.1:1/db", "tracking.uri")
    assert message.startswith("tracking.uri=postgresql://kd:***@127.0.0.1:1/db: cannot reach")
    assert "connection refused" in message
    message = one_line_error(check_store, "http://127.0.0.1:1", "tracking.uri")
    assert message == "tracking.uri=http://127.0.0.1:1: cannot reach the MLflow tracking server (ConnectionError)"
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as on a machine without kdexp[postgres]
    message = one_line_error(check_store, f"postgresql://kd:{PW}@127.0.0.1:1/db", "hydra.sweeper.storage", "optuna")
    assert message == ("hydra.sweeper.storage=postgresql://kd:***@127.0.0.1:1/db: its database driver "
                       "'psycopg' is not installed (pip install 'kdexp[postgres]')")
    assert check_store("sqlite:///nowhere/mlflow.db", "tracking.uri") == "sqlite:///nowhere/mlflow.db"  # not touched


def test_one_database_for_both_is_refused_before_anything_is_written():
    url = f"postgresql://kd:{PW}@db:5432/lab"
    message = one_line_error(check_apart, url, url.replace("postgresql", "postgresql+psycopg"), "a", "b")
    assert message.startswith("a=postgresql://kd:***@db:5432/lab and b=postgresql+psycopg://kd:***@db:5432/lab are")
    assert "CREATE SCHEMA optuna; then add ?options=-csearch_path%3Doptuna" in message
    check_apart(url, url.replace("/lab", "/lab2"), "a", "b")  # other database
    check_apart(url + "?options=-csearch_path%3Doptuna", url, "a", "b")  # other schema
    check_apart("sqlite:///a/optuna.db", "sqlite:///a/mlflow.db", "a", "b")
    conf = {"tracking": {"uri": url}, "optuna_trial": {"storage": url}}
    with pytest.raises(StoreError, match="optuna_trial.storage=.* and tracking.uri=.* are the same database"):
        check_stores(conf)


def test_wrong_password_and_missing_database(postgres):
    url = postgres.add_database("checks", "checker", PW)
    assert check_store(url, "tracking.uri") == url
    message = one_line_error(check_store, url.replace(PW, "not-the-password"), "tracking.uri")
    assert message.endswith('the server refused the user or password: password authentication failed for '
                            'user "checker"')
    message = one_line_error(check_store, url.replace("/checks", "/nodb"), "hydra.sweeper.storage", "optuna")
    assert message.endswith('no such database on the server: database "nodb" does not exist')


def test_each_refuses_the_others_database_and_the_schema_way_works(postgres):
    from mlflow import MlflowClient

    url = postgres.add_database("shared", "sharer", PW)
    MlflowClient(url).search_experiments()  # MLflow creates its tables in the public schema
    message = one_line_error(check_store, url, "hydra.sweeper.storage", "optuna")
    assert "holds an MLflow tracking store" in message
    # What the message says to do: a schema of Optuna's own in the same database.
    postgres.sql("CREATE SCHEMA optuna AUTHORIZATION sharer", database="shared")
    in_schema = url + "?options=-csearch_path%3Doptuna"
    assert check_store(in_schema, "hydra.sweeper.storage", "optuna") == in_schema
    study = optuna.create_study(storage=in_schema, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(MlflowClient(url).search_experiments()) == 1  # MLflow still reads its store
    assert len(optuna.load_study(study_name="s", storage=in_schema).trials) == 2
    optuna_db = postgres.add_database("optuna_only", "sharer", PW)
    optuna.create_study(storage=optuna_db, study_name="t")
    assert "holds an Optuna study storage" in one_line_error(check_store, optuna_db, "tracking.uri")


def test_store_lock_serialises_processes_on_postgres(postgres):
    url = postgres.url()
    inside, overlaps = [], []

    def hold():
        with store_lock(url, "test-lock"):
            overlaps.append(len(inside))
            inside.append(1)
            time.sleep(0.3)
            inside.pop()

    threads = [threading.Thread(target=hold) for _ in range(3)]  # one connection each, as processes have
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert overlaps == [0, 0, 0]


def sweep_app(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(APP), "-m", "hydra/sweeper=kdexp_optuna", "x=interval(0,1)",
                           "hydra.sweeper.n_trials=2", *overrides], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.slow
def test_the_sweeper_stops_on_a_bad_store_with_one_line_and_exit_2(postgres, tmp_path):
    url = postgres.add_database("sweepcheck", "sweeper", PW)
    wrong = sweep_app(f"hydra.sweeper.storage={url.replace(PW, 'Wrong-Secret-32')}",
                      f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path)
    assert wrong.returncode == 2, wrong.stderr[-3000:]
    assert wrong.stderr.strip().splitlines() == [(
        f"kdexp_optuna: error: hydra.sweeper.storage=postgresql+psycopg://sweeper:***@127.0.0.1:{postgres.port}/"
        'sweepcheck: the server refused the user or password: password authentication failed for user "sweeper"')]
    assert not (tmp_path / "mlflow.db").exists()  # nothing created, so no run left RUNNING
    same = sweep_app(f"hydra.sweeper.storage={url}", f"tracking.uri={url}", cwd=tmp_path)
    assert same.returncode == 2 and "are the same database" in same.stderr and PW not in same.stderr + same.stdout
    assert optuna.get_all_study_summaries(url) == []


@pytest.mark.slow
def test_kdexp_train_stops_on_a_bad_tracking_store(postgres, tmp_path):
    url = postgres.add_database("traincheck", "trainer", PW).replace("+psycopg", "")
    proc = subprocess.run([str(Path(sys.executable).parent / "kdexp-train"), "data=synthetic", "teacher=cnn_small",
                           "student=cnn_tiny", "trainer.max_epochs=1", f"paths.root={tmp_path}",
                           f"tracking.uri={url.replace(PW, 'Wrong-Secret-33')}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [(
        f"kdexp-train: error: tracking.uri=postgresql://trainer:***@127.0.0.1:{postgres.port}/traincheck: "
        'the server refused the user or password: password authentication failed for user "trainer"')]
    assert "Wrong-Secret-33" not in proc.stdout + "".join(p.read_text() for p in tmp_path.rglob("*.yaml"))
    from mlflow import MlflowClient

    assert MlflowClient(url).search_runs(["0"]) == []  # no run left RUNNING (nor any other)
