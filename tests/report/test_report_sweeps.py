"""kdexp-report on sweep experiments (hand-built MLflow runs as kdexp's sweeper leaves them: trial runs under a
parent run whose `objectives` param names the metrics): each cell is its best trial, not its latest; the
Pareto front of a multi-objective sweep as a table and a figure; the ranking without a vanilla row."""

from __future__ import annotations

import csv
import time

import pytest

from kdexp.report.cli import main
from kdexp.report.collect import Record
from kdexp.report.plots import ranking
from kdexp.report.table import build_table

# single objective: trial 1 has the best validation accuracy, trial 2 is the latest
SINGLE = [(0, "cnn_tiny", 0.60, 0.61, 1.0), (1, "cnn_tiny", 0.70, 0.65, 1.0), (2, "cnn_tiny", 0.55, 0.70, 1.0)]
# two objectives (val_acc max, latency min): front = trials 0 (fast), 2 (accurate), 3 (between); 1 and 4
# are dominated (1 by 3, 4 by 2)
MULTI = [(0, "cnn_tiny", 0.60, 0.58, 0.5), (1, "cnn_tiny", 0.62, 0.60, 2.0), (2, "cnn_small", 0.80, 0.79, 3.0),
         (3, "cnn_small", 0.70, 0.71, 1.0), (4, "cnn_small", 0.75, 0.90, 4.0)]


def add_sweep(client, exp, study, objectives, trials):
    from mlflow.entities import Metric, Param

    parent = client.create_run(exp, tags={"kdexp.role": "sweep", "optuna.study_name": study})
    client.log_batch(parent.info.run_id, params=[Param("objectives", objectives)])
    for number, student, val, test, latency in trials:
        tags = {"kdexp.role": "student", "data": "synthetic", "teacher": "cnn_medium", "student": student,
                "distill": "kd", "kdexp.method": "kd", "seed": "0", "kdexp.teacher_run_id": "t0",
                "optuna.study_name": study, "optuna.trial_number": str(number),
                "mlflow.parentRunId": parent.info.run_id}
        run = client.create_run(exp, tags=tags, start_time=int(time.time() * 1000))
        now = int(time.time() * 1000)
        metrics = {"student/val_acc": val, "student/test_top1": test, "student/latency_b1_ms": latency,
                   "teacher/test_top1": 0.9}
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                         params=[Param("distill.temperature", str(1.0 + number))])
        client.set_terminated(run.info.run_id, "FINISHED")
        time.sleep(0.002)  # distinct start times: "latest" is well defined
    client.set_terminated(parent.info.run_id, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("sweeps")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    single = client.create_experiment("single", artifact_location=(root / "a1").as_uri())
    add_sweep(client, single, "kd_t", "student/val_acc:maximize", SINGLE)
    multi = client.create_experiment("multi", artifact_location=(root / "a2").as_uri())
    add_sweep(client, multi, "kd_pareto", "student/val_acc:maximize, student/latency_b1_ms:minimize", MULTI)
    return uri


def report(uri, out, experiment, *args):
    assert main(["--uri", uri, "--experiment", experiment, "--out", str(out), "--name", "r", "--no-mlflow",
                 *args]) == 0
    with open(out / "r" / "results.csv", newline="") as handle:
        return (out / "r" / "table.md").read_text(), {(r["row"], r["pair"]): r for r in csv.DictReader(handle)}


@pytest.mark.slow  # a new MLflow store: its migrations take seconds
def test_a_sweep_cell_is_its_best_trial_by_the_objective_not_the_latest(store, tmp_path):
    md, cells = report(store, tmp_path, "single", "--no-plots")
    assert cells[("kd", "cnn_medium->cnn_tiny")]["mean"] == "65.00"  # trial 1 (val 0.70), not trial 2's 70.00
    assert "each cell is its best trial by the sweep's objective(s) (max student/val_acc" in md
    assert "2 other trial(s) not tabled" in md and "older run(s)" not in md
    assert "## Pareto front" not in md  # one objective: no front


@pytest.mark.slow  # a new MLflow store: its migrations take seconds
def test_multi_objective_sweep_tables_its_pareto_front_and_takes_front_trials(store, tmp_path):
    md, cells = report(store, tmp_path, "multi")
    # cnn_small: trials 2, 3 on the front, best val 0.80 (trial 2); trial 4 has the best *test* but is dominated
    assert cells[("kd", "cnn_medium->cnn_small")]["mean"] == "79.00"
    assert cells[("kd", "cnn_medium->cnn_tiny")]["mean"] == "58.00"  # trial 0: on the front, trial 1 is not
    section = md.split("## Pareto front of sweep kd_pareto")[1]
    assert "3 of 5 trial(s) are not dominated (max student/val_acc, min student/latency_b1_ms)" in section
    lines = [x for x in section.splitlines() if x.startswith("| ") and not x.startswith("| Trial")]
    assert [x.split(" | ")[0] for x in lines] == ["| 0", "| 2", "| 3"]
    assert lines[1] == "| 2 | cnn_medium->cnn_small | kd | 0.8 | 3 | 79.00 | temperature=3 |"
    pytest.importorskip("matplotlib")
    assert (tmp_path / "r" / "pareto_front.png").stat().st_size > 5000
    assert (tmp_path / "r" / "method_ranking.png").is_file()


def test_the_ranking_without_a_vanilla_row_ranks_by_accuracy():
    records = [Record("kd", "t->a", "0", 70.0), Record("kd", "t->b", "0", 60.0),
               Record("dkd", "t->a", "0", 72.0), Record("dkd", "t->b", "0", 59.0),
               Record("at", "t->a", "0", 50.0), Record("at", "t->b", "0", 52.0)]
    ranked, shown = ranking(build_table(records, "last"))
    assert ranked == [("kd", 1.5, 65.0), ("dkd", 1.5, 65.5), ("at", 3.0, 51.0)]
    assert shown == "mean top-1 accuracy (%), no vanilla row"
    with_vanilla = records + [Record("none", "t->a", "0", 60.0), Record("none", "t->b", "0", 50.0)]
    ranked, shown = ranking(build_table(with_vanilla, "last"))
    assert ranked[0] == ("kd", 1.5, 10.0) and shown.startswith("mean Δ")
