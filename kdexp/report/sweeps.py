"""Runs of an Optuna sweep in a report: each cell's best trial by the sweep's objective(s), and its Pareto front.

A sweep's trial runs carry tag optuna.study_name and, from the sweep's parent run, its objectives
("metric:direction, ..."; tag kdexp.objectives in runs.csv). One objective: a cell takes the trial with the
best value. Several: the cell's trials on the study's Pareto front, best by the first objective (a cell with
none on the front: its best by the first objective).
"""

from __future__ import annotations

OBJECTIVES_TAG, STUDY_TAG, TRIAL_TAG = "kdexp.objectives", "optuna.study_name", "optuna.trial_number"


def objectives(run) -> list[tuple[str, str]]:
    """[(metric, "maximize"|"minimize")] of the run's sweep, [] outside a sweep or when unknown."""
    out = []
    for item in (run.data.tags.get(OBJECTIVES_TAG) or "").split(","):
        metric, _, direction = item.strip().rpartition(":")
        if metric and direction in ("maximize", "minimize"):
            out.append((metric, direction))
    return out


def _key(run, objs: list[tuple[str, str]]) -> tuple[float, ...] | None:
    """The objective values, signed so that larger is better; None when one is missing."""
    m = run.data.metrics
    if any(metric not in m for metric, _ in objs):
        return None
    return tuple(m[metric] if d == "maximize" else -m[metric] for metric, d in objs)


def pareto_front(runs: list) -> list:
    """The runs no other run of the list dominates (at least as good in every objective, better in one),
    in trial order; runs without every objective metric are left out."""
    scored = [(r, k) for r in runs if (objs := objectives(r)) and (k := _key(r, objs)) is not None]
    front = [r for r, k in scored
             if not any(all(o >= s for o, s in zip(other, k)) and other != k for _, other in scored)]
    return sorted(front, key=trial_number)


def trial_number(run) -> int:
    try:
        return int(run.data.tags.get(TRIAL_TAG, ""))
    except ValueError:
        return -1


def best_trial(group: list, study_runs: list):
    """The run a table takes for one cell from the trials of one sweep (`study_runs`: all of the study's).

    Args:
        group: the cell's trial runs (same pair, method, seed), each with objectives.
        study_runs: every run of the same study, for the Pareto front of a multi-objective sweep.
    Returns:
        The chosen run (ties: the earliest trial).
    """
    objs = objectives(group[0])
    scored = [r for r in group if _key(r, objs) is not None]
    if not scored:
        return group[-1]
    if len(objs) > 1:
        front = {id(r) for r in pareto_front(study_runs)}
        scored = [r for r in scored if id(r) in front] or scored
    first = objs[:1]
    return max(sorted(scored, key=trial_number), key=lambda r: _key(r, first))


def describe(objs: list[tuple[str, str]]) -> str:
    return ", ".join(f"{'max' if d == 'maximize' else 'min'} {m}" for m, d in objs)


def studies(runs: list) -> dict[str, list]:
    """{study name: its trial runs} for the multi-objective sweeps among `runs`, in first-seen order."""
    out: dict[str, list] = {}
    for run in runs:
        if len(objectives(run)) > 1:
            out.setdefault(run.data.tags.get(STUDY_TAG, "?"), []).append(run)
    return out

