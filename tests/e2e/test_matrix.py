"""A benchmark matrix end to end through the real CLIs: `kdexp-train -m matrix=smoke` (1 pair x 2 methods
x 2 seeds on tiny synthetic data), its re-run (finished cells skipped, a failed one retried), `kdexp-report`."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
# The smoke matrix, one epoch; the lr override checks that `student_lr` spares the teacher. No MLflow Models or
# student exports: the report reads metrics, and test_cli checks those records (CI time).
MATRIX = ["-m", "matrix=smoke", "trainer.max_epochs=1", "+student_lr.cnn_tiny=0.002", "tracking.log_model=false",
          "tracking.export_student=false"]
EXPERIMENT = "matrix-smoke"


def cli(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDEXP_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([str(Path(sys.executable).parent / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def runs_by_role(cwd: Path) -> tuple[object, dict[str, list]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    roles: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        roles.setdefault(run.data.tags["kdexp.role"], []).append(run)
    return client, roles


@pytest.fixture(scope="module")
def matrix_runs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("matrix")
    first = cli("kdexp-train", *MATRIX, cwd=cwd)
    client, roles = runs_by_role(cwd)
    before = roles["student"]
    failed = next(r for r in before if r.data.tags["distill"] == "kd" and r.data.tags["seed"] == "1")
    client.set_terminated(failed.info.run_id, "FAILED")  # as if that cell had crashed
    second = cli("kdexp-train", *MATRIX, cwd=cwd)
    report = cli("kdexp-report", "--matrix", "smoke", cwd=cwd)
    return cwd, first, second, report, before, failed


def test_one_teacher_serves_every_cell(matrix_runs):
    cwd, first, _, _, before, _ = matrix_runs
    _, roles = runs_by_role(cwd)
    assert len(roles["teacher"]) == 1 and "baseline" not in roles  # teacher.seed pinned; vanilla = `none`
    teacher_id = roles["teacher"][0].info.run_id
    assert len(before) == 4 and {r.data.tags["kdexp.teacher_run_id"] for r in before} == {teacher_id}
    log = first.stdout + first.stderr
    assert log.count("training teacher") == 1 and log.count("reusing cached teacher cnn_small") == 3


def test_cells_are_tagged_and_student_lr_spares_the_teacher(matrix_runs):
    cwd, _, _, _, before, _ = matrix_runs
    _, roles = runs_by_role(cwd)
    assert len({r.data.tags["kdexp.cell"] for r in before}) == 4
    assert len({r.data.tags["kdexp.settings"] for r in before}) == 1  # one table, one setting
    assert sorted((r.data.tags["kdexp.method"], r.data.tags["seed"]) for r in before) == [
        ("kd", "0"), ("kd", "1"), ("none", "0"), ("none", "1")]
    assert roles["teacher"][0].data.params["recipe.lr"] == "0.003"
    assert {r.data.params["distill.temperature"] for r in before if r.data.tags["distill"] == "kd"} == {"2.0"}
    assert {r.data.params["recipe.lr"] for r in before} == {"0.002"}


def test_rerun_skips_finished_cells_and_retries_the_failed_one(matrix_runs):
    cwd, _, second, _, before, failed = matrix_runs
    log = second.stdout + second.stderr
    assert log.count("skipping finished cell") == 3 and "training teacher" not in log
    _, roles = runs_by_role(cwd)
    new = [r for r in roles["student"] if r.info.run_id not in {b.info.run_id for b in before}]
    assert len(new) == 1 and new[0].data.tags["kdexp.cell"] == failed.data.tags["kdexp.cell"]
    assert new[0].info.status == "FINISHED"


def test_report_has_the_matrix_shape(matrix_runs):
    cwd, _, _, report, _, _ = matrix_runs
    out = cwd / "outputs" / "reports" / "smoke"
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["row"], r["pair"], r["n"]) for r in rows] == [
        ("teacher", "cnn_small->cnn_tiny", "1"), ("none", "cnn_small->cnn_tiny", "2"),
        ("kd", "cnn_small->cnn_tiny", "2")]
    assert all(r["fewer_seeds"] == "0" and float(r["mean"]) > 0 for r in rows)
    table = (out / "table.md").read_text()
    assert "| Teacher → Student | cnn_small->cnn_tiny |" in table and "| Student (vanilla) |" in table
    assert "older run" not in table  # the FAILED run is not read at all; its retry counts
    _, roles = runs_by_role(cwd)
    assert len(roles["report"]) == 1 and "logged as MLflow run" in report.stdout
