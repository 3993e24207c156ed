"""Parallel first runs on a new store: the smoke matrix (4 cells) as 4 processes at once, each repeat in a fresh
folder (SQLite) or on a fresh PostgreSQL database, counting the jobs that fail and the cells left unfinished.

    .venv/bin/python benchmarks/parallel_start.py --repeats 3 --launchers joblib local_matrix --stores sqlite postgres
    git archive 131c61a | tar -x -C /tmp/base   # the code before issue 26, then the same with --code /tmp/base
    .venv/bin/python benchmarks/parallel_start.py --setup-only --repeats 3 --stores sqlite postgres

Before issue 26 every job created the new MLflow store's tables itself and some died with "table ... already
exists"; now the launching process creates the stores before submitting. Needs PostgreSQL's binaries
(apt-get install postgresql) and kdexp[postgres] for --stores postgres. Writes outputs/bench/parallel_start.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.servers import postgres_cluster, why_no_postgres  # noqa: E402

LAUNCHERS = {"joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=4"], "local_matrix": ["cluster=local_matrix"]}
# The smoke matrix less the work that has nothing to do with stores (model logging, exports, latency repeats).
LEAN = ["trainer.max_epochs=1", "tracking.log_model=false", "tracking.export_student=false", "eval.latency_repeats=1"]
CELLS = 4  # matrix=smoke: 1 pair x 2 methods x 2 seeds
EXPERIMENT = "matrix-smoke"
# The launching process's set-up, as kdexp/tracking/prepare_hydra.py logs it.
READY = re.compile(r"stores ready in ([0-9.]+) s \(([0-9.]+) s CPU\)")
RACE = re.compile(r"already exists|OperationalError|UniqueViolation|IntegrityError|Online migration expected")


def smoke(work: Path, launcher: str, tracking: str, code: Path) -> dict:
    """One fresh `kdexp-train -m matrix=smoke` in `work`; what happened to its jobs and its store."""
    cmd = [str(Path(sys.executable).parent / "kdexp-train"), "-m", "matrix=smoke", *LEAN, *LAUNCHERS[launcher],
           f"tracking.uri={tracking}", "hydra.sweep.dir=multirun"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KDEXP_OPTUNA"))}
    env.update(KDEXP_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(code))
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    logs = done.stdout + done.stderr + "".join(p.read_text(errors="replace") for p in work.rglob("*.log"))
    logs += "".join(p.read_text(errors="replace") for p in work.rglob("*_log.err"))  # submitit's job stderr
    experiments, finished = store_counts(tracking)
    ready = READY.search(done.stdout + done.stderr)
    return {"exit": done.returncode, "wall_s": round(wall, 1), "setup_s": float(ready.group(1)) if ready else None,
            "setup_cpu_s": float(ready.group(2)) if ready else None,
            "experiments": experiments, "finished_cells": finished, "failed_jobs": CELLS - finished,
            "race_errors": sorted(set(RACE.findall(logs))), "tail": (done.stdout + done.stderr)[-600:]}


SETUP = """
import sys, time
wall, cpu = time.perf_counter(), time.process_time()
from kdexp.tracking.prepare_hydra import Stores, check, create
stores = Stores(sys.argv[1], ["matrix-smoke"], sys.argv[2])
create(stores, check(stores))
print(time.perf_counter() - wall, time.process_time() - cpu)
"""


def setup_only(work: Path, tracking: str, code: Path) -> dict:
    """The launching process's set-up alone (imports included) on a new store, in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KDEXP_OPTUNA"))}
    env.update(PYTHONPATH=str(code))
    done = subprocess.run([sys.executable, "-c", SETUP, tracking, str(work / "mlartifacts")], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600, check=True)
    wall, cpu = map(float, done.stdout.split()[-2:])
    return {"setup_s": round(wall, 2), "setup_cpu_s": round(cpu, 2)}


def store_counts(tracking: str) -> tuple[int, int]:
    """(experiments named EXPERIMENT, cells with exactly one FINISHED student run)."""
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking)
        experiments = [e for e in client.search_experiments() if e.name == EXPERIMENT]
    except Exception:  # noqa: BLE001 - no store at all counts as nothing finished
        return 0, 0
    if not experiments:
        return 0, 0
    runs = client.search_runs([e.experiment_id for e in experiments], "tags.`kdexp.role` = 'student'")
    cells: dict[str, int] = {}
    for run in runs:
        if run.info.status == "FINISHED":
            cells[run.data.tags.get("kdexp.cell", "")] = cells.get(run.data.tags.get("kdexp.cell", ""), 0) + 1
    return len(experiments), sum(1 for n in cells.values() if n == 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--launchers", nargs="+", choices=sorted(LAUNCHERS), default=["joblib"])
    parser.add_argument("--stores", nargs="+", choices=["sqlite", "postgres"], default=["sqlite"])
    parser.add_argument("--code", default=str(REPO), help="kdexp source tree the jobs import (e.g. an older "
                        "commit's `git archive` to measure before a change)")
    parser.add_argument("--setup-only", action="store_true", help="time only the launching process's set-up")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench" / "parallel_start.json"))
    args = parser.parse_args()
    if "postgres" in args.stores and why_no_postgres():
        parser.error(f"--stores postgres: {why_no_postgres()}")
    results = []
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(postgres_cluster()) if "postgres" in args.stores else None
        for store in args.stores:
            for launcher in args.launchers:
                for repeat in range(args.repeats):
                    with tempfile.TemporaryDirectory(prefix="kdexp-race-") as tmp:
                        if store == "sqlite":
                            tracking = f"sqlite:///{tmp}/outputs/mlflow.db"
                        else:
                            tracking = pg.add_database(f"race_{uuid.uuid4().hex[:10]}", "race", "racepw")
                        work = Path(tmp)
                        measured = (setup_only(work, tracking, Path(args.code)) if args.setup_only
                                    else smoke(work, launcher, tracking, Path(args.code)))
                        row = {"store": store, "launcher": launcher, "repeat": repeat, **measured}
                    results.append(row)
                    shown = {k: v for k, v in row.items() if k != "tail" or row.get("failed_jobs")}
                    print(json.dumps(shown), flush=True)
    summary = {}
    for row in [] if args.setup_only else results:
        key = f"{row['store']}/{row['launcher']}"
        entry = summary.setdefault(key, {"runs": 0, "runs_with_a_failed_job": 0, "failed_jobs": 0, "jobs": 0})
        entry["runs"] += 1
        entry["jobs"] += CELLS
        entry["failed_jobs"] += row["failed_jobs"]
        entry["runs_with_a_failed_job"] += int(row["failed_jobs"] > 0 or row["exit"] != 0)
    print(json.dumps(summary, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
