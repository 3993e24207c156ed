"""An Optuna sweep through the real CLI: `kdexp-train -m +sweep=kd_temperature` on tiny synthetic data, with a
learning-rate choice that makes pruning certain; then the pruning benchmark's --quick mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
GOOD_LR, BAD_LR = 0.01, 50.0  # Adam at lr 50 wrecks the student in its first steps: chance accuracy
LR = "student_lr.cnn_tiny"  # the student's lr only: recipe.lr would also give every lr its own teacher
PARAM = f"+{LR}"  # a param is named by its override key, as in the official plugin
# No MLflow Models or student exports per trial: the tests read the study, run tags and metrics (CI time).
TINY = ["data=synthetic", "data.num_samples=300", "data.image_size=8", "teacher=cnn_small",
        "student=cnn_tiny", "trainer.max_epochs=3", "teacher.max_epochs=3", "eval.latency_repeats=2",
        "eval.latency_batch=8", "tracking.log_model=false", "tracking.export_student=false"]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDEXP_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    root = cwd / "out"
    storage = f"sqlite:///{root / 'optuna.db'}"  # the sweep file's default: ${paths.root}/optuna.db
    root.mkdir()
    # Trials 0-1 (the median pruner's 2 startup trials) learn; trial 2 cannot, so it must be pruned
    # at epoch 0 whatever the sampler draws for trials 3-5. ask() serves enqueued trials first.
    study = optuna.create_study(storage=storage, study_name="e2e", direction="maximize")
    for lr in (GOOD_LR, GOOD_LR, BAD_LR):
        study.enqueue_trial({PARAM: lr})
    proc = run([str(Path(sys.executable).parent / "kdexp-train"), "-m", "+sweep=kd_temperature", *TINY,
                f"paths.root={root}", "hydra.sweeper.study_name=e2e", "hydra.sweeper.n_trials=6",
                "hydra.sweeper.pruner.n_startup_trials=2", "hydra.sweeper.pruner.n_warmup_steps=0",
                f"+{LR}=choice({GOOD_LR},{BAD_LR})"], cwd)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweep-kd_temperature")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return optuna.load_study(study_name="e2e", storage=storage), runs, proc


def by_role(runs, role: str) -> list:
    return [r for r in runs if r.data.tags.get("kdexp.role") == role]


def test_destructive_trials_are_pruned_in_optuna(sweep):
    study, _, _ = sweep
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert [t.state for t in trials[:3]] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert list(trials[2].intermediate_values) == [0]  # stopped after its first epoch
    for t in trials:
        if t.params[PARAM] == BAD_LR and t.number >= 2:
            assert t.state == TrialState.PRUNED
    assert all(len(t.intermediate_values) == 3 for t in trials if t.state == TrialState.COMPLETE)
    assert study.best_trial.params[PARAM] == GOOD_LR


def test_pruned_trials_are_killed_and_tagged_in_mlflow(sweep):
    study, runs, _ = sweep
    students = {int(r.data.tags["optuna.trial_number"]): r for r in by_role(runs, "student")}
    assert sorted(students) == list(range(6))  # one student run per trial
    for t in study.get_trials():
        run = students[t.number]
        # one name per trial in the UI, and the trial's link to its run (optuna-dashboard shows user attrs)
        assert run.info.run_name.startswith(f"trial-{t.number + 1:03d} ")
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        if t.state == TrialState.PRUNED:
            assert run.info.status == "KILLED" and run.data.tags["kdexp.trial_state"] == "PRUNED"
        else:
            assert run.info.status == "FINISHED" and "kdexp.trial_state" not in run.data.tags
            assert run.data.metrics["student/val_acc"] == pytest.approx(t.value)


def test_one_teacher_and_every_student_is_a_child_of_the_sweep_run(sweep):
    _, runs, proc = sweep
    assert len(by_role(runs, "teacher")) == 1 and not by_role(runs, "baseline")  # cached; baseline=false
    (parent,) = by_role(runs, "sweep")
    assert parent.info.status == "FINISHED" and parent.data.params["study_name"] == "e2e"
    students = by_role(runs, "student")
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in students)
    teacher_id = by_role(runs, "teacher")[0].info.run_id
    assert {r.data.tags["kdexp.teacher_run_id"] for r in students} == {teacher_id}
    log = proc.stdout + proc.stderr
    assert log.count("training teacher") == 1


def test_pruning_benchmark_quick(tmp_path):
    """Structure and sanity only: timings on a shared machine are not asserted."""
    out = tmp_path / "bench"
    run([sys.executable, str(REPO / "benchmarks" / "sweep_pruning.py"), "--quick", "--out", str(out)],
        tmp_path)
    res = json.loads((out / "sweep_pruning_quick.json").read_text())
    assert (out / "sweep_pruning_quick.md").read_text().startswith("#")
    on, off = res["runs"]["pruned"], res["runs"]["unpruned"]
    for r in (on, off):
        assert r["trials"] == res["settings"]["trials"] == len(r["per_trial"])
        assert r["student_epochs"] == sum(t["epochs"] for t in r["per_trial"])
        assert 0 < r["best_value"] <= 1 and r["sweep_wall_s"] > r["fit_s"] > 0
        assert r["overhead_per_trial_s"] > 0
    assert off["pruned_trials"] == 0 and off["student_epochs"] == off["trials"] * res["settings"]["epochs"]
    # Pruning is certain in test_destructive_trials_are_pruned_in_optuna; here only its consequence.
    assert (on["student_epochs"] < off["student_epochs"]) == (on["pruned_trials"] > 0)
