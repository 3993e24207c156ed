"""The SLURM set-up rehearsed with submitit's local executor (cluster=local_matrix / local_sweep): a 2-cell
matrix and a 3-trial sweep whose jobs are separate processes, on a shared PostgreSQL study and MLflow store
reached with URIs that hold no password (libpq's PGPASSWORD, as on a cluster). The SLURM configs compose."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from tests.conftest import compose_train

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PASSWORD = f"Env-Secret-{uuid.uuid4().hex[:12]}"
BIN = Path(sys.executable).parent
TINY = ["data=synthetic", "data.num_samples=300", "data.image_size=8", "teacher=cnn_small", "student=cnn_tiny",
        "trainer.max_epochs=1", "teacher.max_epochs=1", "eval.latency_repeats=2", "eval.latency_batch=8"]


def start(name: str, args: list[str], work: Path, env: dict) -> tuple[subprocess.Popen, Path]:
    out = work / f"{name}.out"
    with open(out, "w") as handle:
        return subprocess.Popen([str(BIN / "kdexp-train"), *args], cwd=work, env=env, stdout=handle,
                                stderr=subprocess.STDOUT), out


def finish(started, timeout: float = 600) -> str:
    proc, out = started
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, out.read_text()[-5000:]
    return out.read_text()


@pytest.fixture(scope="module")
def cluster(postgres, tmp_path_factory):
    work = tmp_path_factory.mktemp("cluster")
    tracking = postgres.add_database("sub_mlflow", "lab", PASSWORD).replace(f":{PASSWORD}", "")
    storage = postgres.add_database("sub_optuna", "lab", PASSWORD).replace(f":{PASSWORD}", "")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KDEXP_OPTUNA", "PG"))}
    env.update(KDEXP_OFFLINE="1", OMP_NUM_THREADS="1", PGPASSWORD=PASSWORD, KDEXP_OPTUNA_STORAGE=storage,
               MLFLOW_TRACKING_URI=tracking)
    matrix = start("matrix", ["-m", "matrix=smoke", "trainer.max_epochs=1", "distill=kd", "seed=0,1",
                              "cluster=local_matrix", "hydra.sweep.dir=multirun/matrix"], work, env)
    sweep = start("sweep", ["-m", "+sweep=kd_temperature", *TINY, "cluster=local_sweep", "hydra.sweeper.n_trials=3",
                            "hydra.sweeper.study_name=local", "hydra.sweep.dir=multirun/sweep"], work, env)
    out = {"matrix": finish(matrix), "sweep": finish(sweep)}
    return {"work": work, "tracking": tracking, "storage": storage, "out": out, "env": env}


def job_ids(sweep_dir: Path) -> list[str]:
    """hydra.job.id of every job: submitit's job id, for the local executor the job's process id."""
    return sorted(str(OmegaConf.load(p).hydra.job.id) for p in sweep_dir.glob("*/.hydra/hydra.yaml"))


def students(tracking: str, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`kdexp.role` = 'student'")


@pytest.fixture
def pgpassword(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", PASSWORD)  # this process reads the stores as the jobs did


def test_matrix_cells_run_as_separate_jobs(cluster, pgpassword):
    ids = job_ids(cluster["work"] / "multirun" / "matrix")
    assert len(ids) == 2 and len(set(ids)) == 2 and str(os.getpid()) not in ids
    runs = students(cluster["tracking"], "matrix-smoke")
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1"] and {r.info.status for r in runs} == {"FINISHED"}
    assert "Submitit 'local' sweep output dir" in cluster["out"]["matrix"]


def test_sweep_trials_run_as_separate_jobs_on_the_shared_study(cluster, pgpassword):
    ids = job_ids(cluster["work"] / "multirun" / "sweep")
    assert len(ids) == 3 and len(set(ids)) == 3  # n_jobs=3: one batch of 3 trial processes
    study = optuna.load_study(study_name="local", storage=cluster["storage"])
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    runs = students(cluster["tracking"], "sweep-kd_temperature")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == [0, 1, 2]
    values = {t.number: t.value for t in study.trials}
    for run in runs:
        assert run.data.metrics["student/val_acc"] == pytest.approx(values[int(run.data.tags["optuna.trial_number"])])


def test_no_password_in_submitit_pickles_or_anywhere(cluster):
    pickles = list(cluster["work"].rglob("*.pkl"))
    assert len(pickles) >= 10  # submitted functions and results of the 5 jobs
    leaks = [p for p in cluster["work"].rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert leaks == [] and all(PASSWORD not in text for text in cluster["out"].values())


@pytest.mark.parametrize(("name", "overrides"), [
    ("slurm_matrix", ["matrix=smoke"]),
    ("slurm_sweep", ["+sweep=kd_temperature"]),
])
def test_slurm_configs_compose(name, overrides):
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    compose_train()  # registers kdexp's config store entries
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, f"cluster={name}"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 1
    if name == "slurm_sweep":
        assert cfg.hydra.sweeper.n_jobs == 8 and OmegaConf.to_container(launcher, resolve=False)[
            "array_parallelism"] == "${hydra.sweeper.n_jobs}"
