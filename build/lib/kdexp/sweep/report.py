"""Study statistics shared by the end-of-sweep summary, the results file and MLflow."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts = Counter(t.state for t in study.get_trials(deepcopy=False))
    return {
        "trials_complete": counts[TrialState.COMPLETE],
        "trials_pruned": counts[TrialState.PRUNED],
        "trials_failed": counts[TrialState.FAIL],
        "trials_running": counts[TrialState.RUNNING] + counts[TrialState.WAITING],
        "trials_total": sum(counts.values()),
    }


def best_summary(study: optuna.Study, metrics: Sequence[str]) -> dict[str, Any]:
    """Single objective: best value/params/trial. Several: Pareto front size and best per objective."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {}
    if len(metrics) == 1:
        best = study.best_trial
        return {"best_value": best.value, "best_params": best.params, "best_trial": best.number}
    out: dict[str, Any] = {"pareto_front_size": len(study.best_trials), "best_per_objective": {}}
    for i, (metric, direction) in enumerate(zip(metrics, study.directions)):
        pick = max if direction == StudyDirection.MAXIMIZE else min
        trial = pick(complete, key=lambda t: t.values[i])
        out["best_per_objective"][metric] = {
            "value": trial.values[i],
            "params": trial.params,
            "trial": trial.number,
        }
    return out


def summary_text(study: optuna.Study, metrics: Sequence[str], storage: str, parent_run_id: str | None) -> str:
    counts = state_counts(study)
    best = best_summary(study, metrics)
    lines = [
        f"kdexp_optuna summary: study '{study.study_name}' in {storage}",
        "  trials: {trials_total} (complete {trials_complete}, pruned {trials_pruned}, "
        "failed {trials_failed}, running {trials_running})".format(**counts),
    ]
    if "best_value" in best:
        lines.append(f"  best {metrics[0]}: {best['best_value']:.6g} (trial {best['best_trial']})")
        lines.append(f"  best params: {best['best_params']}")
    for metric, entry in best.get("best_per_objective", {}).items():
        lines.append(f"  best {metric}: {entry['value']:.6g} (trial {entry['trial']}) {entry['params']}")
    if "pareto_front_size" in best:
        lines.append(f"  Pareto front: {best['pareto_front_size']} trial(s)")
    if not best:
        lines.append("  no completed trial yet")
    lines.append(f"  MLflow parent run: {parent_run_id or '-'}")
    return "\n".join(lines)
