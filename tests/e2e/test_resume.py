"""Resume after kill -9 and training on 2 DDP processes, through the real `kdexp-train`.

Resume: a run killed mid-epoch (of the teacher, then of the distilled student) is run again with the same
command; it continues from the last completed epoch, ends with bitwise the weights of an uninterrupted run
(CPU, deterministic), and leaves one FINISHED MLflow run per trained model, none RUNNING, no epoch twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
# Small but real: digits, a 5-epoch teacher, a 4-epoch student, deterministic kernels. No MLflow Models and no
# ONNX/.pt2 exports: nothing here reads them, and they cost seconds in each of the ~15 runs (CI time).
RUN = ["data=synthetic", "data.num_samples=600", "data.num_test=100", "data.image_size=8", "teacher=cnn_small",
       "student=cnn_tiny", "teacher.max_epochs=5", "trainer.max_epochs=4", "trainer.deterministic=true",
       "eval.latency_repeats=2", "eval.latency_batch=8", "baseline=false", "tracking.log_model=false",
       "tracking.export_student=false"]


def command(root: Path, *extra: str) -> tuple[list[str], dict]:
    env = {**os.environ, "KDEXP_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    exe = Path(sys.executable).parent / "kdexp-train"
    flags = [a for a in extra if a.startswith("-")]  # Hydra's flags (-m) before the overrides
    return [str(exe), *flags, *RUN, f"paths.root={root}", *(a for a in extra if a not in flags)], env


def run_to_end(root: Path, *extra: str) -> str:
    cmd, env = command(root, *extra)
    done = subprocess.run(cmd, cwd=root.parent, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def kill_when(root: Path, marker: str, sig: int = signal.SIGKILL) -> str:
    """Start the run and send it `sig` as soon as `marker` is printed (a progress line: the epoch after it has
    begun, so the kill lands mid-epoch)."""
    proc, seen = start_until(root, marker)
    proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:  # it ignored the signal: never leave it behind, and fail
        proc.kill()
        proc.wait()
        raise AssertionError(f"the run ignored signal {sig} for 30 s") from None
    return seen


def start_until(root: Path, marker: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start `kdexp-train` and read its output until `marker` is printed; the process and what it printed.
    Fails (and kills it) if it ends or 600 s pass without the marker."""
    cmd, env = command(root, *extra)
    proc = subprocess.Popen(cmd, cwd=root.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen, deadline = [], time.monotonic() + 600
    for line in proc.stdout:
        seen.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    if not any(marker in line for line in seen):
        proc.kill()
        proc.wait()
        raise AssertionError("".join(seen)[-3000:])
    return proc, "".join(seen)


def store(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdexp")
    return client, client.search_runs([exp.experiment_id])


def final_weights(root: Path) -> tuple[dict, dict]:
    (teacher,) = (root / "cache" / "models").glob("*/model.pt")
    (student,) = (root / "runs").rglob("student.pt")
    return torch.load(teacher, weights_only=True), torch.load(student, weights_only=True)


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("straight") / "outputs"
    run_to_end(root)
    return root


@pytest.mark.parametrize("marker, killed_role, sig", [
    ("teacher cnn_small | epoch 2/5", "teacher", signal.SIGKILL), ("student kd | epoch 2/4", "student", signal.SIGKILL),
    ("student kd | epoch 2/4", "student", signal.SIGTERM),  # a scheduler's preemption: stopped, not failed
], ids=["teacher-SIGKILL", "student-SIGKILL", "student-SIGTERM"])
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted, marker, killed_role, sig):
    root = tmp_path / "outputs"
    kill_when(root, marker, sig)
    ckpts = list((root / "cache" / "checkpoints").rglob("last.ckpt"))
    assert ckpts, "the killed training left a checkpoint of its last completed epoch"
    client, before = store(root)
    (killed,) = [r for r in before if r.info.status != "FINISHED"]
    assert killed.data.tags["kdexp.role"] == killed_role
    # kill -9 leaves the run RUNNING; SIGTERM ends it KILLED and marked interrupted, never FAILED
    assert killed.info.status == ("RUNNING" if sig == signal.SIGKILL else "KILLED")

    log = run_to_end(root)
    assert "(resumed)" in log
    client, after = store(root)
    assert sorted(r.info.status for r in after) == ["FINISHED", "FINISHED"]  # teacher + student, none RUNNING
    resumed = client.get_run(killed.info.run_id)  # the killed run itself was continued and finished
    assert resumed.info.status == "FINISHED" and resumed.data.tags.get("kdexp.resumed") == "true"
    epochs = 5 if killed_role == "teacher" else 4
    steps = [m.step for m in client.get_metric_history(killed.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(epochs))  # every epoch logged exactly once
    assert not list((root / "cache" / "checkpoints").rglob("*.ckpt"))  # dropped once the result is kept
    for ours, straight in zip(final_weights(root), final_weights(uninterrupted)):
        assert equal(ours, straight)  # bitwise the uninterrupted run's teacher and student


def test_two_ddp_processes_train_every_stage_and_record_once(tmp_path):
    """The default pipeline on 2 CPU processes (gloo): no hang (the timeout fails the test instead), one
    MLflow run per trained model, the summary printed once."""
    root = tmp_path / "outputs"
    log = run_to_end(root, "trainer.accelerator=cpu", "trainer.devices=2", "+trainer.strategy=ddp",
                     "baseline=true", "teacher.max_epochs=2", "trainer.max_epochs=2")
    client, found = store(root)
    roles = sorted(r.data.tags["kdexp.role"] for r in found)
    assert roles == ["baseline", "student", "teacher"] and {r.info.status for r in found} == {"FINISHED"}
    assert log.count("| model | ") == 1  # the summary table, from rank 0 only
    assert len(list((root / "cache" / "models").glob("*/model.pt"))) == 2  # teacher and baseline, published once
    student = [r for r in found if r.data.tags["kdexp.role"] == "student"][0]
    assert [m.step for m in client.get_metric_history(student.info.run_id, "train/loss")] == [0, 1]


def test_a_trial_killed_with_its_sweep_is_asked_again_and_resumes(tmp_path):
    """kill -9 the sweeper mid-trial; the same command fails the trial once its heartbeat is stale, asks it
    again with the same params, and that job continues the killed training (checkpoint and MLflow run)."""
    import optuna

    root = tmp_path / "outputs"
    sweep = ["-m", "+sweep=kd_temperature", "hydra.sweeper.study_name=resume", "hydra.sweeper.n_trials=2",
             "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3", "teacher.max_epochs=2",
             "hydra.sweeper.n_jobs=1"]  # one trial asked at a time (the official default asks 2 per batch)
    proc, _ = start_until(root, "trial 1/2 student kd | epoch 2/4", *sweep)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert list((root / "cache" / "checkpoints").glob("student-*/distill/last.ckpt"))

    run_to_end(root, *sweep)
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{root / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert sorted(states) == ["COMPLETE", "COMPLETE", "FAIL"]  # the killed trial, its retry, one new trial
    killed = next(t for t in study.trials if t.state.name == "FAIL")
    retry = next(t for t in study.trials if optuna.storages.RetryFailedTrialCallback.retried_trial_number(t)
                 == killed.number)
    assert retry.params == killed.params and retry.state.name == "COMPLETE"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweep-kd_temperature")
    found = client.search_runs([exp.experiment_id])
    assert all(r.info.status == "FINISHED" for r in found)
    students = [r for r in found if r.data.tags.get("kdexp.role") == "student"]
    assert len(students) == 2  # one run per trained student: the killed trial's run was continued
    resumed = next(r for r in students if r.data.tags.get("kdexp.resumed") == "true")
    assert resumed.data.tags["optuna.trial_number"] == str(retry.number)
    steps = sorted(m.step for m in client.get_metric_history(resumed.info.run_id, "train/loss"))
    assert steps == [0, 1, 2, 3]


def test_a_matrix_killed_mid_cell_resumes_that_cell_and_skips_the_finished_ones(tmp_path):
    root = tmp_path / "outputs"
    matrix = ["-m", "matrix=smoke", "trainer.max_epochs=4"]
    proc, _ = start_until(root, "student kd | epoch 2/4", *matrix)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)

    log = run_to_end(root, *matrix)
    assert "skipping finished cell" in log
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("matrix-smoke").experiment_id])
    assert {r.info.status for r in found} == {"FINISHED"}
    students = [r for r in found if r.data.tags["kdexp.role"] == "student"]
    assert len(students) == 4 and len({r.data.tags["kdexp.cell"] for r in students}) == 4  # one run per cell
    (resumed,) = [r for r in students if r.data.tags.get("kdexp.resumed") == "true"]
    assert resumed.data.tags["kdexp.method"] == "kd"
    assert sorted(m.step for m in client.get_metric_history(resumed.info.run_id, "train/loss")) == [0, 1, 2, 3]


def test_a_second_matrix_process_waits_for_the_cell_the_first_is_training(tmp_path):
    """Two processes given the same cell: one trains it, the other waits, then skips it as finished."""
    root = tmp_path / "outputs"
    # 50 epochs: the first must still hold the cell once the second's launcher has prepared the stores (seconds;
    # 30 were not always enough on a busy 2-core machine)
    cell = ["-m", "matrix=smoke", "distill=kd", "seed=0", "trainer.max_epochs=50"]
    first, _ = start_until(root, "student kd | epoch 1/50", *cell)
    second = run_to_end(root, *cell)
    rest = first.stdout.read()
    assert first.wait(180) == 0, rest[-3000:]
    assert "is being trained by another process; waiting" in second and "skipping finished cell" in second
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("matrix-smoke").experiment_id])
    (student,) = [r for r in found if r.data.tags["kdexp.role"] == "student"]
    assert student.info.status == "FINISHED" and "kdexp.resumed" not in student.data.tags
    assert sorted(m.step for m in client.get_metric_history(student.info.run_id, "train/loss")) == list(range(50))
