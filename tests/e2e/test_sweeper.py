"""kdexp_optuna sweeper end to end: the toy app in tests/sweep_app run as real ``-m`` sweeps.

Every sweep a selected test needs starts with the module, in the background; each test waits for its own:
most of a sweep's time is interpreter start-up, MLflow's schema migrations and SQLite fsyncs,
which overlap well. Sweeps never share files, except the two workers of the concurrency test.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

APP = Path(__file__).parents[1] / "sweep_app" / "app.py"
C, P, F, R = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING
# The median pruner must prune: 2 startup trials, then every trial is worse (decay) from epoch 0 on.
PRUNE_FOR_SURE = [
    "decay=0.1",
    "hydra.sweeper.pruner.n_startup_trials=2",
    "hydra.sweeper.pruner.n_warmup_steps=0",
]
# kdexp's own behaviour, where the official defaults (which kdexp_optuna keeps) differ: the toy returns a dict.
KDEXP = [
    "hydra.sweeper.objectives=[{metric:student/val_acc,direction:maximize}]",
    "hydra.sweeper.n_jobs=1",
    "hydra.sweeper.max_failure_rate=1.0",
    "hydra.sweeper.max_failures=3",
    "hydra.sweeper.sampler.seed=42",
]
RESUME = [
    "x=interval(0,1)",
    "hydra.sweeper.n_trials=4",
    "hydra.sweeper.pruner.name=none",
    "hydra.sweeper.heartbeat_interval=1",
    "hydra.sweeper.grace_period=2",
    "kill_at_trial=2",
]

pytestmark = pytest.mark.slow


@dataclass
class Sweep:
    overrides: list[str]
    mlflow: bool = False  # MLflow costs seconds per process: only for the tests that check it
    workers: int = 1  # sweeper processes on the same study
    config_name: str = "config"
    rerun: bool = False  # run the same command again once the first run ended
    name: str = ""
    procs: list = field(default_factory=list)
    work: Path | None = None
    between: list | None = None  # trial states between the two runs
    chain: threading.Thread | None = None


SWEEPS = {
    "pruning": Sweep(
        [
            "mode=lightning",
            "epochs=3",
            "x=interval(0,1)",
            "y=choice(a,b)",
            "hydra.sweeper.n_trials=6",
            "hydra/sweeper/sampler=random",
            *PRUNE_FOR_SURE,
            "tracking.artifact_root=artifacts",
        ],
        mlflow=True,
    ),
    "resume": Sweep([*RESUME, "kill_marker=killed"], mlflow=True, rerun=True),  # the first run gets killed
    "interrupted": Sweep([*RESUME, "kill_marker=stopped", "kill_signal=TERM"], rerun=True),  # ... gets SIGTERM
    "concurrent": Sweep(
        [
            "x=interval(0,1)",
            "hydra.sweeper.n_trials=6",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.pruner.name=none",
            "barrier_dir=barrier",
        ],
        workers=2,
    ),
    "joblib": Sweep(
        [
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "hydra.sweeper.n_jobs=2",
            "x=interval(0,1)",
            "hydra.sweeper.n_trials=4",
            *PRUNE_FOR_SURE,
        ]
    ),
    "failing": Sweep(
        [
            "y=choice(a,b,boom,bad)",
            "fail_when=boom",
            "nan_when=bad",
            "hydra/sweeper/sampler=grid",
            "hydra.sweeper.n_trials=10",
        ]
    ),
    "budget": Sweep(
        ["x=interval(0,1)", "fail_when=always", "hydra.sweeper.max_failures=2", "hydra.sweeper.n_trials=10"]
    ),
    "mistyped": Sweep(["no_such_key=interval(0,1)"]),
    "multi_objective": Sweep(
        [
            "x=interval(0,1)",
            "hydra.sweeper.n_trials=4",
            "hydra/sweeper/sampler=nsgaii",
            (
                "hydra.sweeper.objectives=[{metric:student/val_acc,direction:maximize},"
                "{metric:student/val_loss,direction:minimize}]"
            ),
        ]
    ),
    "yaml": Sweep(["y=b", "hydra.sweeper.pruner.name=none"], config_name="with_params"),
}


for _name, _sweep in SWEEPS.items():
    _sweep.name = _name


def sweep_cmd(work: Path, sweep: Sweep, worker: int = 0) -> list[str]:
    tracking = (
        [f"tracking.uri=sqlite:///{work}/mlflow.db"]
        if sweep.mlflow
        else ["tracking.uri=null", "hydra.sweeper.mlflow=false"]
    )
    return [
        sys.executable,
        str(APP),
        f"--config-name={sweep.config_name}",
        "-m",
        "hydra/sweeper=kdexp_optuna",
        f"hydra.sweep.dir={work / f'worker{worker}'}",
        f"hydra.sweeper.storage=sqlite:///{work}/optuna.db",
        "hydra.sweeper.study_name=toy",
        *KDEXP,
        *tracking,
        *sweep.overrides,
    ]


def start(work: Path, sweep: Sweep, worker: int = 0) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["HYDRA_FULL_ERROR"] = "1"
    with open(work / f"out{worker}.txt", "w") as out:  # files, not pipes: a full pipe would block a sweep
        return subprocess.Popen(
            sweep_cmd(work, sweep, worker), cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def uses(name: str):
    """Names the sweep a test checks, so that running one test starts only its sweep."""

    def mark(test):
        test.sweep_name = name
        return test

    return mark


@pytest.fixture(scope="module", autouse=True)
def sweeps(request, tmp_path_factory):
    selected = {getattr(item.function, "sweep_name", None) for item in request.session.items}
    started = [sweep for name, sweep in SWEEPS.items() if name in selected]
    for sweep in started:
        sweep.work = tmp_path_factory.mktemp(sweep.name)
        sweep.procs = [start(sweep.work, sweep, worker) for worker in range(sweep.workers)]
        if sweep.rerun:
            sweep.chain = threading.Thread(target=rerun, args=(sweep,))
            sweep.chain.start()
    yield SWEEPS
    for sweep in started:
        if sweep.chain is not None:
            sweep.procs[0].kill()
            sweep.chain.join(timeout=60)
        for proc in sweep.procs:
            proc.kill()
            proc.wait()


def rerun(sweep: Sweep) -> None:
    sweep.procs[0].wait(timeout=300)
    sweep.between = states(sweep.work)
    sweep.procs.append(start(sweep.work, sweep, worker=1))


def finished(name: str, expect_rc: int = 0) -> tuple[Path, str]:
    sweep = SWEEPS[name]
    output = ""
    for worker, proc in enumerate(sweep.procs):
        proc.wait(timeout=300)
        output += (sweep.work / f"out{worker}.txt").read_text()
        assert proc.returncode == expect_rc, output[-6000:]
    return sweep.work, output


def trials(work: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{work}/optuna.db")
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def states(work: Path) -> list[TrialState]:
    return [t.state for t in trials(work)]


def mlflow_runs(work: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    experiment = client.get_experiment_by_name("kdexp-sweep-test")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kdexp.role") == "sweep"]
    children = sorted(
        (r for r in runs if "optuna.trial_number" in r.data.tags),
        key=lambda r: int(r.data.tags["optuna.trial_number"]),
    )
    return client, parents, children


@uses("joblib")
def test_joblib_launcher_runs_trials_in_parallel_processes():
    work, _ = finished("joblib")
    # TrialPruned comes back pickled from the worker processes and still counts as PRUNED.
    assert states(work) == [C, C, P, P]


@uses("failing")
def test_failing_and_nan_trials_fail_while_the_sweep_goes_on():
    work, output = finished("failing")
    by_y = {t.params["y"]: t.state for t in trials(work)}
    assert by_y == {"a": C, "b": C, "boom": F, "bad": F}  # grid of 4: n_trials capped to 4
    assert "toy failure for y=boom" in output and "metric 'student/val_acc' is nan" in output
    assert {t.user_attrs["kdexp.reason"] for t in trials(work) if t.state == F} == {
        "RuntimeError: toy failure for y=boom",
        "metric 'student/val_acc' is nan",
    }


@uses("budget")
def test_failure_budget_stops_the_sweep_with_a_clear_error():
    work, output = finished("budget", expect_rc=1)
    assert "3 trials of this sweep failed, more than max_failures=2" in output
    assert states(work) == [F, F, F]


@uses("mistyped")
def test_mistyped_key_fails_before_any_trial():
    work, output = finished("mistyped", expect_rc=1)
    assert "no_such_key" in output
    assert not (work / "optuna.db").exists()  # no study, no FAIL trials to count later


@uses("multi_objective")
def test_multi_objective_study_from_the_command_line():
    work, output = finished("multi_objective")
    done = trials(work)
    assert len(done) == 4 and all(t.state == C and len(t.values) == 2 for t in done)
    results = OmegaConf.load(work / "worker0" / "optimization_results.yaml")
    assert results.name == "optuna" and len(results.solutions) == results.pareto_front_size >= 1
    assert all(len(s["values"]) == 2 and set(s["params"]) == {"x"} for s in results.solutions)
    assert set(results.best_per_objective) == {"student/val_acc", "student/val_loss"}
    assert "Optuna cannot prune multi-objective studies" in output


@uses("yaml")
def test_yaml_search_space_and_fixed_command_line_override():
    work, _ = finished("yaml")
    done = trials(work)
    assert len(done) == 4 and all(t.state == C for t in done)
    assert all(set(t.params) == {"x"} and 0 <= t.params["x"] <= 1 for t in done)  # y fixed on the CLI
    assert all(len(t.intermediate_values) == 3 for t in done)  # epochs: 3 from params
    job_cfg = OmegaConf.load(work / "worker0" / "0" / ".hydra" / "config.yaml")
    assert job_cfg.y == "b" and job_cfg.x == done[0].params["x"]  # the sampled float, exactly


@uses("concurrent")
def test_two_concurrent_sweepers_share_one_study():
    work, _ = finished("concurrent")
    done = trials(work)
    assert [t.number for t in done] == list(range(6)) and all(t.state == C for t in done)
    ran = [sorted(int(p.name) for p in (work / f"worker{i}").iterdir() if p.is_dir()) for i in range(2)]
    assert sorted(ran[0] + ran[1]) == list(range(6)) and ran[0] and ran[1]  # both workers ran trials


@uses("resume")
def test_killed_sweep_resumes_to_exactly_n_trials():
    sweep = SWEEPS["resume"]
    sweep.chain.join(timeout=300)
    first, second = sweep.procs  # the very same command twice
    assert first.returncode == -signal.SIGKILL  # the app killed its sweeper in trial 2
    assert sweep.between == [C, C, R]
    assert second.wait(timeout=300) == 0, (sweep.work / "out1.txt").read_text()[-6000:]
    work = sweep.work
    # the killed trial failed once its heartbeat went stale and was asked again with its params (before or
    # after the resumed sweeper's new trial: that depends on the grace period); the killed one and its retry
    # count once, so the study holds n_trials=4 that count
    assert states(work) == [C, C, F, C, C]
    failed = trials(work)[2]
    (retry,) = [t for t in trials(work) if optuna.storages.RetryFailedTrialCallback.retried_trial_number(t) == 2]
    assert retry.params == failed.params and retry.state == C
    _, parents, children = mlflow_runs(work)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the resumed run reused the parent
    assert parents[0].data.metrics["trials_failed"] == 1
    assert len(children) == 4  # trial 2 died before opening its run
    assert (work / "mlartifacts").is_dir()  # a new experiment keeps artifacts beside the SQLite store


@uses("interrupted")
def test_sweep_stopped_by_sigterm_asks_its_trial_again_and_keeps_the_budget():
    sweep = SWEEPS["interrupted"]
    sweep.chain.join(timeout=300)
    first, second = sweep.procs
    assert first.returncode != 0
    W = TrialState.WAITING
    assert sweep.between == [C, C, F, W]  # stopped, not failed: its retry waits for the next run
    assert second.wait(timeout=300) == 0, (sweep.work / "out1.txt").read_text()[-6000:]
    assert states(sweep.work) == [C, C, F, C, C]  # the stopped trial and its retry count once: n_trials=4
    stopped, retry = trials(sweep.work)[2:4]
    assert optuna.storages.RetryFailedTrialCallback.retried_trial_number(retry) == 2
    assert retry.params == stopped.params


@uses("pruning")
def test_lightning_pruning_gives_pruned_trials_and_mlflow_structure():
    work, output = finished("pruning")
    assert states(work) == [C, C, P, P, P, P]
    for t in trials(work)[2:]:  # pruned by PruningCallback after the first real epoch
        assert list(t.intermediate_values) == [0]
    first = trials(work)[0]  # the sanity check (which logs 99) was not reported as step 0
    assert list(first.intermediate_values) == [0, 1, 2] and first.intermediate_values[0] < 1
    assert "kdexp_optuna summary: study 'toy'" in output
    assert sorted(p.name for p in (work / "worker0").iterdir() if p.is_dir()) == list("012345")

    client, parents, children = mlflow_runs(work)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    params = parent.data.params
    assert params["study_name"] == "toy" and params["n_trials"] == "6"
    assert params["sampler"] == "RandomSampler(seed=42)" and params["pruner"].startswith(
        "median(n_startup_trials=2"
    )
    assert params["objectives"] == "student/val_acc:maximize"
    assert params["space.x"] == "interval(0,1)" and params["space.y"] == "choice(a,b)"
    metrics = parent.data.metrics
    assert (metrics["trials_complete"], metrics["trials_pruned"], metrics["trials_failed"]) == (2, 4, 0)
    assert metrics["best_value"] == pytest.approx(max(t.value for t in trials(work) if t.state == C))
    assert {"best_param.x", "best_param.y"} <= set(parent.data.tags)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    plots = {"optuna/optimization_history.png", "optuna/slice.png", "optuna/contour.png"}
    assert {"optuna/best.json"} | (plots if importlib.util.find_spec("matplotlib") else set()) <= artifacts
    assert (work / "artifacts").is_dir()  # tracking.artifact_root of the experiment the sweeper created

    assert len(children) == 6
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert [c.info.status for c in children] == ["FINISHED"] * 2 + ["KILLED"] * 4
    assert [c.data.tags["kdexp.trial_state"] for c in children] == ["COMPLETE"] * 2 + ["PRUNED"] * 4
