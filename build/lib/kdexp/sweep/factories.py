"""Samplers and pruners from the sweeper's plain-dict settings.

The pruner is also rebuilt job-side (from the spec stored in the study), because
``trial.should_prune()`` runs in the job process, which may be another process or host.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import optuna

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid", "cmaes", "nsgaii", "motpe")
PRUNERS = ("median", "sha", "hyperband", "none")
# The settings that matter per sampler/pruner, for describe().
SAMPLER_ARGS = {
    "tpe": ("seed", "n_startup_trials"),
    "motpe": ("seed", "n_startup_trials"),
    "cmaes": ("seed", "n_startup_trials"),
}
PRUNER_ARGS = {
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
    "sha": ("min_resource", "reduction_factor"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
}


def build_sampler(
    spec: Mapping[str, Any], seed: int | None, grid: dict | None = None
) -> optuna.samplers.BaseSampler:
    name = str(spec.get("name", "tpe")).lower()
    startup = int(spec.get("n_startup_trials", 10))
    if name in ("tpe", "motpe"):  # TPE handles several objectives natively (MOTPE was folded into it)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        assert grid is not None, "grid sampler needs its search space"
        return _AskTellGridSampler(grid, seed=seed)
    if name == "nsgaii":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401  (Optuna only fails at the first ask without it)
        except ImportError as exc:
            raise ImportError("sampler 'cmaes' needs the cmaes package: pip install cmaes") from exc
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup)
    raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")


class _AskTellGridSampler(optuna.samplers.GridSampler):
    # GridSampler calls study.stop() once the grid is exhausted, which raises outside
    # study.optimize(); the sweeper caps n_trials at the grid size instead.
    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[override]
        return None


def pruner_spec(spec: Mapping[str, Any], n_objectives: int) -> dict[str, Any]:
    """The JSON-able spec stored in the study (user attr ``kdexp.pruner``)."""
    out = {k: spec[k] for k in spec}
    out["name"] = str(out.get("name", "median")).lower()
    if out["name"] not in PRUNERS:
        raise ValueError(f"unknown pruner {out['name']!r}; choose one of: {', '.join(PRUNERS)}")
    if n_objectives > 1 and out["name"] != "none":
        log.warning(
            "Optuna cannot prune multi-objective studies: pruner %r is replaced by 'none'", out["name"]
        )
        out["name"] = "none"
    return out


def build_pruner(spec: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    spec = spec or {"name": "none"}
    name = spec.get("name", "none")
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(spec.get("n_startup_trials", 5)),
            n_warmup_steps=int(spec.get("n_warmup_steps", 0)),
            interval_steps=int(spec.get("interval_steps", 1)),
        )
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec.get("min_resource", "auto"),
            reduction_factor=int(spec.get("reduction_factor", 4)),
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=int(spec.get("min_resource", 1)),
            max_resource=spec.get("max_resource", "auto"),
            reduction_factor=int(spec.get("reduction_factor", 3)),
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose one of: {', '.join(PRUNERS)}")


def describe(spec: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """e.g. ``median(n_startup_trials=5, n_warmup_steps=2)`` for MLflow params and logs."""
    args = ", ".join(f"{k}={spec[k]}" for k in keys if k in spec)
    return f"{spec.get('name')}({args})"
