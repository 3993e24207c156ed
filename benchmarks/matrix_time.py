"""Where a matrix's time went, from its MLflow runs: per student and method, the cells' and the tuning
studies' summed run durations, the trials run and pruned, and the wall-clock span of the whole matrix.

    python benchmarks/matrix_time.py --experiment fashion-full [--root DIR | paths.root=DIR | --uri URI]

Reads the matrix's experiment and its tuning experiment (`<experiment>-tuning`, kdexp/bench/tuning.py). Durations
are MLflow's start/end times of every ended run (a stopped or failed run's time was spent too); a run
continued after a kill counts from its first start, so a resumed matrix shows its cost, interruptions included.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `kdexp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow.tracking import MlflowClient

from kdexp.tracking.locate import add_store_arguments, hydra_style, parsed_uri


def runs_of(client: MlflowClient, name: str) -> list:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], max_results=1000, page_token=token)
        runs += [r for r in page if r.info.end_time]
        token = page.token
        if not token:
            return runs


def minutes(runs: list) -> float:
    return sum(r.info.end_time - r.info.start_time for r in runs) / 60_000


def key(run) -> tuple[str, str]:
    params, tags = run.data.params, run.data.tags
    return params.get("student.arch", tags.get("kdexp.role", "?")), tags.get("kdexp.method", "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_store_arguments(parser)  # --uri / --root / paths.root=DIR, found as kdexp-train writes them
    parser.add_argument("--experiment", required=True)
    args = parser.parse_args(hydra_style(sys.argv[1:]))
    client = MlflowClient(parsed_uri(args))
    cells, trials = runs_of(client, args.experiment), runs_of(client, args.experiment + "-tuning")
    trials = [r for r in trials if r.data.tags.get("kdexp.role") != "sweep"]  # a study's parent spans its trials
    teachers = [r for r in cells if r.data.tags.get("kdexp.role") == "teacher"]
    students = [r for r in cells if r.data.tags.get("kdexp.role") not in ("teacher", "report")]  # report: no training
    groups: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: {"cells": [], "trials": []})
    for run in students:
        groups[key(run)]["cells"].append(run)
    for run in trials:
        groups[key(run)]["trials"].append(run)
    print("| student | method | cells finished | cell min | trials finished/started (pruned) | tuning min |")
    print("|---|---|---|---|---|---|")
    for (arch, method), g in sorted(groups.items()):
        pruned = sum(r.data.tags.get("kdexp.trial_state") == "PRUNED" for r in g["trials"])
        finished = sum(r.info.status == "FINISHED" for r in g["cells"])
        tried = sum(r.info.status == "FINISHED" for r in g["trials"])  # a stopped trial's run is KILLED/FAILED
        print(f"| {arch} | {method} | {finished} | {minutes(g['cells']):.1f} | "
              f"{tried}/{len(g['trials'])} ({pruned}) | {minutes(g['trials']):.1f} |")
    every = teachers + students + trials  # a report run trains nothing and ends after the rest
    span = (max(r.info.end_time for r in every) - min(r.info.start_time for r in every)) / 60_000 if every else 0
    print(f"\nteacher {minutes(teachers):.1f} min; cells {minutes(students):.1f} min; tuning {minutes(trials):.1f} min;"
          f" sum {minutes(every):.1f} min; wall span {span:.1f} min (first start to last end)")


if __name__ == "__main__":
    main()
