"""kdexp_optuna on foreign Hydra apps, through real `-m` runs: Hydra's own example app (tests/sweep/official) under
-Werror leaves no MLflow store behind and says when a persistent study is complete; a bad sampler is one line,
exit 2, nothing written; optuna-dashboard reads a kdexp study's metric names and trial -> MLflow run links."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

OFFICIAL = Path(__file__).parent / "official"
TOY = Path(__file__).parents[1] / "sweep_app" / "app.py"
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run([sys.executable, *cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def sphere(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return run(["-Werror", str(OFFICIAL / "example" / "sphere.py"), "-m", f"hydra.sweep.dir={tmp_path / 'multirun'}",
                "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1", *extra], tmp_path)


def test_foreign_app_persistent_study_no_mlflow_and_a_complete_study_says_so(tmp_path):
    storage = f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}"
    first = sphere(tmp_path, storage, "hydra.sweeper.study_name=s")
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()  # not a tracking app
    assert "MLflow parent run: -" in first.stdout + first.stderr and "MLflow: parent run" not in first.stdout
    again = sphere(tmp_path, storage, "hydra.sweeper.study_name=s")
    assert again.returncode == 0, again.stderr[-3000:]
    (line,) = [x for x in (again.stdout + again.stderr).splitlines() if "already holds" in x]
    assert "study 's' already holds 3 of n_trials=3 trials: nothing to run" in line
    assert "hydra.sweeper.n_trials=6" in line
    more = sphere(tmp_path, storage, "hydra.sweeper.study_name=s", "hydra.sweeper.n_trials=5")
    import optuna

    assert more.returncode == 0 and len(optuna.load_study(study_name="s", storage=storage.split("=", 1)[1]).trials) == 5


@pytest.mark.parametrize(("override", "message"), [
    ("hydra.sweeper.sampler._target_=collections.OrderedDict",
     "kdexp_optuna: error: hydra.sweeper.sampler._target_=collections.OrderedDict: not an Optuna sampler; choose "
     "hydra/sweeper/sampler=tpe|random|cmaes|nsgaii|motpe|grid|qmc or a _target_ such as: "),
    ("+hydra.sweeper.sampler.name=bayes",
     "kdexp_optuna: error: hydra.sweeper.sampler.name=bayes: unknown sampler; choose one of: tpe, random, cmaes, "
     "nsgaii, motpe, grid, qmc"),
    ("+hydra.sweeper.sampler.n_startup=2", "kdexp_optuna: error: hydra.sweeper.sampler.n_startup: not an argument "
     "of TPESampler; it takes: "),
])
def test_a_bad_sampler_is_one_line_exit_2_and_nothing_written(tmp_path, override, message):
    done = sphere(tmp_path, f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}", override)
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(message)
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "multirun").exists()


BAD_SAMPLER_FILE = """# @package _global_
defaults:
  - override /hydra/sweeper: kdexp_optuna
  - override /hydra/sweeper/sampler: bayes
"""


@pytest.mark.parametrize("where", ["command line", "hparams_search file"])
def test_an_unknown_sampler_choice_of_kdexp_train_is_one_line_exit_2(tmp_path, where):
    if where == "command line":
        args = ["+sweep=kd_temperature", "hydra/sweeper/sampler=bayes"]
    else:  # chosen in a YAML file's defaults list, where Hydra finds it while composing
        (tmp_path / "conf" / "hparams_search").mkdir(parents=True)
        (tmp_path / "conf" / "hparams_search" / "mine.yaml").write_text(BAD_SAMPLER_FILE)
        args = ["--config-dir", str(tmp_path / "conf"), "hparams_search=mine"]
    done = subprocess.run([str(Path(sys.executable).parent / "kdexp-train"), "-m", *args,
                           f"paths.root={tmp_path / 'out'}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.strip() == (
        "kdexp-train: error: hydra/sweeper/sampler=bayes: unknown sampler; choose one of: "
        "cmaes, grid, motpe, nsgaii, qmc, random, tpe")
    assert not (tmp_path / "out").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_optuna_dashboard_reads_metric_names_and_run_links_of_a_kdexp_study(tmp_path):
    from mlflow import MlflowClient

    storage, tracking = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = run([str(TOY), "-m", "hydra/sweeper=kdexp_optuna", f"hydra.sweep.dir={tmp_path / 'multirun'}",
                 f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=toy", "hydra.sweeper.n_trials=3",
                 "hydra.sweeper.objectives=[{metric:student/val_acc,direction:maximize}]", "x=interval(0,1)",
                 f"tracking.uri={tracking}", "epochs=2"], tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", f"import optuna_dashboard; optuna_dashboard.run_server({storage!r}, "
                               f"host='127.0.0.1', port={port})"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "optuna-dashboard did not start"
                time.sleep(0.3)
        (study,) = [s for s in studies if s["study_name"] == "toy"]
        detail = get(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert detail["objective_names"] == ["student/val_acc"] and detail["directions"] == ["maximize"]
    trials = detail["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2] and all(t["state"] == "Complete" for t in trials)
    client = MlflowClient(tracking)
    for trial in trials:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        mlflow_run = client.get_run(attrs["mlflow_run_id"])  # the dashboard's trial leads to its MLflow run
        assert mlflow_run.info.run_name == f"trial-{trial['number'] + 1:03d} toy"
        assert mlflow_run.data.tags["optuna.trial_number"] == str(trial["number"])
        assert float(trial["values"][0]) == pytest.approx(mlflow_run.data.metrics["student/val_acc"])
