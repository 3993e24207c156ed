"""Wall time of one Optuna sweep on PostgreSQL worked by 1 vs N sweeper processes (the lab set-up of
docs/clusters.md, on one machine): a throwaway PostgreSQL cluster holds the study and the MLflow store.

    .venv/bin/python benchmarks/shared_store_sweep.py --trials 12 --workers 1 4

Every run starts a fresh study with a warm teacher cache (a first 1-trial sweep trains the teacher), so the
figures compare the trials' work and the store's coordination, not the teacher. Needs PostgreSQL's binaries
(apt-get install postgresql) and kdexp[postgres]. Writes outputs/bench/shared_store_sweep.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.servers import postgres_cluster, why_no_postgres  # noqa: E402

TINY = ["data=synthetic", "data.num_samples=300", "data.image_size=8", "teacher=cnn_small", "student=cnn_tiny",
        "trainer.max_epochs=1", "teacher.max_epochs=1", "eval.latency_repeats=2", "eval.latency_batch=8",
        "hydra.sweeper.pruner.name=none"]


def sweep(work: Path, storage: str, tracking: str, study: str, trials: int, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds (all processes) of one sweep."""
    cmd = [str(Path(sys.executable).parent / "kdexp-train"), "-m", "+sweep=kd_temperature", *TINY,
           f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={study}",
           f"hydra.sweeper.n_trials={trials}", f"tracking.uri={tracking}", f"paths.root={work / 'out'}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KDEXP_OPTUNA"))}
    env.update(KDEXP_OFFLINE="1", OMP_NUM_THREADS="1")
    cpu0 = _children_cpu()
    start = time.perf_counter()
    procs = [subprocess.Popen([*cmd, f"hydra.sweep.dir={work / 'multirun' / study / str(i)}"], cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(workers)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"sweep {study}: exit codes {codes}")
    return wall, _children_cpu() - cpu0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench")
    args = parser.parse_args()
    reason = why_no_postgres()
    if reason:
        raise SystemExit(reason)
    results = {"trials": args.trials, "cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "runs": []}
    with postgres_cluster() as pg, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        storage, tracking = pg.add_database("optuna", "kd", "bench-pw"), pg.add_database("mlflow", "kd", "bench-pw")
        sweep(work, storage, tracking, "warmup", 1, 1)
        for workers in args.workers:
            study = f"w{workers}"
            wall, cpu = sweep(work, storage, tracking, study, args.trials, workers)
            n = len(optuna.load_study(study_name=study, storage=storage).trials)
            results["runs"].append({"workers": workers, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                                    "trials": n})
            print(f"{workers} worker(s): {wall:.1f} s wall, {cpu:.1f} s CPU for {n} trials", flush=True)
    results["load_after"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shared_store_sweep.json").write_text(json.dumps(results, indent=2))
    rows = "\n".join(f"| {r['workers']} | {r['trials']} | {r['wall_s']} | {r['cpu_s']} |" for r in results["runs"])
    (args.out / "shared_store_sweep.md").write_text(
        f"### {args.trials}-trial sweep on PostgreSQL, sweeper processes sharing the study "
        f"({results['cpus']} CPUs, load {results['load_before']:.1f})\n| workers | trials | wall s | CPU s |\n"
        f"|---|---|---|---|\n"
        f"{rows}\n")


if __name__ == "__main__":
    main()
