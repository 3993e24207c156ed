"""A lab's shared stores through the real CLIs: one Optuna study on PostgreSQL worked by 4 sweeper processes at
once, an `mlflow server` (PostgreSQL backend, its own artifact store) for a matrix, its re-run and its report,
and a unique password in the URIs of a sweep and a matrix that must be found nowhere afterwards.

Everything starts at once where it can (the server takes seconds to start): the matrix with the password in
its URI tracks straight into PostgreSQL while the server starts; then the sweep and the server's matrix.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.servers import MlflowServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SECRET = f"Kd-Secret-{uuid.uuid4().hex[:12]}"  # the password of the role `kd`: in the sweep's and a matrix's URIs
BIN = Path(sys.executable).parent
N_TRIALS, WORKERS = 8, 4
TINY = ["data=synthetic", "data.num_samples=300", "data.image_size=8", "teacher=cnn_small", "student=cnn_tiny",
        "trainer.max_epochs=1", "teacher.max_epochs=1", "eval.latency_repeats=2", "eval.latency_batch=8"]
MATRIX = ["-m", "matrix=smoke", "trainer.max_epochs=1"]


def start(name: str, args: list[str], work: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "KDEXP_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env = {k: v for k, v in env.items() if not k.startswith(("MLFLOW_", "KDEXP_OPTUNA", "PG"))}
    out = work / f"{name}.out"
    with open(out, "w") as handle:  # a file, not a pipe: a full pipe would block the process
        proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=work, env=env, stdout=handle,
                                stderr=subprocess.STDOUT)
    return proc, out


def finish(started: tuple[subprocess.Popen, Path], timeout: float = 600) -> str:
    proc, out = started
    proc.wait(timeout=timeout)
    text = out.read_text()
    assert proc.returncode == 0, text[-5000:]
    return text


@pytest.fixture(scope="module")
def lab(postgres, tmp_path_factory):
    work = tmp_path_factory.mktemp("lab")
    optuna_url = postgres.add_database("optuna", "kd", SECRET)
    direct_url = postgres.add_database("mlflow_direct", "kd", SECRET).replace("+psycopg", "")  # bare postgresql://
    server_db = postgres.add_database("mlflow_server", "srv", "srv-password")
    server = MlflowServer(server_db, tmp_path_factory.mktemp("server-artifacts"), work / "mlflow-server.log")
    try:
        # The matrix with the password in its URI: one cell, straight into PostgreSQL, while the server starts.
        secret_matrix = start("secret_matrix", ["kdexp-train", *MATRIX, "distill=kd", "seed=0",
                                                f"tracking.uri={direct_url}", "tracking.experiment=direct"], work)
        server.wait()
        sweep_args = ["kdexp-train", "-m", "+sweep=kd_temperature", *TINY, "hydra.sweeper.study_name=shared",
                      f"hydra.sweeper.storage={optuna_url}", f"hydra.sweeper.n_trials={N_TRIALS}",
                      f"tracking.uri={server.url}"]
        sweepers = [start(f"sweep{i}", [*sweep_args, f"hydra.sweep.dir=multirun/sweep{i}"], work)
                    for i in range(WORKERS)]
        served = ["kdexp-train", *MATRIX, f"tracking.uri={server.url}"]
        outputs = {"matrix": finish(start("matrix", served, work))}
        outputs["secret_matrix"] = finish(secret_matrix)
        outputs.update({f"sweep{i}": finish(p) for i, p in enumerate(sweepers)})
        outputs["rerun"] = finish(start("rerun", served, work))
        outputs["report"] = finish(start("report", ["kdexp-report", "--matrix", "smoke", "--uri", server.url], work))
        yield {"work": work, "server": server, "postgres": postgres, "out": outputs, "optuna": optuna_url,
               "direct": direct_url}
    finally:
        server.stop()


def runs(uri: str, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def role(all_runs: list, name: str) -> list:
    return [r for r in all_runs if r.data.tags.get("kdexp.role") == name]


def test_four_sweepers_share_one_study_and_stop_at_n_trials(lab):
    study = optuna.load_study(study_name="shared", storage=lab["optuna"])
    trials = study.get_trials()
    assert len(trials) == N_TRIALS and [t.number for t in trials] == list(range(N_TRIALS))
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 4  # the median pruner's startup trials
    for i in range(WORKERS):  # every worker opened the same study and shared its budget (not 4 x 8 trials)
        assert "kdexp_optuna: study 'shared' (postgresql+psycopg://kd:***@" in lab["out"][f"sweep{i}"]


def test_one_child_run_per_trial_on_the_server(lab):
    all_runs = runs(lab["server"].url, "sweep-kd_temperature")
    (parent,) = role(all_runs, "sweep")  # one parent run for the 4 sweepers
    students = role(all_runs, "student")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in students) == list(range(N_TRIALS))
    assert {r.data.tags["mlflow.parentRunId"] for r in students} == {parent.info.run_id}
    study = optuna.load_study(study_name="shared", storage=lab["optuna"])
    for run in students:
        trial = study.trials[int(run.data.tags["optuna.trial_number"])]
        if trial.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED"
            assert run.data.metrics["student/val_acc"] == pytest.approx(trial.value)
        else:
            assert run.info.status == "KILLED" and run.data.tags["kdexp.trial_state"] == "PRUNED"


def test_artifacts_go_to_the_servers_store_only(lab):
    from mlflow import MlflowClient

    server, work = lab["server"], lab["work"]
    client = MlflowClient(server.url)
    for name in ("sweep-kd_temperature", "matrix-smoke"):
        assert client.get_experiment_by_name(name).artifact_location.startswith("mlflow-artifacts:")
    stored = {p.name for p in server.artifacts.rglob("*") if p.is_file()}
    assert {"student.pt", "config.yaml", "metrics.json", "summary.md", "table.md", "results.csv"} <= stored
    assert "best.json" in stored  # the sweep's parent run
    matrix_students = role(runs(server.url, "matrix-smoke"), "student")
    weights = [p for p in server.artifacts.rglob("student.pt")]
    finished_sweep = [r for r in role(runs(server.url, "sweep-kd_temperature"), "student")
                      if r.info.status == "FINISHED"]
    assert len(weights) == len(matrix_students) + len(finished_sweep)
    local = [p for p in work.rglob("*") if p.name in ("mlartifacts", "mlruns") and "direct" not in str(p)]
    # The only local artifact folder is the one of the experiment tracked straight into PostgreSQL.
    assert [p.relative_to(work) for p in local] == [Path("outputs/mlartifacts")]
    direct = {p.parent.parent.name for p in (work / "outputs" / "mlartifacts").rglob("student.pt")}
    assert len(direct) == 1  # one run of the secret matrix


def test_matrix_rerun_skips_finished_cells_and_report_reads_the_server(lab):
    students = role(runs(lab["server"].url, "matrix-smoke"), "student")
    assert len(students) == 4 and {r.info.status for r in students} == {"FINISHED"}
    assert lab["out"]["rerun"].count("skipping finished cell") == 4
    assert "training teacher" not in lab["out"]["rerun"]
    with open(lab["work"] / "outputs" / "reports" / "smoke" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["row"], r["n"]) for r in rows] == [("teacher", "1"), ("none", "2"), ("kd", "2")]
    by_row = {r["row"]: float(r["mean"]) for r in rows}
    for method in ("none", "kd"):  # the table's numbers are the runs' numbers, read back from the server
        accs = [r.data.metrics["student/test_top1"] for r in students if r.data.tags["kdexp.method"] == method]
        assert by_row[method] == pytest.approx(100 * sum(accs) / 2, abs=0.006)  # percent, 2 decimals
    assert len(role(runs(lab["server"].url, "matrix-smoke"), "report")) == 1


def test_the_password_is_masked_where_it_is_recorded(lab):
    (run,) = role(runs(lab["direct"], "direct"), "student")
    port = lab["postgres"].port
    assert run.data.params["tracking.uri"] == f"postgresql://kd:***@127.0.0.1:{port}/mlflow_direct"
    (parent,) = role(runs(lab["server"].url, "sweep-kd_temperature"), "sweep")
    assert parent.data.params["storage"] == f"postgresql+psycopg://kd:***@127.0.0.1:{port}/optuna"
    overrides = next((lab["work"] / "multirun").rglob("overrides.yaml")).read_text()
    assert f"++optuna_trial.storage=postgresql+psycopg://kd:***@127.0.0.1:{port}/optuna" in overrides


def test_the_password_is_nowhere(lab):
    """Not in any database (MLflow's, Optuna's), artifact, run folder, log or captured output."""
    work, server = lab["work"], lab["server"]
    assert SECRET in lab["optuna"] and SECRET in lab["direct"]  # the runs above could only connect with it
    found = {}
    dump = lab["postgres"].dump()
    assert "mlflow_direct" in dump and "student/val_acc" in dump  # the dump holds the stores
    found["database dump"] = dump.count(SECRET)
    for folder in (work, server.artifacts):
        for path in folder.rglob("*"):
            if path.is_file() and SECRET.encode() in path.read_bytes():
                found[str(path)] = path.read_bytes().count(SECRET.encode())
    found["captured output"] = sum(text.count(SECRET) for text in lab["out"].values())
    assert {k: v for k, v in found.items() if v} == {}
    assert len(list(work.rglob("*"))) > 100  # run folders, .hydra files, logs, caches were all searched
