"""benchmarks/matrix_time.py on a hand-built store: cell and tuning minutes per (student, method), trials run and
pruned, and the store found as kdexp-train writes it (paths.root=DIR)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "matrix_time.py"


def test_minutes_per_row_trials_pruned_and_the_wall_span(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cells, tuning = client.create_experiment("m"), client.create_experiment("m-tuning")
    t0 = 1_800_000_000_000
    # (experiment, tags, student arch, start min, end min, status)
    runs = [(cells, {"kdexp.role": "teacher"}, None, 0, 10, "FINISHED"),
            (cells, {"kdexp.role": "student", "kdexp.method": "kd"}, "s", 10, 13, "FINISHED"),
            (cells, {"kdexp.role": "student", "kdexp.method": "kd"}, "s", 13, 15, "KILLED"),
            (tuning, {"kdexp.role": "trial", "kdexp.method": "kd"}, "s", 10, 11, "FINISHED"),
            (tuning, {"kdexp.role": "trial", "kdexp.method": "kd", "kdexp.trial_state": "PRUNED"}, "s", 11, 11.5,
             "FINISHED"),
            (tuning, {"kdexp.role": "sweep", "kdexp.method": "kd"}, "s", 10, 11.5, "FINISHED")]  # the study's parent
    for exp, tags, arch, start, end, status in runs:
        run = client.create_run(exp, tags=tags, start_time=int(t0 + start * 60_000))
        if arch:
            client.log_param(run.info.run_id, "student.arch", arch)
        client.set_terminated(run.info.run_id, status, end_time=int(t0 + end * 60_000))
    out = subprocess.run([sys.executable, str(SCRIPT), "--experiment", "m", f"paths.root={tmp_path}"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "| s | kd | 1 | 5.0 | 2/2 (1) | 1.5 |" in out
    assert "teacher 10.0 min; cells 5.0 min; tuning 1.5 min; sum 16.5 min; wall span 15.0 min" in out
